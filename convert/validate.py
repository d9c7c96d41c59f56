"""Stage 5: the validation gate — Paddle Inference vs onnxruntime on the same inputs, per output and precision.

Figures and thresholds live in .metrics, the inputs in .samples; this module runs the ONNX model, pools each
output over all samples and judges it. Errors: a sample onnxruntime cannot run is the user's (exit 2) when it came
from --inputs, ours (exit 4) when we generated it; a reference with no signal stops the gate (exit 2).
GateRerunError: several models of a bundle failing its gate re-run (convert.api.revalidate, `paddle2ort
validate`), every one named, the exit code the most serious of theirs.
"""
from __future__ import annotations

import logging
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np

from paddle2ort.runtime.manifest import TensorSpec
from paddle2ort.runtime.load_probe import safe_options
from paddle2ort.runtime.session import SessionOptions, create_session

from .errors import BadInputError, ConversionError, Paddle2OrtError, ValidationError
from .graph import shape_only_outputs
from .lineage import check_lineage
from .labels import excuse_mask_ties, label_figures, logits_scales, mask_sources, run_scores, softmax_axes
from .metrics import (DEFAULT_THRESHOLDS, FLAT_SPREAD, LLM_THRESHOLDS, METRICS, JUDGED_SPREAD, Thresholds,  # noqa
                      compare, compare_logits, compare_pooled, thresholds_with_overrides, top2_margin, violations)
from .samples import SampleConfig, load_samples, make_samples  # noqa: F401
from .value_range import class_axis_outputs, output_value_ranges

log = logging.getLogger(__name__)


def has_class_axis(spec: TensorSpec, scored: set[str] | None = None) -> bool:
    """Whether the output's last axis holds classes (argmax agreement is judged over it): a static size of 2 or
    more, and for rank 3 or more a producer that scores classes there (`scored`: value_range.class_axis_outputs of
    the FP32 graph; None: the shape alone)."""
    shaped = len(spec.shape) >= 2 and isinstance(spec.shape[-1], int) and spec.shape[-1] >= 2
    return shaped and (scored is None or len(spec.shape) == 2 or spec.name in scored)


def _describe(sample: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in sample.items())


def _ort_reason(e: Exception) -> str:
    """onnxruntime's message, led by the node it names ("...while running Conv node. Name:'p2o.Conv.3' ...")."""
    msg = str(e).strip().replace("\n", " ")
    node = re.search(r"running (\w+) node\. Name:'([^']*)'", msg)
    return (f"node {node.group(2)!r} ({node.group(1)}): " if node else "") + msg[:600]


def run_onnx(model_path: Path, samples: list[dict[str, np.ndarray]], precision: str = "fp32",
             user_inputs: bool = False, device: str = "cpu", level: str = "all") -> list[list[np.ndarray]]:
    """Outputs per sample on the CPU (or onnxruntime's CUDA provider: device "gpu"). A sample onnxruntime rejects
    -> BadInputError (the user's --inputs) or ConversionError (our generated samples: the converted model is at
    fault)."""
    try:        # the level a child loaded it at
        sess = create_session(model_path, safe_options(model_path, SessionOptions(device=device,
                                                                                  graph_optimization=level)))
    except BadInputError:
        raise
    except Exception as e:  # noqa: BLE001 - any onnxruntime load failure of a model we wrote is ours
        raise ConversionError(f"onnxruntime cannot load the converted {precision} model {model_path.name}: "
                              f"{_ort_reason(e)}") from e
    names = [i.name for i in sess.get_inputs()]
    outs = []
    for i, s in enumerate(samples):
        try:
            outs.append(sess.run(None, {n: s[n] for n in names}))
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own (pybind) exception types
            reason = _ort_reason(e)
            if user_inputs:
                raise BadInputError(
                    f"onnxruntime cannot run the converted {precision} model on your sample {i} "
                    f"({_describe(s)}): {reason}. Paddle accepted it, so the exported graph fixes a size this "
                    "input varies: give --inputs of the size the model was exported for, or re-export the Paddle "
                    "model with that dimension dynamic (-1 in its InputSpec).") from e
            raise ConversionError(
                f"the converted {precision} model fails in onnxruntime on generated validation sample {i} "
                f"({_describe(s)}) that Paddle ran: {reason}. Try --input-shape NAME:D0,D1,... with sizes the model "
                "supports, or report the node above as a converter defect.") from e
    return outs


FIX_INPUTS = ("Pass real inputs with --inputs FILE.npz (arrays named after the model's inputs, e.g. a preprocessed "
              "image or tokenized text)")


def check_signal(refs: list[list[np.ndarray]], outputs: list[TensorSpec], user_inputs: bool,
                 shape_only: set[str] = frozenset(), scored: set[str] | None = None) -> None:
    """Refuse samples on which some float output of the reference is flat, or where an output with a class axis
    is the same for every input row (a classifier saturated on one class): no broken model could be told from a
    working one on them. shape_only: outputs the inputs' values never reach (graph.shape_only_outputs), constant
    by construction and judged against their magnitude."""
    for j, spec in enumerate(outputs):
        rs = [r[j] for r in refs]
        if not np.issubdtype(rs[0].dtype, np.floating) or spec.name in shape_only:
            continue
        m = compare_pooled(rs, rs, class_axis=False)
        whose = "your --inputs" if user_inputs else f"the {len(refs)} generated samples"
        if not m["signal"]:
            raise BadInputError(
                f"Paddle's output {spec.name!r} is constant on {whose} (every value {rs[0].ravel()[0]:.3g}, spread "
                f"{m['spread']:.3g}): the gate cannot tell a broken conversion from a good one on these inputs. "
                f"{FIX_INPUTS}.")
        rows = [np.asarray(r[b], np.float64) for r in rs if np.ndim(r) >= 2 for b in range(np.shape(r)[0])]
        if (has_class_axis(spec, scored) and len(rows) > 1 and len({r.shape for r in rows}) == 1
                and all(np.abs(r - rows[0]).max() <= FLAT_SPREAD * m["spread"] for r in rows[1:])):
            raise BadInputError(
                f"Paddle's output {spec.name!r} is the same for every one of the {len(rows)} input rows of {whose} "
                "(the same values each time): a model that ignores its input could not be told from a working "
                f"one on these inputs. {FIX_INPUTS}, on which the model gives different answers.")


def unjudged(e: ValidationError, bounded: dict[str, tuple[str, float]], samples: int,
             user_inputs: bool) -> BadInputError | None:
    """The samples' fault, not the conversion's: every output that failed moves over less than JUDGED_SPREAD of its
    scale on them -- its largest absolute value, or for an output a Sigmoid, Softmax or Tanh bounds (`bounded`:
    convert.value_range) that op's range, where its kernels round in absolute terms (onnxruntime's FP32 Sigmoid by
    ~1e-7 near 0). Float rounding of the scale is then as large as the output varies, and no bound relative to its
    spread can tell a good conversion from a broken one. Other failures, and such outputs that pass, are judged."""
    rows = []
    for f in e.failures:
        m = f["metrics"]
        if ("spread" not in m or "magnitude" not in m or m.get("nonfinite") or f.get("kind") == "constant"
                or f.get("exact") or m.get("kind") in ("detection_counts", "detection_indices")):
            return None     # a shape mismatch, NaN/Inf, the lineage row, integers (no rounding): the conversion's
        op, width = bounded.get(f["output"], (None, 0.0))
        scale = max(m["magnitude"], width)
        if m["spread"] >= JUDGED_SPREAD * scale:
            return None
        what = f"the range of its {op}" if width > m["magnitude"] else "its largest absolute value"
        rows.append(f"output {f['output']!r} moves over {m['spread']:.3g}, less than {JUDGED_SPREAD:.0%} of "
                    f"{what} ({scale:.3g}), and differs from Paddle by up to {m['max_abs_diff']:.3g}")
    whose = "your --inputs" if user_inputs else f"the {samples} generated samples"
    return BadInputError(
        f"{e.precision}: the gate cannot judge this conversion on {whose}: {'; '.join(rows)}. Float rounding "
        "at that scale is as large as that variation, so a good conversion cannot be told from a broken one here. "
        f"{FIX_INPUTS} on which the output varies (e.g. an image with the objects or text the model detects).")


def judge(precision: str, compared: list[dict], thr: Thresholds, samples: int, **extra) -> dict:
    """Report over per-output figures ({output, shape, metrics, exact}); ValidationError naming each failure."""
    rows, failures = [], []
    pooled = f"0..{samples - 1} pooled" if samples > 1 else 0
    for c in compared:
        v = c["violations"] if "violations" in c else violations(c["metrics"], thr, c.get("exact", False))
        row = {"output": c["output"], "sample": pooled, "shape": c.get("shape"), "metrics": c["metrics"],
               "violations": v, **({"kind": c["kind"]} if "kind" in c else {}),
               **({"exact": True} if c.get("exact") else {})}
        rows.append(row)
        if v:
            failures.append(row)
    report = {"precision": precision, **extra, "passed": not failures, "samples": samples,
              "thresholds": asdict(thr), "results": rows}
    if failures:
        raise ValidationError(precision, failures).with_report(report)
    return report


LINEAGE_ROW = "(weights and nodes vs the FP32 model)"


def lineage_row(precision: str, fp32_model: Path, model_path: Path, weights_only: bool = False) -> dict:
    """The variant's weights and nodes against the FP32 model's (convert.lineage), as a gate row; weights_only: a
    variant made from a differently fused FP32 graph (its nodes are other ones, its shared weights are not)."""
    lin = check_lineage(precision, fp32_model, model_path, weights_only)
    v = lin["violations"]
    shown = v[:5] + ([f"... and {len(v) - 5} more"] if len(v) > 5 else [])
    return {"output": LINEAGE_ROW, "kind": "lineage", "shape": None,
            "metrics": {"checked": lin["checked"], "max_abs_diff": lin["worst_abs"], "max_rel_diff": float("nan"),
                        "cosine": float("nan"), "argmax_agreement": None},
            "violations": shown}


def detection_figures(model, names: list[str], refs, got, tie_margin: float) -> dict[int, dict]:
    """{output index: figures} of the outputs a NonMaxSuppression or TopK selects (convert.detections: detection
    lists compared as sets, not element by element); none for a graph without one. model: the ONNX ModelProto."""
    from .detections import SELECTING, compare_nms_outputs
    if not any(n.op_type in SELECTING for n in model.graph.node):
        return {}
    return compare_nms_outputs(model, names, refs, got, tie_margin)


def check_label_signal(labels: dict[int, dict], outputs: list[TensorSpec], samples: int, user_inputs: bool) -> None:
    """Refuse samples on which Paddle gives one label everywhere: a model answering that label for any input (its
    scores zeroed, say) could not be told from a working one (check_signal's rule for label outputs)."""
    for j, m in labels.items():
        if m["reference_classes"] < 2:
            whose = "your --inputs" if user_inputs else f"the {samples} generated samples"
            raise BadInputError(
                f"Paddle's label output {outputs[j].name!r} (an ArgMax) is one label on every element of {whose}: "
                f"the gate cannot tell a broken conversion from a good one on these inputs. {FIX_INPUTS}, on "
                "which the model answers more than one label.")


def validate(precision: str, model_path: Path, samples: list[dict], refs: list[list[np.ndarray]],
             outputs: list[TensorSpec], thr: Thresholds, user_inputs: bool = False,
             fp32_model: Path | None = None, device: str = "cpu", lineage_weights_only: bool = False,
             level: str = "all") -> dict:
    """Compare every output, pooled over all samples (a NonMaxSuppression's detection lists as sets:
    convert.detections; an ArgMax's labels as labels, near-ties read from `fp32_model`'s scores: convert.labels);
    for an fp16/int8 variant also its lineage from `fp32_model`. Raise ValidationError naming each failing
    output. device: where the judged model runs ("cpu", or "gpu" for onnxruntime's CUDA provider); the FP32 scores
    near-ties are read from run on the CPU. level: the highest graph optimization it is run at (a bundle's cap:
    what its users get), lowered where a child's load crashes."""
    if not samples:
        raise BadInputError("the gate needs at least one sample")
    got = run_onnx(model_path, samples, precision, user_inputs, device, level)
    for i, (ref_list, got_list) in enumerate(zip(refs, got)):
        if len(ref_list) != len(got_list):
            raise ValidationError(precision, [{"output": "*", "sample": i, "violations": [
                f"{len(got_list)} ONNX outputs vs {len(ref_list)} Paddle outputs"],
                "metrics": {"max_abs_diff": float("inf"), "max_rel_diff": float("inf"), "cosine": 0.0,
                            "argmax_agreement": None}}])
    compared = []
    names = [s.name for s in outputs]
    import onnx
    graph = onnx.load(str(model_path), load_external_data=False)      # which outputs are judged by their own rule
    nms = detection_figures(graph, names, refs, got, thr.tie_margin)
    labels = label_figures(graph, model_path, names, refs, got, samples, thr.tie_margin,
                           fp32_model if precision != "fp32" else None, thr.max_rel_diff)
    check_label_signal(labels, outputs, len(samples), user_inputs)
    special = {**nms, **labels}
    softmax = softmax_axes(graph)
    bounded = output_value_ranges(graph)
    fixed = shape_only_outputs(graph.graph)
    reference = graph if fp32_model is None or Path(fp32_model) == Path(model_path) else \
        onnx.load(str(fp32_model), load_external_data=False)
    scored = class_axis_outputs(reference)             # the FP32 graph's heads (INT8's are quantized products)
    failing = set()                              # outputs judged element by element that break a bound
    for j, spec in enumerate(outputs):
        rs, gs = [r[j] for r in refs], [g[j] for g in got]
        shape = list(np.shape(rs[0]))
        exact = not np.issubdtype(rs[0].dtype, np.floating) and j not in special
        classes = has_class_axis(spec, scored)
        if spec.name in softmax and not exact and all(np.ndim(x) == len(spec.shape) for x in rs + gs):
            axis = softmax[spec.name] % max(len(spec.shape), 1)      # a Softmax's axis holds the classes
            rs, gs = [np.moveaxis(x, axis, -1) for x in rs], [np.moveaxis(x, axis, -1) for x in gs]
            classes = len(spec.shape) >= 2 and rs[0].shape[-1] >= 2
        m = special[j] if j in special else compare_pooled(rs, gs, classes and not exact, thr.tie_margin)
        op, width = bounded.get(spec.name, (None, 0.0))
        broken = j not in special and bool(violations(m, thr, exact))
        if (op == "Sigmoid" and not exact and broken
                and m.get("spread", 0.0) < JUDGED_SPREAD * max(m.get("magnitude", 0.0), width)):
            logits = compare_logits(rs, gs, half=precision == "fp16")   # too flat to judge: logits still move
            if logits.get("signal"):
                m, broken = logits, False                               # (judged on its logits instead)
        if spec.name in fixed and not exact and j not in special:
            # values the inputs never reach (a constant of their shapes): flat by construction, judged against
            # their magnitude by the precision's bounds, never excused as flat samples (unjudged)
            compared.append({"output": spec.name, "shape": shape, "metrics": m, "exact": False, "kind": "constant"})
            continue
        if broken:
            failing.add(j)
        compared.append({"output": spec.name, "shape": shape, "metrics": m, "exact": exact})
    if fp32_model is not None and precision in ("fp16", "int8") and Path(fp32_model) != Path(model_path):
        compared.append(lineage_row(precision, fp32_model, model_path, lineage_weights_only))
    if fp32_model is not None and precision == "fp16" and Path(fp32_model) != Path(model_path) and device == "cpu":
        from .half_range import overflows, range_row
        checked, over = overflows(Path(fp32_model), Path(model_path), samples)
        if checked:
            compared.append(range_row(checked, over))
    hard = mask_sources(graph, [names[j] for j in sorted(failing)]) if failing else {}
    if hard:                                    # hard masks: values at the mask's near-ties excused
        judge_model = Path(fp32_model) if fp32_model is not None and precision != "fp32" else Path(model_path)
        theirs = mask_sources(onnx.load(str(judge_model), load_external_data=False), list(hard))
        plan = [(names.index(n), theirs[n]) for n in hard if n in theirs]
        if plan:
            scores = run_scores(judge_model, [s for _, s in plan], samples)
            for k, (j, src) in enumerate(plan):
                m = excuse_mask_ties([r[j] for r in refs], [g[j] for g in got], [s[k] for s in scores], src.axis,
                                     thr.tie_margin, 1.0 - (thr.min_argmax_agreement or 0.0))
                if m is not None and not violations(m, thr, False):
                    compared[j]["metrics"] = m
                    failing.discard(j)
    for j, z in logits_scales(graph, model_path, names, samples, failing,
                              fp32_model if precision != "fp32" else None).items():
        m = compared[j]["metrics"]
        if z["spread"] > m.get("spread", 0.0):  # errors against the logits' scale (labels.logits_scales)
            rms = m["rel_rmse"] * m.get("std", 0.0)
            m.update({"max_rel_diff": m["max_abs_diff"] / z["spread"], "logits_scale": z,
                      "rel_rmse": rms / max(z["std"], m.get("std", 0.0)) if z["std"] > 0 else m["rel_rmse"]})
    try:
        return judge(precision, compared, thr, len(samples))
    except ValidationError as e:
        refusal = unjudged(e, bounded, len(samples), user_inputs)
        if refusal is not None:
            raise refusal from e
        raise


def summary(report: dict) -> dict:
    """The manifest's short form: the worst figure of each metric over all outputs (each pooled over samples)."""
    ms = [r["metrics"] for r in report["results"] if r.get("kind") not in ("lineage", "fp16_range")
          and r["metrics"].get("kind") not in ("detection_counts", "detection_indices")]   # judged by their own rule
    lineage = [r["metrics"]["checked"] for r in report["results"] if r.get("kind") == "lineage"]
    agree = [m["argmax_agreement_all_rows" if m.get("kind") == "labels" else "argmax_agreement"] for m in ms]
    agree = [a for a in agree if a is not None]             # labels: over all of them, as a user reads them
    ms = [m for m in ms if m.get("kind") != "labels"]         # labels have an agreement, no error figures
    return {"passed": report["passed"],
            "samples": report.get("samples", len({r["sample"] for r in report["results"]})),
            "numeric_outputs": len(ms),
            "max_abs_diff": max((m["max_abs_diff"] for m in ms), default=0.0),
            "max_rel_diff": max((m["max_rel_diff"] for m in ms), default=0.0),
            "max_rel_rmse": max((m.get("rel_rmse", 0.0) for m in ms), default=0.0),
            "min_cosine": min((m["cosine"] for m in ms), default=1.0),
            "min_argmax_agreement": min(agree) if agree else None,
            **({"lineage_checked": lineage[0]} if lineage else {}),
            "thresholds": report["thresholds"]}


def gate_text(s: dict) -> str:
    """A summary in words: the worst error figures and agreement; a model whose outputs are all labels (ArgMax
    integers, convert.labels) has no error figures, only its label agreement."""
    numeric = s.get("numeric_outputs", 1) > 0
    parts = [f"max_rel_diff {s['max_rel_diff']:.2e}", f"cosine {s['min_cosine']:.6f}"] if numeric else []
    if s.get("min_argmax_agreement") is not None:
        parts.append(f"{'argmax' if numeric else 'labels agree'} {s['min_argmax_agreement']:.4f}")
    return ", ".join(parts)


# ------------------------------------------------------------------------------------------ several failures at once
SEVERITY = (1, 4, 3, 2)     # exit codes, most serious first: a bug, a crash, a refused gate, bad input


def most_serious(codes) -> int:
    """The exit code of a run that failed in several ways (0: none failed); a code not in SEVERITY comes first."""
    codes = [c for c in codes if c]
    return min(codes, key=lambda c: SEVERITY.index(c) if c in SEVERITY else -1) if codes else 0


def failure_kind(e: Exception) -> str:
    """crashed (the conversion or onnxruntime failed: exit 4), gate-refused (exit 3), unusable file (a bundle's
    model onnxruntime cannot load) or not judged (samples a model cannot be judged on): exit 2."""
    from paddle2ort.runtime.errors import BundleError
    return ("gate-refused" if isinstance(e, ValidationError) else "crashed" if isinstance(e, ConversionError)
            else "unusable file" if isinstance(e, BundleError) else "not judged" if isinstance(e, BadInputError)
            else "failed")


def failure_line(e: Exception, limit: int = 400) -> str:
    """Why, in one line: a refused gate's broken bounds per output, else the first line of the message (a
    converter's log tail and the fix advice follow in the full message)."""
    if isinstance(e, ValidationError) and e.failures:
        text = "; ".join(f"output {f['output']!r}: {', '.join(f['violations'])}" for f in e.failures)
    else:
        text = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class GateRerunError(Paddle2OrtError):
    """Models of a bundle failed its gate re-run: each named on a line of its own (precision, kind, why), then each
    one's full message. `errors`: name -> error; `passed`: name -> report of those that passed; `exit_code`: the
    most serious of the errors' (4 a model crashed, 3 a gate refused, 2 samples a model cannot be judged on)."""

    def __init__(self, bundle: Path, errors: dict[str, Exception], passed: dict[str, dict]):
        self.errors, self.passed = dict(errors), dict(passed)
        self.exit_code = most_serious(getattr(e, "exit_code", 1) for e in self.errors.values())
        lines = [f"bundle {bundle}: {len(self.errors)} of {len(self.errors) + len(self.passed)} models fail the gate "
                 f"re-run against Paddle" + (f" ({', '.join(self.passed)} passed)" if self.passed else "") + ":"]
        lines += [f"  {name}: {failure_kind(e)}: {failure_line(e).removeprefix(f'{name}: ')}"
                  for name, e in self.errors.items()]
        for name, e in self.errors.items():
            text = str(e)
            lines += ["", text if text.startswith(f"{name}:") else f"{name}: {text}"]
        super().__init__("\n".join(lines))
