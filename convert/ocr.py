"""Text recognition (PP-OCR's CTC recognizers): what the bundle must record for runtime/ocr.py to read its output.

A CTC recognizer's output is [batch, time, classes] with class 0 the CTC blank, then the character dictionary in
order, then (PaddleOCR's use_space_char) a space. The dictionary is not in the Paddle program: PaddleX exports carry
it in config.json (PostProcess CTCLabelDecode, character_dict), PaddleOCR 2.x users have it as a text file (their
rec_char_dict_path: one character a line). The bundle carries the classes in output order (CLASSES_FILE, checksummed
as every file; the manifest's extra.ocr names it), so the runtime decodes with the bundle alone; the class count
the program declares decides whether the space is one of them. Not the manifest's labels: a dictionary holds blank
characters (U+3000, the space) and repeats, which class labels must not.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from paddle2ort.runtime.errors import BadInputError

log = logging.getLogger(__name__)

TASK = "text-recognition"
DET_TASK = "text-detection"
# PaddleOCR's DB detector defaults (tools/infer/utility.py): the longest side resized to 960 (a multiple of 32),
# ImageNet mean/std on the BGR image, probability threshold 0.3, box score 0.6, boxes grown by 1.5 x area / perimeter
DB_DEFAULTS = {"post": "db", "resize_long": 960, "thresh": 0.3, "box_thresh": 0.6, "unclip_ratio": 1.5,
               "max_candidates": 1000, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
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
        if isinstance(op, dict) and isinstance(op.get("DetResizeForTest"), dict):
            long = op["DetResizeForTest"].get("resize_long", op["DetResizeForTest"].get("limit_side_len"))
            if isinstance(long, int) and long >= 32:
                out["resize_long"] = long
        if isinstance(op, dict) and isinstance(op.get("NormalizeImage"), dict):
            norm = op["NormalizeImage"]
            if all(isinstance(norm.get(k), list) and len(norm[k]) == 3 for k in ("mean", "std")):
                out["mean"], out["std"] = [float(v) for v in norm["mean"]], [float(v) for v in norm["std"]]
    return out
