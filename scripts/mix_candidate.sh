#!/usr/bin/env bash
# The next demo candidate for rendered films (recipes/demo/sft_mix_long50.yaml, whose header holds its rule;
# docs/drr.md), rebuilt and measured on a fresh checkout, each step kept once finished (a rerun does what is missing,
# and the two training runs go on from their last checkpoint):
#
#   runs/mix/candidate              the parent, demo-p16 (assets/model, weights fa68b6206c63)
#   runs/exp/stage0_mix_long        stage 0 continued on 24,000 fresh films, 70 % rendered (4,000 steps, ~45 min)
#   runs/exp/sft_mix_long50         the SFT on 12,000 fresh studies, half rendered (1,500 steps, ~1 h 20 min)
#   runs/exp/candidate50            its export
#   runs/exp/eval50_val_{drr,proc}  validation, seed 2, 1,000 films of each kind, and demo-p16 on the same films
#                                   (runs/mix/eval_cand_val_{drr,proc}); then the two `medr2 compare` tables the rule reads
#
#   bash scripts/mix_candidate.sh          # about 3 h on 2 cores, nothing else running
#
# Both recipes name demo-p16's training run (runs/demo/sft_mix) as their start; a fresh checkout has only the shipped
# export of it, so the script starts from that (the same weights, stored at float16).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
medr2() { .venv/bin/python -m medr2 "$@"; }
PARENT=runs/demo/sft_mix
[ -f "$PARENT/model.safetensors" ] || PARENT=runs/mix/candidate

source scripts/demo_p16_parent.sh
if [ ! -f runs/exp/stage0_mix_long/.done ]; then
  echo "[mix candidate] stage 0 on mixed films (from $PARENT)"
  medr2 train-perception --config recipes/demo/stage0_mix_long.yaml --init_from "$PARENT" \
    --output_dir runs/exp/stage0_mix_long \
    && touch runs/exp/stage0_mix_long/.done
fi
if [ ! -f runs/exp/sft_mix_long50/.done ]; then
  echo "[mix candidate] SFT on mixed studies (from $PARENT)"
  resume=()  # a run stopped part-way goes on from its newest checkpoint (the same rows, the same steps)
  compgen -G "runs/exp/sft_mix_long50/checkpoint-*" > /dev/null && resume=(--resume_from_checkpoint last)
  medr2 train-sft --config recipes/demo/sft_mix_long50.yaml --model_name_or_path "$PARENT" \
    --perception_dir runs/exp/stage0_mix_long --output_dir runs/exp/sft_mix_long50 "${resume[@]}" \
    && touch runs/exp/sft_mix_long50/.done
fi
if [ ! -f runs/exp/candidate50/medr2_model.json ]; then
  medr2 export --run_dir runs/exp/sft_mix_long50 --output_dir runs/exp/candidate50 --store_dtype float16 \
    --recipe recipes/demo/stage0_mix_long.yaml recipes/demo/sft_mix_long50.yaml
fi
for kind in drr procedural; do
  short=$([ "$kind" = drr ] && echo drr || echo proc)
  for pair in "runs/mix/candidate runs/mix/eval_cand_val_$short" "runs/exp/candidate50 runs/exp/eval50_val_$short"; do
    set -- $pair
    [ -f "$2/eval.json" ] || medr2 evaluate --model "$1" --seed 2 --n 1000 --nlg false --renderer "$kind" --output_dir "$2"
  done
  medr2 compare "runs/mix/eval_cand_val_$short" "runs/exp/eval50_val_$short"
done
