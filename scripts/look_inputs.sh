#!/usr/bin/env bash
# The inputs the rendered-film look experiments read (recipes/experiments/look_region_mix.yaml, sft_look_v5.yaml to
# sft_look_v8.yaml; docs/reflection.md), rebuilt on a fresh checkout in the order they depend on each other:
#
#   runs/mix/candidate           the parent, demo-p16: the shipped model (assets/model, weights fa68b6206c63)
#   runs/look/reader_mix         its look reader (look_reader_mix.yaml: the tower tuned at the look scale)
#   runs/look/reader_region_mix  the reader plus the region classifier (look_region_mix.yaml)
#   runs/look/own_drafts_p16     demo-p16's drafts of the 2,400 training films (seed 43, half rendered, 512 px)
#
#   bash scripts/look_inputs.sh            # about 1 h 15 min on 2 cores, nothing else running
#
# A finished input is kept (a rerun rebuilds only what is missing). Then, e.g. for look-v8:
#   medr2 train-sft --config recipes/experiments/sft_look_v8.yaml
#   RENDERER=drr bash scripts/select_look_model.sh runs/look/sft_look_v8 300 recipes/experiments/sft_look_v8.yaml look_v8
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
medr2() { .venv/bin/python -m medr2 "$@"; }

source scripts/demo_p16_parent.sh
if [ ! -f runs/look/reader_mix/look_heads.npz ]; then
  echo "[look inputs] look reader (tower tuned at the look scale)"
  medr2 fit-look-heads --config recipes/experiments/look_reader_mix.yaml --model runs/mix/candidate
fi
if [ ! -f runs/look/reader_region_mix/.done ]; then
  echo "[look inputs] region classifier"
  mkdir -p runs/look/reader_region_mix && cp runs/look/reader_mix/look_heads.npz runs/look/reader_region_mix/
  medr2 fit-look-heads --config recipes/experiments/look_region_mix.yaml && touch runs/look/reader_region_mix/.done
fi
if [ ! -f runs/look/own_drafts_p16/eval.json ]; then
  echo "[look inputs] demo-p16's drafts of the look training films"
  medr2 evaluate --model runs/mix/candidate --renderer mix --drr_fraction 0.5 --seed 43 --n 2400 --film_size 512 \
    --nlg false --output_dir runs/look/own_drafts_p16
fi
echo "[look inputs] ready: runs/mix/candidate, runs/look/reader_region_mix, runs/look/own_drafts_p16"
