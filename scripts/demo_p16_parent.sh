#!/usr/bin/env bash
# Copy the shipped model to runs/mix/candidate as the parent of the rendered-film experiments, after checking that it
# is still demo-p16 (weights fa68b6206c63). Sourced by scripts/look_inputs.sh and scripts/mix_candidate.sh.
DEMO_P16=fa68b6206c63
if [ ! -f runs/mix/candidate/model.safetensors ]; then
  have=$(sha256sum assets/model/model.safetensors | cut -c1-12)
  [ "$have" = "$DEMO_P16" ] || {
    echo "$(basename "$0"): assets/model is no longer demo-p16 (weights $have, not $DEMO_P16): these experiments continue demo-p16" >&2
    exit 2; }
  mkdir -p runs/mix && cp -r assets/model runs/mix/candidate
fi
