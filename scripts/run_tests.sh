#!/usr/bin/env bash
# Installs everything (scripts/setup.sh) and runs the test suite and the linter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests bench
# The suite is thousands of small tensor ops plus a two-process torchrun test: one intra-op
# thread per process is faster than two threads contending for two cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/python -m pytest -q --durations=10 "$@"
