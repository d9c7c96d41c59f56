"""Semantic segmentation over a bundle converted from a PaddleSeg inference export (task semantic-segmentation; the
export's deploy.yaml, read at conversion by convert/ppseg.py): image -> SegResult(labels at the image's own size,
pixels per class). Runs without Paddle.

Preprocessing is PaddleSeg 2.8's deploy path (paddleseg/transforms/transforms.py, Compose with to_rgb): the image
read as float32 RGB (cv2.imread then BGR->RGB: the pixels are never rounded between ops), the Deploy transforms in
order, HWC -> CHW. Transforms applied (names and fields as deploy.yaml writes them):
  Normalize {mean, std}             x / 255, minus mean, over std (one value or one a channel; default 0.5)
  Resize {target_size [w, h], keep_ratio, size_divisor, interp}   keep_ratio: scale min(max(t) / max(w, h),
                                    min(t) / min(w, h)), sizes rounded as Python rounds; size_divisor: each side
                                    rounded up to a multiple; interp NEAREST / LINEAR / CUBIC / AREA / LANCZOS4
  ResizeByLong {long_size}, ResizeByShort {short_size, max_size}, LimitLong {max_long, min_long}   bilinear
  Padding {target_size [w, h], im_padding_value}   bottom-right, to that size
Resizes follow OpenCV's rules (runtime/ocr.resize, the mapping given by the output size as cv2.resize(dsize) does).
The model's output is a label map (output_op argmax: integers [N, 1, H, W]) or scores (softmax / none: [N, C, H, W],
argmax over C, the first maximum on a tie as Paddle's argmax). The labels are brought back to the original size as
PaddleSeg's reverse_transform does (paddleseg/core/infer.py): each op undone last first, a padding cropped off, a
resize undone with nearest neighbour (Paddle's interpolate: source index int(k * in / out) in float32).
One image a call: sizes differ from image to image, and PaddleSeg's exports often fix the batch at 1.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BadInputError, BundleError
from .manifest import check_recorded_ops, load_bundle
from .ocr import as_rgb, image_list, resize
from .selection import default_precision
from .session import Runner, SessionOptions

log = logging.getLogger(__name__)

TASK = "semantic-segmentation"
INTERP = {"NEAREST": 0, "LINEAR": 1, "CUBIC": 2, "AREA": 3, "LANCZOS4": 4}     # PaddleSeg's names, OpenCV's codes
OUTPUT_OPS = ("argmax", "softmax", "none")
MAX_PIXELS = 1 << 26         # one preprocessed image at most (a target_size typo: refused, not GiBs allocated)
FIELDS = {"Normalize": ("mean", "std"), "Resize": ("target_size", "keep_ratio", "size_divisor", "interp"),
          "ResizeByLong": ("long_size",), "ResizeByShort": ("short_size", "max_size"),
          "LimitLong": ("max_long", "min_long"), "Padding": ("target_size", "im_padding_value")}
TRANSFORMS = tuple(FIELDS)                   # the transforms the runtime applies, each with the fields it reads


@dataclass(frozen=True)
class SegResult:
    labels: np.ndarray            # [H, W] integer class ids at the original image's size
    classes: dict[int, int]       # class id -> pixel count, ids ascending

    def to_json(self) -> dict:
        return {"size": [int(self.labels.shape[0]), int(self.labels.shape[1])],
                "classes": {str(k): v for k, v in self.classes.items()}}


@dataclass(frozen=True)
class Prepared:
    image: np.ndarray                            # [3, H, W] float32, as the model is fed
    steps: tuple[tuple[str, tuple[int, int]], ...]   # ("resize" | "padding", (h, w) before the op)


def _sized(h: float, w: float) -> tuple[int, int]:
    if h < 1 or w < 1 or h * w > MAX_PIXELS:
        raise BadInputError(f"preprocessing would make a {h}x{w} image; give an image of a usual size")
    return int(h), int(w)


def _resized(im: np.ndarray, h: int, w: int, interp: int = 1) -> np.ndarray:
    """cv2.resize(im, (w, h), interpolation=interp) on a float32 image (the scale is the sizes' ratio)."""
    h, w = _sized(h, w)
    if (h, w) == im.shape[:2]:
        return im
    return resize(im, h, w, h / im.shape[0], w / im.shape[1], interp)


def _by_side(im: np.ndarray, side: int, longest: bool) -> np.ndarray:
    """PaddleSeg's functional.resize_long / resize_short: that side to `side`, the other scaled, int(round())."""
    h, w = im.shape[:2]
    scale = float(side) / float(max(h, w) if longest else min(h, w))
    return _resized(im, int(round(h * scale)), int(round(w * scale)))


def preprocess(rgb: np.ndarray, transforms: list[dict]) -> Prepared:
    """An HxWx3 uint8 RGB image -> the model's feed, PaddleSeg's deploy transforms in order (module doc)."""
    im = rgb.astype(np.float32)
    steps = []
    for op in transforms:
        kind = op.get("type")
        h, w = im.shape[:2]
        if kind == "Normalize":
            im = (im / np.float32(255.0) - np.asarray(op["mean"], np.float32)) / np.asarray(op["std"], np.float32)
        elif kind == "Resize":
            tw, th = op["target_size"]
            if op["keep_ratio"]:
                scale = min(max(tw, th) / max(w, h), min(tw, th) / min(w, h))
                tw, th = round(w * scale), round(h * scale)
            if op["size_divisor"]:
                d = op["size_divisor"]
                tw, th = -(-tw // d) * d, -(-th // d) * d
            steps.append(("resize", (h, w)))
            im = _resized(im, th, tw, INTERP[op["interp"]])
        elif kind == "ResizeByLong":
            steps.append(("resize", (h, w)))
            im = _by_side(im, op["long_size"], True)
        elif kind == "ResizeByShort":
            short = op["short_size"]
            if short / min(h, w) * max(h, w) > op["max_size"]:
                short = int((op["max_size"] / max(h, w)) * min(h, w))
            steps.append(("resize", (h, w)))
            im = _by_side(im, short, False)
        elif kind == "LimitLong":
            steps.append(("resize", (h, w)))
            long, target = max(h, w), max(h, w)
            if op["max_long"] is not None and long > op["max_long"]:
                target = op["max_long"]
            elif op["min_long"] is not None and long < op["min_long"]:
                target = op["min_long"]
            if target != long:
                im = _by_side(im, target, True)
        elif kind == "Padding":
            tw, th = op["target_size"]
            if h > th or w > tw:
                raise BadInputError(f"Padding to {th}x{tw} (height x width): the image is {h}x{w} there, larger "
                                    "(the export's resize should come first)")
            steps.append(("padding", (h, w)))
            canvas = np.full((th, tw, im.shape[2]), op["im_padding_value"], np.float32)
            canvas[:h, :w] = im
            im = canvas
        else:
            raise BadInputError(f"transform {kind!r} is not one the runtime applies ({', '.join(TRANSFORMS)})")
    return Prepared(np.ascontiguousarray(im.transpose(2, 0, 1)), tuple(steps))


def nearest(labels: np.ndarray, h: int, w: int) -> np.ndarray:
    """Paddle's interpolate(mode='nearest', align_corners=False) of an [H', W'] map to h x w: output pixel k reads
    input int(k * in / out), the ratio and the product in float32 as Paddle's CPU kernel computes them."""
    ih, iw = labels.shape
    ys = (np.float32(ih) / np.float32(h) * np.arange(h, dtype=np.float32)).astype(np.int64)
    xs = (np.float32(iw) / np.float32(w) * np.arange(w, dtype=np.float32)).astype(np.int64)
    return labels[np.minimum(ys, ih - 1)][:, np.minimum(xs, iw - 1)]


def restore(labels: np.ndarray, steps) -> np.ndarray:
    """The [H, W] label map at the model's input size -> at the original image's (PaddleSeg's reverse_transform)."""
    for kind, (h, w) in reversed(steps):
        labels = labels[:h, :w] if kind == "padding" else nearest(labels, h, w)
    return labels


def check_transforms(transforms, where: str, error=BundleError) -> list[dict]:
    """The recorded transforms, each with the fields preprocess() reads; `error` raised naming `where`."""
    return check_recorded_ops(transforms, FIELDS, where, "transform", error)


def labels_of(out: np.ndarray, where: str) -> np.ndarray:
    """The first image's [H, W] label map from the model's output: integers [N, 1, H, W] or [N, H, W] as they are,
    scores [N, C, H, W] by argmax over C."""
    a = np.asarray(out)
    if np.issubdtype(a.dtype, np.integer) and a.ndim in (3, 4) and (a.ndim == 3 or a.shape[1] == 1):
        return a[0, 0] if a.ndim == 4 else a[0]
    if np.issubdtype(a.dtype, np.floating) and a.ndim == 4 and a.shape[1] > 1:
        return np.argmax(a[0], axis=0).astype(np.int32)
    raise BundleError(f"{where}: the model's output is {a.dtype}{list(a.shape)}, neither a label map "
                      "(integers [N, 1, H, W]) nor class scores (floats [N, C, H, W]): convert it again")


class Segmenter:
    """Bundle-driven semantic segmentation (a PaddleSeg export): `segmenter(image) -> SegResult`."""

    def __init__(self, bundle_dir: str | Path, precision: str | None = None,
                 session: SessionOptions = SessionOptions()):
        self.bundle = load_bundle(bundle_dir)
        m = self.bundle.manifest
        cfg = (m.extra or {}).get("segmentation")
        if m.task != TASK or not isinstance(cfg, dict):
            raise BundleError(f"bundle {bundle_dir} is not a semantic segmenter (task={m.task!r}): give a bundle "
                              "converted from a PaddleSeg inference export (a folder with deploy.yaml)")
        self.where = f"bundle {bundle_dir}'s manifest (extra.segmentation)"
        self.transforms = check_transforms(cfg.get("transforms"), self.where)
        if len(m.inputs) != 1 or len(m.inputs[0].shape) != 4:
            raise BundleError(f"{self.where}: the model takes {[(i.name, list(i.shape)) for i in m.inputs]}, not one "
                              "image [N, 3, H, W]: convert it again")
        self.input = m.inputs[0]
        self.output_op = cfg.get("output_op")
        self.num_classes = cfg.get("classes")
        self.precision = precision or default_precision(self.bundle, session.device)
        io = m.models[self.precision].io_dtype if self.precision in m.models else "float32"
        self.dtype = np.dtype(io if self.input.dtype.startswith("float") else self.input.dtype)
        self.runner = Runner(self.bundle.open_session(self.precision, session),
                             [m.outputs[0].name], session.device_id)

    def feed(self, rgb: np.ndarray) -> tuple[dict[str, np.ndarray], Prepared]:
        """The model's input for one HxWx3 uint8 RGB image (and what preprocessing did, to restore the size)."""
        p = preprocess(rgb, self.transforms)
        fixed = [d if isinstance(d, int) else -1 for d in self.input.shape[2:]]
        got = list(p.image.shape[1:])
        if all(d > 0 for d in fixed) and got != fixed:
            raise BadInputError(f"the image is {rgb.shape[0]}x{rgb.shape[1]} ({got[0]}x{got[1]} after the export's "
                                f"transforms) but this model's input is fixed at {fixed[0]}x{fixed[1]}: give images "
                                "of that size, or export the model with a Resize in deploy.yaml (or a dynamic "
                                "input shape)")
        return {self.input.name: p.image[None].astype(self.dtype)}, p

    def __call__(self, image) -> SegResult:
        """One image (a file path, a PIL image, an HxWx3 uint8 RGB array) -> its labels at its own size."""
        if isinstance(image, (list, tuple)):
            raise BadInputError("Segmenter takes one image a call; use segment_all() for several")
        rgb = as_rgb(image, 0)
        feeds, p = self.feed(rgb)
        labels = restore(labels_of(self.runner(feeds)[0], self.where), p.steps)
        ids, counts = np.unique(labels, return_counts=True)
        return SegResult(labels, {int(i): int(c) for i, c in zip(ids, counts)})

    def segment_all(self, images) -> list[SegResult]:
        return [self(im) for im in image_list(images)]
