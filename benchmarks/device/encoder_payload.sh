#!/usr/bin/env bash
# Here: pack what benchmarks/device/encoder_gpu.sh needs into .device/enc/part.* (60 MB each, one per device call):
# the staged onnxruntime-gpu wheel (.device/parts, ../shared/device/prepare.sh), the demo classifier bundle's FP16
# model (manifest trimmed to FP16: only that model travels), the dev split, and the skeletons that
# `python -m paddle2ort.benchmarks.encoder_gpu prepare` wrote to .device/enc/skeletons.
# usage: encoder_payload.sh BUNDLE_DIR DATASET_DIR
set -euo pipefail
BUNDLE=$1 DATASET=$2
P=.device/enc/payload
rm -rf "$P" .device/enc/part.* && mkdir -p "$P/ort" "$P/bundle" "$P/dataset"
cat .device/parts/ort.part? > "$P/ort/$(cat .device/parts/NAME)"
cp .device/parts/SHA256 "$P/ort/" && cp -r .device/whl "$P/ort/whl"
cp -r "$BUNDLE/tokenizer" "$BUNDLE/model.fp16.onnx" "$BUNDLE/validation.json" "$BUNDLE/validation_inputs.npz" "$P/bundle/"
python3 - "$BUNDLE/manifest.json" "$P/bundle/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
for p in [p for p in m["models"] if p != "fp16"]:
    m["files"].pop(m["models"].pop(p)["file"])
json.dump(m, open(sys.argv[2], "w"), indent=1)
PY
cp "$DATASET"/dev.txt "$DATASET"/label.txt "$P/dataset/"
cp -r .device/enc/skeletons "$P/skeletons"
tar c -C "$P" . | split -b 60M -d - .device/enc/part.
rm -rf "$P"
ls -la .device/enc/
