#!/usr/bin/env bash
# The ablations of the demo model (recipes/experiments/, docs/training.md), each evaluated on the same validation
# (seed 2) and test (seed 3) phantoms as the Med-R2 SFT they are compared with:
#
#   sft_direct  the direct-report twin of the demo Med-R2 SFT (same tower, data and compute; no shown work)
#   grpo_mccs   MRG-R1 GRPO from the demo Med-R2 SFT, MCCS + Med-R2 format reward
#   grpo_cef1   the same GRPO with CE-F1 in place of MCCS
#
#   bash scripts/run_experiments.sh [--smoke] [--demo DIR] [--output_dir DIR]
#
# --demo DIR  run root of scripts/train_demo_model.sh (default runs/demo; runs/demo_smoke with --smoke): its stage0
#             and sft folders are the inputs, and its sft is evaluated here as the reference row.
# --output_dir DIR   where the experiments go (default runs/experiments; runs/experiments_smoke with --smoke).
# --smoke     a few steps and a handful of studies per run, as in train_demo_model.sh --smoke.
# Like train_demo_model.sh, a rerun skips finished runs and resumes unfinished ones from their checkpoints.
# Paired comparisons: medr2 compare OUT/eval_val_sft OUT/eval_val_<run> (and the same for eval_test).
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
OUT=""
DEMO=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --output_dir|--out) OUT="$2"; shift ;;
    --demo) DEMO="$2"; shift ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "run_experiments.sh: unknown argument $1 (use --smoke, --demo DIR, --output_dir DIR)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$OUT" ] || { [ $SMOKE = 1 ] && OUT=runs/experiments_smoke || OUT=runs/experiments; }
[ -n "$DEMO" ] || { [ $SMOKE = 1 ] && DEMO=runs/demo_smoke || DEMO=runs/demo; }
for need in "$DEMO/stage0/vision_tower.safetensors" "$DEMO/sft/training_summary.json"; do
  [ -f "$need" ] || { echo "run_experiments.sh: $need missing: run scripts/train_demo_model.sh first" >&2; exit 2; }
done
[ -x .venv/bin/python ] || bash scripts/setup_env.sh
PY=${MEDR2_PYTHON:-.venv/bin/python}
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
mkdir -p "$OUT"

if [ $SMOKE = 1 ]; then
  SFT_SMOKE=(--max_steps 4 --save_steps 2 --n_train 16 --logging_steps 1)
  GRPO_SMOKE=(--max_steps 2 --save_steps 1 --n_prompts 4 --num_generations 2 --per_device_train_batch_size 2
              --max_completion_length 32 --logging_steps 1)
  EVAL_VAL=(--n 4 --max_new_tokens 64)
  EVAL_TEST=(--n 4 --max_new_tokens 64)
else
  SFT_SMOKE=() GRPO_SMOKE=()
  EVAL_VAL=(--n 1000)
  EVAL_TEST=(--n 500)
fi

# shellcheck source=scripts/stages.sh
source scripts/stages.sh

# shellcheck disable=SC2046  # resume_flag is zero or two words
stage sft_direct sft_direct/training_summary.json -- \
  "$PY" -m medr2 train-sft --config recipes/experiments/sft_direct.yaml --perception_dir "$DEMO/stage0" \
  --output_dir "$OUT/sft_direct" "${SFT_SMOKE[@]}" $(resume_flag sft_direct)
for run in grpo_mccs grpo_cef1; do
  # shellcheck disable=SC2046
  stage "$run" "$run/training_summary.json" -- \
    "$PY" -m medr2 train-grpo --config "recipes/experiments/$run.yaml" --init "$DEMO/sft" --output_dir "$OUT/$run" \
    "${GRPO_SMOKE[@]}" $(resume_flag "$run")
done

# Every row on the same studies: validation (seed 2, no NLG: it only ranks) and test (seed 3).
for model in "$DEMO/sft" "$OUT/sft_direct" "$OUT/grpo_mccs" "$OUT/grpo_cef1"; do
  name=$(basename "$model")
  stage "eval_val_$name" "eval_val_$name/eval.json" -- \
    "$PY" -m medr2 evaluate --model "$model" --seed 2 --no_nlg --output_dir "$OUT/eval_val_$name" "${EVAL_VAL[@]}"
  stage "eval_test_$name" "eval_test_$name/eval.json" -- \
    "$PY" -m medr2 evaluate --model "$model" --seed 3 --output_dir "$OUT/eval_test_$name" "${EVAL_TEST[@]}"
done
log "done: $OUT (paired comparison: medr2 compare $OUT/eval_val_sft $OUT/eval_val_grpo_mccs)"
