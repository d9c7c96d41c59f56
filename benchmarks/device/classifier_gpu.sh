#!/usr/bin/env bash
# On the lent GPU machine (after ../shared/device staging of onnxruntime-gpu + the paddle2ort wheel into /tmp/site):
# reassemble the classifier bundle carried in parts under .device/bundle, then one perf run per device.
# Writes $OUT/gpu/results.* (FP32/FP16 on CUDA) and $OUT/cpu/results.* (FP32/INT8 on the host's CPU).
set -euo pipefail
export PYTHONPATH=/tmp/site
B=/tmp/bundle/minilm-sentiment
mkdir -p "$B/tokenizer"
cp .device/bundle/meta/*.json .device/bundle/meta/validation_inputs.npz "$B/" 2>/dev/null || true
cp .device/bundle/meta/tokenizer/* "$B/tokenizer/"
cat /tmp/stage/fp32.part* > "$B/model.fp32.onnx"
cp /tmp/stage/model.fp16.onnx /tmp/stage/model.int8.onnx "$B/"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m paddle2ort.cli bench "$B" --dataset-dir .device/bundle/dataset --split dev --device gpu \
  --precision fp32,fp16 --repeats 5 --warmup 16 --output "$OUT/gpu"
python3 -m paddle2ort.cli bench "$B" --dataset-dir .device/bundle/dataset --split dev --device cpu \
  --precision fp32,int8 --repeats 3 --output "$OUT/cpu"
