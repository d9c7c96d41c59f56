#!/usr/bin/env bash
# Here: put what benchmarks/device/encoder_gpu.sh needs into .device/enc (carried as one path, < 60 MiB): the demo
# classifier bundle's FP16 model (manifest trimmed to FP16: only that model travels), the dev split, and the skeletons
# `python -m paddle2ort.benchmarks.encoder_gpu prepare` wrote to .device/enc/skeletons. onnxruntime-gpu is staged on
# the device separately (../shared/device/README.md). .device/enc/fp32_reference.json, when there, is the same bundle's
# FP32 accuracy on the dev split measured here (the FP16 accuracy verdict's reference; the FP32 model does not travel).
# usage: encoder_payload.sh BUNDLE_DIR DATASET_DIR
set -euo pipefail
BUNDLE=$1 DATASET=$2
P=.device/enc
rm -rf "$P/bundle" "$P/dataset" && mkdir -p "$P/bundle" "$P/dataset"
cp -r "$BUNDLE/tokenizer" "$BUNDLE/model.fp16.onnx" "$BUNDLE/validation.json" "$BUNDLE/validation_inputs.npz" "$P/bundle/"
python3 - "$BUNDLE/manifest.json" "$P/bundle/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
for p in [p for p in m["models"] if p != "fp16"]:
    m["files"].pop(m["models"].pop(p)["file"])
json.dump(m, open(sys.argv[2], "w"), indent=1)
PY
cp "$DATASET"/dev.txt "$DATASET"/label.txt "$P/dataset/"
du -sh "$P" "$P"/*
