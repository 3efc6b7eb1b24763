#!/usr/bin/env bash
# Create .venv and install mtdistill with its test tools and the Ray extra (its engine tests run a local cluster).
# torch: if the environment already has one, it is kept (GPU users: install your CUDA build first).
# Otherwise TORCH_SPEC is installed (default torch==2.13.0, the CPU wheel available offline here;
# set TORCH_SPEC="torch" or a CUDA index URL via PIP_EXTRA_INDEX_URL to choose another).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
python -m pip install -q -e ".[dev,ray]"
