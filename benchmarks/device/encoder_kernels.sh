#!/usr/bin/env bash
# On the lent GPU machine: the kernel encoder of issue 17 in one call (runtime/kernels/encoder*.py).
# Needs onnxruntime-gpu already in /tmp/site (../shared/device/README.md: the five staging calls on the same warm
# machine) and, carried, .device/enc from benchmarks/device/encoder_payload.sh (the demo classifier's FP16 bundle and
# the dev split). Runs the GPU tests of the encoder kernels, cuBLASLt and GraphEncoder, then
# `encoder_kernels run` (parity with BertModel, ours and its variants vs torch eager / reduce-overhead, the per-kernel
# breakdown) with the real classifier on the dev split (onnxruntime's fused graph vs encoder="kernels").
# .device/enc (45 MiB) and ort.part4 exceed one call's 64 MiB together: carry .device/enc in a call of its own that
# copies it to /tmp/enc, and pass ENC=/tmp/enc here.
# usage: OUT=... [ENC=DIR] bash benchmarks/device/encoder_kernels.sh ; results in $OUT, archived as $OUT.tgz
set -euo pipefail
ENC=${ENC:-.device/enc}
mkdir -p /tmp/p2o && ln -sfn "$PWD" /tmp/p2o/paddle2ort
export PYTHONPATH=/tmp/site:/tmp/p2o PYTHONUNBUFFERED=1
trap 'tar czf "$OUT.tgz" -C "$(dirname "$OUT")" "$(basename "$OUT")" 2>/dev/null || true' EXIT
mkdir -p "$OUT"
python3 -c "import onnxruntime as o, sys; p = o.get_available_providers(); print(o.__version__, p); \
sys.exit(0 if 'CUDAExecutionProvider' in p else 'onnxruntime-gpu is not in /tmp/site: run the staging calls first')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
# the device's copy of .git can lag the working tree it received: record a digest of the sources instead, which
# `bash benchmarks/device/source_digest.sh` on a checkout reproduces
bash benchmarks/device/source_digest.sh > "$OUT/source-digest.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_encoder_kernels_gpu.py tests/test_cublaslt_gpu.py \
  > "$OUT/gpu-tests.log" 2>&1 || true
tail -3 "$OUT/gpu-tests.log"
python3 -m paddle2ort.benchmarks.encoder_kernels run --out "$OUT" --bundle "$ENC/bundle" \
  --dataset "$ENC/dataset" > "$OUT/run.log" 2>&1 || true
tail -40 "$OUT/kernel-encoder.md" 2>/dev/null || tail -20 "$OUT/run.log"
