"""Model kinds from helper-64's trial (tests/paddle_trial_models6.py: LayoutXLM / ERNIE-Layout document models, CRF
token classifiers, RoFormer, ELECTRA, ERNIE-M, SimNet, Sentence-BERT) and what the trial found:
- a document model's token boxes [N, L, 4] were drawn as independent ids: negative widths, Paddle refused every
  sample. They are now ordered boxes (x0 <= x1, y0 <= y1) below the tables they index;
- LayoutXLM / ERNIE-Layout compute their visual embedding twice and onnxruntime merges the two chains: INT8 was
  refused ("node 'Add.0' ... missing") because only single-node twins were recognised; twins are now found by value
  numbering, chains included;
- Conv -> Add(bias) -> BatchNormalization folded by onnxruntime into ConvBnFusion weights went unchecked; and
  `validate` checked no weight at all of a variant made from a differently fused FP32 graph (every BERT-shaped
  encoder's FP16 and INT8): planted weight faults passed. Both are now compared with the bundle's FP32 weights;
- a lengths input was drawn apart from the text feed beside it (30 real tokens, seq_len 25): it now counts them;
- ERNIE-Layout's int64 image (0..255) was drawn from {0, 1}: integer NCHW inputs no table reads are now pictures;
- prefixed text inputs (query_input_ids, title_ids) got uniform ids: each text now gets a tokenizer-like feed;
- viterbi_decode, which paddle2onnx lacks, gets its own advice."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import model_builder, reseal
from paddle2ort.cli import main


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    return model_builder(tmp_path_factory, "paddle_trial_models6.py")


def _scaled(bundle: Path, dst: Path, precision: str, pick, factor: float) -> tuple[Path, str]:
    """A copy of `bundle` with the float initializer `pick({name: size})` of model.PRECISION.onnx scaled, checksums
    resealed."""
    import onnx
    from onnx import numpy_helper
    shutil.copytree(bundle, dst)
    f = dst / f"model.{precision}.onnx"
    m = onnx.load(str(f))
    name = pick({t.name: numpy_helper.to_array(t).size for t in m.graph.initializer
                 if numpy_helper.to_array(t).dtype.kind == "f" and numpy_helper.to_array(t).any()})
    t = next(t for t in m.graph.initializer if t.name == name)
    a = numpy_helper.to_array(t)
    t.CopyFrom(numpy_helper.from_array((a * factor).astype(a.dtype), name))
    onnx.save(m, str(f))
    return reseal(dst), name


def test_document_models_get_ordered_boxes_and_their_int8_twins_are_merged(trial, tmp_path):
    out = tmp_path / "cls"
    assert main(["-q", "convert", str(trial("layoutxlm_cls")), "-o", str(out), "--precision", "fp32,fp16,int8"]) == 0
    with np.load(out / "validation_inputs.npz") as d:
        boxes = [d[k] for k in d.files if k.endswith("/bbox")]
    assert boxes and all((b[..., 2] >= b[..., 0]).all() and (b[..., 3] >= b[..., 1]).all() for b in boxes)
    assert all(b.min() >= 0 and b.max() <= 1000 for b in boxes)


def test_fused_variants_and_folded_convolutions_are_checked_by_their_weights(trial, tmp_path, capsys):
    out = tmp_path / "layout"
    assert main(["-q", "convert", str(trial("ernie_layout_ner")), "-o", str(out), "--precision",
                 "fp32,fp16,int8"]) == 0
    with np.load(out / "validation_inputs.npz") as d:     # its int64 image: 0..255 pictures, not {0, 1}
        images = [d[k] for k in d.files if k.endswith("/image")]
    assert images and all(a.min() >= 0 and a.max() <= 255 and len(np.unique(a)) > 32 for a in images)
    faults = [("int8", lambda ns: next(n for n in ns if n.startswith("ConvBnFusion_W_")), 1.1),
              ("fp16", lambda ns: max(ns, key=ns.get), 1.01),       # the largest weight (an embedding table)
              ("int8", lambda ns: next(n for n in ns if n.endswith("_scale")), 1.05)]
    for i, (prec, pick, factor) in enumerate(faults):
        b, name = _scaled(out, tmp_path / f"p{i}", prec, pick, factor)
        capsys.readouterr()
        assert main(["-q", "validate", str(b)]) == 3, name
        assert f"  {prec}: " in capsys.readouterr().err


def test_lengths_count_the_text_feeds_tokens(trial, tmp_path):
    out = tmp_path / "crf"
    assert main(["-q", "convert", str(trial("crf_ernie_unrolled")), "-o", str(out), "--precision", "fp32"]) == 0
    with np.load(out / "validation_inputs.npz") as d:
        rows = sorted({k.partition("/")[0] for k in d.files})
        names = {k.partition("/")[2] for k in d.files}
        lengths = next(n for n in names if n not in ("input_ids", "token_type_ids", "position_ids", "attention_mask"))
        for r in rows:
            assert (d[f"{r}/{lengths}"] == (d[f"{r}/input_ids"] != 0).sum(axis=1)).all()


def test_viterbi_decode_gets_its_own_advice(trial, tmp_path, capsys):
    assert main(["-q", "convert", str(trial("crf_ernie")), "-o", str(tmp_path / "b"), "--precision", "fp32"]) == 4
    err = capsys.readouterr().err
    assert "pd_op.viterbi_decode" in err and "decode outside it with the CRF's transitions" in err


def test_a_differently_fused_variant_is_checked_by_its_weights(trial, tmp_path, capsys):
    import json
    out = tmp_path / "electra"
    assert main(["-q", "convert", str(trial("electra_disc")), "-o", str(out), "--precision", "fp32,fp16,int8"]) == 0
    fusions = json.loads((out / "manifest.json").read_text())["extra"].get("fusions") or {}
    assert fusions.get("fp16") != fusions.get("fp32")       # FP16 was made from the fused encoder graph
    for i, (prec, pick, factor) in enumerate([("fp16", lambda ns: max(ns, key=ns.get), 1.01),
                                              ("int8", lambda ns: next(n for n in ns if n.endswith("_scale")), 1.05)]):
        b, name = _scaled(out, tmp_path / f"p{i}", prec, pick, factor)
        capsys.readouterr()
        assert main(["-q", "validate", str(b)]) == 3, name
        err = capsys.readouterr().err
        assert f"weight {name!r} differs" in err or f"weight {name.removesuffix('_scale')!r}" in err, err[-600:]


def test_each_text_of_a_two_text_model_gets_a_tokenizer_like_feed(trial, tmp_path):
    out = tmp_path / "sbert"
    assert main(["-q", "convert", str(trial("sbert_cos")), "-o", str(out), "--precision", "fp32,fp16"]) == 0
    with np.load(out / "validation_inputs.npz") as d:
        ids = {k: d[k] for k in d.files if k.endswith("_input_ids")}
        types = [d[k] for k in d.files if k.endswith("_token_type_ids")]
    assert {k.partition("/")[2] for k in ids} == {"query_input_ids", "title_input_ids"}
    for a in ids.values():                   # right-padded rows (the pad id 0 never mid-row), the first one full
        real = a != 0
        assert real[0].all() and all((np.diff(row.astype(int)) <= 0).all() for row in real)
    assert all(set(np.unique(t)) <= {0, 1} for t in types)
