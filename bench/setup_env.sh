#!/usr/bin/env bash
# Build the bench environment: difflab and its peers (denoising-diffusion-pytorch, diffusers)
# on one torch, so every number in one comparison comes from the same build.
#
#     bash bench/setup_env.sh            # builds .bench-env
#     BENCH_ENV=/tmp/benv bash bench/setup_env.sh
#
# The peers are not dependencies of difflab; they live only here. denoising-diffusion-pytorch
# imports torchvision, so the env is built on the matched pair torch 2.14.1 / torchvision
# 0.29.1 (on these machines pip takes both from local disk; it is a CUDA build of ~5.5 GB,
# which is expected). torch is installed first so that no later bare `torch` requirement
# makes pip resolve (and download) another build.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH_ENV="${BENCH_ENV:-$REPO/.bench-env}"
PYTHON="${PYTHON:-python3.11}"

if [[ ! -x "$BENCH_ENV/bin/python" ]]; then
    "$PYTHON" -m venv "$BENCH_ENV"
fi
PIP=("$BENCH_ENV/bin/python" -m pip install --disable-pip-version-check)

"${PIP[@]}" --upgrade pip
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1
# Pin torch on every later install so nothing can swap it out from under the peers.
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1 denoising-diffusion-pytorch diffusers accelerate
# difflab itself, editable, without letting pip touch torch; then its own dependencies.
"${PIP[@]}" --no-deps -e "$REPO"
"${PIP[@]}" torch==2.14.1 numpy scipy pillow safetensors tqdm matplotlib

"$BENCH_ENV/bin/python" - <<'EOF'
import torch, torchvision, denoising_diffusion_pytorch, diffusers, difflab
print("torch", torch.__version__, "| torchvision", torchvision.__version__,
      "| diffusers", diffusers.__version__, "| difflab", difflab.__file__)
EOF
echo "bench env ready: $BENCH_ENV"
