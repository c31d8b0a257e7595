#!/usr/bin/env bash
# The README's main job on this machine, timed: `difflab train fashion_mnist` for MINUTES
# (default 10) wall-clock minutes with any extra flags, then FID/KID of 1,000 samples from the
# result with the preset's own [sample] settings (what `difflab eval RUN` does), and of the same
# 1,000 seeds with DPM-Solver++(2M) at 20 steps (the sampler of the earlier figures) and with
# the preset's sampler without autoguidance (the model alone), with the CPU's name and flags.
#
#   bash bench/front_door.sh auto                                    # the defaults
#   bash bench/front_door.sh forced_fp32 --set train.precision=fp32   # a forced choice
#   ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 bash bench/front_door.sh avx2_auto
#
# Writes bench/results/front_door/NAME.{log,json}, NAME_dpmpp_2m.json and NAME_unguided.json:
# the run's output and its evaluations.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1; shift
out=runs/front_door/$name
res=bench/results/front_door
mkdir -p "$res"
rm -rf "$out"   # a run folder of this script's own from an earlier go
{
  echo "# $(date -u +%FT%TZ) ONEDNN_MAX_CPU_ISA=${ONEDNN_MAX_CPU_ISA:-unset}"
  .venv/bin/python -c "from difflab import hardware as h; print('#', h.describe_cpu(), '| native bf16:', *h.cpu_native_bf16())"
  echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# difflab train fashion_mnist --minutes ${MINUTES:-10} --out $out $*"
  .venv/bin/difflab train fashion_mnist --minutes "${MINUTES:-10}" --out "$out" "$@" 2>&1 \
    | tr '\r' '\n' | grep -v '^ *[0-9]*%|' 
  echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$res/$name.log"
.venv/bin/difflab eval "$out/last" --samples 1000 --json "$res/$name.json" >> "$res/$name.log" 2>&1
.venv/bin/difflab eval "$out/last" --samples 1000 --sampler dpmpp_2m --steps 20 \
  --json "$res/${name}_dpmpp_2m.json" >> "$res/$name.log" 2>&1
# the model alone, without the autoguidance of the preset's [sample] settings
.venv/bin/difflab eval "$out/last" --samples 1000 --autoguidance 1 \
  --json "$res/${name}_unguided.json" >> "$res/$name.log" 2>&1
tail -n 3 "$res/$name.log"
