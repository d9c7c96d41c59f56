"""PaddleSeg inference exports (deploy.yaml beside the program): converted without --inputs (the gate's deployment
feed, convert/ppseg.py), refused with one clear message when deploy.yaml is wrong, and run by `paddle2ort segment`
(runtime/segment.py) with the labels at the original image's size."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import model_builder

from paddle2ort.cli import main

ARGMAX_CFG = """Deploy:
  model: model.json
  params: model.pdiparams
  output_op: argmax
  transforms:
  - type: Normalize
  - {type: Resize, target_size: [64, 48]}
"""
SOFTMAX_CFG = ARGMAX_CFG.replace("argmax", "softmax").replace("- type: Normalize", "- type: Normalize\n"
                                                              "    mean: [0.485, 0.456, 0.406]\n"
                                                              "    std: [0.229, 0.224, 0.225]")
NONE_CFG = """Deploy:
  model: model.json
  params: model.pdiparams
  output_op: none
  input_shape: [1, 3, 64, 64]
  transforms:
  - type: Normalize
"""


@pytest.fixture(scope="module")
def seg_models(tmp_path_factory):
    """kind -> a folder with the tiny export (tests/paddle_seg_models.py), built once a module."""
    return model_builder(tmp_path_factory, "paddle_seg_models.py")


def _export(seg_models, tmp_path: Path, kind: str = "seg_argmax", cfg: str | None = ARGMAX_CFG) -> Path:
    src = tmp_path / kind
    shutil.copytree(seg_models(kind), src)
    if cfg is not None:
        (src / "deploy.yaml").write_text(cfg)
    return src


def _image(h: int, w: int) -> np.ndarray:
    from paddle2ort.convert.samples import scene_like_rgb
    return scene_like_rgb(np.random.default_rng(5), h, w)


def _ort(bundle: Path, feeds: dict) -> np.ndarray:
    import onnxruntime as ort
    s = ort.InferenceSession(str(bundle / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)[0]


@pytest.fixture(scope="module")
def argmax_bundle(seg_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ppseg")
    out = tmp / "bundle"
    assert main(["-q", "convert", str(_export(seg_models, tmp)), "-o", str(out), "--precision", "fp32,fp16,int8"]) == 0
    return out


def test_argmax_export_converts_without_inputs(argmax_bundle):
    m = json.loads((argmax_bundle / "manifest.json").read_text())
    assert m["task"] == "semantic-segmentation" and m["labels"] is None
    seg = m["extra"]["segmentation"]
    assert seg["output_op"] == "argmax" and seg["classes"] is None and seg["source"] == "deploy.yaml"
    assert seg["transforms"] == [
        {"type": "Normalize", "mean": [0.5] * 3, "std": [0.5] * 3},
        {"type": "Resize", "target_size": [64, 48], "keep_ratio": False, "interp": "LINEAR", "size_divisor": None}]
    assert all(m["validation"][p]["passed"] for p in ("fp32", "fp16", "int8"))
    feed = np.load(argmax_bundle / "validation_inputs.npz")     # structured images resized to 48x64, in [-1, 1]
    assert feed["0/x"].shape == (2, 3, 48, 64) and feed["1/x"].shape == (1, 3, 48, 64)
    assert feed["0/x"].min() >= -1 and feed["0/x"].max() <= 1 and feed["0/x"].std() > 0.1


def test_segment_cli_labels_at_original_size(argmax_bundle, tmp_path, capsys):
    from PIL import Image

    from paddle2ort.runtime.segment import Segmenter, nearest
    h, w = 70, 90
    img = _image(h, w)
    png = tmp_path / "a.png"
    Image.fromarray(img).save(png)
    seg = Segmenter(argmax_bundle, precision="fp32")
    feeds, p = seg.feed(img)
    assert feeds["x"].shape == (1, 3, 48, 64) and p.steps == (("resize", (h, w)),)
    small = _ort(argmax_bundle, feeds)[0, 0]                     # the model on the runtime's own input
    want = nearest(small, h, w)
    ys, xs = (np.arange(h) * 48 / h).astype(int), (np.arange(w) * 64 / w).astype(int)
    assert np.array_equal(want, small[ys][:, xs])               # nearest: source index int(k * in / out)
    capsys.readouterr()
    masks = tmp_path / "masks"
    assert main(["segment", str(argmax_bundle), str(png), "--output-dir", str(masks), "--precision", "fp32"]) == 0
    rec = json.loads(capsys.readouterr().out)
    ids, counts = np.unique(want, return_counts=True)
    assert len(ids) > 1 and rec == {"image": str(png), "size": [h, w], "mask": str(masks / "a.png"),
                                    "classes": {str(i): int(c) for i, c in zip(ids, counts)}}
    with Image.open(masks / "a.png") as m:
        assert m.mode == "L" and np.array_equal(np.asarray(m), want)
    res = seg.segment_all([img, png])
    assert all(np.array_equal(r.labels, want) for r in res)


def test_normalize_by_hand():
    from paddle2ort.runtime.segment import preprocess
    img = _image(48, 64)
    ops = [{"type": "Normalize", "mean": [0.5] * 3, "std": [0.5] * 3},
           {"type": "Resize", "target_size": [64, 48], "keep_ratio": False, "interp": "LINEAR", "size_divisor": None}]
    p = preprocess(img, ops)
    np.testing.assert_allclose(p.image, ((img / 255.0 - 0.5) / 0.5).transpose(2, 0, 1), atol=1e-6)


@pytest.mark.parametrize("kind, cfg, classes", [("seg_softmax", SOFTMAX_CFG, 4), ("seg_none_64", NONE_CFG, 4)])
def test_scores_outputs(seg_models, tmp_path, capsys, kind, cfg, classes):
    from PIL import Image

    from paddle2ort.runtime.segment import Segmenter, restore
    out = tmp_path / "b"
    assert main(["-q", "convert", str(_export(seg_models, tmp_path, kind, cfg)), "-o", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["task"] == "semantic-segmentation" and m["extra"]["segmentation"]["classes"] == classes
    assert m["extra"]["segmentation"]["output_op"] == ("softmax" if kind == "seg_softmax" else "none")
    size = (64, 64) if kind == "seg_none_64" else (50, 77)
    img = _image(*size)
    seg = Segmenter(out)
    feeds, p = seg.feed(img)
    scores = _ort(out, feeds)
    assert scores.shape[1] == classes and scores.dtype == np.float32
    got = seg(img)
    assert np.array_equal(got.labels, restore(np.argmax(scores[0], 0), p.steps)) and got.labels.shape == size
    if kind == "seg_none_64":                                   # fixed 64x64, no Resize: another size is refused
        png = tmp_path / "odd.png"
        Image.fromarray(_image(40, 50)).save(png)
        assert main(["segment", str(out), str(png)]) == 2
        assert "fixed at 64x64" in capsys.readouterr().err


BAD = [
    ("Deploy:\n  transforms: [{type: Normalize\n", "cannot be read as YAML"),
    ("Deploy: 3\n", "Deploy is int, not a mapping"),
    (ARGMAX_CFG.replace("output_op: argmax", "output_op: max"), "output_op must be one of"),
    (ARGMAX_CFG.replace("output_op: argmax", "output_op: argmax\n  input_shape: [1, 3, 64]"),
     "input_shape must be [N, 3, H, W]"),
    (ARGMAX_CFG.replace("model: model.json", "model: other.json"), "model names other.json, which is not in"),
    (ARGMAX_CFG.split("  transforms:")[0], "transforms must be a list"),
    (ARGMAX_CFG.replace("[64, 48]", "[64, 0]"), "Resize target_size must be [width, height]"),
    (ARGMAX_CFG.replace("[64, 48]}", "[64, 48], interp: RANDOM}"), "Resize interp must be one of"),
    (ARGMAX_CFG.replace("- type: Normalize", "- {type: Normalize, std: [0.5, 0, 0.5]}"), "Normalize std must be"),
    (ARGMAX_CFG.replace("[64, 48]}", "[64, 48], keep_ratio: 1}"), "keep_ratio must be true or false"),
    (ARGMAX_CFG.replace("[64, 48]}", "[64, 48], scale: 2}"), "Resize has no field scale"),
    (ARGMAX_CFG.replace("{type: Resize, target_size: [64, 48]}", "{type: ResizeByShort, short_size: [32, 48]}"),
     "short_size [32, 48] is a list"),
    (ARGMAX_CFG.replace("{type: Resize, target_size: [64, 48]}", "{type: ResizeStepScaling, min_scale_factor: 0.5}"),
     "ResizeStepScaling are not ones paddle2ort applies"),
    (ARGMAX_CFG.replace("output_op: argmax", "output_op: softmax"), "output_op softmax but the program's first"),
]


@pytest.mark.parametrize("cfg, message", BAD)
def test_bad_deploy_yaml_is_exit_2(seg_models, tmp_path, capsys, cfg, message):
    out = tmp_path / "b"
    assert main(["convert", str(_export(seg_models, tmp_path, cfg=cfg)), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "deploy.yaml" in err and "Traceback" not in err
    assert not out.exists()


def test_fixed_input_shape_mismatch_and_missing_file(seg_models, tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["convert", str(_export(seg_models, tmp_path, "seg_none_64", NONE_CFG.replace("64, 64", "32, 32"))),
                 "-o", str(out)]) == 2
    assert "input_shape [1, 3, 32, 32] but the program's input x is [1, 3, 64, 64]" in capsys.readouterr().err
    src = _export(seg_models, tmp_path / "plain", cfg=None)
    assert main(["convert", str(src), "-o", str(out), "--task", "semantic-segmentation"]) == 2
    assert "needs PaddleSeg's deploy.yaml" in capsys.readouterr().err and not out.exists()


def test_unsupported_transform_with_inputs_converts_plain(seg_models, tmp_path, capsys):
    """--inputs gives the gate its feed: the export converts, without the task `segment` needs (it says why)."""
    cfg = ARGMAX_CFG + "  - {type: RandomBlur, prob: 0.1}\n"
    npz = tmp_path / "feed.npz"
    np.savez(npz, x=np.random.default_rng(0).uniform(-1, 1, (1, 3, 48, 64)).astype(np.float32))
    out = tmp_path / "b"
    assert main(["convert", str(_export(seg_models, tmp_path, cfg=cfg)), "-o", str(out), "--inputs", str(npz)]) == 0
    assert "RandomBlur" in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["task"] is None
    png = tmp_path / "a.png"
    from PIL import Image
    Image.fromarray(_image(48, 64)).save(png)
    assert main(["segment", str(out), str(png)]) == 2
    assert "is not a semantic segmenter" in capsys.readouterr().err


def test_output_dir_safety(argmax_bundle, tmp_path, capsys):
    from PIL import Image
    shots = tmp_path / "shots"
    shots.mkdir()
    png, other = shots / "a.png", tmp_path / "a.jpg"
    Image.fromarray(_image(40, 60)).save(png)
    Image.fromarray(_image(40, 60)).save(other)
    out = tmp_path / "masks"
    out.mkdir()
    (out / "a.png").write_bytes(b"someone else's")
    assert main(["segment", str(argmax_bundle), str(png), "--output-dir", str(out)]) == 2
    assert "not an output of this command" in capsys.readouterr().err
    assert (out / "a.png").read_bytes() == b"someone else's"
    assert main(["segment", str(argmax_bundle), str(png), "--output-dir", str(argmax_bundle / "m")]) == 2
    assert "inside the bundle" in capsys.readouterr().err and not (argmax_bundle / "m").exists()
    assert main(["segment", str(argmax_bundle), str(png), "--output-dir", str(shots)]) == 2   # would be the input
    assert "would destroy the input" in capsys.readouterr().err
    assert main(["segment", str(argmax_bundle), str(png), str(other), "--output-dir", str(tmp_path / "n")]) == 2
    assert "would both write" in capsys.readouterr().err and not (tmp_path / "n").exists()
    (out / "a.png").unlink()
    for _ in range(2):                                          # a mask an earlier run wrote is replaced
        assert main(["segment", str(argmax_bundle), str(png), "--output-dir", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]   # no temp file left
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["segment", str(argmax_bundle), str(png), str(bad)]) == 2
    assert "bad.png" in capsys.readouterr().err


@pytest.mark.unit
def test_sixteen_bit_mask(tmp_path):
    from PIL import Image

    from paddle2ort.cli.segment import _our_mask, save_mask
    labels = np.arange(300 * 4, dtype=np.int32).reshape(30, 40) % 300
    save_mask(labels, tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as m:
        assert m.mode.startswith("I") and np.array_equal(np.asarray(m).astype(np.int32), labels)
    assert _our_mask(tmp_path / "m.png")


@pytest.mark.unit
def test_resize_rules_and_restore():
    """PaddleSeg 2.8's size rules (transforms.py, functional.py) and reverse_transform's order."""
    from paddle2ort.runtime.segment import preprocess, restore
    img = np.zeros((30, 50, 3), np.uint8)
    size = lambda *ops: preprocess(img, list(ops)).image.shape[1:]          # noqa: E731
    resize = {"type": "Resize", "keep_ratio": True, "interp": "NEAREST", "size_divisor": None}
    assert size({**resize, "target_size": [64, 48]}) == (38, 64)           # min(64 / 50, 48 / 30): 1.28
    assert size({**resize, "target_size": [64, 48], "size_divisor": 32}) == (64, 64)
    assert size({"type": "ResizeByLong", "long_size": 25}) == (15, 25)
    assert size({"type": "ResizeByShort", "short_size": 45, "max_size": 60.0}) == (36, 60)  # 45 -> int(60/50*30)
    assert size({"type": "LimitLong", "max_long": None, "min_long": 100}) == (60, 100)
    pad = {"type": "Padding", "target_size": [64, 32], "im_padding_value": 127.5}
    p = preprocess(img, [{"type": "ResizeByLong", "long_size": 25}, pad])
    assert p.image.shape[1:] == (32, 64) and p.image[0, 20, 30] == 127.5
    assert p.steps == (("resize", (30, 50)), ("padding", (15, 25)))
    labels = np.arange(32 * 64).reshape(32, 64)
    back = restore(labels, p.steps)
    assert back.shape == (30, 50) and back.max() < 15 * 64                  # the padding cropped off first
