"""convert.half_range: tensors an FP16 model computes in float16 past its range (65504), which onnxruntime's CPU
provider hides by computing them in float32 and a GPU computes as inf (run47: a ConvNeXt FP16 bundle, cosine 1.0 on
two CPUs, 0.056 on an H100). Found by running the FP32 model with them exposed; named in a warning."""
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.unit


def _model(path, scale: float):
    """x -> Mul(scale) -> Relu -> Mul(1 / scale) -> y: in float16 the middle overflows where |x| * scale > 65504."""
    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["big"]), helper.make_node("Relu", ["big"], ["r"]),
         helper.make_node("Mul", ["r", "inv"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])],
        [numpy_helper.from_array(np.float32([scale]), "s"), numpy_helper.from_array(np.float32([1 / scale]), "inv")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("scale, overflow", [(1e3, True), (10.0, False)])
def test_float16_tensors_past_the_range_are_named(tmp_path, caplog, scale, overflow):
    from paddle2ort.convert.half_range import overflows, range_row
    from paddle2ort.convert.precision import to_fp16
    _model(tmp_path / "fp32.onnx", scale)
    to_fp16(tmp_path / "fp32.onnx", tmp_path / "fp16.onnx")
    samples = [{"x": (np.arange(16, dtype=np.float32).reshape(2, 8) * 20 - 100)}]     # |x| up to 210
    checked, over = overflows(tmp_path / "fp32.onnx", tmp_path / "fp16.onnx", samples)
    assert checked >= 2
    assert [r["tensor"] for r in over] == (["big", "r"] if overflow else [])
    with caplog.at_level(logging.WARNING):
        row = range_row(checked, over)
    assert row["violations"] == [] and row["kind"] == "fp16_range"          # judged on the device, not refused
    assert ("exceed its range" in caplog.text) is overflow
    if overflow:
        assert row["metrics"]["ops"] == ["Mul", "Relu"] and "--device gpu" in caplog.text
