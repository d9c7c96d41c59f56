#!/usr/bin/env bash
# On the lent GPU machine: the conversion gate of the coverage corpus's bundles (converted and gated on the CPU
# machine by `python -m paddle2ort.benchmarks.hostcheck prepare --out .device/hostcheck/bundles`, carried as a tar in
# 50 MB parts under /tmp/stage/hc.part*) re-run here without Paddle, on this host's CPU and on onnxruntime's CUDA
# provider (onnxruntime-gpu staged in /tmp/site per ../shared/device/README.md). Writes $OUT/hostcheck.{json,md}.
# HC_BUNDLES=DIR: bundles carried as a folder instead (the trial models' bundles, a few MB).
set -uo pipefail
mkdir -p /tmp/p2o && ln -sfn "$PWD" /tmp/p2o/paddle2ort
export PYTHONPATH=/tmp/site:/tmp/p2o
: "${OUT:=/tmp/hostcheck-out}"
mkdir -p "$OUT" /tmp/hc
if [ -n "${HC_BUNDLES:-}" ]; then                # bundles carried as a folder (small ones)
  mkdir -p /tmp/hc/bundles && cp -r "$HC_BUNDLES"/* /tmp/hc/bundles/
else
  cat /tmp/stage/hc.part* | tar -x -C /tmp/hc || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
{ grep -m1 "model name" /proc/cpuinfo; nproc; grep -m1 "^flags" /proc/cpuinfo; } > "$OUT/cpu.txt"
head -2 "$OUT/cpu.txt"
python3 -m paddle2ort.benchmarks.hostcheck run /tmp/hc/bundles/* --results "$OUT" --devices cpu,gpu \
  > "$OUT/hostcheck.log" 2>&1
echo "hostcheck rc $?"
grep -v " INFO " "$OUT/hostcheck.log" | tail -60
