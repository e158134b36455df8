#!/usr/bin/env bash
# The README's test command: set up .venv idempotently, then run the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if ! command -v chromium >/dev/null 2>&1; then
  # tests/test_app_browser.py drives Debian's chromium (Playwright's own browser download fails offline)
  (apt-get update -qq && apt-get install -y -qq chromium) >&2
fi
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
