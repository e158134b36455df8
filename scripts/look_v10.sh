#!/usr/bin/env bash
# look-v10 end to end (recipes/experiments/sft_look_v10.yaml; docs/reflection.md): the reflection that looks again,
# taught on the next demo candidate and the evidence of its own tower. Each step is kept once finished (a rerun does
# what is missing; the SFT goes on from its newest checkpoint):
#
#   runs/look/eval_base_<sha>_drr_val   the candidate's drafts of 300 rendered validation films (seed 2, 512 px)
#   runs/look/reader_mix50              its look reader (look_reader_mix50.yaml)
#   runs/look/reader_region_mix50       the reader plus the region classifier (look_region_mix50.yaml)
#   research/results/look_signal_probe_c50_drr_{heads50,heads_p16}.json
#                                       the probe of those drafts with the new heads and with demo-p16's; the rule in
#                                       look_region_mix50.yaml picks the heads look-v10 is taught with
#   runs/look/own_drafts_c50            the candidate's drafts of the 2,400 training films (seed 43, half rendered)
#   runs/look/sft_look_v10              the look SFT (1,200 steps), then scripts/select_look_model.sh on rendered
#                                       validation (runs/look/look_v10, runs/look/eval_look_v10_val_drr, ...)
#
#   bash scripts/look_v10.sh          # about 3 h on 2 cores, nothing else running
#
# Needs runs/exp/candidate50 (bash scripts/mix_candidate.sh) and demo-p16's heads, runs/look/reader_region_mix
# (bash scripts/look_inputs.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
medr2() { .venv/bin/python -m medr2 "$@"; }
CAND=runs/exp/candidate50
[ -f "$CAND/model.safetensors" ] || { echo "look_v10.sh: $CAND is missing: run scripts/mix_candidate.sh first" >&2; exit 2; }
[ -f runs/look/reader_region_mix/look_heads.npz ] || {
  echo "look_v10.sh: demo-p16's heads (runs/look/reader_region_mix) are missing: run scripts/look_inputs.sh first" >&2; exit 2; }
BASE=runs/look/eval_base_$(sha256sum "$CAND/model.safetensors" | cut -c1-12)_drr_val

if [ ! -f "$BASE/eval.json" ]; then
  echo "[look-v10] the candidate's drafts of rendered validation films"
  medr2 evaluate --model "$CAND" --seed 2 --n 300 --film_size 512 --nlg false --renderer drr --output_dir "$BASE"
fi
if [ ! -f runs/look/reader_mix50/look_heads.npz ]; then
  echo "[look-v10] look reader on the candidate's tower"
  medr2 fit-look-heads --config recipes/experiments/look_reader_mix50.yaml
fi
if [ ! -f runs/look/reader_region_mix50/.done ]; then
  echo "[look-v10] region classifier"
  mkdir -p runs/look/reader_region_mix50 && cp runs/look/reader_mix50/look_heads.npz runs/look/reader_region_mix50/
  medr2 fit-look-heads --config recipes/experiments/look_region_mix50.yaml && touch runs/look/reader_region_mix50/.done
fi
probe() {  # $1 heads, $2 the model whose tower they were fitted on, $3 output
  [ -f "$3" ] || .venv/bin/python benchmarks/look_signal_probe.py --predictions "$BASE/predictions.jsonl" --heads "$1" \
    --model "$2" --renderer drr --n 300 --out "$3"
}
NEW=research/results/look_signal_probe_c50_drr_heads50.json
OLD=research/results/look_signal_probe_c50_drr_heads_p16.json
probe runs/look/reader_region_mix50 "$CAND" "$NEW"
probe runs/look/reader_region_mix runs/mix/candidate "$OLD"
# the rule of look_region_mix50.yaml: the heads whose best rule (not the oracle) changes example-based F1 the most
HEADS=$(.venv/bin/python - "$NEW" "$OLD" <<'PY'
import json, sys
best = [max(r["f1_change"] for r in json.load(open(p))["rules"] if not r["reading"].startswith("oracle")) for p in sys.argv[1:]]
print(f"best rule: heads50 {best[0]:+.4f}, demo-p16's heads {best[1]:+.4f}", file=sys.stderr)
print("runs/look/reader_region_mix50" if best[0] >= best[1] else "runs/look/reader_region_mix")
PY
)
echo "[look-v10] heads: $HEADS"
if [ ! -f runs/look/own_drafts_c50/eval.json ]; then
  echo "[look-v10] the candidate's drafts of the look training films"
  medr2 evaluate --model "$CAND" --renderer mix --drr_fraction 0.5 --seed 43 --n 2400 --film_size 512 \
    --nlg false --output_dir runs/look/own_drafts_c50
fi
if [ ! -f runs/look/sft_look_v10/.done ]; then
  echo "[look-v10] look SFT"
  resume=()
  compgen -G "runs/look/sft_look_v10/checkpoint-*" > /dev/null && resume=(--resume_from_checkpoint last)
  medr2 train-sft --config recipes/experiments/sft_look_v10.yaml --look_heads "$HEADS" "${resume[@]}" \
    && touch runs/look/sft_look_v10/.done
fi
PARENT="$CAND" RENDERER=drr bash scripts/select_look_model.sh runs/look/sft_look_v10 300 \
  recipes/experiments/sft_look_v10.yaml look_v10
