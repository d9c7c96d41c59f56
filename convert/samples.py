"""The gate's inputs: realistic samples drawn for each input's modality, or the user's own (.npz), checked up front.

Random N(0, 1) images drive many vision models into saturation (a text detector's map is ~1e-6 everywhere), where
any broken model looks right; so image inputs get rendered structure, pages (glyph-like dark strokes, boxes and
lines on a light, slightly noisy background) and photo-like scenes (gradients, coloured shapes, texture) in turn,
normalized like ImageNet/PP-OCR, and token ids come from real sentences through the bundle's tokenizer when there
is one, else a tokenizer-like feed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from paddle2ort.runtime.arrays import sample_groups

from .errors import BadInputError

# ImageNet normalization (PaddleClas / PP-OCR det); a 1-channel input gets (x - 0.5) / 0.5.
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "I really enjoyed the new movie, the acting was wonderful!",
    "The service at this restaurant was slow and the food arrived cold.",
    "Paddle models can be converted to ONNX and served with onnxruntime.",
    "Can you tell me how to get to the nearest train station?",
    "Stock markets fell sharply on Monday after the central bank raised rates.",
    "This phone's battery lasts two days, which is great.",
    "Honestly, I don't know what to think about the election results.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Worst purchase ever. It broke after one week.",
    "She planted tomatoes, basil and peppers in the small garden behind the house.",
    "The meeting has been moved to Thursday afternoon at three o'clock.",
)


@dataclass(frozen=True)
class SampleConfig:
    seed: int = 0
    batch_sizes: tuple[int, ...] = (2, 1)        # one sample per entry: the gate also exercises dynamic shapes
    dynamic_sizes: tuple[int, ...] = (64, 32)    # value for the other dynamic dims, per sample
    image_sizes: tuple[tuple[int, int], ...] = ((96, 160), (64, 128))   # (H, W) of dynamic image dims, per sample
    input_shapes: dict | None = None             # name -> fixed shape (overrides the three above)
    # a model family's own deployment feed, (sample index, batch, rng) -> {input name: array}, used instead of
    # drawn inputs (convert/ppdet.py: a PaddleDetection export's preprocessed images and their scale factors)
    feed: Callable[[int, int, np.random.Generator], dict] | None = None

    def __post_init__(self):
        n = len(self.batch_sizes)
        if n == 0 or len(self.dynamic_sizes) != n or len(self.image_sizes) != n:
            raise BadInputError("sample config: batch_sizes, dynamic_sizes and image_sizes need one entry per "
                                "sample (at least one)")
        sizes = list(self.batch_sizes) + list(self.dynamic_sizes) + [d for hw in self.image_sizes for d in hw]
        sizes += [d for s in (self.input_shapes or {}).values() for d in s]
        if any(int(d) < 1 for d in sizes):
            raise BadInputError(f"sample sizes must be >= 1 (a zero-row sample validates nothing), got {sizes}")


def is_image(spec: dict) -> bool:
    """A float NCHW input with 1 or 3 channels."""
    shape = spec["shape"]
    return (np.issubdtype(np.dtype(spec["dtype"]), np.floating) and len(shape) == 4 and shape[1] in (1, 3))


def is_pixels(spec: dict) -> bool:
    """An integer NCHW input with 1 or 3 channels that indexes no table: an image of 0..255 values (ERNIE-Layout's
    int64 image; drawn from {0, 1} it was black)."""
    shape = spec["shape"]
    return (np.issubdtype(np.dtype(spec["dtype"]), np.integer) and len(shape) == 4 and shape[1] in (1, 3)
            and not spec.get("int_high"))


def text_like_image(rng: np.random.Generator, h: int, w: int, channels: int) -> np.ndarray:
    """[C, H, W] normalized float32: a light paper-like background with dark glyph-like strokes in text lines,
    a few boxes and rules, mild noise. Pure NumPy (no fonts needed)."""
    img = _page(rng, h, w)
    return ((img - 0.5) / 0.5)[None] if channels == 1 else _normalized(_tinted(rng, img))


def _tinted(rng: np.random.Generator, page: np.ndarray) -> np.ndarray:
    """[H, W] gray -> [H, W, 3], each channel scaled a little (a page's paper is rarely pure gray)."""
    return np.stack([page * float(rng.uniform(0.9, 1.0)) for _ in range(3)], -1)


def _normalized(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] RGB in [0, 1] -> [3, H, W] normalized as ImageNet/PP-OCR models are fed."""
    return (rgb.transpose(2, 0, 1) - _MEAN[:, None, None]) / _STD[:, None, None]


def _uint8(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] in [0, 1] -> the uint8 pixels a decoded image file has."""
    return np.rint(rgb * 255).astype(np.uint8)


def scene_like_image(rng: np.random.Generator, h: int, w: int, channels: int) -> np.ndarray:
    """[C, H, W] normalized float32, a photo-like counterpart of text_like_image: a two-colour gradient, a few
    coloured ellipses and boxes, blotchy low-frequency texture. A classifier shown only pages gave every sample
    the same saturated class (a PaddleClas trial): a model ignoring its input would have passed."""
    img = _scene(rng, h, w)
    return ((img.mean(-1) - 0.5) / 0.5)[None] if channels == 1 else _normalized(img)


def _scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """[H, W, 3] RGB in [0, 1]: scene_like_image's picture."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(rng.uniform(0, np.pi)) * yy / max(h, 1) + np.sin(rng.uniform(0, np.pi)) * xx / max(w, 1))[..., None]
    a, b = rng.uniform(0, 1, 3).astype(np.float32), rng.uniform(0, 1, 3).astype(np.float32)
    img = a + (b - a) * (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    for _ in range(int(rng.integers(3, 7))):                                  # objects
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.08, 0.35) * h, rng.uniform(0.08, 0.35) * w
        mask = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1) if rng.random() < 0.6 else \
            ((np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx))
        img[mask] = rng.uniform(0, 1, 3)
    grid = rng.normal(0, 0.08, (max(2, h // 16 + 2), max(2, w // 16 + 2), 3)).astype(np.float32)
    gy = np.minimum((yy / 16).astype(int), grid.shape[0] - 1)
    gx = np.minimum((xx / 16).astype(int), grid.shape[1] - 1)
    img = img + grid[gy, gx] + rng.normal(0, 0.02, (h, w, 3)).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def scene_like_rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """scene_like_image as a decoded image file gives it, HxWx3 uint8 RGB (for a suite's own preprocessing)."""
    return _uint8(_scene(rng, h, w))


def text_like_rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """The same structure as text_like_image as a decoded image file gives it, HxWx3 uint8 RGB: for a model family
    whose own preprocessing makes the feed (convert/ppdet.py)."""
    return _uint8(_tinted(rng, _page(rng, h, w)))


def _page(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """[H, W] gray in [0, 1]: text_like_image's page."""
    img = np.full((h, w), 0.92, np.float32) + rng.normal(0, 0.02, (h, w)).astype(np.float32)
    img += np.linspace(-0.04, 0.04, w, dtype=np.float32)[None]          # uneven lighting
    line_h = max(6, int(rng.integers(max(6, h // 6), max(7, h // 2.5))))
    y = int(rng.integers(1, max(2, h // 8)))
    while y + line_h < h:
        x = int(rng.integers(1, max(2, w // 10)))
        ink = float(rng.uniform(0.0, 0.25))
        while x < w - line_h // 2:
            gw = int(rng.integers(max(2, line_h // 3), max(3, line_h)))      # one glyph: 1-3 strokes
            for _ in range(int(rng.integers(1, 4))):
                t = max(1, line_h // 7)
                if rng.random() < 0.5:                                        # vertical stroke
                    sx = x + int(rng.integers(0, max(1, gw - t)))
                    img[y:y + line_h, sx:sx + t] = ink
                else:                                                         # horizontal stroke
                    sy = y + int(rng.integers(0, max(1, line_h - t)))
                    img[sy:sy + t, x:x + gw] = ink
            x += gw + max(1, line_h // 5)
            if rng.random() < 0.15:                                           # word gap
                x += line_h
        y += line_h + int(rng.integers(max(2, line_h // 3), line_h + 2))
    for _ in range(int(rng.integers(1, 3))):                                  # a box and a rule
        y0, x0 = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
        y1, x1 = min(h, y0 + int(rng.integers(2, max(3, h // 3)))), min(w, x0 + int(rng.integers(2, max(3, w // 3))))
        img[y0:y1, x0:x1] = np.minimum(img[y0:y1, x0:x1], float(rng.uniform(0.3, 0.7)))
    return np.clip(img, 0, 1)


def _shape(spec: dict, batch: int, dyn: int, hw: tuple[int, int], fixed: dict) -> tuple[int, ...]:
    if spec["name"] in fixed:
        return tuple(int(d) for d in fixed[spec["name"]])
    image = is_image(spec)
    out = []
    for a, d in enumerate(spec["shape"]):
        if d >= 0:
            out.append(d)
        elif a == 0:
            out.append(batch)
        else:
            out.append(hw[a - 2] if image and a >= 2 else dyn)
    return tuple(out)


def _token_arrays(tokenizer, specs: list[dict], batch: int, length: int, offset: int) -> dict[str, np.ndarray]:
    texts = [SENTENCES[(offset + i) % len(SENTENCES)] for i in range(batch)]
    enc = tokenizer.batch_encode(texts, max_length=length)
    return {s["name"]: enc[s["name"]].astype(np.dtype(s["dtype"])) for s in specs if s["name"] in enc}


TEXT_FEED = ("input_ids", "token_type_ids", "position_ids", "attention_mask")   # a tokenizer's outputs, by name


def _text_feed(specs: dict[str, dict], shape: tuple[int, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """What a tokenizer feeds an encoder, without one: rows of real-token ids (uniform below the embedding size,
    never the pad id the graph masks with) right-padded to varied lengths, sentence-pair token types, positions
    0.., and the attention mask 1 on tokens. Uniform ids and masks put the pad id and mask zeros mid-row, a feed no
    tokenizer makes, on which a right-padding contract (the FP16 graph's key lengths) is wrong by design."""
    batch, length = shape
    lengths = np.array([length] + [int(rng.integers(max(1, length // 2), length + 1)) for _ in range(batch - 1)])
    real = np.arange(length)[None] < lengths[:, None]
    ids = specs["input_ids"]
    high, pad = ids.get("int_high") or 2, ids.get("pad_id")
    pad = 0 if pad is None else pad                      # PaddleNLP's default pad_token_id
    avoid = 1 < high and 0 <= pad < high
    draw = rng.integers(0, high - 1 if avoid else high, shape)
    feed = {"input_ids": np.where(real, draw + (avoid & (draw >= pad)), pad)}
    second = np.arange(length)[None] >= (lengths[:, None] + 1) // 2
    types = (specs.get("token_type_ids") or {}).get("int_high") or 1
    feed["token_type_ids"] = (real & second & (types > 1)).astype(np.int64)
    feed["position_ids"] = np.broadcast_to(np.arange(length), shape)
    feed["attention_mask"] = real
    return {n: np.ascontiguousarray(feed[n]).astype(np.dtype(s["dtype"])) for n, s in specs.items()}


def _text_groups(inputs: list[dict]) -> dict[str, dict[str, dict]]:
    """The 2-D inputs a tokenizer would feed, by the text they belong to: prefix -> {role: spec}, the role one of
    TEXT_FEED read from the name's end ("input_ids", "query_input_ids", "title_token_type_ids"; "query_ids" is a
    text's input_ids). A two-text model (SimNet, Sentence-BERT) got uniform ids for its prefixed inputs: the pad id
    mid-row, no right-padding, per-token random token types."""
    groups: dict[str, dict[str, dict]] = {}
    for s in inputs:
        if len(s["shape"]) != 2:
            continue
        name = s["name"]
        role = next((r for r in TEXT_FEED if name == r or name.endswith("_" + r)), None)
        if role is None and name.endswith("_ids") and not name.endswith(("_type_ids", "_position_ids")):
            role = "input_ids"                  # query_ids, src_ids
            prefix = name[:-len("ids")]
        elif role is None:
            continue
        else:
            prefix = name[:-len(role)]
        groups.setdefault(prefix, {}).setdefault(role, s)
    return dict(sorted(groups.items(), key=lambda kv: kv[0] != ""))     # the unprefixed text first


def _positions_cap(inputs: list[dict], fixed: dict, length: int, pos: dict | None = None) -> int:
    """A text sample's length, at most the rows of the position table a position_ids input indexes (a UIE export
    with 48 positions was fed 64: Paddle refused it), unless --input-shape fixed the text inputs' sizes. pos: that
    input's spec (default: the one named position_ids)."""
    pos = pos or next((s for s in inputs if s["name"] == "position_ids"), None)
    if pos is None or pos["name"] in fixed or len(pos["shape"]) != 2 or pos["shape"][1] >= 0:
        return length
    table = pos.get("int_high")
    return min(length, table) if table else length


def make_samples(inputs: list[dict], cfg: SampleConfig, tokenizer=None) -> list[dict[str, np.ndarray]]:
    """Seeded inputs from the model's specs: images with rendered structure, token ids from real sentences
    when `tokenizer` (a paddle2ort.tokenization Tokenizer) is given, else a tokenizer-like feed for the text inputs
    (_text_feed), floats ~ N(0,1) and other ids uniform below the embedding size."""
    rng = np.random.default_rng(cfg.seed)
    fixed = cfg.input_shapes or {}
    unknown = set(fixed) - {i["name"] for i in inputs}
    if unknown:
        raise BadInputError(f"--input-shape names unknown input(s) {sorted(unknown)}; the model's inputs are "
                            f"{[i['name'] for i in inputs]}")
    # an input exported with a batch of 1 (a detector's scale_factor [1, 2] beside image [-1, 3, H, W]) ties every
    # input's batch to 1: a batch-2 image beside it is a feed Paddle itself never gets
    leading = [tuple(fixed[i["name"]])[:1] if i["name"] in fixed else tuple(i["shape"][:1]) for i in inputs]
    tied = 1 if (1,) in leading and any(d and d[0] < 0 for d in leading) else None
    samples, images = [], 0
    for k, (batch, dyn, hw) in enumerate(zip(cfg.batch_sizes, cfg.dynamic_sizes, cfg.image_sizes)):
        batch = tied or batch
        if cfg.feed is not None:
            samples.append(cfg.feed(k, batch, rng))
            continue
        sample, tokens = {}, None
        if tokenizer is not None and any(s["name"] == "input_ids" for s in inputs):
            ids = next(s for s in inputs if s["name"] == "input_ids")
            length = _positions_cap(inputs, fixed, _shape(ids, batch, dyn, hw, fixed)[1])
            sample.update(_token_arrays(tokenizer, inputs, batch, length, offset=k * batch))
            if sample["input_ids"].shape[1] < length:        # pad to the sample's length: dynamic shapes exercised
                pad = length - sample["input_ids"].shape[1]
                for n in list(sample):
                    fill = tokenizer.pad_id if n == "input_ids" else 0
                    sample[n] = np.pad(sample[n], ((0, 0), (0, pad)), constant_values=fill)
        for text in (_text_groups(inputs).values() if not sample else ()):
            if "input_ids" not in text or not np.issubdtype(np.dtype(text["input_ids"]["dtype"]), np.integer):
                continue
            shape = _shape(text["input_ids"], batch, dyn, hw, fixed)
            if all(_shape(s, batch, dyn, hw, fixed) == shape for s in text.values()):
                length = _positions_cap(list(text.values()), fixed, shape[1], text.get("position_ids"))
                feed = _text_feed(text, (shape[0], length), rng)
                sample.update({text[role]["name"]: a for role, a in feed.items()})
                pad_id = text["input_ids"].get("pad_id")
                if tokens is None:              # a lengths input counts the first text's tokens
                    tokens = (feed["input_ids"] != (0 if pad_id is None else pad_id)).sum(axis=1)
        for spec in inputs:
            if spec["name"] in sample or spec.get("lengths"):
                continue
            shape = _shape(spec, batch, dyn, hw, fixed)
            dtype = np.dtype(spec["dtype"])
            if dtype == np.bool_:
                arr = rng.integers(0, 2, shape).astype(np.bool_)
            elif np.issubdtype(dtype, np.integer) and len(shape) == 3 and shape[-1] == 4 and spec.get("int_high"):
                arr = _boxes(rng, shape, spec["int_high"]).astype(dtype)      # a document model's token boxes
            elif is_pixels(spec) and shape[2] >= 8 and shape[3] >= 8:          # an image of 0..255 integers
                make = lambda i: (scene_like_rgb if (images + i) % 2 else text_like_rgb)  # noqa: E731
                arr = np.stack([make(i)(rng, shape[2], shape[3]).transpose(2, 0, 1)[:shape[1]]
                                for i in range(shape[0])]).astype(dtype)
                images += shape[0]
            elif np.issubdtype(dtype, np.integer):
                arr = rng.integers(0, spec.get("int_high") or 2, shape).astype(dtype)
            elif is_image(spec) and shape[2] >= 8 and shape[3] >= 8:     # pages and photo-like scenes in turn
                make = lambda i: (scene_like_image if (images + i) % 2 else text_like_image)  # noqa: E731
                arr = np.stack([make(i)(rng, shape[2], shape[3], shape[1]) for i in range(shape[0])]).astype(dtype)
                images += shape[0]
            else:
                arr = rng.standard_normal(shape).astype(dtype)
            sample[spec["name"]] = arr
        for spec in inputs:
            if spec["name"] not in sample:              # sequence lengths, once the sequences are drawn
                sample[spec["name"]] = _lengths(spec, _shape(spec, batch, dyn, hw, fixed), inputs, sample, rng,
                                                tokens)
        samples.append(sample)
    return samples


def _boxes(rng: np.random.Generator, shape: tuple, table: int) -> np.ndarray:
    """[N, L, 4] integer boxes (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, below the table they index and at most
    1000 (LayoutLM's normalised page): LayoutXLM / ERNIE-Layout look up x, y, and the width and height x1 - x0,
    y1 - y0; drawn independently those came out negative and Paddle refused every sample."""
    top = max(1, min(1000, table - 1))
    a, b = rng.integers(0, top + 1, shape[:-1] + (2,)), rng.integers(0, top + 1, shape[:-1] + (2,))
    return np.concatenate([np.minimum(a, b), np.maximum(a, b)], axis=-1)


def _lengths(spec: dict, shape: tuple, inputs: list[dict], sample: dict, rng: np.random.Generator,
             text: np.ndarray | None = None) -> np.ndarray:
    """Sequence lengths for the sequences drawn beside them (an input the graph compares with positions 0.. or
    gives an RNN as its sequence_length, convert/_worker._is_length): the first row full, the others between half
    and the whole of the longest dynamic axis the other inputs have (a speech model's frames; where every size is
    static, axis 1: [N, T, F]'s T), so the gate runs full and padded rows alike. Drawn from {0, 1} they masked out
    every frame, and a model with broken weights passed."""
    sizes = [a.shape[ax] for s in inputs if s["name"] in sample and s is not spec
             for a in [sample[s["name"]]] for ax, d in enumerate(s["shape"]) if ax > 0 and d < 0]
    sizes = sizes or [sample[s["name"]].shape[1] for s in inputs      # static: [N, T, F]'s T, as PaddleSpeech
                      if s["name"] in sample and s is not spec and sample[s["name"]].ndim >= 2]
    if text is not None and len(shape) == 1 and shape[0] == len(text):
        return text.astype(np.dtype(spec["dtype"]))       # the rows' real tokens: what the text feed padded to
    full = max(sizes, default=1)
    values = rng.integers(max(1, (full + 1) // 2), full + 1, shape)
    values.reshape(-1)[:1] = full
    return values.astype(np.dtype(spec["dtype"]))


def load_samples(path: Path, inputs: list[dict]) -> list[dict[str, np.ndarray]]:
    """User inputs: an .npz with one array per input name, or `I/NAME` keys for several samples. Refuses, before
    any model runs, wrong names, dtypes, ranks, static sizes and empty (zero-row) arrays."""
    try:
        data = dict(np.load(path, allow_pickle=False))
    except Exception as e:  # noqa: BLE001
        raise BadInputError(f"cannot read sample inputs {path} ({e}); pass an .npz written by numpy.savez") from e
    groups = sample_groups(data, [i["name"] for i in inputs], str(path), strict=False)
    for i, g in enumerate(groups):
        for spec in inputs:
            a = g[spec["name"]]
            where = f"{path}: input {spec['name']!r}" + (f" of sample {i}" if len(groups) > 1 else "")
            if a.dtype != np.dtype(spec["dtype"]) or a.ndim != len(spec["shape"]):
                raise BadInputError(f"{where} is {a.dtype}{list(a.shape)} but the model expects {spec['dtype']} "
                                    f"of rank {len(spec['shape'])} {spec['shape']}")
            if a.size == 0 and all(g[s["name"]].size == 0 for s in inputs):   # an empty KV cache is fine
                raise BadInputError(f"{where} is empty ({list(a.shape)}): a zero-row sample validates nothing; "
                                    "give at least one row")
            bad = [(ax, d, a.shape[ax]) for ax, d in enumerate(spec["shape"]) if d >= 0 and a.shape[ax] != d]
            if bad:
                ax, d, got = bad[0]
                raise BadInputError(f"{where} has size {got} on axis {ax} where the model's size is fixed at {d} "
                                    f"(shape {spec['shape']}, -1 = any)")
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                raise BadInputError(f"{where} holds NaN/Inf values; the gate needs finite inputs")
    return groups
