"""Text recognition (PP-OCR's CTC recognizers): what the bundle must record for runtime/ocr.py to read its output.

A CTC recognizer's output is [batch, time, classes] with class 0 the CTC blank, then the character dictionary in
order, then (PaddleOCR's use_space_char) a space. The dictionary is not in the Paddle program: PaddleX exports carry
it in config.json (PostProcess CTCLabelDecode, character_dict), PaddleOCR 2.x users have it as a text file (their
rec_char_dict_path: one character a line). The bundle carries the classes in output order (CLASSES_FILE, checksummed
as every file; the manifest's extra.ocr names it), so the runtime decodes with the bundle alone; the class count
the program declares decides whether the space is one of them. Not the manifest's labels: a dictionary holds blank
characters (U+3000, the space) and repeats, which class labels must not.

Detectors (DB) carry their pre- and post-processing settings in the manifest's extra.ocr; a text direction
classifier (PaddleOCR's cls, task text-direction) its labels (the manifest's) and extra.ocr: its input size, the
upside-down class and the score from which a line is turned.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from paddle2ort.runtime.errors import BadInputError

log = logging.getLogger(__name__)

TASK = "text-recognition"
DET_TASK = "text-detection"
DIR_TASK = "text-direction"
# PaddleOCR 2.x's DB detector defaults (tools/infer/utility.py): det_limit_side_len 960 with det_limit_type "max" (a
# page longer than 960 px shrunk to it, a smaller one kept at its size: not enlarged), each side then a multiple of
# 32; ImageNet mean/std on the BGR image, probability threshold 0.3, box score 0.6, boxes grown by 1.5 x area /
# perimeter. A PaddleX config's DetResizeForTest `resize_long` (the longest side always to it) replaces the limit.
DB_DEFAULTS = {"post": "db", "limit_side_len": 960, "limit_type": "max", "thresh": 0.3, "box_thresh": 0.6,
               "unclip_ratio": 1.5, "max_candidates": 1000, "mean": [0.485, 0.456, 0.406],
               "std": [0.229, 0.224, 0.225]}
# PaddleOCR 2.x's text direction classifier (ch_ppocr_mobile_v2.0_cls; tools/infer/utility.py): lines resized to
# cls_image_shape 3,48,192 as the recognizer's (BGR, (x / 255 - 0.5) / 0.5, right-padded), label_list 0,180, a line
# turned when its label holds "180" with a score above cls_thresh 0.9
DIR_SHAPE = (3, 48, 192)
DIR_LABELS = ("0", "180")
DIR_THRESH = 0.9
BLANK = "<blank>"          # class 0's label (never emitted: CTC's "no character here")
CLASSES_FILE = "ocr/classes.json"   # in the bundle: the output's classes in order (a JSON list: any character)


def read_dictionary(path: Path) -> tuple[str, ...]:
    """A character dictionary (or any label list): one entry a line, kept as written (a line holding one space is
    the space character; only the line break is cut). Refuses what cannot be one."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BadInputError(f"labels file {path} does not exist; give a UTF-8 text file, one label a line") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"labels file {path} cannot be read as UTF-8 text ({e}); give a UTF-8 text file, one "
                            "label a line") from e
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    empty = [i + 1 for i, ln in enumerate(lines) if ln == ""]
    if not lines or empty:
        raise BadInputError(f"labels file {path} " + (f"has empty line(s) {empty[:5]}: every line must be a label"
                                                       if lines else "is empty") + "; give one label a line")
    return tuple(lines)


def paddlex_post(model_dir: Path, name: str) -> tuple[dict, dict] | None:
    """(config.json, its PostProcess) of a PaddleX export whose PostProcess is `name`, else None (no such config,
    another post-processing, or not PaddleX's: a PaddleNLP config, a damaged file, which are not ours to judge)."""
    p = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    post = cfg.get("PostProcess") if isinstance(cfg, dict) else None
    return (cfg, post) if isinstance(post, dict) and post.get("name") == name else None


def paddlex_dictionary(model_dir: Path) -> tuple[str, ...] | None:
    """The CTC character dictionary of a PaddleX export (config.json beside the program), None when the folder has
    no such config or it is not a CTC recognizer's."""
    found = paddlex_post(model_dir, "CTCLabelDecode")
    chars = found[1].get("character_dict") if found else None
    if not isinstance(chars, list) or not chars or not all(isinstance(c, str) and c for c in chars):
        return None
    return tuple(chars)


def ctc_labels(characters: tuple[str, ...], classes: int, where: str) -> tuple[str, ...]:
    """The output's class labels: blank, the dictionary, and the space when the model has a class for it."""
    n = len(characters)
    if classes == n + 1:
        return (BLANK, *characters)
    if classes == n + 2:
        return (BLANK, *characters, " ")
    raise BadInputError(f"the character dictionary ({where}) has {n} entries but the model's output has {classes} "
                        f"classes: a CTC recognizer has {n + 1} (blank + dictionary) or {n + 2} (and a space). It is "
                        "not this model's dictionary: give the one it was trained with")


def paddlex_detector(model_dir: Path) -> dict | None:
    """A PaddleX DB text detector's settings (config.json: PostProcess DBPostProcess, PreProcess DetResizeForTest /
    NormalizeImage) over PaddleOCR's defaults, None when the folder has no such config."""
    found = paddlex_post(model_dir, "DBPostProcess")
    if found is None:
        return None
    cfg, post = found
    out = dict(DB_DEFAULTS)
    for k in ("thresh", "box_thresh", "unclip_ratio", "max_candidates"):
        if isinstance(post.get(k), (int, float)) and not isinstance(post.get(k), bool) and post[k] > 0:
            out[k] = post[k]
    for op in (cfg.get("PreProcess") or {}).get("transform_ops") or []:
        resize = op.get("DetResizeForTest") if isinstance(op, dict) else None
        if isinstance(resize, dict):        # PaddleOCR's DetResizeForTest: limit_side_len first, then resize_long
            side, kind = resize.get("limit_side_len"), resize.get("limit_type", "max")
            if _side(side) and kind in ("max", "min"):
                out.update(limit_side_len=side, limit_type=kind)
            elif _side(resize.get("resize_long")):
                del out["limit_side_len"], out["limit_type"]
                out["resize_long"] = resize["resize_long"]
        if isinstance(op, dict) and isinstance(op.get("NormalizeImage"), dict):
            norm = op["NormalizeImage"]
            if all(isinstance(norm.get(k), list) and len(norm[k]) == 3 for k in ("mean", "std")):
                out["mean"], out["std"] = [float(v) for v in norm["mean"]], [float(v) for v in norm["std"]]
    return out


def _side(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 32


def direction_settings(config, info: dict):
    """Task text-direction (PaddleOCR's cls: is a cropped line upside down?): the ConvertConfig with the manifest's
    labels (--labels, else PaddleOCR's 0,180) and extra.ocr: the input size (the program's own where it fixes one,
    else PaddleOCR's 48x192), which label means "turn it", and the score a turn needs. `config` is a ConvertConfig
    (convert/api.py), changed with dataclasses.replace."""
    from dataclasses import replace
    ins, outs = info["inputs"], info["outputs"]
    shape = list(ins[0]["shape"]) if len(ins) == 1 else None
    if shape is None or len(shape) != 4 or shape[1] != 3:
        got = [f"{i['name']} {list(i['shape'])}" for i in ins]
        raise BadInputError(f"a text direction classifier takes one [batch, 3, height, width] image; this model takes "
                            f"{', '.join(got) or 'nothing'}: convert it without --task text-direction")
    out_shape = list(outs[0]["shape"]) if outs else []
    labels = tuple(config.labels) if config.labels is not None else DIR_LABELS
    if len(out_shape) != 2 or out_shape[1] not in (-1, len(labels)):
        raise BadInputError(f"a text direction classifier's first output is [batch, {len(labels)}] (scores of "
                            f"{', '.join(labels)}); this model's is {out_shape}: "
                            + ("give its labels with --labels" if len(out_shape) == 2 and config.labels is None
                               else "convert it without --task text-direction"))
    turn = [x for x in labels if "180" in x]
    if len(turn) != 1:
        raise BadInputError(f"the labels {', '.join(labels)} must name exactly one upside-down class (holding "
                            "\"180\", as PaddleOCR's 0,180): give --labels in the model's output order, e.g. 0,180")
    h, w = (d if isinstance(d, int) and d > 0 else dflt for d, dflt in zip(shape[2:], DIR_SHAPE[1:]))
    log.info("text direction classifier: %dx%d input, labels %s, turned from %s > %.2f", h, w, labels, turn[0],
             DIR_THRESH)
    return replace(config, labels=labels, extra={**config.extra, "ocr": {
        "classify": "direction", "image_shape": [3, h, w], "turn": turn[0], "thresh": DIR_THRESH}})
