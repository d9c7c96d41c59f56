#!/usr/bin/env bash
# On the lent GPU machine, after staging (see benchmarks/results/llm-gpu/README.md):
#   llm_gpu.sh check          kernel tests + kernel bench + GPU generation checks  -> $OUT/{kernel_*,check.*}
#   llm_gpu.sh bench CONFIG   the peer benchmark of one model config                -> $OUT/bench-CONFIG.*
# The checkout itself is the package (symlinked as /tmp/p2o/paddle2ort); wheels are in /tmp/site.
set -euo pipefail
mkdir -p /tmp/p2o && ln -sfn "$PWD" /tmp/p2o/paddle2ort
export PYTHONPATH=/tmp/site:/tmp/p2o
case "$1" in
  check)
    B=/tmp/smollm2-bundle
    BUNDLE_ARG=(--bundle "$B")
    if [ ! -f /tmp/stage/smol.xz.part0 ] && [ ! -f "$B/model.fp32.onnx" ]; then
      BUNDLE_ARG=()          # the FP32 bundle was not staged: skip the generic FP32 token-identity check
    elif [ ! -f "$B/model.fp32.onnx" ]; then
      mkdir -p "$B" && cp -r .device/smol/meta/* "$B/"
      cat /tmp/stage/smol.xz.part* | python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer, 1 << 24)" > "$B/model.fp32.onnx.tmp"
      mv "$B/model.fp32.onnx.tmp" "$B/model.fp32.onnx"
    fi
    [ -f /tmp/smollm2.gguf ] || cat /tmp/stage/gguf.part* > /tmp/smollm2.gguf
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
    if [ -z "${SKIP_KERNELS:-}" ]; then
      python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py 2>&1 | tee "$OUT/kernel_tests.txt" || true
      python3 -m paddle2ort.runtime.kernels.bench --json "$OUT/kernel_bench.json" 2>&1 | tee "$OUT/kernel_bench.txt" || true
    fi
    python3 -m paddle2ort.benchmarks.gpu check "${BUNDLE_ARG[@]}" --gguf /tmp/smollm2.gguf \
      --golden tests/golden/smollm2_greedy.json --out "$OUT" "${@:2}" 2>&1 | tail -40
    ;;
  bench)
    python3 -m paddle2ort.benchmarks.gpu bench --config "$2" --tokenizer .device/smol/meta/tokenizer \
      --out "$OUT" "${@:3}" 2>&1 | grep -v "^\s*$" | tail -60
    ;;
  *) echo "usage: $0 check | bench CONFIG [options]" >&2; exit 2 ;;
esac
