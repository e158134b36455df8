#!/usr/bin/env bash
# Package the look-SFT run and measure it on validation (seed 2) for the selection rule of recipes/experiments/sft_look.yaml:
#   bash scripts/select_look_model.sh [RUN_DIR] [N_VAL]
# -> runs/look/candidate (the model folder); runs/look/eval_candidate_val (pipeline-proposed looks),
#    runs/look/eval_candidate_val_model (model-requested looks, first half of the studies), runs/look/eval_p14_val.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/look/sft_look}
N=${2:-300}
CAND=runs/look/candidate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m medr2 export --run_dir "$RUN" --output_dir "$CAND" --target medr2 --store_dtype float16 \
  --recipe recipes/experiments/sft_look.yaml
# the tower is demo-p14's, frozen: its input gate statistics and saliency depths stay valid
cp assets/model/input_gate.json assets/model/input_gate.npz assets/model/saliency.json "$CAND"/
ev() { .venv/bin/python -m medr2 evaluate --film_size 512 --nlg false "$@"; }
ev --model "$CAND" --seed 2 --n "$N" --looks proposed --output_dir runs/look/eval_candidate_val
ev --model "$CAND" --seed 2 --n $((N / 2)) --looks model --output_dir runs/look/eval_candidate_val_model
[ -f runs/look/eval_p14_val/eval.json ] || ev --model assets/model --seed 2 --n "$N" --output_dir runs/look/eval_p14_val
