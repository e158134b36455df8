#!/usr/bin/env bash
# The README's app command: set up .venv idempotently, then serve the reviewer app on http://127.0.0.1:7860.
# Arguments pass through to app.py, e.g. `bash scripts/app.sh --model path/or/hub-id --port 8000`
# (`--help` lists them; `--config app.yaml` sets them from a file). The model is $MEDR2_MODEL or the embedded demo model when --model is not given.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false
exec .venv/bin/python app.py "$@"
