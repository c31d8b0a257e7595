#!/usr/bin/env bash
# Train the shipped fashion-mnist and shapes-text candidates side by side on one GPU of a lent
# device machine (no network there; not run on a GPU yet: no session has had one since it was
# written). Needs .dev/ from bench/device/build_bundle.py (the Fashion-MNIST training files and
# a pruned fp16 all-MiniLM-L6-v2, see that script). Writes the logs and a tar of the fp16
# exports to $OUT; evaluate and choose here, on the CPU, against the training images.
# MINUTES (default 6.5) is each run's wall-clock budget.
#
# The call sends the checkout and what `carry` names, 64 MiB in all: the tracked weights,
# bench/results and docs/images (~40 MB) leave no room for .dev/ (~41 MB), so run it from a
# throw-away branch without them (git rm -r those three; commit), carry [".dev"], and switch
# back afterwards. Command: `MINUTES=6.5 bash bench/device/train_shipped_gpu.sh`.
set -u
MINUTES=${MINUTES:-6.5}
OUT=${OUT:-/tmp/device_out}
RUNS=${RUNS:-/tmp/device_runs}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$RUNS" /tmp/site "$HOME/.cache/difflab/fashion-mnist"
$PY - <<'PYEOF' || exit 1
import lzma, os, shutil, tarfile
from pathlib import Path
cache = Path.home() / ".cache/difflab/fashion-mnist"
with lzma.open(".dev/train-images-idx3-ubyte.xz") as f, open(cache / "train-images-idx3-ubyte", "wb") as g:
    shutil.copyfileobj(f, g)
with lzma.open(".dev/train-labels-idx1-ubyte.xz") as f, open(cache / "train-labels-idx1-ubyte", "wb") as g:
    shutil.copyfileobj(f, g)
with tarfile.open(".dev/minilm.tar.xz") as t:
    t.extractall("/tmp/site", filter="data")
PYEOF
export PYTHONPATH="$PWD/src:/tmp/site"
nvidia-smi -L 2>/dev/null
$PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
run() {  # name config overrides...
  local name=$1; shift
  OMP_NUM_THREADS=4 $PY -m difflab.cli train "$@" --minutes "$MINUTES" --no-report \
    --out "$RUNS/$name" > "$OUT/$name.log" 2>&1
  echo "$name: exit $?" >> "$OUT/$name.log"
}
run fashion fashion_mnist_large --set train.batch_size=256 --set train.guide_at=0.25 \
  --set sample.autoguidance=2 --set sample.sampler=dpmpp_2m_sde --set train.seed=0 \
  --set train.checkpoint_every=2000 --set train.sample_every=1000000 &
run shapes shapes_text --set train.batch_size=256 --set train.seed=0 \
  --set train.checkpoint_every=2000 &
run shapes_rel shapes_text --set train.batch_size=256 --set train.seed=0 \
  --set data.relations=0.25 --set train.checkpoint_every=2000 &
wait
mkdir -p "$RUNS/export"
for name in fashion shapes shapes_rel; do
  $PY -m difflab.cli export "$RUNS/$name/last" "$RUNS/export/$name" --fp16 --quiet \
    --command-line "bench/device/train_shipped_gpu.sh ($name, MINUTES=$MINUTES)" \
    >> "$OUT/$name.log" 2>&1 || echo "$name: export failed" >> "$OUT/$name.log"
  cp "$RUNS/$name/metrics.jsonl" "$RUNS/export/$name.metrics.jsonl" 2>/dev/null
done
tar -cf "$OUT/exports.tar" -C "$RUNS" export
tail -n 4 "$OUT"/*.log
