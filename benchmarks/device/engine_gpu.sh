#!/usr/bin/env bash
# The kernel engine on the lent GPU machine, one call (staging as in benchmarks/results/llm-gpu/README.md: the
# onnxruntime-gpu parts + install.sh, and the SmolLM2 GGUF parts copied to /tmp/stage; wheels in /tmp/site):
#   engine_gpu.sh tests     twin-vs-kernel and engine tests (CuPy only)           -> $OUT/engine_tests.txt
#   engine_gpu.sh kernels   the tests + the validate-then-time kernel bench        -> $OUT/kernel_bench.{json,txt}
#   engine_gpu.sh all       the above + engine_bench (golden parity when the GGUF is staged, the onnxruntime fused
#                           graph beside ours when onnxruntime-gpu is installed)  -> $OUT/engine-bench.{json,md}
# Extra arguments go to engine_bench run. The checkout itself is the package (symlinked as /tmp/p2o/paddle2ort).
# The GGUF reader (gguf wheel) is installed from .device/whl when install.sh left it out: carry .device/whl.
set -uo pipefail
mkdir -p /tmp/p2o && ln -sfn "$PWD" /tmp/p2o/paddle2ort
export PYTHONPATH=/tmp/site:/tmp/p2o
what="${1:-all}"; shift || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_engine_gpu.py 2>&1 | tail -25 \
  | tee "$OUT/engine_tests.txt"
[ "$what" = tests ] && exit 0
python3 -m paddle2ort.runtime.kernels.bench_engine --json "$OUT/kernel_bench.json" 2>&1 | tee "$OUT/kernel_bench.txt"
[ "$what" = kernels ] && exit 0
python3 -c "import gguf" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/whl/gguf-*.whl
ARGS=()
if ls /tmp/stage/gguf.part* >/dev/null 2>&1; then
  [ -f /tmp/smollm2.gguf ] || cat /tmp/stage/gguf.part* > /tmp/smollm2.gguf
  ARGS+=(--gguf /tmp/smollm2.gguf)
fi
python3 -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" \
  || ARGS+=(--no-ort)
python3 -m paddle2ort.benchmarks.gpu.engine_bench run --out "$OUT" "${ARGS[@]}" "$@" 2>&1 \
  | grep -v "^\s*$" | grep -v "Warning\|warn(" | tail -60
