"""Text detection over a bundle (PP-OCR's DB detectors) and the page pipeline: detector boxes -> cropped lines ->
the recognizer (runtime/ocr.py). The settings come from the bundle (convert/ocr.py: a PaddleX config.json, else
PaddleOCR's defaults).

Preprocessing is PaddleOCR's DetResizeForTest (PaddleOCR 2.x's limit_side_len/limit_type "max": a page longer
than the limit shrunk to it, a smaller one kept at its size; a PaddleX config's `resize_long`: the longest side
always to it; each side then a multiple of 32) and NormalizeImage (ImageNet mean/std on the BGR image).
Post-processing follows DBPostProcess with axis-aligned boxes:
the probability map above `thresh`, its connected regions (scipy.ndimage.label: OpenCV's findContours +
minAreaRect would be a large dependency for this), each region's box scored by the map's mean inside it (kept from
`box_thresh`), grown by unclip_ratio x area / perimeter on every side, scaled to the image. Text at an angle gets the
box around it (PaddleOCR cuts the rotated rectangle), which suits horizontal lines, the common page.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BadInputError, BundleError
from .manifest import load_bundle
from .ocr import Recognition, TextRecognizer, as_rgb, resize_bilinear
from .selection import default_precision
from .session import Runner, SessionOptions

log = logging.getLogger(__name__)

TASK = "text-detection"
MIN_SIDE = 3                  # DBPostProcess's min_size: a region thinner than this is noise
DROP_SCORE = 0.5              # PaddleOCR's drop_score: a line read with less confidence is left out of the page


@dataclass(frozen=True)
class Box:
    x0: int
    y0: int
    x1: int                   # exclusive
    y1: int
    score: float              # the probability map's mean inside the box

    def crop(self, rgb: np.ndarray) -> np.ndarray:
        return rgb[self.y0:self.y1, self.x0:self.x1]


@dataclass(frozen=True)
class Line:
    box: Box
    text: str
    score: float
    angle: int = 0            # degrees the crop was turned (counterclockwise) before the reading kept


def det_size(h: int, w: int, side: int, limit_type: str | None = None) -> tuple[int, int]:
    """PaddleOCR's DetResizeForTest: the height and width fed to the detector, each a multiple of 32. limit_type
    "max": shrunk so that the longest side is at most `side` (never enlarged); "min": enlarged so that the shortest
    is at least `side`; None (PaddleX's resize_long): the longest side to `side` whatever the image's size."""
    if limit_type is None:
        ratio = side / max(h, w)
        return tuple(max(int(round(s * ratio / 32) * 32), 32) for s in (h, w))
    if limit_type == "max":
        ratio = side / max(h, w) if max(h, w) > side else 1.0
    else:
        ratio = side / min(h, w) if min(h, w) < side else 1.0
    return tuple(max(int(round(int(s * ratio) / 32) * 32), 32) for s in (h, w))


def det_input(rgb: np.ndarray, resize_long: int, mean, std, limit_type: str | None = None) -> np.ndarray:
    """HxWx3 RGB -> [1, 3, H', W'] float32 as PaddleOCR feeds its detector (BGR, sides multiples of 32; det_size)."""
    rh, rw = det_size(rgb.shape[0], rgb.shape[1], resize_long, limit_type)
    x = np.rint(resize_bilinear(rgb[:, :, ::-1], rh, rw)).clip(0, 255) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def db_boxes(prob: np.ndarray, height: int, width: int, thresh: float, box_thresh: float, unclip_ratio: float,
             max_candidates: int = 1000) -> list[Box]:
    """A [H', W'] probability map -> boxes in the image's height x width pixels, in reading order."""
    from scipy import ndimage
    labels, n = ndimage.label(prob > thresh)
    sy, sx = height / prob.shape[0], width / prob.shape[1]
    boxes = []
    for region in ndimage.find_objects(labels)[:max_candidates]:
        ys, xs = region
        h, w = ys.stop - ys.start, xs.stop - xs.start
        if min(h, w) < MIN_SIDE:
            continue
        score = float(prob[region].mean())
        if score < box_thresh:
            continue
        grow = h * w * unclip_ratio / (2 * (h + w))            # PaddleOCR's unclip distance of a rectangle
        if min(h, w) + 2 * grow < MIN_SIDE + 2:
            continue
        x0, x1 = max(0, int((xs.start - grow) * sx)), min(width, int(np.ceil((xs.stop + grow) * sx)))
        y0, y1 = max(0, int((ys.start - grow) * sy)), min(height, int(np.ceil((ys.stop + grow) * sy)))
        if x1 - x0 >= 1 and y1 - y0 >= 1:
            boxes.append(Box(x0, y0, x1, y1, score))
    return reading_order(boxes)


def reading_order(boxes: list[Box], same_line_px: int = 10) -> list[Box]:
    """Top to bottom, and left to right within a line (PaddleOCR's sorted_boxes: tops within 10 px are one line)."""
    out = sorted(boxes, key=lambda b: (b.y0, b.x0))
    for i in range(len(out) - 1):
        for j in range(i, -1, -1):
            if abs(out[j + 1].y0 - out[j].y0) < same_line_px and out[j + 1].x0 < out[j].x0:
                out[j], out[j + 1] = out[j + 1], out[j]
            else:
                break
    return out


class TextDetector:
    """Bundle-driven DB text detection: `detector(image) -> [Box]` in reading order."""

    def __init__(self, bundle_dir: str | Path, precision: str | None = None,
                 session: SessionOptions = SessionOptions()):
        self.bundle = load_bundle(bundle_dir)
        m = self.bundle.manifest
        self.cfg = (m.extra or {}).get("ocr")
        if m.task != TASK or not isinstance(self.cfg, dict) or self.cfg.get("post") != "db":
            raise BundleError(f"bundle {bundle_dir} is not a text detector (task={m.task!r}): give a bundle converted "
                              "from a DB detector (PP-OCR det; --task text-detection, or a PaddleX export)")
        self.side = self.cfg.get("limit_side_len", self.cfg.get("resize_long"))
        self.limit_type = self.cfg.get("limit_type", "max") if "limit_side_len" in self.cfg else None
        if (isinstance(self.side, bool) or not isinstance(self.side, int) or self.side < 32
                or self.limit_type not in (None, "max", "min")):
            raise BundleError(f"bundle {bundle_dir}'s detector settings {self.cfg} give no resize rule (limit_side_len "
                              "and limit_type max/min, or resize_long, an integer >= 32): convert it again")
        try:
            import scipy.ndimage  # noqa: F401
        except ImportError:
            raise BadInputError("text detection needs scipy (pip install 'paddle2ort[ocr]')") from None
        self.input_name = m.inputs[0].name
        self.precision = precision or default_precision(self.bundle, session.device)
        self.runner = Runner(self.bundle.open_session(self.precision, session),
                             [m.outputs[0].name], session.device_id)

    def __call__(self, image) -> list[Box]:
        rgb = as_rgb(image, 0)
        c = self.cfg
        prob = self.runner({self.input_name: det_input(rgb, self.side, c["mean"], c["std"], self.limit_type)})[0]
        if prob.ndim != 4 or prob.shape[:2] != (1, 1):
            raise BundleError(f"bundle {self.bundle.path}'s model gives {list(prob.shape)}, not a [1, 1, H, W] "
                              "probability map: convert it again")
        return db_boxes(prob[0, 0], rgb.shape[0], rgb.shape[1], c["thresh"], c["box_thresh"], c["unclip_ratio"],
                        int(c.get("max_candidates", 1000)))


class PageReader:
    """A page: the detector's boxes, each crop read by the recognizer; lines below DROP_SCORE left out."""

    def __init__(self, detector: TextDetector, recognizer: TextRecognizer, drop_score: float = DROP_SCORE):
        self.detector, self.recognizer, self.drop_score = detector, recognizer, drop_score

    def __call__(self, image) -> list[Line]:
        rgb = as_rgb(image, 0)
        boxes = self.detector(rgb)
        reads: list[Recognition] = self.recognizer([b.crop(rgb) for b in boxes]) if boxes else []
        return [Line(b, r.text, r.score, r.angle) for b, r in zip(boxes, reads)
                if r.score >= self.drop_score and r.text]
