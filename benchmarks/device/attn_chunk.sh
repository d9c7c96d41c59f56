#!/usr/bin/env bash
# The flash-decoding split size of the kernel engine's attention (decode.cu attn_split), measured in one device call:
# every chunk given validated against its twin and timed in a CUDA graph at contexts 128..2304
# (attention.{json,txt}), then the whole engine step (Qwen2.5-0.5B config, random weights, FP16 + int4, batch 1 and
# 8, 128+128 and 2048+256) at each chunk (chunk-N/engine-bench.*): beside the onnxruntime fused graph where
# onnxruntime-gpu is staged in /tmp/site, ours alone (CuPy only) otherwise.
# Usage: attn_chunk.sh [CHUNK ...]   (default: 32 128)
set -uo pipefail
mkdir -p /tmp/p2o && ln -sfn "$PWD" /tmp/p2o/paddle2ort
export PYTHONPATH=/tmp/site:/tmp/p2o
: "${OUT:=/tmp/attn-chunk-out}"
mkdir -p "$OUT"
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
git log -1 --format='commit %H %s' 2>/dev/null | tee "$OUT/commit.txt"
git status --short -- runtime/kernels benchmarks 2>/dev/null | tee -a "$OUT/commit.txt"
CHUNKS=(${@:-32 128})
timeout 150 $PY -m paddle2ort.runtime.kernels.bench_engine attention --chunks "${CHUNKS[@]}" \
  --json "$OUT/attention.json" > "$OUT/attention.txt" 2>&1
echo "attention sweep rc $?"; grep -v INFO "$OUT/attention.txt" | tail -80
ORT=(--no-ort)
$PY -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" \
  2>/dev/null && ORT=()
for cc in "${CHUNKS[@]}"; do
  timeout 150 $PY -m paddle2ort.benchmarks.gpu.engine_bench run --out "$OUT/chunk-$cc" "${ORT[@]}" \
    --configs qwen2.5-0.5b --chunk "$cc" --budget-s 110 --work /tmp/p2o-engine > "$OUT/chunk-$cc.log" 2>&1
  echo "chunk $cc rc $?"; grep -E "tok/s" "$OUT/chunk-$cc.log" | sed 's/.*INFO//' | tail -16
  sed -n '/## Targets/,/^## SmolLM2/p' "$OUT/chunk-$cc/engine-bench.md" 2>/dev/null | head -12
done
