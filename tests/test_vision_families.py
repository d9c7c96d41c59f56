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


def test_adaptive_pooling_paddle2onnx_cannot_write_exactly_is_refused_up_front(tiny_models, tmp_path, capsys):
    """Fast-SCNN's pyramid pooling at 256 x 256 pools an 8 x 8 map to 3 x 3 and 6 x 6: paddle2onnx writes one fixed
    window, Paddle's bins differ in size, and the gate refused the FP32 model (labels 96% Paddle's) without saying
    why. Now exit 4 before the export, naming the pools and an input size where they divide; at 384 it converts."""
    out = tmp_path / "bundle"
    assert main(["-q", "convert", str(tiny_models("pyramid_256")), "-o", str(out)]) == 4
    err = capsys.readouterr().err
    assert "pools 8x8 -> 3x3, 8x8 -> 6x6 (2 place(s))" in err and "at 384x384" in err and not out.exists()
    assert main(["-q", "convert", str(tiny_models("pyramid_384")), "-o", str(out), "--precision", "fp32,fp16"]) == 0
