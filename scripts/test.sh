#!/usr/bin/env bash
# The README's test command: set up .venv idempotently, then run the test suite on CPU (two pytest workers).
#
#   bash scripts/test.sh                      # everything, both tiers: what CI runs (.ci/run)
#   bash scripts/test.sh -m "not slow"        # the fast tier: skips the tests marked @pytest.mark.slow
#   bash scripts/test.sh tests/test_schema.py # any pytest arguments pass through
#
# Tiers: `slow` marks integration tests of several seconds each (the launched app and the browser, the shipped
# model's golden test, long phantom sweeps, METEOR's Java start, ...); the fast tier keeps every unit test.
# The linter (ruff) runs before the tests in every form of the command.
# Markers are strict (pyproject.toml), so a misspelt -m marker name is an error, not an empty run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if ! command -v chromium >/dev/null 2>&1; then
  # tests/test_app_browser.py drives Debian's chromium (Playwright's own browser download fails offline)
  (apt-get update -qq && apt-get install -y -qq chromium) >&2
fi
# Lint first (ruff, config in pyproject.toml): seconds, and a failure names the file and line.
.venv/bin/python -m ruff check --quiet .
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
