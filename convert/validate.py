"""Stage 5: the validation gate — Paddle Inference vs onnxruntime on the same inputs, per output and precision."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from paddle2ort.runtime.manifest import TensorSpec
from paddle2ort.runtime.session import SessionOptions, create_session

from .errors import BadInputError, ValidationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Thresholds:
    """A metric set to None is reported but not gated."""

    max_rel_diff: float | None = None          # max |onnx - paddle| / max(1, max |paddle|): error relative to the
                                               # output scale, floored at 1 so near-zero outputs get an absolute bound
    min_cosine: float | None = None
    min_argmax_agreement: float | None = None  # over outputs with a static class axis (last dim)
    allow_nonfinite: bool = False              # NaN/Inf in the ONNX output where Paddle's is finite
    fp32_exact: float = 1e-4                   # outputs this close (max_rel_diff) are as exact as FP32: cosine and
                                               # argmax are not gated (both are noise on near-constant outputs)


DEFAULT_THRESHOLDS = {
    "fp32": Thresholds(max_rel_diff=1e-4),
    "fp16": Thresholds(max_rel_diff=1e-1, min_cosine=0.999, min_argmax_agreement=0.95),
    "int8": Thresholds(min_cosine=0.98, min_argmax_agreement=0.90),
    "int4": Thresholds(min_cosine=0.95, min_argmax_agreement=0.80),
}
# Causal LMs: per-position argmax over a 50k vocabulary on a few prompt tokens is a noisy judge of weight-only
# quantization (perplexity is the real one, see benchmarks.perplexity); the gate checks logits/cache cosine.
LLM_THRESHOLDS = {
    "fp32": Thresholds(max_rel_diff=1e-4),
    "fp16": Thresholds(max_rel_diff=1e-1, min_cosine=0.999),
    "int8": Thresholds(min_cosine=0.99),
    "int4": Thresholds(min_cosine=0.95),
}
METRICS = ("max_rel_diff", "min_cosine", "min_argmax_agreement")


def thresholds_with_overrides(overrides: dict[str, float],
                              defaults: dict[str, Thresholds] | None = None) -> dict[str, Thresholds]:
    """`{"fp16.min_cosine": 0.99}` -> defaults with that value replaced."""
    out = dict(DEFAULT_THRESHOLDS if defaults is None else defaults)
    for key, value in overrides.items():
        prec, _, metric = key.partition(".")
        if prec not in out or metric not in METRICS:
            raise BadInputError(f"unknown threshold {key!r}: use PRECISION.METRIC with PRECISION in "
                                f"{sorted(out)} and METRIC in {METRICS}")
        out[prec] = replace(out[prec], **{metric: float(value)})
    return out


@dataclass(frozen=True)
class SampleConfig:
    seed: int = 0
    batch_sizes: tuple[int, ...] = (2, 1)        # one sample per entry: the gate also exercises dynamic shapes
    dynamic_sizes: tuple[int, ...] = (64, 32)    # value for the other dynamic dims, per sample
    input_shapes: dict | None = None             # name -> fixed shape (overrides the two above)


def make_samples(inputs: list[dict], cfg: SampleConfig) -> list[dict[str, np.ndarray]]:
    """Inputs from the model's specs, seeded: floats ~ N(0,1), ids uniform below the embedding size."""
    rng = np.random.default_rng(cfg.seed)
    fixed = cfg.input_shapes or {}
    unknown = set(fixed) - {i["name"] for i in inputs}
    if unknown:
        raise BadInputError(f"--input-shape names unknown input(s) {sorted(unknown)}; the model's inputs are "
                            f"{[i['name'] for i in inputs]}")
    samples = []
    for batch, dyn in zip(cfg.batch_sizes, cfg.dynamic_sizes):
        sample = {}
        for spec in inputs:
            if spec["name"] in fixed:
                shape = tuple(fixed[spec["name"]])
            else:
                shape = tuple(batch if (d < 0 and a == 0) else (dyn if d < 0 else d)
                              for a, d in enumerate(spec["shape"]))
            dtype = np.dtype(spec["dtype"])
            if dtype == np.bool_:
                arr = rng.integers(0, 2, shape).astype(np.bool_)
            elif np.issubdtype(dtype, np.integer):
                arr = rng.integers(0, spec.get("int_high") or 2, shape).astype(dtype)
            else:
                arr = rng.standard_normal(shape).astype(dtype)
            sample[spec["name"]] = arr
        samples.append(sample)
    return samples


def load_samples(path: Path, inputs: list[dict]) -> list[dict[str, np.ndarray]]:
    """User inputs: an .npz with one array per input name, or `I/NAME` keys for several samples."""
    try:
        data = dict(np.load(path, allow_pickle=False))
    except Exception as e:  # noqa: BLE001
        raise BadInputError(f"cannot read sample inputs {path} ({e}); pass an .npz written by numpy.savez") from e
    names = [i["name"] for i in inputs]
    if all(n in data for n in names):
        groups = [{n: data[n] for n in names}]
    else:
        idx = sorted({k.split("/", 1)[0] for k in data if "/" in k})
        groups = [{n: data.get(f"{i}/{n}") for n in names} for i in idx]
    if not groups or any(v is None for g in groups for v in g.values()):
        raise BadInputError(f"{path} must hold arrays named {names} (or '0/NAME', '1/NAME', ... for several "
                            f"samples); it has {sorted(data)}")
    for g in groups:
        for spec in inputs:
            a = g[spec["name"]]
            if a.dtype != np.dtype(spec["dtype"]) or a.ndim != len(spec["shape"]):
                raise BadInputError(f"{path}: input {spec['name']!r} is {a.dtype}{list(a.shape)} but the model "
                                    f"expects {spec['dtype']} of rank {len(spec['shape'])} {spec['shape']}")
    return groups


def has_class_axis(spec: TensorSpec) -> bool:
    return len(spec.shape) >= 2 and isinstance(spec.shape[-1], int) and spec.shape[-1] >= 2


def compare(ref: np.ndarray, got: np.ndarray, class_axis: bool) -> dict:
    """Figures for one output: max abs/rel diff, cosine, argmax agreement, non-finite count."""
    if ref.shape != got.shape:
        return {"shape_ref": list(ref.shape), "shape_onnx": list(got.shape), "max_abs_diff": float("inf"),
                "max_rel_diff": float("inf"), "cosine": 0.0, "argmax_agreement": None, "nonfinite": 0}
    r = ref.astype(np.float64)
    g = got.astype(np.float64)
    finite_ref = np.isfinite(r)
    nonfinite = int(np.sum(~np.isfinite(g) & finite_ref))
    both = finite_ref & np.isfinite(g)
    diff = np.abs(r - g)[both]
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(r[finite_ref]).max()) if finite_ref.any() else 0.0
    max_rel = max_abs / max(scale, 1.0)
    rv, gv = np.where(both, r, 0).ravel(), np.where(both, g, 0).ravel()
    denom = np.linalg.norm(rv) * np.linalg.norm(gv)
    cosine = float(rv @ gv / denom) if denom > 0 else (1.0 if np.array_equal(rv, gv) else 0.0)
    agree = None
    if class_axis and r.size:
        agree = float(np.mean(np.argmax(r, axis=-1) == np.argmax(np.nan_to_num(g), axis=-1)))
    return {"max_abs_diff": max_abs, "max_rel_diff": max_rel, "output_scale": scale, "cosine": cosine,
            "argmax_agreement": agree, "nonfinite": nonfinite}


def violations(m: dict, thr: Thresholds, exact: bool) -> list[str]:
    v = []
    if "shape_ref" in m:
        return [f"shape {m['shape_onnx']} != Paddle's {m['shape_ref']}"]
    if m["nonfinite"] and not thr.allow_nonfinite:
        v.append(f"{m['nonfinite']} NaN/Inf values where Paddle's output is finite")
    if exact and m["max_abs_diff"] != 0:
        v.append(f"integer output differs (max abs diff {m['max_abs_diff']:.3g})")
    if thr.max_rel_diff is not None and m["max_rel_diff"] > thr.max_rel_diff:
        v.append(f"max_rel_diff {m['max_rel_diff']:.3g} > {thr.max_rel_diff:g} "
                 f"(max abs diff {m['max_abs_diff']:.3g} at output scale {m.get('output_scale', 0):.3g})")
    if m["max_rel_diff"] <= thr.fp32_exact:
        return v
    if thr.min_cosine is not None and m["cosine"] < thr.min_cosine:
        v.append(f"cosine {m['cosine']:.6f} < {thr.min_cosine:g}")
    if (thr.min_argmax_agreement is not None and m["argmax_agreement"] is not None
            and m["argmax_agreement"] < thr.min_argmax_agreement):
        v.append(f"argmax agreement {m['argmax_agreement']:.4f} < {thr.min_argmax_agreement:g}")
    return v


def run_onnx(model_path: Path, samples: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    sess = create_session(model_path, SessionOptions(device="cpu"))
    names = [i.name for i in sess.get_inputs()]
    return [sess.run(None, {n: s[n] for n in names}) for s in samples]


def validate(precision: str, model_path: Path, samples: list[dict], refs: list[list[np.ndarray]],
             outputs: list[TensorSpec], thr: Thresholds) -> dict:
    """Compare every output of every sample; raise ValidationError naming each failing output."""
    got = run_onnx(model_path, samples)
    rows, failures = [], []
    for i, (ref_list, got_list) in enumerate(zip(refs, got)):
        if len(ref_list) != len(got_list):
            raise ValidationError(precision, [{"output": "*", "sample": i, "violations": [
                f"{len(got_list)} ONNX outputs vs {len(ref_list)} Paddle outputs"],
                "metrics": {"max_abs_diff": float("inf"), "max_rel_diff": float("inf"), "cosine": 0.0,
                            "argmax_agreement": None}}])
        for spec, r, g in zip(outputs, ref_list, got_list):
            exact = not np.issubdtype(r.dtype, np.floating)
            m = compare(r, g, has_class_axis(spec) and not exact)
            v = violations(m, thr, exact)
            row = {"output": spec.name, "sample": i, "shape": list(r.shape), "metrics": m, "violations": v}
            rows.append(row)
            if v:
                failures.append(row)
    report = {"precision": precision, "passed": not failures, "thresholds": asdict(thr), "results": rows}
    if failures:
        raise ValidationError(precision, failures).with_report(report)
    return report


def summary(report: dict) -> dict:
    """The manifest's short form: the worst figure of each metric over all samples and outputs."""
    ms = [r["metrics"] for r in report["results"]]
    agree = [m["argmax_agreement"] for m in ms if m.get("argmax_agreement") is not None]
    return {"passed": report["passed"], "samples": len({r["sample"] for r in report["results"]}),
            "max_abs_diff": max((m["max_abs_diff"] for m in ms), default=0.0),
            "max_rel_diff": max((m["max_rel_diff"] for m in ms), default=0.0),
            "min_cosine": min((m["cosine"] for m in ms), default=1.0),
            "min_argmax_agreement": min(agree) if agree else None,
            "thresholds": report["thresholds"]}
