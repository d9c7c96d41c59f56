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
