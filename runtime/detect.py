"""Object detection over a bundle converted from a PaddleDetection inference export (task object-detection; the
export's infer_cfg.yml, PaddleX's inference.yml, read at conversion by convert/ppdet.py): image -> [Detection(label,
score, box)].

Preprocessing is PaddleDetection's deploy/python/preprocess.py, the ops recorded in the manifest applied in order to
the decoded RGB image (as its decode_image gives it: cv2.imdecode, then BGR -> RGB):
- Resize: cv2.resize by fx/fy (keep_ratio: one scale fitting target_size's short and long sides; else each axis to
  target_size), interp 0 nearest, 1 linear, 2 cubic, 3 area, 4 Lanczos-4 (OpenCV's kernels, in NumPy);
- LetterBoxResize: fit into target_size keeping the aspect ratio (area interpolation), centred on a 127.5 border;
- Pad: bottom/right to `size` with fill_value; PadStride: bottom/right with zeros to a multiple of `stride`;
- NormalizeImage: x / 255 (is_scale), then (x - mean) / std (norm_type mean_std); Permute: HWC -> CHW.
The model's companion inputs carry what the resize did, PaddleDetection's deploy contract: `scale_factor` [1, 2] =
(resized / original) for y and x, `im_shape` [1, 2] = the resized image's (H, W). The model divides its boxes by
scale_factor, so they come back in the original image's pixels; a letterbox's border offset is taken off here. An
image is run alone (batch 1: sizes differ from image to image under keep_ratio, and some exports fix the batch).

The NMS output is rows (class, score, x0, y0, x1, y1); rows of class -1 (padding) and scores not above the
threshold (the export's draw_threshold unless given, PaddleDetection's visualize rule) are dropped.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BadInputError, BundleError
from .manifest import check_recorded_ops, load_bundle
from .ocr import as_rgb, image_list, resize
from .selection import default_precision
from .session import Runner, SessionOptions

log = logging.getLogger(__name__)

TASK = "object-detection"
# each op the runtime applies, with the fields preprocess() reads
FIELDS = {"Resize": ("target_size", "keep_ratio", "interp"), "LetterBoxResize": ("target_size",),
          "Pad": ("size", "fill_value"), "PadStride": ("stride",),
          "NormalizeImage": ("mean", "std", "is_scale", "norm_type"), "Permute": ()}
OPS = tuple(FIELDS)
INTERP = {0: "nearest", 1: "linear", 2: "cubic", 3: "area", 4: "lanczos4"}
LETTERBOX_FILL = 127.5       # PaddleDetection's LetterBoxResize border colour
MAX_PIXELS = 1 << 26         # one preprocessed image at most (a target_size typo: refused, not GiBs allocated)


@dataclass(frozen=True)
class Detection:
    label: str
    class_id: int
    score: float
    box: tuple[float, float, float, float]    # x0, y0, x1, y1 in the original image's pixels

    def to_json(self) -> dict:
        return {"label": self.label, "class_id": self.class_id, "score": round(self.score, 6),
                "box": [round(v, 2) for v in self.box]}


@dataclass(frozen=True)
class Prepared:
    image: np.ndarray                      # [3, H, W] float32, as the model is fed
    scale_factor: tuple[float, float]      # (y, x): resized / original
    im_shape: tuple[float, float]          # (H, W) of the resized image (before any padding)
    offset: tuple[float, float] = (0.0, 0.0)   # (x, y) border a letterbox put before the image, resized pixels


def _sized(h: float, w: float) -> tuple[int, int]:
    oh, ow = int(np.rint(h)), int(np.rint(w))
    if oh < 1 or ow < 1 or oh * ow > MAX_PIXELS:
        raise BadInputError(f"preprocessing would make a {oh}x{ow} image; give an image of a usual size")
    return oh, ow


def _resize_scale(h: int, w: int, target: list[int], keep_ratio: bool) -> tuple[float, float]:
    """PaddleDetection's Resize.generate_scale: (scale_y, scale_x)."""
    if keep_ratio:
        t_min, t_max = min(target), max(target)
        scale = t_min / min(h, w)
        if np.round(scale * max(h, w)) > t_max:
            scale = t_max / max(h, w)
        return scale, scale
    return target[0] / h, target[1] / w


def preprocess(rgb: np.ndarray, ops: list[dict]) -> Prepared:
    """An HxWx3 uint8 RGB image -> the model's feed, PaddleDetection's deploy ops in order (module doc)."""
    h0, w0 = rgb.shape[:2]
    im: np.ndarray = rgb
    scale, shape, offset = (1.0, 1.0), (float(h0), float(w0)), (0.0, 0.0)
    for op in ops:
        kind = op.get("type")
        if kind == "Resize":
            sy, sx = _resize_scale(im.shape[0], im.shape[1], op["target_size"], op["keep_ratio"])
            oh, ow = _sized(im.shape[0] * sy, im.shape[1] * sx)
            im = resize(im, oh, ow, sy, sx, op["interp"])
            scale, shape = (sy, sx), (float(oh), float(ow))
        elif kind == "LetterBoxResize":
            th, tw = op["target_size"]
            h, w = im.shape[:2]
            ratio = min(th / h, tw / w)
            nh, nw = _sized(round(h * ratio), round(w * ratio))
            if (nh, nw) != (h, w):
                im = resize(im, nh, nw, nh / h, nw / w, 3)
            padw, padh = (tw - nw) / 2, (th - nh) / 2
            top, left = round(padh - 0.1), round(padw - 0.1)
            fill = np.rint(LETTERBOX_FILL) if im.dtype == np.uint8 else LETTERBOX_FILL
            canvas = np.full((th, tw, im.shape[2]), fill, im.dtype)
            canvas[top:top + nh, left:left + nw] = im
            im, scale, shape, offset = canvas, (ratio, ratio), (float(nh), float(nw)), (float(left), float(top))
        elif kind == "Pad":
            th, tw = op["size"]
            h, w = im.shape[:2]
            if (h, w) != (th, tw):
                if h > th or w > tw:
                    raise BadInputError(f"Pad to {th}x{tw}: the image is {h}x{w} there, larger (the export's Resize "
                                        "should come first)")
                canvas = np.empty((th, tw, im.shape[2]), np.float32)
                canvas[:] = np.asarray(op["fill_value"], np.float32)
                canvas[:h, :w] = im
                im = canvas
            im = im.astype(np.float32)
        elif kind == "PadStride":
            s = op["stride"]
            if s > 0:
                h, w = im.shape[:2]
                ph, pw = int(math.ceil(h / s) * s), int(math.ceil(w / s) * s)
                canvas = np.zeros((ph, pw, im.shape[2]), np.float32)
                canvas[:h, :w] = im
                im = canvas
        elif kind == "NormalizeImage":
            im = im.astype(np.float32)
            if op["is_scale"]:
                im = im * np.float32(1 / 255)
            if op["norm_type"] == "mean_std":
                im = (im - np.asarray(op["mean"], np.float32)) / np.asarray(op["std"], np.float32)
        elif kind != "Permute":                  # Permute: the feed is made CHW below
            raise BadInputError(f"preprocessing op {kind!r} is not one the runtime applies ({', '.join(OPS)})")
    chw = np.ascontiguousarray(im.astype(np.float32).transpose(2, 0, 1))
    return Prepared(chw, (float(scale[0]), float(scale[1])), shape, offset)


def check_ops(ops, where: str, error=BundleError) -> list[dict]:
    """The recorded preprocessing, each op's fields as preprocess() reads them; `error` raised naming `where`."""
    check_recorded_ops(ops, FIELDS, where, "Preprocess op", error)
    if sum(o["type"] == "Permute" for o in ops) != 1:
        raise error(f"{where}: the preprocessing needs one Permute (HWC -> CHW), as PaddleDetection's exports have")
    return ops


class ObjectDetector:
    """Bundle-driven object detection (a PaddleDetection export): `detector(image) -> [Detection]`."""

    def __init__(self, bundle_dir: str | Path, precision: str | None = None, session: SessionOptions = SessionOptions(),
                 threshold: float | None = None):
        self.bundle = load_bundle(bundle_dir)
        m = self.bundle.manifest
        cfg = (m.extra or {}).get("detection")
        if m.task != TASK or not isinstance(cfg, dict):
            raise BundleError(f"bundle {bundle_dir} is not an object detector (task={m.task!r}): give a bundle "
                              "converted from a PaddleDetection inference export (a folder with infer_cfg.yml, or "
                              "PaddleX's inference.yml)")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                      or not 0 <= threshold < 1):
            raise BadInputError(f"threshold must be a number in [0, 1), got {threshold!r}")
        where = f"bundle {bundle_dir}'s manifest (extra.detection)"
        self.ops = check_ops(cfg.get("preprocess"), where)
        feeds = cfg.get("inputs") or {}
        names = {i.name for i in m.inputs}
        self.image_name = feeds.get("image")
        self.scale_name, self.shape_name = feeds.get("scale_factor"), feeds.get("im_shape")
        used = {n for n in (self.image_name, self.scale_name, self.shape_name) if n is not None}
        if self.image_name not in names or not used <= names or used != names:
            raise BundleError(f"{where} names inputs {feeds} but the model takes {sorted(names)}: convert it again")
        draw = cfg.get("draw_threshold", 0.5)
        self.threshold = float(draw if threshold is None else threshold)
        self.labels = list(m.labels or ())
        self.boxes_name, self.count_name = self._outputs(m, where)
        self.precision = precision or default_precision(self.bundle, session.device)
        self.runner = Runner(self.bundle.open_session(self.precision, session),
                             [n for n in (self.boxes_name, self.count_name) if n], session.device_id)

    @staticmethod
    def _outputs(m, where: str) -> tuple[str, str | None]:
        """The NMS detection list (rank 2, rows of 6 floats) and the per-image count (rank 1, integers) if any."""
        boxes = [o.name for o in m.outputs if len(o.shape) == 2 and o.shape[1] == 6 and o.dtype.startswith("float")]
        counts = [o.name for o in m.outputs if len(o.shape) == 1 and o.dtype.startswith("int")]
        if not boxes:
            raise BundleError(f"{where}: none of the model's outputs {[(o.name, list(o.shape)) for o in m.outputs]} "
                              "is an NMS detection list [N, 6]: convert an export with its NMS (not exclude_nms)")
        return boxes[0], (counts[0] if counts else None)

    def feed(self, rgb: np.ndarray) -> tuple[dict[str, np.ndarray], Prepared]:
        """The model's inputs for one HxWx3 uint8 RGB image (and what preprocessing did, to map boxes back)."""
        p = preprocess(rgb, self.ops)
        feeds = {self.image_name: p.image[None]}
        if self.scale_name:
            feeds[self.scale_name] = np.asarray([p.scale_factor], np.float32)
        if self.shape_name:
            feeds[self.shape_name] = np.asarray([p.im_shape], np.float32)
        return feeds, p

    def __call__(self, image) -> list[Detection]:
        """One image (a file path, a PIL image, an HxWx3 uint8 RGB array) -> its detections, best first."""
        if isinstance(image, (list, tuple)):
            raise BadInputError("ObjectDetector takes one image a call; use detect_all() for several")
        rgb = as_rgb(image, 0)
        feeds, p = self.feed(rgb)
        out = self.runner(feeds)
        rows = np.asarray(out[0], np.float32).reshape(-1, 6) if np.size(out[0]) else np.zeros((0, 6), np.float32)
        if self.count_name is not None and np.size(out[1]):
            rows = rows[:max(0, int(np.asarray(out[1]).reshape(-1)[0]))]
        h, w = rgb.shape[:2]
        sy, sx = p.scale_factor
        dx, dy = p.offset[0] / sx, p.offset[1] / sy            # a letterbox's border, in original pixels
        found = []
        for cls, score, x0, y0, x1, y1 in rows:
            if cls <= -1 or not score > self.threshold:
                continue
            c = int(cls)
            box = (min(max(float(x0) - dx, 0.0), w), min(max(float(y0) - dy, 0.0), h),
                   min(max(float(x1) - dx, 0.0), w), min(max(float(y1) - dy, 0.0), h))
            label = self.labels[c] if 0 <= c < len(self.labels) else str(c)
            found.append(Detection(label, c, float(score), box))
        return sorted(found, key=lambda d: -d.score)

    def detect_all(self, images) -> list[list[Detection]]:
        return [self(im) for im in image_list(images)]
