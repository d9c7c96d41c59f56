#!/usr/bin/env bash
# On the lent GPU machine, after staging onnxruntime-gpu into /tmp/site (../shared/device/README.md), with the tiny
# fp32 seq2seq bundles carried in .device/seq2seq (built here: `python -m paddle2ort.benchmarks.seq2seq stage
# .device/seq2seq`; T5, BART, UNIMO-text, < 1 MiB together):
#   seq2seq_gpu.sh [--device gpu|cpu] [--repeats N]
# runs every bundle on CUDA (fp32, TF32 off) against the same bundle on the CPU over the committed dataset
# (benchmarks/results/seq2seq/dataset.jsonl, 32 sources, batch 8, <= 16 new tokens): greedy and 4-beam tokens
# equal up to near-ties (a row may part only where the CPU run's decisive margin is within 1e-3), samples/s and
# ms/sample -> $OUT/seq2seq-gpu.json (+ log.txt). Exit 1 when a row parts at a clear margin; 2 when CUDA is not
# usable (no silent CPU fallback). `--device cpu` is the dry run of the same code (no GPU needed; here:
#   PYTHON=.venv/bin/python OUT=/tmp/s2s-dry benchmarks/device/seq2seq_gpu.sh --device cpu).
# The checkout itself is the package (symlinked as /tmp/p2o/paddle2ort); wheels are in /tmp/site.
set -euo pipefail
OUT=${OUT:-out/seq2seq-device}
mkdir -p /tmp/p2o "$OUT" && ln -sfn "$PWD" /tmp/p2o/paddle2ort
export PYTHONPATH=/tmp/site:/tmp/p2o PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.txt" 2>&1 || true
"${PYTHON:-python3}" -m paddle2ort.benchmarks.seq2seq device .device/seq2seq --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt" | tail -30
exit "${PIPESTATUS[0]}"
