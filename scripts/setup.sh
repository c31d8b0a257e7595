#!/usr/bin/env bash
# Installs everything difflab needs on a fresh Debian-like machine, idempotently:
# the Fashion-MNIST data package, a virtual environment in .venv, PyTorch (CPU build where it
# lies on disk; install torch before the package so pip does not fetch a multi-GB CUDA build),
# and difflab itself with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/pip install -q torch==2.13.0 2>/dev/null || .venv/bin/pip install -q "torch>=2.4"
fi
.venv/bin/pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import difflab, torch; print('difflab', difflab.__version__, 'torch', torch.__version__)"
