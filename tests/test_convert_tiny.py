"""Converter on tiny Paddle models built inline: parity at several opsets, both input formats, precisions."""
import json

import numpy as np
import onnx
import pytest

from paddle2ort.convert import ConvertConfig, convert
from paddle2ort.cli import main
from paddle2ort.convert.validate import thresholds_with_overrides
from paddle2ort.runtime import load_bundle
from paddle2ort.runtime.session import create_session


# every opset on the transformer (the most op kinds), the oldest and newest on the encoder, the newest on the MLP
@pytest.mark.parametrize("kind, opset", [("ernie", 11), ("ernie", 13), ("ernie", 17), ("encoder", 11),
                                         ("encoder", 17), ("mlp", 17)])
def test_fp32_parity_across_opsets(tiny_models, tmp_path, kind, opset):
    out = tmp_path / "bundle"
    res = convert(ConvertConfig(source=tiny_models(kind), output=out, opset=opset))
    m = res.manifest
    assert m.opset >= opset                                    # paddle2onnx may raise it; the manifest says which
    written = onnx.load(str(out / m.models["fp32"].file))
    assert max(o.version for o in written.opset_import if o.domain in ("", "ai.onnx")) == m.opset
    assert m.validation["fp32"]["passed"]
    assert m.validation["fp32"]["max_rel_diff"] <= 1e-4
    assert m.source["format"] == "pir"
    assert all(not o.name.startswith("fetch_name") for o in m.outputs)
    assert m.inputs[0].shape[0] == "batch"
    if kind in ("encoder", "ernie"):
        assert m.inputs[0].shape == ("batch", "sequence") and m.inputs[0].dtype == "int64"
    assert load_bundle(out, verify=True).manifest == m


def test_ernie_named_outputs_and_all_precisions(tiny_models, tmp_path):
    out = tmp_path / "ernie"
    res = convert(ConvertConfig(source=tiny_models("ernie"), output=out, precisions=("fp32", "fp16", "int8"),
                                output_names=("logits",), task="text-classification", labels=("a", "b", "c"),
                                # random tiny weights give near-constant logits that INT8 noise dominates; the
                                # INT8 gate at default thresholds is exercised on the real OCR models
                                thresholds=thresholds_with_overrides({"int8.min_cosine": 0.0,
                                                                      "int8.min_argmax_agreement": 0.0})))
    m = res.manifest
    assert [o.name for o in m.outputs] == ["logits"]
    assert m.outputs[0].shape == ("batch", 3)
    assert set(m.models) == {"fp32", "fp16", "int8"}
    assert m.models["int8"].options["quantized_nodes"] > 0
    assert m.models["fp16"].io_dtype == "float32"
    assert m.labels == ("a", "b", "c") and m.task == "text-classification"
    # every variant runs on onnxruntime with the manifest's names and gives FP32 outputs
    ids = np.array([[1, 5, 7, 9]], dtype=np.int64)
    for prec in m.models:
        sess = create_session(out / m.models[prec].file)
        (logits,) = sess.run(["logits"], {"input_ids": ids, "token_type_ids": np.zeros_like(ids)})
        assert logits.shape == (1, 3) and logits.dtype == np.float32
    report = json.loads((out / "validation.json").read_text())
    assert set(report["reports"]) == {"fp32", "fp16", "int8"}
    assert report["reports"]["fp32"]["samples"] == 2                   # two shapes exercised, judged pooled


def test_legacy_pdmodel_inline(tiny_models, tmp_path):
    out = tmp_path / "legacy"
    res = convert(ConvertConfig(source=tiny_models("legacy") / "model.pdmodel", output=out, opset=13,
                                precisions=("fp32", "fp16")))
    assert res.manifest.source["format"] == "legacy"
    assert res.manifest.validation["fp32"]["max_rel_diff"] <= 1e-4


def test_user_supplied_inputs(tiny_models, tmp_path):
    npz = tmp_path / "in.npz"
    np.savez(npz, input_ids=np.array([[3, 4, 5], [6, 7, 8]], dtype=np.int64))
    res = convert(ConvertConfig(source=tiny_models("encoder"), output=tmp_path / "b", inputs_npz=npz))
    assert res.manifest.validation["fp32"]["samples"] == 1


def test_an_output_that_hardly_moves_but_matches_is_not_refused(tiny_models, tmp_path):
    """The MLP's softmax on inputs near 0 stays within ~1e-5 of uniform: the gate cannot judge it finely there, but
    where the conversion matches anyway it passes (only a failure on such inputs is sent back for better ones)."""
    npz = tmp_path / "in.npz"
    np.savez(npz, x=(1e-4 * np.random.default_rng(0).standard_normal((4, 16))).astype(np.float32))
    res = convert(ConvertConfig(source=tiny_models("mlp"), output=tmp_path / "b", inputs_npz=npz))
    assert res.manifest.validation["fp32"]["passed"]


def test_cli_convert_and_revalidate(tiny_models, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["-q", "convert", str(tiny_models("mlp")), "-o", str(out), "--precision", "fp32,fp16",
                 "--opset", "13", "--output-names", "probs"]) == 0
    assert "fp16" in capsys.readouterr().out
    assert main(["-q", "validate", str(out), "--source", str(tiny_models("mlp"))]) == 0


def test_threshold_override_is_applied(tiny_models, tmp_path):
    # an impossible bound makes the fp32 gate fail: overrides reach the gate
    code = main(["-q", "convert", str(tiny_models("mlp")), "-o", str(tmp_path / "x"),
                 "--threshold", "fp32.max_rel_diff=0"])
    assert code == 3 and not (tmp_path / "x").exists()
