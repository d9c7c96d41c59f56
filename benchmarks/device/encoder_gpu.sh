#!/usr/bin/env bash
# On the lent GPU machine: the encoder benchmark of issue 17 (benchmarks/encoder_gpu.py) in one call.
# Needs onnxruntime-gpu already in /tmp/site (../shared/device/README.md: the five staging calls on the same warm
# machine) and, carried, .device/enc from benchmarks/device/encoder_payload.sh (the fused FP16 skeletons of each
# geometry, the demo classifier's FP16 bundle, the dev split). The checkout itself is the package (symlinked as
# /tmp/p2o/paddle2ort). usage: bash benchmarks/device/encoder_gpu.sh [BUDGET_S]
set -euo pipefail
BUDGET=${1:-230}
mkdir -p /tmp/p2o && ln -sfn "$PWD" /tmp/p2o/paddle2ort
export PYTHONPATH=/tmp/site:/tmp/p2o PYTHONUNBUFFERED=1
python3 -c "import onnxruntime as o, sys; p = o.get_available_providers(); print(o.__version__, p); \
sys.exit(0 if 'CUDAExecutionProvider' in p else 'onnxruntime-gpu is not in /tmp/site: run the staging calls first')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -m paddle2ort.benchmarks.encoder_gpu run .device/enc/skeletons --bundle .device/enc/bundle \
  --dataset .device/enc/dataset --out "$OUT/encoder-gpu.json" --budget-s "$BUDGET" 2>&1 | tee "$OUT/log.txt" | tail -70
