#!/usr/bin/env bash
# Package a look-SFT run and measure it on validation (seed 2) for the selection rule written in its recipe:
#   [PARENT=assets/model] [RENDERER=procedural|drr|mix] bash scripts/select_look_model.sh [RUN_DIR] [N_VAL] [RECIPE] [NAME]
# PARENT: the model folder the run continued (its recipes head the card; its gate and saliency depths stay valid, the
# tower being frozen); RENDERER: the validation films.
# -> runs/look/NAME (the model folder; default "candidate"); runs/look/eval_NAME_val (pipeline-proposed looks),
#    runs/look/eval_NAME_val_model (model-requested looks, first half of the studies) and the parent on the same films,
#    runs/look/eval_base_<its weights' sha256[:12]>_<renderer>_val. With a renderer other than procedural the
#    candidate's folders end in _<renderer>.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/look/sft_look}
N=${2:-300}
RECIPE=${3:-recipes/experiments/sft_look.yaml}
NAME=${4:-candidate}
PARENT=${PARENT:-assets/model}
RENDERER=${RENDERER:-procedural}
CAND=runs/look/$NAME
SUFFIX=$([ "$RENDERER" = procedural ] || echo "_$RENDERER")
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# the card lists the parent's lineage before this run's own recipe
PARENT_RECIPES=$(.venv/bin/python -c "import json, sys; print(' '.join('--recipe ' + r for r in json.load(open(sys.argv[1] + '/medr2_model.json')).get('recipe', [])))" "$PARENT")
[ -f "$CAND/medr2_model.json" ] || {
  # shellcheck disable=SC2086
  .venv/bin/python -m medr2 export --run_dir "$RUN" --output_dir "$CAND" --target medr2 --store_dtype float16 \
    $PARENT_RECIPES --recipe "$RECIPE"
  # the parent's gate and saliency depths, where it has them (an unshipped candidate may not yet)
  for f in input_gate.json input_gate.npz saliency.json; do [ ! -f "$PARENT/$f" ] || cp "$PARENT/$f" "$CAND"/; done
}
ev() { .venv/bin/python -m medr2 evaluate --film_size 512 --nlg false --renderer "$RENDERER" "$@"; }
ev --model "$CAND" --seed 2 --n "$N" --looks proposed --output_dir "runs/look/eval_${NAME}_val${SUFFIX}"
ev --model "$CAND" --seed 2 --n $((N / 2)) --looks model --output_dir "runs/look/eval_${NAME}_val_model${SUFFIX}"
BASE=runs/look/eval_base_$(sha256sum "$PARENT/model.safetensors" | cut -c1-12)_${RENDERER}_val
[ -f "$BASE/eval.json" ] || ev --model "$PARENT" --seed 2 --n "$N" --output_dir "$BASE"
echo "compare: medr2 compare $BASE runs/look/eval_${NAME}_val${SUFFIX}"
