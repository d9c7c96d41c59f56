#!/usr/bin/env bash
# On the lent GPU machine, after staging onnxruntime-gpu (../shared/device/README.md: ort.part0..4 + install.sh)
# and the SmolLM2 GGUF (.device/parts/gguf.part0/1 copied to /tmp/stage), with the model's tokenizer carried in
# .device/serve/tokenizer:
#   serve_gpu.sh COMMIT    the serve load benchmark's scheduler rows on the GPU (1, 4, 16, 32 concurrent requests,
#                          continuous vs one-at-a-time) over the fused FP16 decoder (float32 head) built here from
#                          the GGUF, rows joining and leaving its cache slots -> $OUT/serve.{json,md,png}
#                          max_length is SmolLM2's whole context (8192): the slot state holds what the rows need
#                          (prompt + 64 new tokens -> a 256-position bucket), grown on demand (runtime/fused.py)
# The checkout itself is the package (symlinked as /tmp/p2o/paddle2ort); wheels are in /tmp/site.
set -euo pipefail
mkdir -p /tmp/p2o && ln -sfn "$PWD" /tmp/p2o/paddle2ort
export PYTHONPATH=/tmp/site:/tmp/p2o
[ -f /tmp/smollm2.gguf ] || cat /tmp/stage/gguf.part* > /tmp/smollm2.gguf
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -m paddle2ort.benchmarks.serve_load --gguf /tmp/smollm2.gguf --tokenizer .device/serve/tokenizer \
  --device gpu --clients 1,4,16,32 --max-tokens 64 --max-length 8192 --out "$OUT" --commit "${1:-unknown}" \
  "${@:2}" 2>&1 | grep -v "^\s*$" | tail -40
rm -rf "$OUT/work"
