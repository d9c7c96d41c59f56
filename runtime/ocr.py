"""Text recognition over a bundle (PP-OCR's CTC recognizers): image lines -> text, with PaddleOCR's own
preprocessing and CTC decoding, everything read from the bundle (convert/ocr.py records the classes).

Preprocessing is PaddleOCR's `resize_norm_img` (rec): each line resized to the model's height keeping its aspect
ratio, scaled to [-1, 1], right-padded with zeros to the batch's width (at least height * 320 / 48, as PaddleOCR);
lines are batched by aspect ratio. Decoding is its CTCLabelDecode: argmax a time step, repeats merged, blanks
dropped; the score is the mean probability of the characters kept.

Images are read as PaddleOCR reads them (cv2.imread): the EXIF orientation applied, 16-bit samples scaled to 8 bits
(Pillow's own conversion clips them: anti-aliased text turned black-and-white). A line at least 1.5 times as tall
as wide is a rotated line, which PaddleOCR's crop (get_rotate_crop_image) turns before recognition: it is read as
given and turned a quarter each way, and the reading with the highest score kept (upright text whatever way the
line was turned; a tall crop of one character still read as given).

A text direction classifier (PaddleOCR's cls, `TextDirection`; optional) turns upside-down lines before they are
read: each line resized and normalized as the recognizer's at the classifier's fixed size (48x192), and turned 180
degrees when the upside-down class scores above the bundle's threshold (PaddleOCR's cls_thresh, 0.9).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BadInputError, BundleError
from .manifest import load_bundle
from .selection import default_precision
from .session import Runner, SessionOptions

log = logging.getLogger(__name__)

TASK = "text-recognition"
DIR_TASK = "text-direction"
MIN_RATIO = 320 / 48          # PaddleOCR's rec_image_shape 3,48,320: a batch is never narrower than this ratio
MAX_WIDTH = 3200              # widest input PaddleX declares for these models (trt_dynamic_shapes); wider is squeezed
TALL = 1.5                    # height / width from which a line is a rotated one (PaddleOCR's get_rotate_crop_image)
MAX_BATCH_BYTES = 256 << 20   # one batch's input at most (a huge --batch-size of wide lines: split, not GiBs)


@dataclass(frozen=True)
class Recognition:
    text: str
    score: float              # mean probability of the characters read (0 when none)
    angle: int = 0            # degrees the image was turned (counterclockwise) before the reading kept


@dataclass(frozen=True)
class Direction:
    label: str                # the classifier's best class (PaddleOCR's: "0" or "180")
    score: float
    turned: bool              # upside down with a score above the threshold: turned 180 degrees before reading


def _taps(n_out: int, n_in: int, scale: float, interp: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's resize along one axis as (indices, weights), each [n_out, taps]: output pixel d reads the input at
    (d + 0.5) / scale - 0.5 (half-pixel centres, no antialiasing), borders replicated; area: the input span the
    output pixel covers, each input pixel weighted by its overlap (shrinking; OpenCV's own rule enlarging)."""
    d = np.arange(n_out, dtype=np.float64)
    if interp == 0:                                              # nearest: floor(d / scale)
        idx = np.floor(d / scale).astype(np.int64)[:, None]
        return np.clip(idx, 0, n_in - 1), np.ones((n_out, 1), np.float32)
    if interp == 3 and scale < 1:                                # area, shrinking
        start, end = d / scale, (d + 1) / scale
        k = int(math.ceil(1 / scale)) + 1
        idx = np.floor(start).astype(np.int64)[:, None] + np.arange(k)
        w = np.clip(np.minimum(end[:, None], idx + 1) - np.maximum(start[:, None], idx), 0, None) * scale
        return np.clip(idx, 0, n_in - 1), w.astype(np.float32)
    if interp == 3:                                              # area, enlarging: OpenCV's sharpened linear
        sx = np.floor(d / scale)
        t = (d + 1) - (sx + 1) * scale
        t = np.where(t <= 0, 0.0, t - np.floor(t))
        idx = sx.astype(np.int64)[:, None] + np.arange(2)
        return np.clip(idx, 0, n_in - 1), np.stack([1 - t, t], 1).astype(np.float32)
    x = (d + 0.5) / scale - 0.5
    x0 = np.floor(x)
    t = (x - x0)[:, None]
    if interp == 2:                                              # cubic, A = -0.75 (OpenCV)
        a = -0.75
        w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
        w1 = ((a + 2) * t - (a + 3)) * t * t + 1
        w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
        w = np.concatenate([w0, w1, w2, 1 - w0 - w1 - w2], 1)
        offs = np.arange(-1, 3)
    elif interp == 4:                                            # Lanczos-4: sinc(z) sinc(z / 4), normalized
        offs = np.arange(-3, 5)
        z = t - offs[None]
        w = np.sinc(z) * np.sinc(z / 4)
        w /= w.sum(1, keepdims=True)
    else:                                                        # linear
        w = np.concatenate([1 - t, t], 1)
        offs = np.arange(2)
    idx = x0.astype(np.int64)[:, None] + offs[None]
    return np.clip(idx, 0, n_in - 1), w.astype(np.float32)


def resize(img: np.ndarray, out_h: int, out_w: int, fy: float, fx: float, interp: int) -> np.ndarray:
    """cv2.resize of an HxWxC image to out_h x out_w, the mapping given by the scale factors (cv2.resize(im, None,
    fx=fx, fy=fy) maps by fx/fy, not by the rounded size). A uint8 image comes back as uint8 pixels (rounded,
    clipped: OpenCV's saturate_cast), floats as float32."""
    a = img.astype(np.float32)
    idx, w = _taps(out_h, img.shape[0], fy, interp)
    a = np.einsum("ok,okwc->owc", w, a[idx])
    idx, w = _taps(out_w, img.shape[1], fx, interp)
    a = np.einsum("ok,hokc->hoc", w, a[:, idx])
    if img.dtype == np.uint8:
        return np.rint(a).clip(0, 255).astype(np.uint8)
    return a


def resize_bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV's INTER_LINEAR (half-pixel centres, no antialiasing), which PaddleOCR's preprocessing uses, on an
    HxWxC array -> float32 (not rounded to the input's integers). By hand: Pillow's bilinear filter antialiases when
    it shrinks (other pixels than PaddleOCR fed the model), and OpenCV would be a large dependency for resizing."""
    return resize(img.astype(np.float32), height, width, height / img.shape[0], width / img.shape[1], 1)


def _pil_rgb(img) -> np.ndarray:
    """A PIL image -> HxWx3 uint8 RGB as OpenCV's imread gives it: EXIF orientation applied, 16/32-bit gray scaled
    to 8 bits (not clipped), the first frame of an animation (with a warning: the others are not read)."""
    from PIL import ImageOps
    if getattr(img, "n_frames", 1) > 1:
        log.warning("%s has %d frames; reading the first only", getattr(img, "filename", "") or "an image",
                    img.n_frames)
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        a = np.asarray(img).astype(np.float64)
        if img.mode.startswith("I;16") or a.max(initial=0) > 255:      # 16-bit samples: 65535 is white
            a = a / 257.0
        gray = np.rint(a).clip(0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


def _is_pil(image) -> bool:
    return hasattr(image, "convert") and hasattr(image, "mode")


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise BadInputError("reading image files needs Pillow (pip install 'paddle2ort[ocr]'); or pass the images "
                            "as HxWx3 uint8 RGB numpy arrays") from None
    return Image


def _unreadable(image, index: int, e: Exception) -> BadInputError:
    return BadInputError(f"image #{index + 1} ({image}) cannot be read as an image ({e}); give image files Pillow "
                         "reads (PNG, JPEG, BMP, TIFF, ...), or leave that one out")


def check_image_files(paths: list[Path]) -> None:
    """Command-line images, before any model loads: each an existing file whose header Pillow reads (a pattern that
    matched nothing reaches a command as written). The pixels are decoded later, an image at a time."""
    Image = _pillow()
    for i, path in enumerate(paths):
        path = Path(path)
        if not path.exists():
            glob = any(c in str(path) for c in "*?[")
            raise BadInputError(f"IMAGE {path} does not exist" + (": a pattern that matched no file reaches us as "
                                "written; check the folder and the pattern (e.g. *.png vs *.jpg)" if glob else ""))
        if path.is_dir():
            raise BadInputError(f"IMAGE {path} is a directory; give image files (e.g. {path}/*.png)")
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, DecompressionBomb...
            raise _unreadable(path, i, e) from e


def as_rgb(image, index: int) -> np.ndarray:
    """An image as HxWx3 uint8 RGB: a numpy array (HxW or HxWx1 gray, HxWx3 RGB, HxWx4 RGBA), or a file path / PIL
    image (read with Pillow, which is then needed)."""
    if isinstance(image, (str, Path)) or _is_pil(image):
        Image = _pillow()
        try:
            if _is_pil(image):
                return _pil_rgb(image)
            with Image.open(image) as img:
                return _pil_rgb(img)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise _unreadable(image, index, e) from e
    a = np.asarray(image) if isinstance(image, np.ndarray) else None
    if a is not None and a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a is not None and a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a is None or a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8 or min(a.shape[:2]) < 1:
        got = f"{a.dtype}{list(a.shape)}" if a is not None else type(image).__name__
        hint = ("; floats in [0, 1]: (x * 255).round().astype(np.uint8)" if a is not None and a.dtype.kind == "f"
                else "")
        raise BadInputError(f"image #{index + 1} is {got}; give HxWx3 uint8 RGB (HxW gray or HxWx4 RGBA are taken "
                            f"too), a PIL image or an image file's path{hint}")
    return a[:, :, :3]


def image_list(images) -> list:
    """One image (a file path, a PIL image, an HxW(xC) array) or several (a list, an NxHxWxC array) -> a list."""
    if isinstance(images, (str, Path)) or _is_pil(images) or (isinstance(images, np.ndarray)
                                                             and images.ndim in (2, 3)):
        return [images]
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise BadInputError(f"images is an array of shape {list(images.shape)}; give one HxWx3 uint8 RGB image, "
                            "an NxHxWx3 batch or a list of images")
    try:
        return list(images)
    except TypeError:
        raise BadInputError(f"images must be an image or a list of images (file paths, PIL images, HxWx3 "
                            f"uint8 RGB arrays), got {type(images).__name__}") from None


def normalize_line(rgb: np.ndarray, height: int, width: int, stretch: bool = False) -> np.ndarray:
    """One line as PaddleOCR feeds it: BGR (its models were trained on OpenCV's channel order), resized to
    `height` keeping the aspect ratio (at most `width`), (x / 255 - 0.5) / 0.5, zero-padded to `width`; stretch: to
    height x width whatever its ratio (PaddleOCR's resize_norm_img_svtr, for a model whose width is fixed).
    -> 3xHxW"""
    h, w = rgb.shape[:2]
    resized_w = width if stretch else min(width, math.ceil(height * w / h))
    x = resize_bilinear(rgb[:, :, ::-1], height, resized_w)
    x = np.rint(x).clip(0, 255)                      # OpenCV's resize gives uint8 pixels back
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :resized_w] = (x.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    return out


def ctc_decode(probs: np.ndarray, classes: list[str], blank: int = 0) -> list[Recognition]:
    """[batch, time, classes] probabilities -> text per row (repeats merged, blanks dropped)."""
    ids, best = probs.argmax(-1), probs.max(-1)
    out = []
    for row_ids, row_p in zip(ids, best):
        keep = row_ids != blank
        keep[1:] &= row_ids[1:] != row_ids[:-1]
        text = "".join(classes[i] for i in row_ids[keep])
        out.append(Recognition(text, float(row_p[keep].mean()) if keep.any() else 0.0))
    return out


class TextRecognizer:
    """Bundle-driven text-line recognition: `recognizer(images) -> [Recognition(text, score)]`."""

    def __init__(self, bundle_dir: str | Path, precision: str | None = None, session: SessionOptions = SessionOptions(),
                 batch_size: int = 6, direction: TextDirection | None = None):
        from .pipelines import scales_activations_per_batch
        if direction is not None and not isinstance(direction, TextDirection):
            raise BadInputError(f"direction must be a TextDirection (a text-direction bundle), got "
                                f"{type(direction).__name__}")
        self.direction = direction
        self.bundle = load_bundle(bundle_dir)
        m = self.bundle.manifest
        ocr = (m.extra or {}).get("ocr")
        if m.task != TASK or not isinstance(ocr, dict) or ocr.get("decode") != "ctc":
            raise BundleError(f"bundle {bundle_dir} is not a text recognizer (task={m.task!r}): give a bundle "
                              "converted from a CTC recognizer (PP-OCR rec; --task text-recognition --labels-file "
                              "DICT, or a PaddleX export)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise BadInputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.classes = self._classes(ocr)
        self.blank = int(ocr.get("blank", 0))
        spec = m.inputs[0]
        if len(m.inputs) != 1 or len(spec.shape) != 4 or not isinstance(spec.shape[2], int) or spec.shape[1] != 3:
            raise BundleError(f"bundle {bundle_dir}'s model takes {[(i.name, list(i.shape)) for i in m.inputs]}; a "
                              "text recognizer takes one [batch, 3, height, width] image with a fixed height")
        self.input_name, self.height = spec.name, spec.shape[2]
        # a fixed width (SVTR-tiny's 32 x 100): every line stretched to it, as PaddleOCR does for such models
        self.fixed_width = spec.shape[3] if isinstance(spec.shape[3], int) and spec.shape[3] > 0 else None
        self.precision = precision or default_precision(self.bundle, session.device)
        entry = m.models.get(self.precision)
        self.batch_size = 1 if entry is not None and scales_activations_per_batch(entry.options) else batch_size
        self.session = self.bundle.open_session(self.precision, session)
        self.runner = Runner(self.session, [m.outputs[0].name], session.device_id)

    def _classes(self, ocr: dict) -> list[str]:
        rel = ocr.get("classes")
        if not isinstance(rel, str) or rel not in self.bundle.manifest.files:
            raise BundleError(f"bundle {self.bundle.path}'s manifest names the class list {rel!r}, which is not one "
                              "of the bundle's checksummed files; convert the recognizer again")
        path = self.bundle.checked_path(rel, self.bundle.manifest.files[rel]["sha256"])
        try:
            classes = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BundleError(f"bundle {self.bundle.path} has no readable class list {rel!r} ({e}); "
                              "convert the recognizer again") from e
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise BundleError(f"{path} is not a list of strings; convert the recognizer again")
        return classes

    def __call__(self, images) -> list[Recognition]:
        """`images`: one image or a list of them (file paths, PIL images, HxWx3 uint8 RGB arrays); an NxHxWxC
        array is N images. -> one Recognition an image, in order."""
        rgb = [as_rgb(im, i) for i, im in enumerate(image_list(images))]
        # each line as given, and a rotated line (tall) also turned a quarter each way: the best reading is kept
        views, owner, angles = [], [], []
        for i, a in enumerate(rgb):
            tall = a.shape[0] >= TALL * a.shape[1]
            turns = ((a, 0), (np.rot90(a, 1), 90), (np.rot90(a, -1), 270)) if tall else ((a, 0),)
            views += [v for v, _ in turns]
            angles += [g for _, g in turns]
            owner += [i] * len(turns)
        if getattr(self, "direction", None) is not None:      # upside-down lines (and turned tall ones) righted
            views, turned = self.direction.upright(views)
            angles = [(g + 180 * t) % 360 for g, t in zip(angles, turned)]
        read = self._read(views)
        out: list[Recognition | None] = [None] * len(rgb)
        for i, r, g in zip(owner, read, angles):
            if out[i] is None or r.score > out[i].score:
                out[i] = Recognition(r.text, r.score, g)
        return out

    def _read(self, rgb: list[np.ndarray]) -> list[Recognition]:
        order = sorted(range(len(rgb)), key=lambda i: rgb[i].shape[1] / rgb[i].shape[0])
        out: list[Recognition | None] = [None] * len(rgb)
        s = 0
        while s < len(order):
            idx = [order[s]]
            while s + len(idx) < len(order) and len(idx) < self.batch_size:
                nxt = order[s + len(idx)]   # the widest so far (sorted): the batch's width with it
                if (len(idx) + 1) * self._width([nxt, *idx], rgb) * self.height * 12 > MAX_BATCH_BYTES:
                    break
                idx.append(nxt)
            s += len(idx)
            width = self.fixed_width or self._width(idx, rgb)
            batch = np.stack([normalize_line(rgb[i], self.height, width, stretch=self.fixed_width is not None)
                              for i in idx])
            probs = self.runner({self.input_name: batch})[0]
            if probs.ndim != 3 or probs.shape[-1] != len(self.classes):
                raise BundleError(f"bundle {self.bundle.path}'s {self.precision} model gives {list(probs.shape)}, "
                                  f"not [batch, time, {len(self.classes)}] (its class list): convert it again")
            for i, r in zip(idx, ctc_decode(probs, self.classes, self.blank)):
                out[i] = r
        return out

    def _width(self, idx: list[int], rgb: list[np.ndarray]) -> int:
        if self.fixed_width:
            return self.fixed_width
        ratio = max(MIN_RATIO, *(rgb[i].shape[1] / rgb[i].shape[0] for i in idx))
        return min(MAX_WIDTH, int(self.height * ratio))


class TextDirection:
    """Bundle-driven text direction classification (PaddleOCR's cls, `paddle2ort convert --task text-direction`):
    `classifier(images) -> [Direction]`; `classifier.upright(images)` turns the upside-down ones."""

    def __init__(self, bundle_dir: str | Path, precision: str | None = None, session: SessionOptions = SessionOptions(),
                 batch_size: int = 6, thresh: float | None = None):
        from .pipelines import scales_activations_per_batch
        self.bundle = load_bundle(bundle_dir)
        m = self.bundle.manifest
        cfg = (m.extra or {}).get("ocr")
        if m.task != DIR_TASK or not isinstance(cfg, dict) or cfg.get("classify") != "direction":
            raise BundleError(f"bundle {bundle_dir} is not a text direction classifier (task={m.task!r}): give a "
                              "bundle converted from PaddleOCR's cls model with --task text-direction")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise BadInputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if thresh is not None and (isinstance(thresh, bool) or not isinstance(thresh, (int, float))
                                   or not 0 <= thresh < 1):
            raise BadInputError(f"thresh must be a number in [0, 1), got {thresh!r}")
        shape, labels = cfg.get("image_shape"), list(m.labels or ())
        if (not isinstance(shape, list) or len(shape) != 3 or shape[0] != 3
                or not all(isinstance(d, int) and d > 0 for d in shape) or cfg.get("turn") not in labels
                or not isinstance(cfg.get("thresh"), (int, float)) or len(m.inputs) != 1):
            raise BundleError(f"bundle {bundle_dir}'s direction settings {cfg} (labels {labels}) are incomplete: "
                              "convert it again with --task text-direction")
        self.labels, self.turn = labels, labels.index(cfg["turn"])
        self.height, self.width = shape[1], shape[2]
        self.thresh = float(cfg["thresh"] if thresh is None else thresh)
        self.input_name = m.inputs[0].name
        self.precision = precision or default_precision(self.bundle, session.device)
        entry = m.models.get(self.precision)
        self.batch_size = 1 if entry is not None and scales_activations_per_batch(entry.options) else batch_size
        self.runner = Runner(self.bundle.open_session(self.precision, session),
                             [m.outputs[0].name], session.device_id)

    def __call__(self, images) -> list[Direction]:
        """`images`: a list of lines (file paths, PIL images, HxWx3 uint8 RGB arrays) -> one Direction a line."""
        rgb = [as_rgb(im, i) for i, im in enumerate(image_list(images))]
        out: list[Direction] = []
        for s in range(0, len(rgb), self.batch_size):
            batch = np.stack([normalize_line(a, self.height, self.width) for a in rgb[s:s + self.batch_size]])
            probs = self.runner({self.input_name: batch})[0]
            if probs.ndim != 2 or probs.shape != (len(batch), len(self.labels)):
                raise BundleError(f"bundle {self.bundle.path}'s {self.precision} model gives {list(probs.shape)}, "
                                  f"not [batch, {len(self.labels)}] (its labels): convert it again")
            for row in probs:
                best = int(row.argmax())
                out.append(Direction(self.labels[best], float(row[best]),
                                     best == self.turn and float(row[best]) > self.thresh))
        return out

    def upright(self, images) -> tuple[list[np.ndarray], list[bool]]:
        """The lines as HxWx3 RGB arrays, those classified upside down turned 180 degrees; and which were."""
        rgb = [as_rgb(im, i) for i, im in enumerate(images)]
        found = self(rgb) if rgb else []
        turned = [d.turned for d in found]
        if any(turned):
            log.debug("text direction: %d of %d line(s) upside down, turned", sum(turned), len(rgb))
        return [np.rot90(a, 2) if t else a for a, t in zip(rgb, turned)], turned
