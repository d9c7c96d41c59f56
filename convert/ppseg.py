"""PaddleSeg inference exports: a model folder with deploy.yaml (tools/export.py writes it) becomes a bundle of task
semantic-segmentation that runtime/segment.py runs without Paddle.

deploy.yaml's Deploy mapping says how the deployed model is fed and what it returns: model and params (the files
beside it), output_op (argmax: a label map [N, 1, H, W] int32, PaddleSeg's default; softmax: probabilities
[N, C, H, W]; none: logits), input_shape (absent or -1s when dynamic) and the transforms, applied by PaddleSeg's
deploy to the image read as float32 RGB. It is read before any worker starts: a malformed field is exit 2 naming
the file and the field, and a transform the runtime does not apply is exit 2 naming it unless --inputs gives the
gate its feed (the model is then converted as a plain one). The manifest records the transforms with PaddleSeg's
defaults filled in, the output_op and the class count where the graph says it (extra.segmentation); the gate's
samples are a deployment feed: structured images preprocessed as the runtime does (runtime/segment.preprocess), at
the export's input size when it is fixed. N(0, 1) pixels are no image a segmenter is ever shown, and a label map
of noise says little about whether FP16 or INT8 keeps the model's answers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.segment import INTERP, OUTPUT_OPS, TASK, TRANSFORMS, check_transforms, preprocess

from .samples import scene_like_rgb, text_like_rgb
from .source import read_yaml, unknown_ops

log = logging.getLogger(__name__)

CFG_NAME = "deploy.yaml"


@dataclass(frozen=True)
class SegExport:
    """What deploy.yaml says, checked."""
    path: Path
    output_op: str | None                   # None: the file predates output_op (read from the program's output)
    input_shape: list[int] | None           # [N, C, H, W], -1 where dynamic; None when not written
    transforms: list[dict]                  # normalized: every field runtime/segment.preprocess reads
    unsupported: tuple[str, ...]            # transform types the runtime does not apply (only with --inputs)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v))


def _positive(v, what: str, bad, none_ok: bool = False) -> int | None:
    if v is None and none_ok:
        return None
    if not _int(v) or not 0 < v <= 16384:
        raise bad(f"{what} must be a positive int (at most 16384), got {v!r}")
    return int(v)


def _wh(v, what: str, bad, int_ok: bool = False) -> list[int]:
    """A [w, h] size (PaddleSeg's order); Padding also takes one int for both."""
    if int_ok and _int(v):
        v = [v, v]
    if not isinstance(v, list) or len(v) != 2 or not all(_int(d) and 0 < d <= 16384 for d in v):
        raise bad(f"{what} must be [width, height] (positive ints, PaddleSeg's order), got {v!r}")
    return [int(d) for d in v]


def _channels(v, what: str, bad, nonzero: bool = False) -> list[float]:
    if not isinstance(v, list) or len(v) not in (1, 3) or not all(_num(x) for x in v) or (nonzero and 0 in v):
        raise bad(f"{what} must be 1 or 3 {'non-zero ' if nonzero else ''}numbers (one a channel), got {v!r}")
    return [float(x) for x in (v * 3 if len(v) == 1 else v)]


def _op(op: dict, bad) -> dict:
    """One transform with PaddleSeg 2.8's defaults (paddleseg/transforms/transforms.py) filled in; a field the
    transform does not take is refused, as PaddleSeg's constructor refuses it."""
    kind = op["type"]
    allowed = {"Normalize": {"mean", "std"}, "Resize": {"target_size", "keep_ratio", "size_divisor", "interp"},
               "ResizeByLong": {"long_size"}, "ResizeByShort": {"short_size", "max_size"},
               "LimitLong": {"max_long", "min_long"},
               "Padding": {"target_size", "im_padding_value", "label_padding_value"}}[kind]
    extra = sorted(set(op) - allowed - {"type"})
    if extra:
        raise bad(f"{kind} has no field {', '.join(map(str, extra))} (it takes {', '.join(sorted(allowed))})")
    if kind == "Normalize":
        return {"type": kind, "mean": _channels(op.get("mean", [0.5]), "Normalize mean", bad),
                "std": _channels(op.get("std", [0.5]), "Normalize std", bad, nonzero=True)}
    if kind == "Resize":
        interp = op.get("interp", "LINEAR")
        if interp not in INTERP:
            raise bad(f"Resize interp must be one of {', '.join(INTERP)}, got {interp!r}"
                      + (" (a random choice is a training augmentation)" if interp == "RANDOM" else ""))
        keep = op.get("keep_ratio", False)
        if not isinstance(keep, bool):
            raise bad(f"Resize keep_ratio must be true or false, got {keep!r}")
        return {"type": kind, "target_size": _wh(op.get("target_size", [512, 512]), "Resize target_size", bad),
                "keep_ratio": keep, "interp": interp,
                "size_divisor": _positive(op.get("size_divisor"), "Resize size_divisor", bad, none_ok=True)}
    if kind == "ResizeByLong":
        return {"type": kind, "long_size": _positive(op.get("long_size"), "ResizeByLong long_size", bad)}
    if kind == "ResizeByShort":
        short = op.get("short_size")
        if isinstance(short, list):
            raise bad(f"ResizeByShort short_size {short!r} is a list (a random choice: training, not deployment); "
                      "give one int")
        top = op.get("max_size", 1e10)
        if not _num(top) or top <= 0:
            raise bad(f"ResizeByShort max_size must be a positive number, got {top!r}")
        return {"type": kind, "short_size": _positive(short, "ResizeByShort short_size", bad), "max_size": float(top)}
    if kind == "LimitLong":
        hi = _positive(op.get("max_long"), "LimitLong max_long", bad, none_ok=True)
        lo = _positive(op.get("min_long"), "LimitLong min_long", bad, none_ok=True)
        if hi is not None and lo is not None and lo > hi:
            raise bad(f"LimitLong min_long {lo} is above max_long {hi}")
        return {"type": kind, "max_long": hi, "min_long": lo}
    fill = op.get("im_padding_value", 127.5)                     # Padding
    if not _num(fill):
        raise bad(f"Padding im_padding_value must be a number, got {fill!r}")
    return {"type": kind, "target_size": _wh(op.get("target_size"), "Padding target_size", bad, int_ok=True),
            "im_padding_value": float(fill)}


def read_deploy_yaml(config, folder: Path) -> SegExport | None:
    """deploy.yaml of the source folder (one with a Deploy mapping), checked; None where there is none, where it has
    no Deploy mapping (not PaddleSeg's), or where --task names another task.
    Before any worker: a malformed file, and a transform the runtime does not apply unless the user gave --inputs,
    are BadInputError (exit 2) naming the file and what is wrong. `config`: the ConvertConfig (convert/api.py)."""
    path = Path(folder) / CFG_NAME
    if config.task not in (None, TASK):
        if path.is_file():
            log.info("%s: not read (--task %s)", path, config.task)
        return None
    need = (f"task {TASK} needs PaddleSeg's {CFG_NAME} (with its Deploy mapping) beside the model")
    if not path.is_file():
        if config.task == TASK:
            raise BadInputError(f"{need} ({folder} has none): give the folder PaddleSeg's tools/export.py wrote")
        return None

    def bad(msg: str) -> BadInputError:
        return BadInputError(f"{path}: {msg}; give the {CFG_NAME} PaddleSeg's export wrote with this model")
    cfg = read_yaml(path, bad)
    if not isinstance(cfg, dict) or "Deploy" not in cfg:
        if config.task == TASK:
            raise BadInputError(f"{need}: {path} has no Deploy mapping")
        log.info("%s has no Deploy mapping (not PaddleSeg's): converted as a plain model", path)
        return None
    dep = cfg["Deploy"]
    if not isinstance(dep, dict):
        raise bad(f"Deploy is {type(dep).__name__}, not a mapping of settings")
    if config.labels is not None:
        raise BadInputError(f"--labels is not taken for a PaddleSeg export ({path}): its output is a label map or "
                            "per-pixel scores, whose class ids `paddle2ort segment` reports as numbers")
    for key in ("model", "params"):
        name = dep.get(key)
        if name is not None and (not isinstance(name, str) or not name.strip() or Path(name).name != name):
            raise bad(f"Deploy {key} must be a file name beside {CFG_NAME}, got {name!r}")
        if name is not None and not (Path(folder) / name).is_file():
            raise bad(f"Deploy {key} names {name}, which is not in {folder}")
    op = dep.get("output_op")
    if op is not None and op not in OUTPUT_OPS:
        raise bad(f"Deploy output_op must be one of {', '.join(OUTPUT_OPS)}, got {op!r}")
    shape = dep.get("input_shape")
    if shape is not None and (not isinstance(shape, list) or len(shape) != 4
                              or not all(_int(d) and (d == -1 or 0 < d <= 16384) for d in shape)
                              or shape[1] not in (-1, 3)):
        raise bad(f"Deploy input_shape must be [N, 3, H, W] (ints, -1 where dynamic), got {shape!r}")
    ops = dep.get("transforms")
    if not isinstance(ops, list):
        raise bad(f"Deploy transforms must be a list of ops (each a mapping with a type), got {ops!r:.80}")
    unsupported = unknown_ops(ops, TRANSFORMS, "Deploy transform", bad)
    if unsupported and config.inputs_npz is None:
        raise BadInputError(f"{path}: transform(s) {', '.join(unsupported)} are not ones paddle2ort applies "
                            f"({', '.join(TRANSFORMS)}), so the gate cannot make this segmenter's input: give it "
                            "--inputs FILE.npz (preprocessed images under the model's input name); the bundle is "
                            f"then converted without task {TASK}")
    transforms = [_op(t, bad) for t in ops if t["type"] in TRANSFORMS]
    check_transforms(transforms, str(path), error=BadInputError)
    return SegExport(path, op, [int(d) for d in shape] if shape is not None else None, transforms, unsupported)


def _problems(det: SegExport, ins: list[dict], outs: list[dict]) -> tuple[str | None, list[str]]:
    """(the label kind the output gives: "labels" or "scores", what does not fit PaddleSeg's deploy contract)."""
    problems = []
    if len(ins) != 1 or len(ins[0]["shape"]) != 4 or ins[0]["shape"][1] not in (3, -1) \
            or not str(ins[0]["dtype"]).startswith("float"):
        problems.append(f"its inputs are {[(i['name'], i['dtype'], list(i['shape'])) for i in ins]}, not one float "
                        "image [N, 3, H, W]")
    kind = None
    if outs:
        o = outs[0]
        shape, dtype = list(o["shape"]), str(o["dtype"])
        if dtype.startswith("int") and (len(shape) == 3 or (len(shape) == 4 and shape[1] in (1, -1))):
            kind = "labels"
        elif dtype.startswith("float") and len(shape) == 4 and shape[1] != 1:
            kind = "scores"
        else:
            problems.append(f"its first output is {dtype}{shape}, neither a label map (integers [N, 1, H, W]) nor "
                            "class scores (floats [N, C, H, W])")
    else:
        problems.append("it has no output")
    if kind is not None and det.output_op is not None and (kind == "labels") != (det.output_op == "argmax"):
        problems.append(f"Deploy output_op {det.output_op} but the program's first output is "
                        f"{outs[0]['dtype']}{list(outs[0]['shape'])} (it is not this model's {CFG_NAME})")
    return kind, problems


def deployment_feed(transforms: list[dict], spec: dict, sizes: list[tuple[int, int]]):
    """The gate's feed function (samples.SampleConfig.feed): sample k is `batch` structured images of source size
    sizes[k] (one size a sample: a batch's images need one shape), pages and photo-like scenes in turn (on pages
    alone a segmenter may answer one label everywhere), preprocessed as runtime/segment.py does."""
    fixed_batch = spec["shape"][0] if spec["shape"][0] > 0 else None

    def feed(k: int, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        h, w = sizes[k % len(sizes)]
        draw = lambda i: (scene_like_rgb if (k + i) % 2 else text_like_rgb)(rng, h, w)   # noqa: E731
        images = [preprocess(draw(i), transforms).image for i in range(fixed_batch or batch)]
        return {spec["name"]: np.stack(images).astype(np.dtype(spec["dtype"]))}
    return feed


def _made(transforms: list[dict], h: int, w: int) -> tuple[int, int]:
    return tuple(preprocess(np.zeros((h, w, 3), np.uint8), transforms).image.shape[1:])


def _source_sizes(det: SegExport, spec: dict, defaults) -> list[tuple[int, int]]:
    """Source image sizes of the gate's samples. Fixed input: its size, and one 4/3 as tall where the transforms
    bring that to the fixed size too (a Resize); else an error (the transforms do not fit the program). Dynamic:
    deploy.yaml's input_shape where it gives H and W, else the sample config's image sizes."""
    h, w = spec["shape"][2:]
    if h > 0 and w > 0:
        if _made(det.transforms, h, w) != (h, w):
            got = _made(det.transforms, h, w)
            raise BadInputError(f"{det.path}'s transforms make a {got[0]}x{got[1]} image of a {h}x{w} one but the "
                                f"program's input is fixed at {h}x{w}: it is not this model's {CFG_NAME}")
        tall = (round(h * 4 / 3), w)
        return [(h, w), tall] if _made(det.transforms, *tall) == (h, w) else [(h, w)]
    shape = det.input_shape
    if shape is not None and shape[2] > 0 and shape[3] > 0:
        return [(shape[2], shape[3]), (round(shape[2] * 4 / 3), shape[3])]
    return [tuple(hw) for hw in defaults]


def segmentation_settings(config, seg: SegExport, info: dict):
    """After inspect: the ConvertConfig (convert/api.py, changed with dataclasses.replace) with task
    semantic-segmentation, extra.segmentation, and the gate's deployment feed unless --inputs gives one. An export the
    runtime cannot run (a transform it does not apply, inputs or outputs beyond PaddleSeg's deploy contract) is
    converted as a plain model, with a warning saying why, where --inputs feeds the gate; without it, exit 2."""
    ins, outs = info["inputs"], info["outputs"]
    kind, problems = _problems(seg, ins, outs)
    where = seg.path
    if problems and config.inputs_npz is None:
        raise BadInputError(f"{where} marks a PaddleSeg export, but its program does not follow PaddleSeg's deploy "
                            f"contract: {'; '.join(problems)}. Give the gate its feed with --inputs FILE.npz (arrays "
                            "named after the model's inputs) to convert it as a plain model")
    why = ("; ".join(problems) if problems
           else f"transform(s) {', '.join(seg.unsupported)} are not ones it applies" if seg.unsupported else None)
    if why is not None:
        log.warning("%s: converted without task %s (`paddle2ort segment` will not take the bundle): %s", where, TASK,
                    why)
        return config
    spec = ins[0]
    want = seg.input_shape
    if want is not None and any(a > 0 and b > 0 and a != b for a, b in zip(want, spec["shape"])):
        raise BadInputError(f"{where}: Deploy input_shape {want} but the program's input {spec['name']} is "
                            f"{list(spec['shape'])}: it is not this model's {CFG_NAME}")
    if config.inputs_npz is None:
        sizes = _source_sizes(seg, spec, config.samples.image_sizes)
        if config.samples.input_shapes:
            log.warning("--input-shape is not used: the gate's samples are the deployment feed %s describes", where)
        config = replace(config, samples=replace(config.samples, feed=deployment_feed(seg.transforms, spec, sizes)))
    out = outs[0]
    classes = int(out["shape"][1]) if kind == "scores" and out["shape"][1] > 0 else None
    output_op = seg.output_op or ("argmax" if kind == "labels" else None)
    log.info("PaddleSeg export (%s): output_op %s, %d transform(s) (%s), %s classes; input %s %s", where.name,
             output_op or "unknown (scores)", len(seg.transforms), ", ".join(t["type"] for t in seg.transforms) or
             "none", classes or "unknown", spec["name"], list(spec["shape"]))
    return replace(config, task=TASK, extra={**config.extra, "segmentation": {
        "source": where.name, "transforms": seg.transforms, "output_op": output_op, "classes": classes,
        "input_shape": seg.input_shape}})
