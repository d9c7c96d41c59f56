"""The gate's numerics: per-output figures pooled over every sample, and the thresholds that judge them.

Built to hold on every x86-64 ISA and GPU: errors are measured against the reference's own spread (not an absolute
floor), agreement is pooled over all rows of all samples, and an argmax flip counts only where the reference's
top-2 margin is clear of a stated near-tie epsilon. NumPy only; nothing here runs a model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

from .errors import BadInputError

# A reference whose spread is below this fraction of its magnitude is constant up to float rounding: no error
# relative to its spread can be measured, and no broken model can be told from a working one on these samples.
FLAT_SPREAD = 1e-6
# An output that moves over less than this fraction of its scale on the samples (its largest absolute value; for a
# Sigmoid, Softmax or Tanh output, that op's range: convert.value_range) cannot be judged where it fails: FP32 rounds
# such values by ~1e-7 of that scale, as much as max_rel_diff's 1e-4 of the spread, so a probability that stays near
# 0 on every sample (a detector shown a blank image) fails a good conversion. Such a failure is the samples' (exit 2,
# asking for --inputs), not the conversion's (exit 3).
JUDGED_SPREAD = 1e-2


@dataclass(frozen=True)
class Thresholds:
    """Bounds of one precision's gate. A metric set to None is reported but not gated. All figures are pooled
    over every sample of the gate (never judged one sample of a few rows at a time)."""

    max_rel_diff: float | None = None          # max |onnx - ref| / spread(ref); spread = max - min of the reference
                                               # over all samples (its actual range, no floor at 1)
    max_rel_rmse: float | None = None          # rms(onnx - ref) / std(ref): error energy against signal energy;
                                               # catches offsets and rescaling that cosine misses
    min_cosine: float | None = None            # cosine of the flattened outputs, judged whenever the reference
                                               # carries signal
    min_argmax_agreement: float | None = None  # over rows of outputs with a static class axis (last dim), pooled;
                                               # only rows whose reference top-2 margin > tie_margin * spread count
    tie_margin: float = 1e-2                   # near-tie epsilon, relative to the reference's spread
    allow_nonfinite: bool = False              # NaN/Inf in the ONNX output where the reference is finite

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "allow_nonfinite" or v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v < 0:
                raise BadInputError(f"threshold {f.name}={v!r} is invalid: thresholds are numbers >= 0 "
                                    "(give a large value, e.g. 1e9, to leave a maximum unchecked)")
            if f.name.startswith("min_") and v > 1:
                raise BadInputError(f"threshold {f.name}={v!r} is invalid: {f.name} is a fraction in [0, 1]")


METRICS = ("max_rel_diff", "max_rel_rmse", "min_cosine", "min_argmax_agreement", "tie_margin")

# Chosen from the measured spread of each precision on the real OCR models and the tiny test models (see README,
# "Validation gate"), with room for other ISAs' kernels; the planted-fault suite (tests/test_planted_faults.py)
# proves each bound still catches broken models.
DEFAULT_THRESHOLDS = {
    "fp32": Thresholds(max_rel_diff=1e-4, max_rel_rmse=1e-4, min_cosine=0.99999, min_argmax_agreement=0.999,
                       tie_margin=1e-3),
    "fp16": Thresholds(max_rel_diff=1e-1, max_rel_rmse=0.03, min_cosine=0.999, min_argmax_agreement=0.95,
                       tie_margin=1e-2),
    "int8": Thresholds(max_rel_rmse=0.15, min_cosine=0.98, min_argmax_agreement=0.90, tie_margin=5e-2),
    "int4": Thresholds(max_rel_rmse=0.35, min_cosine=0.95, min_argmax_agreement=0.80, tie_margin=5e-2),
}
# Causal LMs: per-position argmax over a 50k vocabulary on a few prompt tokens is a noisy judge of weight-only
# quantization (perplexity is the real one, see benchmarks.perplexity); the gate checks logits/cache cosine.
LLM_THRESHOLDS = {
    "fp32": Thresholds(max_rel_diff=1e-4, max_rel_rmse=1e-4, min_cosine=0.99999),
    "fp16": Thresholds(max_rel_diff=1e-1, min_cosine=0.999),
    "int8": Thresholds(min_cosine=0.99),
    "int4": Thresholds(min_cosine=0.95),
}


def thresholds_with_overrides(overrides: dict[str, float],
                              defaults: dict[str, Thresholds] | None = None) -> dict[str, Thresholds]:
    """`{"fp16.min_cosine": 0.99}` -> defaults with that value replaced (validated: no NaN, no negatives)."""
    out = dict(DEFAULT_THRESHOLDS if defaults is None else defaults)
    for key, value in overrides.items():
        prec, _, metric = key.partition(".")
        if prec not in out or metric not in METRICS:
            raise BadInputError(f"unknown threshold {key!r}: use PRECISION.METRIC with PRECISION in "
                                f"{sorted(out)} and METRIC in {METRICS}")
        out[prec] = replace(out[prec], **{metric: float(value)})
    return out


def top2_margin(rows: np.ndarray) -> np.ndarray:
    """Per row of [N, C] logits/scores: top-1 minus top-2 value (0 for an exact tie)."""
    part = np.partition(rows, -2, axis=-1)
    return part[:, -1] - part[:, -2]


def compare_pooled(refs: list[np.ndarray], gots: list[np.ndarray], class_axis: bool, tie_margin: float = 1e-2) -> dict:
    """Figures for one output over all samples together (arrays of each sample may differ in shape)."""
    bad = [(list(r.shape), list(g.shape)) for r, g in zip(refs, gots) if r.shape != g.shape]
    if bad:
        return {"shape_ref": bad[0][0], "shape_onnx": bad[0][1], "max_abs_diff": float("inf"),
                "max_rel_diff": float("inf"), "rel_rmse": float("inf"), "cosine": 0.0, "argmax_agreement": None,
                "nonfinite": 0, "signal": True}
    r = np.concatenate([np.asarray(x, np.float64).ravel() for x in refs])
    g = np.concatenate([np.asarray(x, np.float64).ravel() for x in gots])
    finite_ref = np.isfinite(r)
    nonfinite = int(np.sum(~np.isfinite(g) & finite_ref))
    both = finite_ref & np.isfinite(g)
    rb, gb = r[both], g[both]
    diff = np.abs(rb - gb)
    max_abs = float(diff.max()) if diff.size else 0.0
    rms_err = float(np.sqrt(np.mean(diff ** 2))) if diff.size else 0.0
    rf = r[finite_ref]
    magnitude = float(np.abs(rf).max()) if rf.size else 0.0
    spread = float(rf.max() - rf.min()) if rf.size else 0.0
    std = float(rf.std()) if rf.size else 0.0
    signal = spread > FLAT_SPREAD * magnitude and spread > 0
    # a flat reference has no spread to be relative to: fall back to its magnitude (an absolute bound at 0)
    scale, energy = (spread, std) if signal else (magnitude, float(np.sqrt(np.mean(rf ** 2))) if rf.size else 0.0)
    rel = lambda err, s: err / s if s > 0 else (0.0 if err == 0 else float("inf"))  # noqa: E731
    nr, ng = float(np.linalg.norm(rb)), float(np.linalg.norm(gb))
    cosine = float(rb @ gb / (nr * ng)) if nr > 0 and ng > 0 else (1.0 if np.array_equal(rb, gb) else 0.0)
    m = {"max_abs_diff": max_abs, "max_rel_diff": rel(max_abs, scale), "rel_rmse": rel(rms_err, energy),
         "cosine": cosine, "argmax_agreement": None, "nonfinite": nonfinite, "spread": spread, "std": std,
         "magnitude": magnitude, "signal": bool(signal)}
    if class_axis and r.size:
        m.update(argmax_agreement_pooled(refs, gots, tie_margin * spread))
    return m


def argmax_agreement_pooled(refs: list[np.ndarray], gots: list[np.ndarray], eps: float) -> dict:
    """Argmax agreement over every row of every sample; a row counts only where the reference's top-2 margin
    exceeds `eps` (a near-tie may resolve either way on another ISA's kernels and is not a fault)."""
    c = refs[0].shape[-1]
    rr = np.concatenate([np.asarray(x, np.float64).reshape(-1, c) for x in refs])
    gg = np.concatenate([np.nan_to_num(np.asarray(x, np.float64)).reshape(-1, c) for x in gots])
    ok = np.all(np.isfinite(rr), axis=-1)
    rr, gg = rr[ok], gg[ok]
    return agreement_figures(np.argmax(rr, -1) == np.argmax(gg, -1), top2_margin(rr) > eps)


def agreement_figures(agree: np.ndarray, decisive: np.ndarray) -> dict:
    """Agreement over the decisive rows (a near-tie's is not judged) and over all of them, per row booleans."""
    n = int(decisive.sum())
    return {"argmax_agreement": float(agree[decisive].mean()) if n else None, "argmax_rows": n,
            "near_ties": int(len(agree) - n), "argmax_agreement_all_rows": float(agree.mean()) if len(agree) else None}


# onnxruntime's FP32 Sigmoid is accurate to ~1e-7 absolute (measured 9e-8 at p ~ 1e-3), not relative, and float16's
# smallest step is 6e-8: a logit may differ by this / (p (1 - p)) from rounding alone
SIGMOID_ABS = 2.5e-7
# Logits are judged where that rounding is at most 1e-3 (a subtle fault, a weight off by 1%, moves them by more):
# p in [2.5e-4, 1 - 2.5e-4]. Closer to 0 or 1 (a detector's map on a blank image, ~1e-6) nothing can be judged.
LOGIT_EDGE = SIGMOID_ABS / 1e-3


def compare_logits(refs: list[np.ndarray], gots: list[np.ndarray], half: bool = False) -> dict:
    """compare_pooled of Sigmoid probabilities in logit space, log(p) - log(1 - p), where probabilities that stay
    near 0 (a trained UIE's span pointers on text without the answer: every value ~1e-3) still vary: the logits
    move over units where the probabilities move over 1e-4. The figures are of the error beyond the Sigmoid's own
    absolute rounding (SIGMOID_ABS / (p (1 - p)) per value: each candidate logit moved that much toward the
    reference's). Values within LOGIT_EDGE of 0 or 1 in the reference are left out (rounding hides too much of
    their logits); a candidate value at 0 or 1 where the reference is not gives an infinite logit (non-finite).
    half: the candidate computes in float16, whose step near 1 is 4.9e-4: half of it at p joins the allowance."""
    def logit(p):
        p = np.asarray(p, np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(p) - np.log1p(-p)
    rs, gs = [], []
    for r, g in zip(refs, gots):
        r64 = np.asarray(r, np.float64)
        if r64.shape != np.shape(g):
            return compare_pooled(refs, gots, False)
        keep = (r64 > LOGIT_EDGE) & (r64 < 1 - LOGIT_EDGE)
        p = r64[keep]
        lr, lg = logit(p), logit(np.asarray(g, np.float64)[keep])
        d = lg - lr
        step = np.spacing(p.astype(np.float16)).astype(np.float64) / 2 if half else 0.0
        allow = (SIGMOID_ABS + step) / (p * (1 - p))
        rs.append(lr)
        gs.append(np.where(np.isfinite(d), lr + np.sign(d) * np.maximum(np.abs(d) - allow, 0), lg))
    m = compare_pooled(rs, gs, False)
    m.update({"kind": "sigmoid logits", "rounding_allowed": SIGMOID_ABS, "logit_values": int(sum(x.size for x in rs)),
              "left_out": int(sum(np.size(r) for r in refs) - sum(x.size for x in rs))})
    return m


def compare(ref: np.ndarray, got: np.ndarray, class_axis: bool, tie_margin: float = 1e-2) -> dict:
    """compare_pooled for one array pair."""
    return compare_pooled([ref], [got], class_axis, tie_margin)


def violations(m: dict, thr: Thresholds, exact: bool) -> list[str]:
    """Each bound of `thr` that the figures `m` break, in words."""
    if "shape_ref" in m:
        return [f"shape {m['shape_onnx']} != the reference's {m['shape_ref']}"]
    if m.get("kind") == "labels":                 # an ArgMax's integers: judged as labels (convert.labels)
        from .labels import label_violations
        return label_violations(m, thr)
    v = []
    if m["nonfinite"] and not thr.allow_nonfinite:
        v.append(f"{m['nonfinite']} NaN/Inf values where the reference is finite")
    if m.get("kind") == "detection_indices":      # which candidates NMS kept: judged through the detection list
        return v
    if m.get("kind") == "detection_counts":       # a count of NMS detections: moves with the detections at the cut
        if m["max_abs_diff"] > m["count_tolerance"]:
            v.append(f"detection count differs by {m['max_abs_diff']:.3g}, more than the "
                     f"{m['count_tolerance']} detection(s) at the score cut")
        return v
    if exact:
        if m["max_abs_diff"] != 0:
            v.append(f"integer output differs (max abs diff {m['max_abs_diff']:.3g})")
        return v
    what = ("spread" if m.get("signal", True) else "magnitude (the reference is flat)")
    if thr.max_rel_diff is not None and m["max_rel_diff"] > thr.max_rel_diff:
        scale = (f"the spread {m['logits_scale']['spread']:.3g} of the logits its Softmax reads"
                 if "logits_scale" in m else f"the reference's {what} {m.get('spread', 0):.3g}")
        v.append(f"max_rel_diff {m['max_rel_diff']:.3g} > {thr.max_rel_diff:g} (max abs diff "
                 f"{m['max_abs_diff']:.3g} against {scale})")
    if thr.max_rel_rmse is not None and m["rel_rmse"] > thr.max_rel_rmse:
        std = (f"the std {m['logits_scale']['std']:.3g} of the logits its Softmax reads" if "logits_scale" in m
               else f"reference std {m.get('std', 0):.3g}")
        v.append(f"rel_rmse {m['rel_rmse']:.3g} > {thr.max_rel_rmse:g} (rms error / {std})")
    if thr.min_cosine is not None and m["cosine"] < thr.min_cosine:
        v.append(f"cosine {m['cosine']:.6f} < {thr.min_cosine:g}")
    if (thr.min_argmax_agreement is not None and m["argmax_agreement"] is not None
            and m["argmax_agreement"] < thr.min_argmax_agreement and m.get("kind") == "detections"):
        d = m["detections"]
        v.append(f"detection agreement {m['argmax_agreement']:.4f} < {thr.min_argmax_agreement:g}: {d['matched']} "
                 f"matched (same class, IoU >= {d['same_iou']:g}), {d['swapped']} a neighbour kept instead (IoU >= "
                 f"{d['match_iou']:g}), {d['missed']} missed, {d['extra']} extra; {d['at_the_cut']} at the score cut "
                 "not counted")
    elif (thr.min_argmax_agreement is not None and m["argmax_agreement"] is not None
            and m["argmax_agreement"] < thr.min_argmax_agreement):
        v.append(f"argmax agreement {m['argmax_agreement']:.4f} < {thr.min_argmax_agreement:g} over "
                 f"{m['argmax_rows']} rows whose reference top-2 margin > {thr.tie_margin:g} x spread "
                 f"({m['near_ties']} near-tie rows not counted)")
    return v
