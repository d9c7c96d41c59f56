"""Any bundle's model on arrays (`paddle2ort run`, `ArrayModel`): a segmenter, an image classifier, a model no task
pipeline knows. The feeds are checked against the manifest before onnxruntime sees them, each problem named with
its fix: a missing or unknown input name, another kind of dtype (a uint8 image for a float model is unnormalized,
not castable), a wrong rank, a static size, integers out of the model dtype's range. Within a kind the dtype is cast
(float64 -> float32, int32 -> int64). Dynamic dims are not compared between inputs: their names ("batch",
"height") are the converter's guess; onnxruntime's own refusal is reported with the shapes instead.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import BadInputError, DeviceError
from .manifest import TensorSpec, load_bundle
from .selection import default_precision
from .session import Runner, SessionOptions


def _kind(dtype: np.dtype) -> str:
    return "bool" if dtype == np.bool_ else "float" if np.issubdtype(dtype, np.floating) else \
        "int" if np.issubdtype(dtype, np.integer) else dtype.kind


def describe(spec: TensorSpec) -> str:
    return f"{spec.name} ({spec.dtype} [{', '.join(str(d) for d in spec.shape)}])"


def check_feeds(specs: list[TensorSpec], feeds: dict[str, np.ndarray], where: str = "the feeds"
                ) -> dict[str, np.ndarray]:
    """`feeds` as the model takes them (dtypes cast within their kind); BadInputError naming every problem."""
    names = [s.name for s in specs]
    missing = [s for s in specs if s.name not in feeds]
    unknown = sorted(set(feeds) - set(names))
    if missing or unknown:
        parts = ([f"missing {', '.join(describe(s) for s in missing)}"] if missing else []) + \
                ([f"has {', '.join(unknown)}, which the model does not take"] if unknown else [])
        raise BadInputError(f"{where}: {'; '.join(parts)}. The model takes {', '.join(describe(s) for s in specs)}: "
                            "name the arrays after its inputs (np.savez(FILE, **{name: array}))")
    out, problems = {}, []
    for s in specs:
        a = np.asarray(feeds[s.name])
        want = np.dtype(s.dtype)
        if _kind(a.dtype) != _kind(want):
            hint = (" (an image read as uint8 is not normalized: apply the model's preprocessing, e.g. "
                    "(x / 255 - mean) / std, and save float32)" if _kind(want) == "float" and _kind(a.dtype) == "int"
                    else "")
            problems.append(f"{s.name} is {a.dtype}, the model takes {want}{hint}")
            continue
        if a.ndim != len(s.shape):
            problems.append(f"{s.name} has {a.ndim} dims {list(a.shape)}, the model takes {len(s.shape)}: "
                            f"[{', '.join(str(d) for d in s.shape)}]")
            continue
        for axis, (dim, n) in enumerate(zip(s.shape, a.shape)):     # (a dynamic dim's name is the converter's
            if isinstance(dim, int) and dim != n:                        # guess, e.g. "height": not checked)
                problems.append(f"{s.name} has size {n} on axis {axis}, the model was exported for {dim} there")
        if _kind(want) == "int" and a.size and a.dtype != want:
            info = np.iinfo(want)
            if a.min() < info.min or a.max() > info.max:
                problems.append(f"{s.name} holds values {a.min()}..{a.max()}, beyond {want}")
                continue
        out[s.name] = np.ascontiguousarray(a.astype(want, copy=False))
    if problems:
        raise BadInputError(f"{where}: {'; '.join(problems)}")
    return out


def sample_groups(data: dict[str, np.ndarray], names: list[str], where: str, strict: bool = True
                  ) -> list[dict[str, np.ndarray]]:
    """The samples of an .npz's arrays: one array per input name, or `I/NAME` keys for several samples (as the gate's
    validation_inputs.npz holds them; I in numeric order); BadInputError naming what is missing, and with `strict`
    arrays the model does not take (a misspelled name)."""
    if all(n in data for n in names):
        groups = [{n: data[n] for n in names}]
        extra = set(data) - set(names)
    else:
        idx = sorted({k.split("/", 1)[0] for k in data if "/" in k}, key=lambda i: (len(i), i))
        groups = [{n: data.get(f"{i}/{n}") for n in names} for i in idx]
        extra = {k for k in data if "/" not in k or k.split("/", 1)[1] not in names}
    if not groups or any(v is None for g in groups for v in g.values()) or (strict and extra):
        raise BadInputError(f"{where} must hold arrays named {names} (or '0/NAME', '1/NAME', ... for several "
                            f"samples); it has {sorted(data)}")
    return groups


def load_arrays(path: Path, option: str = "--inputs") -> dict[str, np.ndarray]:
    """The arrays of an .npz file (no pickled objects); BadInputError for a file that is none."""
    import zipfile
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise BadInputError(f"{option} {path} is not a readable .npz file ({e}); save the inputs with "
                            "np.savez(FILE, **{input_name: array})") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise BadInputError(f"{option} {path} is a single .npy array; save the inputs by name: "
                            "np.savez(FILE, **{input_name: array})")
    with z:
        return {k: z[k] for k in z.files}


def join_samples(outputs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-sample outputs as one .npz's arrays: plain names for one sample, `I/NAME` for several."""
    if len(outputs) == 1:
        return dict(outputs[0])
    return {f"{i}/{k}": v for i, out in enumerate(outputs) for k, v in out.items()}


class ArrayModel:
    """`model(feeds) -> {output name: array}` for a bundle's model at one precision (its checksum verified)."""

    def __init__(self, bundle_dir: str | Path, precision: str | None = None,
                 session: SessionOptions = SessionOptions()):
        self.bundle = load_bundle(bundle_dir)
        m = self.bundle.manifest
        self.inputs, self.outputs = list(m.inputs), list(m.outputs)
        self.precision = precision or default_precision(self.bundle, session.device)
        self.runner = Runner(self.bundle.open_session(self.precision, session),
                             [o.name for o in self.outputs], session.device_id)

    def __call__(self, feeds: dict[str, np.ndarray], where: str = "the feeds") -> dict[str, np.ndarray]:
        checked = check_feeds(self.inputs, feeds, where)
        try:
            got = self.runner(checked)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own (pybind) exception types
            shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in checked.items())
            reason = str(e).strip().splitlines()[0][:400] if str(e).strip() else type(e).__name__
            text = reason.lower()
            hint = ("The exported graph may fix a size these inputs vary: give inputs of the size the model was "
                    "exported for (the gate's samples, validation_inputs.npz in the bundle, are such inputs)"
                    if any(w in text for w in ("dimension", "shape", "broadcast", "size")) else
                    "An index input may hold values beyond what the model takes (token ids past its vocabulary)"
                    if "out of bounds" in text or "out of range" in text or "indices" in text else None)
            msg = f"onnxruntime cannot run the {self.precision} model on {where} ({shapes}): {reason}"
            if hint is None:                    # not the inputs' fault as far as the message says
                raise DeviceError(msg) from e
            raise BadInputError(f"{msg}. {hint}") from e
        return dict(zip((o.name for o in self.outputs), got))
