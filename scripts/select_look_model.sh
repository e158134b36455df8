#!/usr/bin/env bash
# Package a look-SFT run and measure it on validation (seed 2) for the selection rule written in its recipe:
#   bash scripts/select_look_model.sh [RUN_DIR] [N_VAL] [RECIPE] [NAME]
# -> runs/look/NAME (the model folder; default "candidate"); runs/look/eval_NAME_val (pipeline-proposed looks),
#    runs/look/eval_NAME_val_model (model-requested looks, first half of the studies), runs/look/eval_p14_val.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/look/sft_look}
N=${2:-300}
RECIPE=${3:-recipes/experiments/sft_look.yaml}
NAME=${4:-candidate}
CAND=runs/look/$NAME
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# the card lists the parent's lineage (demo-p14's recipes) before this run's own recipe
PARENT_RECIPES=$(.venv/bin/python -c "import json; print(' '.join('--recipe ' + r for r in json.load(open('runs/demo/export/medr2_model.json')).get('recipe', [])))")
# shellcheck disable=SC2086
.venv/bin/python -m medr2 export --run_dir "$RUN" --output_dir "$CAND" --target medr2 --store_dtype float16 \
  $PARENT_RECIPES --recipe "$RECIPE"
# the tower is demo-p14's, frozen: its input gate statistics and saliency depths stay valid
cp assets/model/input_gate.json assets/model/input_gate.npz assets/model/saliency.json "$CAND"/
ev() { .venv/bin/python -m medr2 evaluate --film_size 512 --nlg false "$@"; }
ev --model "$CAND" --seed 2 --n "$N" --looks proposed --output_dir "runs/look/eval_${NAME}_val"
ev --model "$CAND" --seed 2 --n $((N / 2)) --looks model --output_dir "runs/look/eval_${NAME}_val_model"
[ -f runs/look/eval_p14_val/eval.json ] || ev --model assets/model --seed 2 --n "$N" --output_dir runs/look/eval_p14_val
