"""paddle.vision's image-classification families (random weights, 10 classes, 64 x 64), through `convert` and the
gate at FP32/FP16 and, where the network has a weight GEMM (its classifier head), INT8: depthwise and grouped
convolutions, channel shuffle, hard-swish and squeeze-excitation, fire modules, residual blocks. SqueezeNet's head
is a convolution: its INT8 is refused up front (nothing dynamic quantization rewrites), nothing written."""
import json

import pytest

from paddle2ort.cli import main
from paddle_models import VISION_FAMILIES

ALL_CONVOLUTIONS = {"squeezenet1_1"}          # no MatMul/Gemm with a weight: INT8 would be the FP32 model


@pytest.mark.parametrize("name", VISION_FAMILIES)
def test_vision_family_converts_and_passes_the_gate(name, tiny_models, tmp_path, capsys):
    src, out = tiny_models(f"vision_{name}"), tmp_path / "bundle"
    if name in ALL_CONVOLUTIONS:
        assert main(["-q", "convert", str(src), "-o", str(out), "--precision", "fp32,int8"]) == 2
        assert "dynamic INT8 quantizes MatMul/Gemm nodes with a constant weight" in capsys.readouterr().err
        assert not out.exists()
    precisions = "fp32,fp16" if name in ALL_CONVOLUTIONS else "fp32,fp16,int8"
    assert main(["-q", "convert", str(src), "-o", str(out), "--precision", precisions]) == 0, capsys.readouterr().err
    m = json.loads((out / "manifest.json").read_text())
    assert set(m["validation"]) == set(precisions.split(",")) and all(v["passed"] for v in m["validation"].values())
