#!/usr/bin/env bash
# Installs everything (scripts/setup.sh), trains the default Fashion-MNIST DDPM for a time
# budget (MINUTES, default 10), samples from it and writes the pictures to runs/fashion_mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/difflab train fashion_mnist --minutes "${MINUTES:-10}" --out "${OUT:-runs/fashion_mnist}" "$@"
