"""`paddle2ort validate` as a release pipeline uses it: a fused encoder bundle (FP16 and INT8 made from other FP32
graphs than the bundle's), a --threshold on a precision the bundle lacks (accepted and never used), and a bundle
that passed its conversion gate with loosened bounds (convert --threshold) re-checked with other bounds: the
failure must say which bounds the bundle passed with. The tiny models run the real gate."""
import json

import pytest

from paddle2ort.cli import main


@pytest.fixture(scope="module")
def mlp_bundle(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("val") / "mlp"
    assert main(["-q", "convert", str(tiny_models("mlp")), "-o", str(out)]) == 0       # fp32 only
    return out


def test_threshold_on_a_precision_the_bundle_lacks_is_refused(mlp_bundle, tiny_models, capsys):
    src = str(tiny_models("mlp"))
    capsys.readouterr()
    assert main(["validate", str(mlp_bundle), "--source", src, "--threshold", "fp16.min_cosine=0.9999"]) == 2
    err = capsys.readouterr().err
    assert "--threshold names fp16" in err and "has: fp32" in err and "Traceback" not in err
    assert main(["validate", str(mlp_bundle), "--source", src, "--threshold", "fp32.min_cosine=0.99"]) == 0


def test_a_fused_encoder_bundle_passes_the_gate_it_passed_at_conversion(clf_bundle, tiny_models, capsys):
    manifest = json.loads((clf_bundle / "manifest.json").read_text())
    fusions = manifest["extra"]["fusions"]
    assert fusions.get("fp16") != fusions.get("fp32") and "int8" in manifest["models"]     # what this is about
    capsys.readouterr()
    rc = main(["validate", str(clf_bundle), "--source", str(tiny_models("bert_classifier"))])
    out = capsys.readouterr()
    assert rc == 0, out.err                     # was: exit 3, "node 'Gather.0' of the FP32 graph is missing"
    assert [ln.split()[0] for ln in out.out.splitlines()] == ["fp32", "fp16", "int8"]


def test_failed_revalidation_names_the_bounds_the_bundle_passed_with(clf_bundle, tiny_models, capsys):
    # conftest's classifier passed its int8 gate only with min_argmax_agreement=0 and min_cosine=0 (random weights)
    capsys.readouterr()
    rc = main(["validate", str(clf_bundle), "--source", str(tiny_models("bert_classifier")),
               "--threshold", "int8.min_cosine=0.999999"])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "passed its conversion gate with other bounds" in err and "--threshold int8.min_cosine=0" in err


def test_every_failing_precision_is_named_not_only_the_first(clf_bundle, tiny_models, capsys):
    """fp16 and int8 both fail: both are named, one line each, and fp32 (which passed) is still printed."""
    capsys.readouterr()
    rc = main(["validate", str(clf_bundle), "--source", str(tiny_models("bert_classifier")),
               "--threshold", "fp16.max_rel_diff=0", "--threshold", "int8.min_cosine=0.999999"])
    out = capsys.readouterr()
    assert rc == 3, out.err
    assert "2 of 3 models fail the gate re-run" in out.err
    assert "  fp16: gate-refused: output 'logits': max_rel_diff" in out.err       # was: fp16 only
    assert "  int8: gate-refused: output 'logits': " in out.err and "cosine" in out.err
    assert "--threshold int8.min_cosine=0" in out.err                          # each one's details still follow
    assert [ln.split()[0] for ln in out.out.splitlines()] == ["fp32"] and "Traceback" not in out.err


def test_a_model_that_crashes_in_onnxruntime_hides_no_other_failure(clf_bundle, tiny_models, monkeypatch, capsys):
    """int8 failing in onnxruntime (exit 4) after fp16 refused by its gate (exit 3): both named, the most serious
    code returned, one line each and no traceback (was: the int8 crash alone, fp16's failure never said)."""
    from paddle2ort.convert import validate
    from paddle2ort.convert.errors import ConversionError
    real = validate.run_onnx

    def run_onnx(model_path, samples, precision="fp32", user_inputs=False, device="cpu", level="all"):
        if precision == "int8":
            raise ConversionError("the converted int8 model fails in onnxruntime on generated validation sample 0: "
                                  "planted")
        return real(model_path, samples, precision, user_inputs, device, level)
    monkeypatch.setattr(validate, "run_onnx", run_onnx)
    capsys.readouterr()
    rc = main(["validate", str(clf_bundle), "--source", str(tiny_models("bert_classifier")),
               "--threshold", "fp16.max_rel_diff=0"])
    out = capsys.readouterr()
    assert rc == 4, out.err
    lines = out.err.splitlines()
    assert any(ln.startswith("  fp16: gate-refused: output 'logits': max_rel_diff") for ln in lines), out.err
    assert "  int8: crashed: the converted int8 model fails in onnxruntime on generated validation sample 0: " \
           "planted" in lines, out.err
    assert "fp32" in out.out and "Traceback" not in out.err
