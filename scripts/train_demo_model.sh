#!/usr/bin/env bash
# Train the embedded demo model's lineage from scratch, on the current film generator, with the recipes in
# recipes/demo/ (docs/training.md explains each stage, the CPU time and how to ship a run):
#
#   stage0 -> sft -> sft_tower -> stage0_deepen -> sft_deep -> stage0_mix -> sft_mix -> stage0_mix_long
#          -> sft_mix_long50 -> candidate (float16)
#          -> saliency depths -> evaluation (validation seed 2, test seed 3; procedural and rendered films)
#          -> export (the candidate with its test table on the card) -> input gate (on the same film mix)
#          -> look heads (the localisation maps, fitted on the same film mix) -> calibrated confidence
#
#   bash scripts/train_demo_model.sh [--smoke] [--output_dir DIR]
#
# --output_dir DIR   run root (default runs/demo; runs/demo_smoke with --smoke). Every stage writes DIR/<stage>/ and its
#             log DIR/<stage>.log.
# --smoke     every stage at a tiny fraction of its budget (a few steps, tens of studies, a handful of evaluation
#             studies): the whole chain in about two minutes on two CPU cores, so CI proves it still runs.
#
# A rerun skips every finished stage and resumes an unfinished one from its last checkpoint (stage 0 from
# DIR/<stage>/checkpoint, SFT from DIR/<stage>/checkpoint-N). Nothing here writes assets/model: shipping a run is a
# manual copy of DIR/export after it wins the validation rule (docs/training.md).
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --output_dir|--out) OUT="$2"; shift ;;
    --output_dir=*|--out=*) OUT="${1#*=}" ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "train_demo_model.sh: unknown argument $1 (use --smoke, --output_dir DIR)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$OUT" ] || { [ $SMOKE = 1 ] && OUT=runs/demo_smoke || OUT=runs/demo; }
[ -x .venv/bin/python ] || bash scripts/setup_env.sh
PY=${MEDR2_PYTHON:-.venv/bin/python}
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
mkdir -p "$OUT"

# Smoke budgets: the same recipes and model sizes, a tiny fraction of steps and data.
if [ $SMOKE = 1 ]; then
  STAGE0_SMOKE=(--max_steps 4 --save_steps 2 --n_train 24 --n_val 8 --workers 1)
  DEEPEN_SMOKE=(--max_steps 4 --save_steps 2 --n_train 24 --n_val 8 --workers 1 --head_warmup_steps 2)
  SFT_SMOKE=(--max_steps 4 --save_steps 2 --n_train 16 --logging_steps 1)
  MIX_SMOKE=(--max_steps 4 --save_steps 2 --n_train 16 --n_val 8 --workers 1 --head_warmup_steps 2)
  SALIENCY=(--n 4 --max_new_tokens 64 --threads 2)
  GATE=(--n 16 --val_n 16)
  EVAL_VAL=(--n 4 --max_new_tokens 64)
  EVAL_TEST=(--n 4 --max_new_tokens 64)
  HEADS=(--n_train 6 --n_val 4 --film_size 256 --steps 2)
  CONFIDENCE=(--n_val 6 --n_test 4 --n_agree 2 --k 2 --n_cost 2 --max_new_tokens 64)
else
  STAGE0_SMOKE=() DEEPEN_SMOKE=() SFT_SMOKE=() MIX_SMOKE=()
  SALIENCY=(--n 1800 --threads 2)
  GATE=(--n 2000 --val_n 1000)
  EVAL_VAL=(--n 1000)
  EVAL_TEST=(--n 500)
  HEADS=()
  CONFIDENCE=(--n_val 400 --n_test 500 --n_agree 100 --k 4 --n_cost 10)
fi

# shellcheck source=scripts/stages.sh
source scripts/stages.sh

# Stage 0 resumes by itself from $OUT/<stage>/checkpoint (same output folder).
stage stage0 stage0/perception_metrics.json -- \
  "$PY" -m medr2 train-perception --config recipes/demo/stage0.yaml --output_dir "$OUT/stage0" "${STAGE0_SMOKE[@]}"
# shellcheck disable=SC2046  # resume_flag is zero or two words
stage sft sft/training_summary.json -- \
  "$PY" -m medr2 train-sft --config recipes/demo/sft.yaml --perception_dir "$OUT/stage0" --output_dir "$OUT/sft" \
  "${SFT_SMOKE[@]}" $(resume_flag sft)
# shellcheck disable=SC2046
stage sft_tower sft_tower/training_summary.json -- \
  "$PY" -m medr2 train-sft --config recipes/demo/sft_tower.yaml --model_name_or_path "$OUT/sft" \
  --output_dir "$OUT/sft_tower" "${SFT_SMOKE[@]}" $(resume_flag sft_tower)
stage stage0_deepen stage0_deepen/perception_metrics.json -- \
  "$PY" -m medr2 train-perception --config recipes/demo/stage0_deepen.yaml --init_from "$OUT/sft_tower" \
  --output_dir "$OUT/stage0_deepen" "${DEEPEN_SMOKE[@]}"
# shellcheck disable=SC2046
stage sft_deep sft_deep/training_summary.json -- \
  "$PY" -m medr2 train-sft --config recipes/demo/sft_deep.yaml --model_name_or_path "$OUT/sft_tower" \
  --perception_dir "$OUT/stage0_deepen" --output_dir "$OUT/sft_deep" "${SFT_SMOKE[@]}" $(resume_flag sft_deep)

# The films rendered from the real chest CT (docs/drr.md) join the procedural ones: stage 0 and SFT again on a mix.
stage stage0_mix stage0_mix/perception_metrics.json -- \
  "$PY" -m medr2 train-perception --config recipes/demo/stage0_mix.yaml --init_from "$OUT/sft_deep" \
  --output_dir "$OUT/stage0_mix" "${MIX_SMOKE[@]}"
# shellcheck disable=SC2046
stage sft_mix sft_mix/training_summary.json -- \
  "$PY" -m medr2 train-sft --config recipes/demo/sft_mix.yaml --model_name_or_path "$OUT/sft_deep" \
  --perception_dir "$OUT/stage0_mix" --output_dir "$OUT/sft_mix" "${SFT_SMOKE[@]}" $(resume_flag sft_mix)

# Stage 0 again on fresh films, 70 % rendered (the kind the tower read worse), then the SFT on a half-rendered mix with
# that tower (demo-p17; docs/drr.md).
stage stage0_mix_long stage0_mix_long/perception_metrics.json -- \
  "$PY" -m medr2 train-perception --config recipes/demo/stage0_mix_long.yaml --init_from "$OUT/sft_mix" \
  --output_dir "$OUT/stage0_mix_long" "${MIX_SMOKE[@]}"
# shellcheck disable=SC2046
stage sft_mix_long50 sft_mix_long50/training_summary.json -- \
  "$PY" -m medr2 train-sft --config recipes/demo/sft_mix_long50.yaml --model_name_or_path "$OUT/sft_mix" \
  --perception_dir "$OUT/stage0_mix_long" --output_dir "$OUT/sft_mix_long50" "${SFT_SMOKE[@]}" $(resume_flag sft_mix_long50)

RECIPES=(recipes/demo/stage0.yaml recipes/demo/sft.yaml recipes/demo/sft_tower.yaml recipes/demo/stage0_deepen.yaml
         recipes/demo/sft_deep.yaml recipes/demo/stage0_mix.yaml recipes/demo/sft_mix.yaml
         recipes/demo/stage0_mix_long.yaml recipes/demo/sft_mix_long50.yaml)
# The candidate: float16 weights (the 6-block model is 26.8 MB in float32; the asset budget is 25 MB), run in float32.
stage candidate candidate/medr2_model.json -- \
  "$PY" -m medr2 export --run_dir "$OUT/sft_mix_long50" --output_dir "$OUT/candidate" --store_dtype float16 --recipe "${RECIPES[@]}"
# Per-finding vision-block weights of the saliency maps, chosen on validation phantoms, stored beside the weights.
# A smoke model (a few steps) finds nothing, and `saliency-depth` rightly refuses to choose; only then, and only in
# smoke mode, the chain goes on without saliency.json (the pipeline then fuses every block, as for any export without
# one). The marker records which happened.
stage saliency_depth saliency_depth.done -- refusable saliency_depth "no true-positive finding" \
  "chosen: $OUT/candidate/saliency.json" "no true positives, no saliency.json" -- \
  "$PY" -m medr2 saliency-depth --model "$OUT/candidate" --seed 2 --write "$OUT/candidate/saliency.json" \
  --out "$OUT/saliency_depth.json" "${SALIENCY[@]}"
# Validation (seed 2) decides whether the run ships; the test set (seed 3) is read after, for the model card.
# Both kinds of film: the rule in recipes/demo/sft_mix_long50.yaml reads the two validation sets.
stage eval_val eval_val/eval.json -- \
  "$PY" -m medr2 evaluate --model "$OUT/candidate" --seed 2 --no_nlg --output_dir "$OUT/eval_val" "${EVAL_VAL[@]}"
stage eval_val_drr eval_val_drr/eval.json -- \
  "$PY" -m medr2 evaluate --model "$OUT/candidate" --seed 2 --no_nlg --renderer drr --output_dir "$OUT/eval_val_drr" "${EVAL_VAL[@]}"
stage eval_test eval_test/eval.json -- \
  "$PY" -m medr2 evaluate --model "$OUT/candidate" --seed 3 --output_dir "$OUT/eval_test" "${EVAL_TEST[@]}"
stage eval_test_drr eval_test_drr/eval.json -- \
  "$PY" -m medr2 evaluate --model "$OUT/candidate" --seed 3 --renderer drr --output_dir "$OUT/eval_test_drr" "${EVAL_TEST[@]}"
# The one export: the measured candidate (its weights and saliency.json, unchanged) with the test table on its card.
stage export export/medr2_model.json -- \
  "$PY" -m medr2 export --run_dir "$OUT/candidate" --output_dir "$OUT/export" --store_dtype float16 \
  --eval "$OUT/eval_test/eval.json" --recipe "${RECIPES[@]}"
# The input gate's statistics of the exported weights on the films it was trained on (training seed 1, threshold on
# validation seed 2; half of them rendered from the CT, as in the last two stages).
stage input_gate export/input_gate.json -- \
  "$PY" -m medr2 fit-gate --model "$OUT/export" --renderer mix "${GATE[@]}"
# The look heads: per-patch finding heads on the exported tower, fitted on the same film mix (the findings' first
# localisation maps in the app; docs/saliency.md).
stage look_heads export/look_heads.npz -- \
  "$PY" -m medr2 fit-look-heads --model "$OUT/export" --renderer mix "${HEADS[@]}"
# Calibrated per-finding confidence (docs/confidence.md): the raw score and calibrator chosen on validation films
# (seed 2), written as export/confidence.json; the test films (seed 3) give the table in $OUT/confidence.json.
# A smoke model states too few findings to calibrate; only then, and only in smoke mode, the chain goes on without
# confidence.json (the app then shows uncalibrated confidence). The marker records which happened.
stage confidence confidence.done -- refusable confidence "too few" \
  "fitted: $OUT/export/confidence.json" "too few stated findings, no confidence.json" -- \
  "$PY" benchmarks/bench_confidence.py --model "$OUT/export" --output "$OUT/confidence.json" \
  --figure "$OUT/reliability.png" --work_dir "$OUT/confidence_work" "${CONFIDENCE[@]}"
log "done: $OUT/export (compare with the shipped model: medr2 compare <shipped validation eval> $OUT/eval_val)"
