#!/usr/bin/env bash
# Reproduce the embedded demo model (assets/model) and the ablation tables on CPU, from scratch.
# Every stage is a `medr2` command with a committed recipe; logs and checkpoints go to runs/.
# Wall-clock on the 2-core CPU machine this project is built on: ~2 h (stage 0 26 min, each SFT 32 min,
# run two at a time; GRPO 18 min). With a GPU, the same commands run faster (bf16 is chosen automatically).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
mkdir -p runs

# Stage 0: perception pretraining of the vision tower on phantom masks (medr2/train/perception.py):
# 16 min at lr 1e-3 (run beside other jobs, hence one thread), then 10 more minutes at 5e-4 from there.
OMP_NUM_THREADS=1 medr2 train-perception --out runs/perception_a --n_train 8000 --n_val 400 --train_seed 1 --val_seed 2 \
  --minutes 16 --batch_size 32 --lr 1e-3 --focal_oversample 2 > runs/perception.log 2>&1
mkdir -p runs/perception && cp runs/perception_a/examples_*.npz runs/perception/  # reuse the generated phantoms
medr2 train-perception --out runs/perception --init_from runs/perception_a --n_train 8000 --n_val 400 --train_seed 1 \
  --val_seed 2 --minutes 10 --batch_size 32 --lr 5e-4 --focal_oversample 3 > runs/perception_b.log 2>&1

# SFT, Med-R2 traces vs direct reports, equal compute (same wall-clock budget, one thread each, in parallel).
OMP_NUM_THREADS=1 medr2 train-sft --recipe recipes/sft_medr2_tiny.yaml > runs/sft_medr2.log 2>&1 &
OMP_NUM_THREADS=1 medr2 train-sft --recipe recipes/sft_direct_tiny.yaml > runs/sft_direct.log 2>&1 &
wait

# GRPO from the Med-R2 SFT checkpoint: MCCS + format (MRG-R1) and the CE-F1-reward ablation, in parallel.
OMP_NUM_THREADS=1 medr2 train-grpo --recipe recipes/grpo_tiny.yaml > runs/grpo_mccs.log 2>&1 &
OMP_NUM_THREADS=1 medr2 train-grpo --recipe recipes/grpo_tiny.yaml --rewards ce_f1,format \
  --output_dir runs/grpo_cef1 > runs/grpo_cef1.log 2>&1 &
wait
# The corrected GRPO run (Med-R2 format reward, lower lr, larger beta), alone on 2 threads.
medr2 train-grpo --recipe recipes/grpo_tiny.yaml --rewards mccs,medr2_format --output_dir runs/grpo_mccs_medr2fmt \
  --learning_rate 1e-5 --beta 0.04 --time_budget_minutes 15 > runs/grpo_mccs_medr2fmt.log 2>&1

# Held-out evaluation (phantom seed 3, never used in training) of every variant.
for v in sft_direct sft_medr2 grpo_mccs grpo_cef1 grpo_mccs_medr2fmt; do
  medr2 evaluate --model runs/$v --n 500 --out runs/eval/$v > runs/eval_$v.log 2>&1
done
python benchmarks/ablation_table.py runs/eval  # prints the README table, writes benchmarks/results/ablation.json
