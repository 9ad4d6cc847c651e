#!/usr/bin/env bash
# Create .venv (Python 3.11) and install bids_semantoks with its test extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
# torch is pinned in pyproject.toml (torch==2.13.0); on these machines pip finds the CPU wheel locally.
.venv/bin/python -m pip install --quiet -e ".[test]"
