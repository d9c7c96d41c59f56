"""PaddleDetection inference exports: a model folder with infer_cfg.yml (tools/export_model.py writes it) becomes a
bundle of task object-detection that runtime/detect.py runs without Paddle. PaddleX's detection and layout models
(PP-DocLayout, PicoDet-S, PP-YOLOE+, RT-DETR: inference.json / .pdiparams) carry the same file under the name
inference.yml; it is read where it has PaddleDetection's schema (a Preprocess list of typed ops, with arch,
draw_threshold or label_list), not PaddleClas' or PaddleOCR's (PreProcess, PostProcess), which stay plain models.

infer_cfg.yml says how the deployed model is fed (mode, arch, draw_threshold, the Preprocess ops, label_list); the
program's inputs are PaddleDetection's deploy contract: `image` [N, 3, H, W], `scale_factor` [N, 2] (resize ratio
y, x) and optionally `im_shape` [N, 2] (H, W after the resize). Read before any worker starts (an op the runtime does
not apply is exit 2 naming it, unless --inputs gives the gate its feed), then checked against the program's inputs.
The manifest records the preprocessing, labels, draw_threshold and which inputs carry the scale factor and shape
(extra.detection), and the gate's samples are a deployment feed: structured images of a typical source size
preprocessed as the runtime does (runtime/detect.preprocess), with the scale factors and shapes that resize gave.
Random N(0, 1) scale factors would make the NMS output meaningless.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from paddle2ort.runtime.detect import INTERP, OPS, TASK, check_ops, preprocess
from paddle2ort.runtime.errors import BadInputError

from .samples import text_like_rgb
from .source import read_yaml, unknown_ops

log = logging.getLogger(__name__)

CFG_NAME = "infer_cfg.yml"
PADDLEX_CFG_NAME = "inference.yml"                # PaddleX's name for the same file (beside inference.json)
FEEDS = ("image", "scale_factor", "im_shape")     # PaddleDetection's deploy inputs
DEFAULT_DRAW = 0.5


@dataclass(frozen=True)
class DetExport:
    """What infer_cfg.yml says, checked."""
    path: Path
    arch: str | None
    mode: str | None
    draw_threshold: float
    preprocess: list[dict]              # normalized: every field runtime/detect.preprocess reads
    labels: tuple[str, ...] | None
    unsupported: tuple[str, ...]        # op types the runtime does not apply (only with --inputs)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _size(v, what: str, bad) -> list[int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = [v, v]
    if (not isinstance(v, list) or len(v) != 2 or not all(isinstance(d, int) and not isinstance(d, bool)
                                                           and 0 < d <= 16384 for d in v)):
        raise bad(f"{what} must be a positive size (an int or [height, width]), got {v!r}")
    return [int(d) for d in v]


def _triple(v, what: str, bad, nonzero: bool = False) -> list[float]:
    if not isinstance(v, list) or len(v) != 3 or not all(_num(x) for x in v) or (nonzero and 0 in v):
        raise bad(f"{what} must be 3 {'non-zero ' if nonzero else ''}numbers (one a channel), got {v!r}")
    return [float(x) for x in v]


def _op(op: dict, bad) -> dict:
    """One Preprocess op with PaddleDetection's defaults (deploy/python/preprocess.py) filled in."""
    kind = op["type"]
    if kind == "Resize":
        interp = op.get("interp", 1)
        if interp not in INTERP or isinstance(interp, bool):
            raise bad(f"Resize interp must be one of OpenCV's {sorted(INTERP)} ({', '.join(INTERP.values())}), "
                      f"got {interp!r}")
        keep = op.get("keep_ratio", True)
        if not isinstance(keep, bool):
            raise bad(f"Resize keep_ratio must be true or false, got {keep!r}")
        return {"type": kind, "target_size": _size(op.get("target_size"), "Resize target_size", bad),
                "keep_ratio": keep, "interp": int(interp)}
    if kind == "LetterBoxResize":
        return {"type": kind, "target_size": _size(op.get("target_size"), "LetterBoxResize target_size", bad)}
    if kind == "Pad":
        return {"type": kind, "size": _size(op.get("size"), "Pad size", bad),
                "fill_value": _triple(op.get("fill_value", [114.0, 114.0, 114.0]), "Pad fill_value", bad)}
    if kind == "PadStride":
        s = op.get("stride", 0)
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= 1024:
            raise bad(f"PadStride stride must be an int in [0, 1024], got {s!r}")
        return {"type": kind, "stride": s}
    if kind == "NormalizeImage":
        norm = op.get("norm_type", "mean_std")
        scale = op.get("is_scale", True)
        if norm not in ("mean_std", "none") or not isinstance(scale, bool):
            raise bad(f"NormalizeImage needs norm_type mean_std or none and is_scale true or false, got "
                      f"{norm!r} and {scale!r}")
        return {"type": kind, "mean": _triple(op.get("mean"), "NormalizeImage mean", bad),
                "std": _triple(op.get("std"), "NormalizeImage std", bad, nonzero=True), "is_scale": scale,
                "norm_type": norm}
    return {"type": kind}                                     # Permute


def read_infer_cfg(config, folder: Path) -> DetExport | None:
    """infer_cfg.yml (else a PaddleDetection-schema inference.yml) of the source folder, checked; None where there is
    none (or --task names another task).
    Before any worker: a malformed file, and an op the runtime does not apply unless the user gave --inputs, are
    BadInputError (exit 2) naming the file and what is wrong. `config`: the ConvertConfig (convert/api.py)."""
    path = Path(folder) / CFG_NAME
    if not path.is_file() and _paddlex_detection_cfg(Path(folder) / PADDLEX_CFG_NAME):
        path = Path(folder) / PADDLEX_CFG_NAME
    if config.task not in (None, TASK):
        if path.is_file():
            log.info("%s: not read (--task %s)", path, config.task)
        return None
    if not path.is_file():
        if config.task == TASK:
            raise BadInputError(f"task {TASK} needs PaddleDetection's {CFG_NAME} (PaddleX: {PADDLEX_CFG_NAME}) "
                                f"beside the model ({folder} has neither): give the folder the export wrote")
        return None

    def bad(msg: str) -> BadInputError:
        return BadInputError(f"{path}: {msg}; give the {path.name} PaddleDetection's export wrote with this model")
    cfg = read_yaml(path, bad)
    if not isinstance(cfg, dict):
        raise bad(f"is not a mapping of settings (got {type(cfg).__name__})")
    pre = cfg.get("Preprocess")
    if not isinstance(pre, list) or not pre:
        raise bad("has no Preprocess list (the ops that make the model's input from an image)")
    unsupported = unknown_ops(pre, OPS, "Preprocess op", bad)
    if unsupported and config.inputs_npz is None:
        raise BadInputError(f"{path}: Preprocess op(s) {', '.join(unsupported)} are not ones paddle2ort applies "
                            f"({', '.join(OPS)}), so the gate cannot make this detector's input: give it --inputs "
                            "FILE.npz (arrays named after the model's inputs: preprocessed images and their "
                            "scale_factor / im_shape); the bundle is then converted without task object-detection")
    ops = [_op(op, bad) for op in pre if op["type"] in OPS]
    if not unsupported:
        check_ops(ops, str(path), error=BadInputError)
    draw = cfg.get("draw_threshold", DEFAULT_DRAW)
    if not _num(draw) or not 0 <= draw < 1:
        raise bad(f"draw_threshold must be a number in [0, 1), got {draw!r}")
    labels = cfg.get("label_list")
    if labels is not None:
        if (not isinstance(labels, list) or not labels
                or not all(_num(x) or (isinstance(x, str) and x.strip()) for x in labels)):
            raise bad(f"label_list must be a non-empty list of class names, got {labels!r:.120}")
        labels = tuple(str(x) for x in labels)
        if len(set(labels)) != len(labels):
            raise bad(f"label_list repeats {sorted({x for x in labels if labels.count(x) > 1})[:5]}")
    arch, mode = cfg.get("arch"), cfg.get("mode")
    return DetExport(path, str(arch) if arch is not None else None, str(mode) if mode is not None else None,
                     float(draw), ops, labels, unsupported)


def _paddlex_detection_cfg(path: Path) -> bool:
    """Whether PaddleX's inference.yml at `path` is a PaddleDetection export's config (its Preprocess list of typed
    ops, with arch, draw_threshold or label_list); PaddleClas' and PaddleOCR's (PreProcess/PostProcess) are not, nor
    is a file that does not parse (that model is then converted as a plain one, as without the file)."""
    if not path.is_file():
        return False
    import yaml
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    pre = cfg.get("Preprocess") if isinstance(cfg, dict) else None
    return (isinstance(pre, list) and bool(pre) and all(isinstance(op, dict) and "type" in op for op in pre)
            and any(k in cfg for k in ("arch", "draw_threshold", "label_list")))


def _roles(ins: list[dict]) -> tuple[dict[str, str], list[str]]:
    """{image, scale_factor, im_shape: input name} and what does not fit PaddleDetection's deploy contract."""
    roles, problems = {}, []
    by = {i["name"]: i for i in ins}
    images = [i["name"] for i in ins if len(i["shape"]) == 4 and i["shape"][1] in (3, -1)]
    image = "image" if "image" in by else (images[0] if len(images) == 1 else None)
    if image is None or len(by[image]["shape"]) != 4 or not str(by[image]["dtype"]).startswith("float"):
        problems.append("no [N, 3, H, W] float input named image")
    else:
        roles["image"] = image
    for name in ("scale_factor", "im_shape"):
        if name in by:
            shape = list(by[name]["shape"])
            if len(shape) != 2 or shape[1] not in (2, -1) or not str(by[name]["dtype"]).startswith("float"):
                problems.append(f"{name} is {by[name]['dtype']}{shape}, not float [N, 2]")
            else:
                roles[name] = name
    others = [f"{i['name']} {i['dtype']}{list(i['shape'])}" for i in ins if i["name"] not in roles.values()
              and i["name"] != image]
    if others:
        problems.append(f"input(s) {', '.join(others)} beyond PaddleDetection's deploy feed ({', '.join(FEEDS)})")
    return roles, problems


def _source_sizes(ops: list[dict], spec: dict, default: tuple[int, int]) -> list[tuple[int, int]]:
    """Source image sizes of the gate's samples: one at the resize target (scale factors 1.0), one 4/3 as tall (a
    photo of another aspect ratio: y shrunk by 0.75; under keep_ratio both sides, another input size)."""
    target = next((op["target_size"] for op in ops if op["type"] in ("Resize", "LetterBoxResize")), None)
    if target is None:
        h, w = spec["shape"][2:]
        target = [h, w] if h > 0 and w > 0 else list(default)
    h, w = target
    return [(h, w), (max(1, round(h * 4 / 3)), w)]


def deployment_feed(ops: list[dict], roles: dict[str, str], specs: dict[str, dict], sizes: list[tuple[int, int]]):
    """The gate's feed function (samples.SampleConfig.feed): sample k is a structured image of sizes[k] preprocessed
    as runtime/detect.py does, with its scale_factor and im_shape. One image a sample, as the runtime runs them:
    paddle2onnx's multiclass_nms3 holds for a batch of 1 only (at 2 its Concat fails in onnxruntime), and the
    images of a batch would need one size."""
    def feed(k: int, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        h, w = sizes[k % len(sizes)]
        preps = [preprocess(text_like_rgb(rng, h, w), ops)]
        out = {roles["image"]: np.stack([p.image for p in preps])}
        if "scale_factor" in roles:
            out[roles["scale_factor"]] = np.asarray([p.scale_factor for p in preps], np.float32)
        if "im_shape" in roles:
            out[roles["im_shape"]] = np.asarray([p.im_shape for p in preps], np.float32)
        return {n: a.astype(np.dtype(specs[n]["dtype"])) for n, a in out.items()}
    return feed


def detection_settings(config, det: DetExport, info: dict):
    """After inspect: the ConvertConfig (convert/api.py, changed with dataclasses.replace) with task
    object-detection, the labels (--labels, else label_list), extra.detection, and the gate's deployment feed
    unless --inputs gives one. An export the runtime cannot run (an op it does not apply, inputs beyond the deploy
    contract, no NMS output) is converted as a plain model, with a warning saying why, where the gate can be fed."""
    ins, outs = info["inputs"], info["outputs"]
    roles, problems = _roles(ins)
    where = det.path
    if problems and config.inputs_npz is None:
        raise BadInputError(f"{where} marks a PaddleDetection export, but its program's inputs do not follow "
                            f"PaddleDetection's deploy contract: {'; '.join(problems)}. Give the gate its feed with "
                            "--inputs FILE.npz (arrays named after the model's inputs)")
    specs = {i["name"]: i for i in ins}
    feed = None
    if config.inputs_npz is None:
        sizes = _source_sizes(det.preprocess, specs[roles["image"]], config.samples.image_sizes[0])
        feed = deployment_feed(det.preprocess, roles, specs, sizes)
        got = feed(0, 1, np.random.default_rng(0))[roles["image"]].shape
        want = specs[roles["image"]]["shape"]
        if any(d > 0 and g != d for g, d in zip(got[2:], want[2:])):
            raise BadInputError(f"{where}'s Preprocess makes a {got[2]}x{got[3]} image but the program's "
                                f"{roles['image']} input is fixed at {want[2]}x{want[3]}: it is not this model's "
                                f"{det.path.name}")
        if config.samples.input_shapes:
            log.warning("--input-shape is not used: the gate's samples are the deployment feed %s describes", where)
        config = replace(config, samples=replace(config.samples, feed=feed))
    nms = [o for o in outs if len(o["shape"]) == 2 and o["shape"][1] == 6 and str(o["dtype"]).startswith("float")]
    why = ("its outputs are not an NMS detection list [N, 6] (exported with exclude_nms?)" if not nms
           else f"{'; '.join(problems)}" if problems
           else f"Preprocess op(s) {', '.join(det.unsupported)} are not ones it applies" if det.unsupported else None)
    if why is not None:
        log.warning("%s: converted without task %s (`paddle2ort detect` will not take the bundle): %s", where, TASK,
                    why)
        return config
    labels = config.labels if config.labels is not None else det.labels
    log.info("PaddleDetection export (%s): %s, %d preprocessing op(s), %s labels, draw_threshold %.2f; inputs %s",
             det.path.name, det.arch or "arch unknown", len(det.preprocess), len(labels) if labels else "no",
             det.draw_threshold, ", ".join(f"{k}={v}" for k, v in roles.items()))
    return replace(config, task=TASK, labels=labels, extra={**config.extra, "detection": {
        "source": det.path.name, "arch": det.arch, "mode": det.mode, "draw_threshold": det.draw_threshold,
        "preprocess": det.preprocess, "inputs": {k: roles.get(k) for k in FEEDS}}})
