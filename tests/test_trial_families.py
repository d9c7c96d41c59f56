"""Model kinds from helper-58's trial (tests/paddle_trial_models.py: PaddleRec, PaddleSpeech) and what the trial
found:
- a speech model's lengths were drawn from {0, 1}: every frame masked out, so an FP32 model with a conv weight x3
  passed the gate. Lengths (compared with positions 0.., an RNN's sequence_length) are now drawn from the frames
  beside them, the first row full, and the same planted fault is refused;
- an RNN paddle2onnx wrote without Paddle's sequence lengths is refused on padded rows with the cause named;
- INT8 of Wide&Deep / DIN was refused as "node 'Add.10' of the FP32 graph is missing": a zero bias removed by the
  optimizer, then MatMul + Add fused into a Gemm; the lineage check no longer expects such Adds kept;
- DeepFM's slots concatenated before one shared embedding: their ids now span the table;
- DSSM's output `ones([n, 1])` never depends on the inputs: it was refused as flat samples (no --inputs could
  help) and its FP16 pass crashed; now it is judged as an exact constant."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import model_builder


@pytest.fixture(scope="module")
def trial_models(tmp_path_factory):
    return model_builder(tmp_path_factory, "paddle_trial_models.py")


def _convert(source: Path, out: Path, precisions=("fp32", "fp16", "int8")):
    from paddle2ort.convert import ConvertConfig, convert
    return convert(ConvertConfig(source=source, output=out, precisions=precisions))


def _plant(bundle: Path, dst: Path, weight: str, factor: float) -> None:
    """A copy of the bundle with one FP32 weight scaled and the manifest's checksums rewritten to match: a converter
    that wrote a wrong but self-consistent bundle."""
    import hashlib

    import onnx
    from onnx import numpy_helper
    shutil.copytree(bundle, dst)
    f = dst / "model.fp32.onnx"
    m = onnx.load(str(f))
    t = next(t for t in m.graph.initializer if t.name == weight)
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor), weight))
    onnx.save(m, str(f))
    man = json.loads((dst / "manifest.json").read_text())
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    man["models"]["fp32"].update(sha256=digest, size_bytes=f.stat().st_size)
    man["files"]["model.fp32.onnx"].update(sha256=digest, size_bytes=f.stat().st_size)
    (dst / "manifest.json").write_text(json.dumps(man))


def test_speech_lengths_span_the_frames_and_a_planted_fault_is_refused(trial_models, tmp_path):
    from paddle2ort.convert.api import revalidate
    from paddle2ort.convert.hostcheck import check_host
    from paddle2ort.convert.validate import GateRerunError
    out = tmp_path / "ds2"
    _convert(trial_models("ds2_mask"), out)
    with np.load(out / "validation_inputs.npz") as d:
        for k in [k for k in d.files if k.endswith("/audio_len")]:
            frames = d[k.replace("audio_len", "audio")].shape[1]
            assert d[k][0] == frames and (d[k] >= (frames + 1) // 2).all() and (d[k] <= frames).all()
    _plant(out, tmp_path / "planted", "conv2d_0.w_0", 3.0)
    with pytest.raises(GateRerunError) as e:                   # the outputs on the recorded samples see it
        check_host(tmp_path / "planted")
    assert "fp32" in str(e.value) and "log_softmax" in str(e.value)
    with pytest.raises(GateRerunError) as e:                   # and, Paddle at hand, the weight itself
        revalidate(tmp_path / "planted", trial_models("ds2_mask"))
    assert "'conv2d_0.w_0'" in str(e.value) and "differs from Paddle's parameter" in str(e.value)


def test_an_rnn_exported_without_its_lengths_is_refused_with_the_cause(trial_models, tmp_path, caplog):
    from paddle2ort.convert.errors import ValidationError
    with pytest.raises(ValidationError) as e:
        _convert(trial_models("ds2"), tmp_path / "ds2", ("fp32",))
    assert "without the sequence lengths" in str(e.value) and "--inputs" in str(e.value)
    assert "exact only on rows as long as" in caplog.text
    assert not (tmp_path / "ds2").exists()


@pytest.mark.parametrize("kind", ["wide_deep", "din"])
def test_int8_of_a_zero_bias_fused_into_a_gemm_is_not_refused(trial_models, tmp_path, kind):
    res = _convert(trial_models(kind), tmp_path / kind)
    assert set(res.reports) == {"fp32", "fp16", "int8"}


def test_slots_concatenated_before_one_embedding_span_its_rows(trial_models, tmp_path):
    out = tmp_path / "deepfm"
    _convert(trial_models("deepfm"), out, ("fp32",))
    with np.load(out / "validation_inputs.npz") as d:
        ids = np.concatenate([d[k].ravel() for k in d.files if "/C" in k])
    assert ids.max() > 1000 and len(np.unique(ids)) > 10


def test_a_constant_output_is_judged_exactly(trial_models, tmp_path):
    from paddle2ort.convert.api import revalidate
    from paddle2ort.convert.validate import GateRerunError
    out = tmp_path / "dssm"
    res = _convert(trial_models("dssm"), out)
    assert set(res.reports) == {"fp32", "fp16", "int8"}
    kinds = {r["output"]: r.get("kind") for r in res.reports["fp16"]["results"]}
    assert kinds["full"] == "constant"
    _plant(out, tmp_path / "planted", "full", 0.0)
    with pytest.raises(GateRerunError) as e:
        revalidate(tmp_path / "planted", trial_models("dssm"))
    assert "'full'" in str(e.value) and "the reference is flat" in str(e.value)


def test_a_saturated_sigmoid_head_is_warned_about(trial_models, tmp_path, caplog):
    """DeepFM on generated ids: every probability within 2.5e-4 of 0 or 1, where the gate sees little."""
    import logging
    with caplog.at_level(logging.WARNING, logger="paddle2ort.convert.api"):
        _convert(trial_models("deepfm"), tmp_path / "deepfm", ("fp32",))
    assert "is saturated on the generated samples" in caplog.text and "--inputs" in caplog.text


@pytest.fixture(scope="module")
def vision_trial_models(tmp_path_factory):
    return model_builder(tmp_path_factory, "paddle_trial_models2.py")


def test_a_hard_mask_moves_only_at_its_near_ties(vision_trial_models, tmp_path):
    """PP-Matting's hard fusion (argmax -> Equal -> Cast -> Mul -> alpha): FP16 picked the other class at 5 near-tie
    pixels of 36,864 and those alpha values jumped by 1, refusing FP16. Values where the FP32 model's scores nearly
    tie are excused (at most 1 - min_argmax_agreement of them); a weight off by 10% is still refused."""
    from paddle2ort.convert.api import revalidate
    from paddle2ort.convert.validate import GateRerunError
    out = tmp_path / "matting"
    res = _convert(vision_trial_models("ppmatting_fixed"), out, ("fp32", "fp16"))
    alpha = next(r for r in res.reports["fp16"]["results"] if r["output"] == "add")
    m = alpha["metrics"]
    assert m.get("kind") != "hard mask" or m["near_tie_values_excused"] <= 0.05 * m["values"]
    _plant(out, tmp_path / "planted", "conv2d_9.w_0", 1.1)
    with pytest.raises(GateRerunError) as e:
        revalidate(tmp_path / "planted", vision_trial_models("ppmatting_fixed"))
    assert "'add'" in str(e.value)


def test_float_attributes_paddle_writes_as_float64_reach_onnx(vision_trial_models, tmp_path):
    """A pad value, a GroupNorm epsilon, softplus' beta and a LeakyReLU slope, stored as float64 by Paddle 3.3:
    paddle2onnx 2.1.0 read the pad value as 0 or 1e19 (run to run), the epsilon as 0 (NaN on the zero group) and
    refused softplus. Rewritten to float32 they reach the ONNX graph as written, every time; so do hardtanh's bounds
    (it clipped at -1..1), a tanh GELU (written as the erf one) and thresholded_relu's value (left out)."""
    import onnx
    from onnx import numpy_helper
    out = tmp_path / "attrs"
    res = _convert(vision_trial_models("float_attrs"), out, ("fp32",))
    assert res.reports["fp32"]["passed"]
    repairs = json.loads((out / "manifest.json").read_text())["source"]["repairs"]
    assert {"name": "paddle33_f64_attributes", "count": 5} in repairs
    assert {"name": "hardtanh_bounds", "count": 1} in repairs and {"name": "gelu_tanh", "count": 1} in repairs
    assert {"name": "thresholded_relu_value", "count": 1} in repairs
    g = onnx.load(str(out / "model.fp32.onnx")).graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    pad = next(n for n in g.node if n.op_type == "Pad")
    assert float(consts[pad.input[2]]) == 0.5
    eps = [a.f for n in g.node if n.op_type in ("InstanceNormalization", "GroupNormalization") for a in n.attribute
           if a.name == "epsilon"]
    assert eps and np.allclose(eps, 1e-2)
    clip = next(n for n in g.node if n.op_type == "Clip")
    assert [float(consts[i]) for i in clip.input[1:]] == [-0.5, 3.0]
    assert not any(n.op_type == "Erf" for n in g.node) and any(n.op_type == "Tanh" for n in g.node)


@pytest.mark.parametrize("kind, repaired", [("roi_align", 1), ("roi_align_aligned", 0)])
def test_roi_align_samples_where_paddle_does(vision_trial_models, tmp_path, kind, repaired):
    """roi_align(aligned=False) was exported in opset 17's default half_pixel mode (Paddle's aligned=True): cosine
    0.49 against Paddle on valid boxes. The program's flag now sets each RoiAlign's mode; both forms match."""
    from paddle2ort.convert import ConvertConfig, convert
    rng = np.random.default_rng(0)
    boxes = [np.array([[2, 2, 20, 20], [5, 3, 30, 25], [0, 0, 31, 31]], np.float32),
             np.array([[1, 4, 12, 28], [7, 7, 9, 9]], np.float32)]
    feed = {}
    for i, b in enumerate(boxes):
        feed.update({f"{i}/x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32), f"{i}/boxes": b,
                     f"{i}/num": np.array([len(b)], np.int32)})
    np.savez(tmp_path / "in.npz", **feed)
    out = tmp_path / "b"
    res = convert(ConvertConfig(source=vision_trial_models(kind), output=out, precisions=("fp32",),
                                inputs_npz=tmp_path / "in.npz"))
    assert res.reports["fp32"]["passed"]
    repairs = json.loads((out / "manifest.json").read_text())["source"]["repairs"]
    assert ({"name": "roi_align_mode", "count": 1} in repairs) == bool(repaired)
