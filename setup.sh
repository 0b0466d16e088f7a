#!/usr/bin/env bash
# Set up autotune in a virtual environment at .venv (idempotent: run it again any time).
#
# torch is installed first and on its own, so that nothing else pulls a different build:
#   AUTOTUNE_TORCH  the torch requirement to install when .venv has no torch yet
#                   (default torch==2.13.0, the CPU build; on a GPU machine install your
#                   CUDA build of torch into .venv first, or set this to it).
#   PYTHON          the interpreter that creates .venv (default python3).
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing ${AUTOTUNE_TORCH:-torch==2.13.0}"
  .venv/bin/python -m pip install --quiet "${AUTOTUNE_TORCH:-torch==2.13.0}"
fi
echo "setup: installing autotune and its test dependencies"
.venv/bin/python -m pip install --quiet -e ".[test]"
.venv/bin/python -c "import torch, optuna, autotune; print(f'setup: ready: autotune {autotune.__version__}, torch {torch.__version__}, optuna {optuna.__version__}')"
