#!/usr/bin/env bash
# Installs everything (scripts/setup.sh) and runs the test suite and the linter.
# DIFFLAB_SETUP=0 skips the install step; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${DIFFLAB_SETUP:-1}" != 0 ]; then
  bash scripts/setup.sh
fi
.venv/bin/ruff check src tests bench
# The suite is thousands of small tensor ops plus a two-process torchrun test: one intra-op
# thread per process is faster than two threads contending for two cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/python -m pytest -q --durations=10 "$@"
