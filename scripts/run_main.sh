#!/usr/bin/env bash
# Installs everything (scripts/setup.sh), trains the default Fashion-MNIST DDPM for a time
# budget (MINUTES, default 10), samples from it and writes the pictures to runs/fashion_mnist
# (OUT). Extra arguments go to `difflab train`. DIFFLAB_SETUP=0 skips the install step.
# Run again, it replaces its earlier run in OUT (--overwrite: only what difflab wrote there);
# with --resume among the arguments it continues that run instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${DIFFLAB_SETUP:-1}" != 0 ]; then
  bash scripts/setup.sh
fi
OUT=${OUT:-runs/fashion_mnist}
echo "run_main: training the default Fashion-MNIST DDPM for ${MINUTES:-10} minutes into $OUT" \
  "(a progress bar follows)"
case " $* " in
  *" --resume "*) again=() ;;
  *) again=(--overwrite) ;;
esac
.venv/bin/difflab train fashion_mnist --minutes "${MINUTES:-10}" --out "$OUT" "${again[@]}" "$@"
if command -v difflab >/dev/null 2>&1; then
  echo "run_main: next, from $(pwd): the README's commands, e.g." \
    "difflab sample $OUT/last -n 64 --out samples.png"
else
  echo "run_main: difflab is not on this shell's PATH (no launcher was installed): type" \
    " export PATH=\"$(pwd)/.venv/bin:\$PATH\"  and the README's commands work as printed"
fi
