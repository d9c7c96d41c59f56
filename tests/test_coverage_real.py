"""The real-model corpus (Paddle models shipped in pip packages, benchmarks/coverage.py): every model converts and
passes the FP32 gate, with the repairs its export needs named in the manifest (the gate is what proves them).
The full precision matrix is the benchmark's (`python -m paddle2ort.benchmarks.coverage`)."""
import numpy as np
import pytest

from paddle2ort.benchmarks.coverage import BY_NAME, CORPUS
from paddle2ort.cli import main
from paddle2ort.convert import ConvertConfig, convert
from paddle2ort.convert.repair import concat_rank, f64_attrs, output_shapes, resize_inputs

F64, CONCAT, SHAPES, RESIZE = f64_attrs.NAME, concat_rank.NAME, output_shapes.NAME, resize_inputs.NAME
# What each model's export meets (paddle2onnx 2.1.0 under Paddle 3.3): measured, see benchmarks/results/coverage.
EXPECTED_REPAIRS = {
    "ppocrv4-det": {F64},                       # nearest_interp.scale as float64: export aborted
    "ppocrv4-rec": {CONCAT},                    # onnxruntime refused the graph
    "ppocr-mobile-v2-cls": {CONCAT},
    "picodet": {F64, SHAPES},                   # + NMS box count folded to the static bound
    "eiseg-hrnet18-ocr64": {CONCAT, F64, RESIZE},   # + leaky_relu slope read as NaN; + FP16 pass broke Resize
}


def _inputs(asset, tmp_path):
    if asset.inputs is None:
        return None
    npz = tmp_path / "inputs.npz"
    np.savez(npz, **{f"{i}/{k}": v for i, s in enumerate(asset.inputs()) for k, v in s.items()})
    return npz


@pytest.mark.slow
@pytest.mark.parametrize("name", [a.name for a in CORPUS])
def test_real_model_converts_and_passes_fp32(name, tmp_path):
    asset = BY_NAME[name]
    if asset.path() is None:
        pytest.skip(f"{asset.dist} is not installed (make install installs it)")
    m = convert(ConvertConfig(source=asset.path(), output=tmp_path / "b", inputs_npz=_inputs(asset, tmp_path))).manifest
    v = m.validation["fp32"]
    assert v["passed"] and v["max_rel_diff"] <= 1e-4 and v["min_cosine"] >= 0.99999
    applied = {r["name"] for r in m.source["repairs"]}
    assert applied == EXPECTED_REPAIRS.get(name, set())
    assert all(r["count"] >= 1 for r in m.source["repairs"])


@pytest.mark.slow
def test_unrepaired_concat_is_an_actionable_exit_4(tmp_path, monkeypatch, capsys):
    """Without the ONNX repairs, PP-OCRv4 rec stops at the load check with the node, the cause and a next step."""
    from paddle2ort.convert import repair
    monkeypatch.setattr(repair, "REPAIRS", tuple(r for r in repair.REPAIRS if r.stage != "onnx"))
    asset = BY_NAME["ppocrv4-rec"]
    if asset.path() is None:
        pytest.skip(f"{asset.dist} is not installed")
    out = tmp_path / "b"
    assert main(["-q", "convert", str(asset.path()), "-o", str(out)]) == 4
    err = capsys.readouterr().err
    assert "(Concat)" in err and "0-d shape values" in err and "Next step:" in err and not out.exists()
