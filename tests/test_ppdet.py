"""PaddleDetection inference exports (infer_cfg.yml beside the program): converted without --inputs (the gate's
deployment feed, convert/ppdet.py), refused with one clear message when infer_cfg.yml is wrong, and run by
`paddle2ort detect` (runtime/detect.py) with boxes in the original image's pixels."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from paddle2ort.cli import main

TINY_CFG = """mode: paddle
draw_threshold: 0.3
arch: PicoDet
Preprocess:
- {type: Resize, target_size: [64, 64], keep_ratio: false, interp: 0}
- {type: NormalizeImage, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], is_scale: true}
- {type: Permute}
label_list: [a, b, c, d]
"""
# the im_shape detector: keep_ratio into 48x64, padded to the program's fixed 64x64
IM_SHAPE_CFG = """mode: paddle
draw_threshold: 0.4
arch: YOLO
Preprocess:
- {type: Resize, target_size: [48, 64], keep_ratio: true, interp: 2}
- {type: Pad, size: [64, 64], fill_value: [114.0, 114.0, 114.0]}
- {type: NormalizeImage, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], is_scale: true}
- {type: Permute}
label_list: [cat, dog, bird]
"""


def _export(tiny_models, tmp_path: Path, kind: str = "detector", cfg: str = TINY_CFG) -> Path:
    src = tmp_path / kind
    shutil.copytree(tiny_models(kind), src)
    (src / "infer_cfg.yml").write_text(cfg)
    return src


def _image(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    img = np.full((h, w, 3), 235, np.uint8)
    for _ in range(6):
        y, x = int(rng.integers(0, h - 10)), int(rng.integers(0, w - 10))
        img[y:y + int(rng.integers(5, h // 2)), x:x + int(rng.integers(5, w // 2))] = rng.integers(0, 200, 3)
    return img


@pytest.fixture(scope="module")
def tiny_bundle(tiny_models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ppdet")
    out = tmp / "bundle"
    assert main(["-q", "convert", str(_export(tiny_models, tmp)), "-o", str(out), "--precision", "fp32,fp16"]) == 0
    return out


def test_tiny_export_converts_without_inputs(tiny_bundle):
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    assert m["task"] == "object-detection" and m["labels"] == ["a", "b", "c", "d"]
    det = m["extra"]["detection"]
    assert det["draw_threshold"] == 0.3 and det["inputs"] == {"image": "image", "scale_factor": "scale_factor",
                                                               "im_shape": None}
    assert [op["type"] for op in det["preprocess"]] == ["Resize", "NormalizeImage", "Permute"]
    assert m["validation"]["fp32"]["passed"] and m["validation"]["fp16"]["passed"]
    feed = np.load(tiny_bundle / "validation_inputs.npz")         # the deployment feed, not N(0, 1) values
    assert np.allclose(feed["0/scale_factor"], [[1, 1]]) and np.allclose(feed["1/scale_factor"], [[64 / 85, 1]])


def _by_hand(bundle: Path, img: np.ndarray, feed: dict) -> np.ndarray:
    import onnxruntime as ort
    s = ort.InferenceSession(str(bundle / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    return s.run(None, feed)[0]


def test_detect_boxes_in_original_pixels(tiny_bundle):
    from paddle2ort.runtime.detect import ObjectDetector
    h, w = 80, 100
    img = _image(h, w)
    # the feed by hand: nearest (interp 0) resize to 64x64, ImageNet normalization, CHW, scale factors of 80x100
    ys, xs = np.floor(np.arange(64) * h / 64).astype(int), np.floor(np.arange(64) * w / 64).astype(int)
    x = (img[ys][:, xs] / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    rows = _by_hand(tiny_bundle, img, {"image": x.transpose(2, 0, 1)[None].astype(np.float32),
                                       "scale_factor": np.array([[64 / h, 64 / w]], np.float32)})
    want = rows[(rows[:, 0] > -1) & (rows[:, 1] > 0.3)]
    got = ObjectDetector(tiny_bundle, precision="fp32")(img)
    assert len(got) == len(want) > 0
    assert [d.label for d in got] == ["abcd"[int(c)] for c in want[np.argsort(-want[:, 1], kind="stable"), 0]]
    gb = np.array(sorted(d.box for d in got))
    wb = np.array(sorted(tuple(np.clip(r[2:], 0, [w, h, w, h])) for r in want))
    np.testing.assert_allclose(gb, wb, atol=1e-3)
    assert gb[:, 2].max() > 64                                  # the original 100 px width, not the model's 64
    lower = ObjectDetector(tiny_bundle, precision="fp32", threshold=0.1)(img)
    assert len(lower) >= len(got) and all(d.score > 0.1 for d in lower)


def test_im_shape_export_and_keep_ratio(tiny_models, tmp_path):
    from paddle2ort.runtime.detect import ObjectDetector, preprocess
    out = tmp_path / "b"
    assert main(["-q", "convert", str(_export(tiny_models, tmp_path, "detector_im_shape", IM_SHAPE_CFG)),
                 "-o", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["extra"]["detection"]["inputs"]["im_shape"] == "im_shape"
    feed = np.load(out / "validation_inputs.npz")
    assert feed["1/im_shape"].tolist() == [[48, 48]] and feed["1/scale_factor"].tolist() == [[0.75, 0.75]]
    img = _image(120, 90)                           # keep_ratio: 48 / 90 of each side, 64x48 (the long side fits)
    det = ObjectDetector(out, threshold=0.05)
    feeds, p = det.feed(img)
    assert p.scale_factor == (48 / 90, 48 / 90) and p.im_shape == (64.0, 48.0)
    assert feeds["image"].shape == (1, 3, 64, 64) and feeds["im_shape"].tolist() == [[64, 48]]
    assert np.allclose(feeds["image"][0, :, :, 48:], ((114 / 255) - np.array([0.485, 0.456, 0.406])[:, None, None])
                       / np.array([0.229, 0.224, 0.225])[:, None, None], atol=1e-5)
    rows = _by_hand(out, img, feeds)
    want = rows[(rows[:, 0] > -1) & (rows[:, 1] > 0.05)]
    got = det(img)
    assert len(got) == len(want) > 0
    assert preprocess(img, m["extra"]["detection"]["preprocess"]).image.shape == (3, 64, 64)


@pytest.mark.parametrize("cfg, message", [
    ("Preprocess: [{type: Resize, target_size: [64, 64]", "cannot be read as YAML"),
    ("- just\n- a list\n", "is not a mapping"),
    ("arch: X\n", "has no Preprocess list"),
    (TINY_CFG.replace("{type: Permute}", "{type: TopDownEvalAffine, trainsize: [64, 64]}"),
     "TopDownEvalAffine are not ones paddle2ort applies"),
    (TINY_CFG.replace("interp: 0", "interp: 9"), "Resize interp must be one of"),
    (TINY_CFG.replace("std: [0.229, 0.224, 0.225]", "std: [0.2, 0]"), "NormalizeImage std must be 3"),
    (TINY_CFG.replace("draw_threshold: 0.3", "draw_threshold: 2"), "draw_threshold must be a number in [0, 1)"),
    (TINY_CFG.replace("[a, b, c, d]", "[a, b, a, d]"), "label_list repeats"),
    (TINY_CFG.replace("- {type: Permute}\n", ""), "needs one Permute"),
    (TINY_CFG.replace("[64, 64]", "[96, 96]"), "makes a 96x96 image but the program's image input is fixed at 64x64"),
])
def test_bad_infer_cfg_is_exit_2(tiny_models, tmp_path, capsys, cfg, message):
    out = tmp_path / "b"
    assert main(["convert", str(_export(tiny_models, tmp_path, cfg=cfg)), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "infer_cfg.yml" in err and "Traceback" not in err
    assert not out.exists()


def test_unsupported_op_with_inputs_converts_plain(tiny_models, tmp_path, capsys):
    """--inputs gives the gate its feed: the export converts, without the task `detect` needs (it says why)."""
    cfg = TINY_CFG.replace("{type: Permute}", "{type: Permute}\n- {type: WarpAffine, keep_res: true}")
    npz = tmp_path / "feed.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, image=rng.standard_normal((1, 3, 64, 64)).astype(np.float32) * 0.5 + 1.5,
             scale_factor=np.ones((1, 2), np.float32))
    out = tmp_path / "b"
    assert main(["convert", str(_export(tiny_models, tmp_path, cfg=cfg)), "-o", str(out), "--inputs", str(npz)]) == 0
    assert "WarpAffine" in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["task"] is None
    assert main(["detect", str(out), str(npz)]) == 2


def test_detect_cli(tiny_bundle, tmp_path, capsys):
    from PIL import Image
    png = tmp_path / "a.png"
    Image.fromarray(_image(70, 90)).save(png)
    dest = tmp_path / "found.jsonl"
    assert main(["detect", str(tiny_bundle), str(png), "--output", str(dest), "--threshold", "0.2"]) == 0
    rec = json.loads(dest.read_text())
    assert rec["image"] == str(png) and rec["detections"]
    assert all(d["score"] > 0.2 and 0 <= d["box"][2] <= 90 and d["label"] in "abcd" for d in rec["detections"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["detect", str(tiny_bundle), str(png), str(bad)]) == 2
    assert "bad.png" in capsys.readouterr().err
    assert main(["detect", str(tiny_bundle), str(png), "--threshold", "1.5"]) == 2
    assert main(["detect", str(tiny_bundle), str(png), "--output", str(tiny_bundle / "found.jsonl")]) == 2
    assert "inside the bundle" in capsys.readouterr().err and not (tiny_bundle / "found.jsonl").exists()


@pytest.mark.unit
def test_resize_kernels():
    from paddle2ort.runtime.detect import resize
    from paddle2ort.runtime.ocr import resize_bilinear
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)
    for interp in range(5):                                     # identity at scale 1, a constant stays constant
        assert np.array_equal(resize(img, 37, 53, 1.0, 1.0, interp), img)
        flat = np.full((37, 53, 3), 77, np.uint8)
        assert (resize(flat, 20, 90, 20 / 37, 90 / 53, interp) == 77).all()
    lin = resize(img.astype(np.float32), 20, 90, 20 / 37, 90 / 53, 1)
    np.testing.assert_allclose(lin, resize_bilinear(img, 20, 90), atol=1e-3)
    area = resize(img.astype(np.float32), 37 // 2 + 0, 53 // 2 + 0, 0.5, 0.5, 3)   # 2x2 box means
    np.testing.assert_allclose(area[:5, :5], img[:10, :10].astype(np.float32).reshape(5, 2, 5, 2, 3).mean((1, 3)),
                               atol=1e-3)


@pytest.mark.unit
def test_letterbox_offsets_taken_off():
    from paddle2ort.runtime.detect import preprocess
    ops = [{"type": "LetterBoxResize", "target_size": [64, 64]},
           {"type": "NormalizeImage", "mean": [0, 0, 0], "std": [1, 1, 1], "is_scale": True, "norm_type": "none"},
           {"type": "Permute"}]
    p = preprocess(np.zeros((32, 64, 3), np.uint8), ops)
    assert p.scale_factor == (1.0, 1.0) and p.im_shape == (32.0, 64.0) and p.offset == (0.0, 16.0)
    assert p.image.shape == (3, 64, 64) and np.allclose(p.image[:, :16], 128 / 255) and np.allclose(p.image[:, 20], 0)


@pytest.mark.slow
def test_real_picodet(tmp_path, capsys):
    from conftest import asset_dir
    from PIL import Image, ImageDraw
    src = asset_dir("paddlelabel_ml", "model", "PicoDet", "ckpt")
    out = tmp_path / "picodet"
    assert main(["-q", "convert", str(src), "-o", str(out), "--precision", "fp32,fp16,int8"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["task"] == "object-detection" and len(m["labels"]) == 80 and m["labels"][0] == "person"
    assert all(m["validation"][p]["passed"] for p in ("fp32", "fp16", "int8"))
    img = Image.new("RGB", (640, 480), (200, 220, 240))
    d = ImageDraw.Draw(img)
    d.rectangle([100, 200, 400, 330], fill=(180, 30, 30))
    d.ellipse([130, 300, 190, 360], fill="black")
    d.ellipse([310, 300, 370, 360], fill="black")
    png = tmp_path / "car.png"
    img.save(png)
    capsys.readouterr()
    assert main(["detect", str(out), str(png), "--threshold", "0.2"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["detections"], rec
    for det in rec["detections"]:
        x0, y0, x1, y1 = det["box"]
        assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480 and det["label"] in m["labels"]


def _paddlex_export(tiny_models, tmp_path: Path, yml: str) -> Path:
    """The tiny detector as PaddleX writes its detection and layout models: inference.json / .pdiparams and the
    PaddleDetection config under the name inference.yml."""
    src = tmp_path / "paddlex"
    src.mkdir()
    for f in Path(tiny_models("detector")).iterdir():
        shutil.copy(f, src / f.name.replace("model.", "inference."))
    (src / "inference.yml").write_text(yml)
    return src


def test_paddlex_inference_yml_is_the_detection_config(tiny_models, tmp_path):
    """PaddleX's PP-DocLayout / PicoDet-S / RT-DETR folders: their inference.yml is read as infer_cfg.yml (before,
    the model converted as a plain one, the gate fed N(0, 1) scale factors, and `detect` refused the bundle)."""
    from paddle2ort.runtime.detect import ObjectDetector
    yml = "Global: {model_name: PicoDet-S}\nmetric: COCO\nuse_dynamic_shape: false\n" + TINY_CFG
    out = tmp_path / "b"
    assert main(["-q", "convert", str(_paddlex_export(tiny_models, tmp_path, yml)), "-o", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["task"] == "object-detection" and m["labels"] == ["a", "b", "c", "d"]
    assert m["extra"]["detection"]["source"] == "inference.yml"
    assert np.allclose(np.load(out / "validation_inputs.npz")["0/scale_factor"], [[1, 1]])
    assert ObjectDetector(out, threshold=0.05)(_image(80, 100))


@pytest.mark.unit
@pytest.mark.parametrize("yml", [
    "Global: {model_name: PP-LCNet_x1_0}\nPreProcess:\n  transform_ops:\n  - ResizeImage: {resize_short: 256}\n"
    "PostProcess: {Topk: {topk: 5}}\n",                                          # PaddleClas
    "Global: {model_name: PP-OCRv5_mobile_det}\nPreProcess:\n  transform_ops:\n"
    "  - DecodeImage: {channel_first: false}\nPostProcess: {name: DBPostProcess}\n",          # PaddleOCR
    "Preprocess: [{type: Resize, target_size: [64, 64]\n",                      # not YAML: not ours to judge
])
def test_other_inference_yml_is_not_a_detection_config(tmp_path, yml):
    from types import SimpleNamespace

    from paddle2ort.convert.ppdet import read_infer_cfg
    (tmp_path / "inference.yml").write_text(yml)
    assert read_infer_cfg(SimpleNamespace(task=None, inputs_npz=None), tmp_path) is None


def test_bad_paddlex_config_names_its_file(tiny_models, tmp_path, capsys):
    yml = TINY_CFG.replace("draw_threshold: 0.3", "draw_threshold: 2")
    assert main(["convert", str(_paddlex_export(tiny_models, tmp_path, yml)), "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "inference.yml: draw_threshold must be a number in [0, 1)" in err and "Traceback" not in err
