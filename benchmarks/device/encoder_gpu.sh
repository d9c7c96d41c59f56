#!/usr/bin/env bash
# On the lent GPU machine: the encoder benchmark of issue 17 (benchmarks/encoder_gpu.py) in one run.
# Staging (here): benchmarks/device/encoder_payload.sh writes .device/enc/part.* (onnxruntime-gpu wheel, the demo
# classifier's FP16 bundle + dev split, the fused FP16 skeletons); each device call before the last copies its part
# to /tmp/stage (`mkdir -p /tmp/stage && cp .device/enc/part.* /tmp/stage/`), the last runs this script.
# The checkout itself is the package (symlinked as /tmp/p2o/paddle2ort); wheels go to /tmp/site.
set -euo pipefail
BUDGET=${1:-200}
cp .device/enc/part.* /tmp/stage/ 2>/dev/null || true
mkdir -p /tmp/payload /tmp/p2o && ln -sfn "$PWD" /tmp/p2o/paddle2ort
cat /tmp/stage/part.* | tar x -C /tmp/payload
(cd /tmp/payload/ort && sha256sum -c SHA256)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  /tmp/payload/ort/*.whl /tmp/payload/ort/whl/*.whl
export PYTHONPATH=/tmp/site:/tmp/p2o PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -m paddle2ort.benchmarks.encoder_gpu run /tmp/payload/skeletons --bundle /tmp/payload/bundle \
  --dataset /tmp/payload/dataset --out "$OUT/encoder-gpu.json" --budget-s "$BUDGET" 2>&1 | tee "$OUT/log.txt" | tail -60
