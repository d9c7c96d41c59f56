"""The FP32 model's weights against the Paddle model's parameters, bit for bit.

The gate judges the FP32 model by its outputs on its samples, and a fault below its bounds passes: one SE
convolution's weight of a PP-LCNetV2 x 1.01 moved the outputs by max_rel_diff 7.6e-5 (< 1e-4). paddle2onnx copies
Paddle's parameters into the ONNX model under their own names (as Constant nodes; `graph.share_duplicate_weights`
makes them initializers) byte for byte: every one of the 168 / 234 / 445 parameters of PP-LCNetV2, PP-OCRv4/v5 rec
and PicoDet is there, bit-equal. So every FP32 weight (initializer or Constant, subgraphs included) that carries a
Paddle parameter's name and shape must equal it exactly; one that does not is a violation naming the weight, how
many values differ and the largest difference. Parameters not in the model under their name (paddle2onnx or a
fusion renamed, merged or dropped them: a fused attention's QKV weight, a duplicate shared with its twin) or under
another shape or dtype are skipped and counted: the outputs alone judge those.

Paddle's side comes from the worker (`_worker.task_parameters`: Paddle is imported only there): an .npz read one
tensor at a time, or, for a params file past NPZ_LIMIT bytes, the sha256 of each tensor's raw bytes (a violation
then cannot say how many values differ). The ONNX side is read one weight at a time too (external data, e.g. a
bundle's model.fp32.onnx.data, from its file at the tensor's offset): neither side is ever held whole twice.

Wired into the gate (convert/api.py): `convert` checks the FP32 model before judging its outputs, and `validate
--source` the bundle's FP32 model; a violation refuses like a failed gate (ValidationError, exit 3) with a
lineage-kind row, so no --threshold advice is printed and the manifest's `lineage_checked` counts the weights.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PARAMETERS_ROW = "(FP32 weights vs the Paddle model's parameters)"
NPZ_LIMIT = 2 * 10 ** 9          # params files past this are compared by per-tensor sha256, not values
SHOWN = 5                        # violations named in the gate row; the rest counted


def paddle_parameters(source, workdir: Path, max_npz_bytes: int = NPZ_LIMIT) -> Mapping:
    """The model's parameters as Paddle loads them (worker task "parameters"): name -> array (an NpzFile, read one
    tensor at a time; the file lives in `workdir`) or, past `max_npz_bytes`, name -> {"dtype", "shape", "sha256"}."""
    from .paddle_proc import run_worker
    origin = str(source.original[0].parent) if getattr(source, "original", None) else None
    out = Path(workdir) / "paddle_params.npz"
    res = run_worker("parameters", {"model_file": str(source.model_file), "params_file": str(source.params_file),
                                    "out_npz": str(out), "max_npz_bytes": int(max_npz_bytes), "origin": origin},
                     Path(workdir))
    if res.get("missing"):
        log.warning("%d parameter(s) of the program hold no value after Paddle loaded it (%s): not checked",
                    len(res["missing"]), ", ".join(res["missing"][:5]))
    if "digests" in res:
        return res["digests"]
    return np.load(res["npz"], allow_pickle=False)


def onnx_weights(model) -> dict:
    """name -> TensorProto of every weight of the model: initializers and Constant nodes' tensors (paddle2onnx's
    form), in the main graph and its subgraphs."""
    out = {}
    from .repair._shapes import all_graphs
    for g in all_graphs(model.graph):
        for t in g.initializer:
            out.setdefault(t.name, t)
        for n in g.node:
            if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value" and n.output:
                out.setdefault(n.output[0], n.attribute[0].t)
    return out


def tensor_array(t, base_dir: Path) -> np.ndarray:
    """The tensor's values; external data read from its file at its offset (only this tensor's bytes)."""
    from onnx import TensorProto, helper, numpy_helper
    if t.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(t)
    info = {e.key: e.value for e in t.external_data}
    path = (Path(base_dir) / info["location"]).resolve()
    if not path.is_relative_to(Path(base_dir).resolve()):
        raise ValueError(f"weight {t.name!r} points outside the model's folder ({info['location']})")
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
    count = int(np.prod(t.dims, dtype=np.int64))
    length = int(info["length"]) if "length" in info else count * dtype.itemsize
    with open(path, "rb") as f:
        f.seek(int(info.get("offset", 0)))
        buf = f.read(length)
    if len(buf) != count * dtype.itemsize:
        raise ValueError(f"weight {t.name!r}: {len(buf)} bytes in {info['location']}, {count * dtype.itemsize} "
                         "expected")
    return np.frombuffer(buf, dtype=dtype).reshape(tuple(t.dims))


def _bits(a: np.ndarray) -> np.ndarray:
    """The array's bits as unsigned integers of its item size (bitwise comparison: -0.0 != 0.0, NaN payloads)."""
    a = np.ascontiguousarray(a)
    return a.view(f"u{a.dtype.itemsize}") if a.dtype.itemsize in (1, 2, 4, 8) else a.view(np.uint8)


def _same_kind(want: np.ndarray, got: np.ndarray) -> np.ndarray | None:
    """Paddle's array in the ONNX weight's dtype where they are one type (bfloat16 read by Paddle as uint16 is
    bfloat16), else None."""
    if want.dtype == got.dtype:
        return want
    if want.dtype.itemsize == got.dtype.itemsize and "bfloat16" in (want.dtype.name, got.dtype.name):
        return np.ascontiguousarray(want).view(got.dtype)
    return None


def _difference(name: str, want: np.ndarray, got: np.ndarray) -> tuple[str | None, float]:
    """None where `got` equals `want` bit for bit, else the violation and the largest absolute difference."""
    differ = _bits(want) != _bits(got)
    if not differ.any():
        return None, 0.0
    w = np.asarray(want, dtype=np.float64) if want.dtype.kind in "fiub" or "float" in want.dtype.name else None
    g = np.asarray(got, dtype=np.float64) if w is not None else None
    n, size = int(differ.sum()), int(differ.size)
    if w is None:
        return f"weight {name!r} differs from Paddle's parameter in {n} of {size} values", float("inf")
    d = np.abs(w - g)
    d = np.where(np.isnan(d) & differ, np.inf, d)         # NaN on one side only, or another NaN payload
    at = int(np.argmax(np.where(differ, d, -1.0)))
    worst = float(d.flat[at])
    scale = float(np.nanmax(np.abs(w))) if w.size else 0.0
    rel = f", {worst / scale:.3g} of its largest magnitude" if scale > 0 and np.isfinite(worst) else ""
    return (f"weight {name!r} {list(want.shape)} differs from Paddle's parameter in {n} of {size} values: largest "
            f"difference {worst:.3g}{rel} (flat index {at}: {w.flat[at]:.9g} in Paddle, {g.flat[at]:.9g} in the "
            "ONNX model)", worst)


def check_parameters(onnx_model_path: str | Path, params: Mapping) -> dict:
    """Every weight of the ONNX model (initializer or Constant, subgraphs included; external data read from the
    model's folder) named as a Paddle parameter and of its shape, against it, bit for bit.

    params: name -> array, or name -> {"dtype", "shape", "sha256"} (the sha256 of the raw bytes, C order) for a
    model too large to compare values. -> {"checked": weights compared, "violations": [text naming each weight
    that differs], "worst_abs": largest absolute difference (inf: a digest differs), "skipped_renamed": Paddle
    parameters no ONNX weight is named after, "skipped_reshaped": same name, another shape, "skipped_retyped": same
    name and shape, another dtype, "parameters": len(params)}."""
    import onnx
    path = Path(onnx_model_path)
    model = onnx.load(str(path), load_external_data=False)
    weights = onnx_weights(model)
    names = list(params.keys())
    checked, violations, worst = 0, [], 0.0
    renamed, reshaped, retyped = [], [], []
    for name in names:
        t = weights.get(name)
        if t is None:
            renamed.append(name)
            continue
        want = params[name]
        shape = tuple(int(d) for d in t.dims)
        if isinstance(want, Mapping):                     # a digest: shape, dtype, sha256 of the raw bytes
            if tuple(want["shape"]) != shape:
                reshaped.append(name)
                continue
            got = tensor_array(t, path.parent)
            if np.dtype(want["dtype"]).itemsize != got.dtype.itemsize or (
                    want["dtype"] != got.dtype.name and "bfloat16" not in (want["dtype"], got.dtype.name)):
                retyped.append(name)
                continue
            checked += 1
            have = hashlib.sha256(memoryview(np.ascontiguousarray(got)).cast("B")).hexdigest()
            if have != want["sha256"]:
                violations.append(f"weight {name!r} {list(shape)} differs from Paddle's parameter (sha256 "
                                  f"{have[:12]} vs Paddle's {want['sha256'][:12]}; compared by digest: the model's "
                                  "parameters are too large to compare value by value)")
                worst = float("inf")
            continue
        want = np.asarray(want)
        if tuple(want.shape) != shape:
            reshaped.append(name)
            continue
        got = tensor_array(t, path.parent)
        same = _same_kind(want, got)
        if same is None:
            retyped.append(name)
            continue
        checked += 1
        text, d = _difference(name, same, got)
        if text is not None:
            violations.append(text)
            worst = max(worst, d)
    for what, skipped in (("renamed or dropped", renamed), ("reshaped", reshaped), ("retyped", retyped)):
        if skipped:
            log.debug("%d Paddle parameter(s) %s in %s, not compared: %s", len(skipped), what, path.name,
                      ", ".join(skipped[:10]))
    return {"checked": checked, "violations": violations, "worst_abs": worst, "parameters": len(names),
            "skipped_renamed": len(renamed), "skipped_reshaped": len(reshaped), "skipped_retyped": len(retyped)}


def parameters_row(check: dict) -> dict:
    """check_parameters' result as a gate row (the form validate.judge takes and its reports hold): kind "lineage",
    so no threshold advice (none can excuse a changed weight) and no error figures in the summary."""
    v = check["violations"]
    shown = v[:SHOWN] + ([f"... and {len(v) - SHOWN} more"] if len(v) > SHOWN else [])
    return {"output": PARAMETERS_ROW, "kind": "lineage", "sample": None, "shape": None,   # no sample: the weights
            "metrics": {"kind": "parameters", "parameters": check["parameters"], "checked": check["checked"],
                        "max_abs_diff": check["worst_abs"],
                        "max_rel_diff": float("nan"), "cosine": float("nan"), "argmax_agreement": None,
                        "skipped_renamed": check["skipped_renamed"], "skipped_reshaped": check["skipped_reshaped"],
                        "skipped_retyped": check["skipped_retyped"]},
            "violations": shown}


def gate_parameters(precision: str, model_path: str | Path, params: Mapping, thr, samples: int) -> dict:
    """Check the model's weights against Paddle's parameters -> the gate row to add to its report; a violation
    raises ValidationError (exit 3, with the report: validate.judge) naming each changed weight."""
    from .validate import judge
    check = check_parameters(model_path, params)
    row = parameters_row(check)
    log.info("%s: %d of %d Paddle parameters compared with the model's weights (%d renamed, %d reshaped, %d retyped "
             "by the export: judged by the outputs), %d differ", precision, check["checked"], check["parameters"],
             check["skipped_renamed"], check["skipped_reshaped"], check["skipped_retyped"], len(check["violations"]))
    if check["violations"]:
        judge(precision, [row], thr, samples)           # raises ValidationError naming them
    return row
