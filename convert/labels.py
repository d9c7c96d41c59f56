"""Label outputs — integers an ArgMax computes — compared as labels, not as exact integers.

A PaddleSeg export ends in an argmax by default (`--output_op argmax`: an int32 label map [N, 1, H, W]); classifiers
are exported with their argmax too. Element by element such an output must match exactly, and no precision does:
an FP16 or INT8 model, or the same FP32 model on another ISA's kernels, moves the class scores by a little and the
pixels whose two best scores are that close change label. The gate refused every such conversion (a tiny segmenter
at INT8: "integer output differs (max abs diff 3)"), and no threshold could be given to accept it.

So the scores the ArgMax reads are fetched too (the candidate model run with that tensor as an extra output), and a
label counts against the model only where it is decisive: the top-2 margin of the margin scores above tie_margin x
their spread (the near-tie rule of every argmax agreement here). The margin scores are the bundle's FP32 model's for
another precision (its labels are held to Paddle's first), the candidate's own for FP32 (an FP32 model matches
Paddle's scores to 1e-5 of their spread). Judged: the agreement over decisive labels, and the same agreement per
reference class, averaged over the classes (a model that answers "background" everywhere agrees on most pixels of
most images and on no other class); the agreement over all labels, near-ties included, to the same bound (a precision
may move labels at their ties, not most of them: a random-weight INT8 DeepLabV3P had 91% of its labels within
int8's tie margin, agreed on those judged, and read a real photo 17% as Paddle did); for FP16/INT8 the scores
themselves against the FP32 model's, to the precision's rel_rmse and cosine bounds. A model whose margin scores are
constant or not finite is refused. With its own
scores an FP32 model is also held to its max_rel_diff: a label may differ from Paddle's only where its scores put
Paddle's label within 2 x max_rel_diff x their spread of its top (a weight off by 1% moves labels just past their
ties, where the agreement alone cannot see it).

Which outputs are labels is read from the graph (a graph output computed by an ArgMax through Cast, Identity,
Reshape, Squeeze, Unsqueeze or Flatten only, which keep the elements' order), never from output names.
Written by hand: onnx and onnxruntime compare no label maps, and a segmentation metric library scores a model
against ground truth, not two models near their ties. NumPy, onnx and onnxruntime only.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .metrics import agreement_figures, compare_pooled, top2_margin

ORDER_KEEPING = {"Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}
MIN_CLASS_LABELS = 20       # a reference class enters the per-class average with at least this many decisive labels
MIN_ALL_LABELS = 100        # the agreement over all labels is judged from this many (3 labels of a classifier's
                            # argmax: one flip at a near-tie would be 0.67)


@dataclass(frozen=True)
class LabelSource:
    """A graph output an ArgMax (or, softmax_sources, a Softmax) computes from `scores` along `axis`."""

    output: str
    scores: str
    axis: int


def label_sources(model) -> dict[str, LabelSource]:
    """{graph output name: LabelSource} for the outputs an ArgMax computes through order-keeping ops (a Cast to
    float included: `paddle.argmax(x).astype("float32")` is labels all the same)."""
    producer = {o: n for n in model.graph.node for o in n.output if o}
    found = {}
    for out in model.graph.output:
        name = out.name
        node = producer.get(name)
        while node is not None and node.op_type in ORDER_KEEPING:
            name = node.input[0]
            node = producer.get(name)
        if node is None or node.op_type != "ArgMax":
            continue
        attrs = {a.name: a.i for a in node.attribute}
        found[out.name] = LabelSource(out.name, node.input[0], int(attrs.get("axis", 0)))
    return found


def softmax_axes(model) -> dict[str, int]:
    """{graph output name: class axis} for outputs a Softmax/LogSoftmax computes (through Cast/Identity only):
    a segmenter's probabilities [N, C, H, W] have their classes on axis 1, not last, and their argmax agreement is
    judged there. Opset < 13 softmax (over all axes from `axis` on) counts only where that is the last axis."""
    return {name: s.axis for name, s in softmax_sources(model).items()}


def softmax_sources(model) -> dict[str, LabelSource]:
    """softmax_axes with the logits each Softmax reads (LabelSource.scores)."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    producer = {o: n for n in model.graph.node for o in n.output if o}
    found = {}
    for out in model.graph.output:
        node = producer.get(out.name)
        while node is not None and node.op_type in ("Cast", "Identity"):
            node = producer.get(node.input[0])
        if node is None or node.op_type not in ("Softmax", "LogSoftmax"):
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
        if opset >= 13 or axis == -1:
            found[out.name] = LabelSource(out.name, node.input[0], int(axis))
    return found


def logits_scales(model, model_path: Path, names: list[str], samples: list[dict], failing: set[int],
                  logits_model: Path | None) -> dict[int, dict]:
    """{output index: {"spread", "std"} of the logits its Softmax reads} for the `failing` Softmax outputs, read
    from `logits_model` (the bundle's FP32 model) or the candidate. A softmax passes its logits' absolute error on
    at most halved (its Jacobian's infinity norm is max 2 p (1 - p) <= 1/2), so where the logits range over tens
    (a random-weight segmenter on generated images: std 32) an FP32 rounding of 1e-4 of their spread moves the
    probabilities by more than 1e-4 of theirs (at most 1): their worst error is judged against the logits' spread
    then (max_rel_diff), their rms error against the logits' std (rel_rmse); their cosine and argmax agreement as
    they are (a wrong softmax fails those)."""
    import onnx
    sources = softmax_sources(model)
    idx = {j: sources[n] for j, n in enumerate(names) if n in sources and j in failing}
    if not idx:
        return {}
    probe = Path(model_path)
    if logits_model is not None and Path(logits_model) != probe:
        theirs = softmax_sources(onnx.load(str(logits_model), load_external_data=False))
        if all(s.output in theirs for s in idx.values()):
            probe, idx = Path(logits_model), {j: theirs[s.output] for j, s in idx.items()}
    scores = run_scores(probe, list(idx.values()), samples)
    out = {}
    for k, j in enumerate(idx):
        z = np.concatenate([np.asarray(s[k], np.float64).ravel() for s in scores])
        z = z[np.isfinite(z)]
        if z.size:
            out[j] = {"spread": float(z.max() - z.min()), "std": float(z.std()),
                      "from": "fp32 model" if probe != Path(model_path) else "own"}
    return out


def run_scores(model_path: Path, sources: list[LabelSource], samples: list[dict]) -> list[list[np.ndarray]]:
    """Per sample, the scores each source's ArgMax reads: the model run with them as extra outputs. The copy is
    written in a temporary folder of its own (never beside the model: `paddle2ort validate` runs on a published
    bundle, which an added file would break), the model's external data files linked in beside it."""
    import shutil

    import onnx

    from paddle2ort.runtime.load_probe import safe_options
    from paddle2ort.runtime.session import create_session
    model = onnx.load(str(model_path), load_external_data=False)
    have = {o.name for o in model.graph.output}
    for s in sources:
        if s.scores not in have:                # untyped: onnxruntime infers the type (float16 in an FP16 model)
            model.graph.output.append(onnx.ValueInfoProto(name=s.scores))
            have.add(s.scores)
    home = Path(model_path).resolve().parent
    files = {e.value for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
             for e in t.external_data if e.key == "location"}
    work = Path(tempfile.mkdtemp(prefix="p2o-labels-probe-"))
    try:
        for f in files:                         # relative to the model's folder, as onnx writes them
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(home / f, work / f)
        onnx.save(model, str(work / "probe.onnx"))
        sess = create_session(work / "probe.onnx", safe_options(model_path))   # the model's own safe level
        names = [i.name for i in sess.get_inputs()]
        fetch = [s.scores for s in sources]
        return [sess.run(fetch, {n: x[n] for n in names}) for x in samples]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _rows(scores: np.ndarray, axis: int) -> np.ndarray:
    s = np.asarray(scores, np.float64)
    return np.moveaxis(s, axis if axis >= 0 else s.ndim + axis, -1).reshape(-1, s.shape[axis])


def compare_labels(refs: list[np.ndarray], gots: list[np.ndarray], margin_scores: list[np.ndarray], axis: int,
                   tie_margin: float, own: bool, max_rel_diff: float | None = None) -> dict | None:
    """Figures for one label output pooled over the samples; None where the labels do not line up with the
    scores' rows (compared exactly then). margin_scores: per sample, the scores whose top-2 margins decide which
    labels are decisive; own: they are the candidate's own (FP32), not the FP32 model's. max_rel_diff (with own
    scores): the precision's bound on its scores' error; a label that differs from Paddle's where the model's own
    scores put Paddle's label more than twice that (x their spread) below its top is counted as `inconsistent`:
    scores within the bound of Paddle's could not differ there."""
    rows = [_rows(s, axis) for s in margin_scores]
    if any(np.asarray(r).size != len(s) or np.asarray(g).size != len(s) for r, g, s in zip(refs, gots, rows)) \
            or not rows or rows[0].shape[1] < 2:
        return None                             # (an ArgMax over one entry: every label 0, compared exactly)
    ref = np.concatenate([np.asarray(r).ravel() for r in refs]).astype(np.int64)
    got = np.concatenate([np.asarray(g).ravel() for g in gots]).astype(np.int64)
    sc = np.concatenate(rows)
    finite = np.all(np.isfinite(sc), axis=-1)
    spread = float(sc[finite].max() - sc[finite].min()) if finite.any() else 0.0
    decisive = finite & (top2_margin(np.nan_to_num(sc)) > tie_margin * spread)
    agree = ref == got
    figures = agreement_figures(agree, decisive)
    per_class = {}
    for c in np.unique(ref[decisive]):
        mask = decisive & (ref == c)
        if mask.sum() >= MIN_CLASS_LABELS:
            per_class[int(c)] = float(agree[mask].mean())
    classes = sorted(per_class, key=per_class.get)
    inconsistent = 0
    if own and max_rel_diff is not None:
        flips = np.flatnonzero(finite & ~agree & (ref >= 0) & (ref < sc.shape[1]))
        gap = sc[flips, got[flips].clip(0, sc.shape[1] - 1)] - sc[flips, ref[flips]]
        inconsistent = int(np.sum(gap > 2 * max_rel_diff * spread))
    return {"kind": "labels", "label_rows": int(len(ref)), **figures,
            "class_agreement": float(np.mean(list(per_class.values()))) if per_class else None,
            "worst_classes": {c: per_class[c] for c in classes[:3]},
            "reference_classes": int(len(np.unique(ref))), "score_spread": spread,
            "margin_scores": "own" if own else "fp32 model",
            "nonfinite": int((~finite).sum()), "signal": bool(spread > 0 and len(np.unique(ref)) > 1),
            "inconsistent": inconsistent, "consistency_bound": None if max_rel_diff is None else 2 * max_rel_diff,
            "max_abs_diff": float(np.abs(ref - got).max()) if len(ref) else 0.0}


def label_violations(m: dict, thr) -> list[str]:
    """The bounds (metrics.Thresholds) label figures break, in words (metrics.violations for kind "labels")."""
    min_agreement = thr.min_argmax_agreement
    v = []
    if m["nonfinite"]:
        v.append(f"{m['nonfinite']} labels read NaN/Inf scores ({m['margin_scores']})")
    if m["score_spread"] == 0 and m["margin_scores"] == "own":
        v.append("the scores its ArgMax reads are constant: every label is a tie")
    if m.get("inconsistent"):
        v.append(f"{m['inconsistent']} labels differ from Paddle's where the model's own scores put Paddle's label "
                 f"more than {m['consistency_bound']:g} x their spread below its top (scores within max_rel_diff "
                 "of Paddle's could not differ there)")
    theirs = m.get("scores_vs_fp32")
    if theirs:
        if theirs["nonfinite"]:
            v.append(f"its scores hold {theirs['nonfinite']} NaN/Inf values where the FP32 model's are finite")
        if thr.max_rel_rmse is not None and theirs["rel_rmse"] > thr.max_rel_rmse:
            v.append(f"its scores vs the FP32 model's: rel_rmse {theirs['rel_rmse']:.3g} > {thr.max_rel_rmse:g}")
        if thr.min_cosine is not None and theirs["cosine"] < thr.min_cosine:
            v.append(f"its scores vs the FP32 model's: cosine {theirs['cosine']:.6f} < {thr.min_cosine:g}")
    if min_agreement is None:
        return v
    if (m["argmax_agreement_all_rows"] is not None and m["label_rows"] >= MIN_ALL_LABELS
            and m["argmax_agreement_all_rows"] < min_agreement):
        v.append(f"agreement over all {m['label_rows']} labels {m['argmax_agreement_all_rows']:.4f} < "
                 f"{min_agreement:g} (near-ties included: a precision may move the labels at their ties, not "
                 "this many)")
    if m["argmax_agreement"] is not None and m["argmax_agreement"] < min_agreement:
        v.append(f"label agreement {m['argmax_agreement']:.4f} < {min_agreement:g} over {m['argmax_rows']} labels "
                 f"whose scores' top-2 margin is clear of a tie ({m['near_ties']} near-ties not judged)")
    if m["class_agreement"] is not None and m["class_agreement"] < min_agreement:
        worst = ", ".join(f"class {c} {a:.3f}" for c, a in m["worst_classes"].items())
        v.append(f"label agreement averaged over the reference's classes {m['class_agreement']:.4f} < "
                 f"{min_agreement:g} (worst: {worst})")
    if m["argmax_agreement"] is None and m["max_abs_diff"] != 0:
        v.append(f"labels differ and none is clear of a tie ({m['label_rows']} near-ties)")
    return v


def label_figures(model, model_path: Path, names: list[str], refs: list[list[np.ndarray]],
                  got: list[list[np.ndarray]], samples: list[dict], tie_margin: float, margin_model: Path | None,
                  max_rel_diff: float | None = None) -> dict[int, dict]:
    """{output index: figures} of the label outputs (none for a graph without them). model: the ModelProto at
    model_path (without external data); margin_model: the model whose scores decide the near-ties (the bundle's
    FP32 model), None for the candidate's own; max_rel_diff: the precision's bound (compare_labels)."""
    import onnx
    sources = label_sources(model)
    idx = {j: sources[n] for j, n in enumerate(names) if n in sources}
    if not idx:
        return {}
    own = margin_model is None or Path(margin_model) == Path(model_path)
    if not own:
        theirs = label_sources(onnx.load(str(margin_model), load_external_data=False))
        if any(sources[names[j]].output not in theirs for j in idx):
            own = True                         # the FP32 model computes these outputs otherwise: judge by its own
    probe = Path(model_path) if own else Path(margin_model)
    plan = list(idx.values()) if own else [theirs[s.output] for s in idx.values()]
    scores = run_scores(probe, plan, samples)
    mine = None if own else run_scores(Path(model_path), list(idx.values()), samples)
    out = {}
    for k, j in enumerate(idx):
        m = compare_labels([r[j] for r in refs], [g[j] for g in got], [s[k] for s in scores], plan[k].axis,
                           tie_margin, own, max_rel_diff)
        if m is not None:
            if mine is not None:              # the scores themselves, held to the precision's bounds
                f = compare_pooled([s[k] for s in scores], [s[k] for s in mine], False)
                m["scores_vs_fp32"] = {key: f[key] for key in ("max_rel_diff", "rel_rmse", "cosine", "nonfinite")}
            out[j] = m
    return out


MASK_TESTS = {"Equal", "OneHot", "Where", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"}


def mask_sources(model, names: list[str]) -> dict[str, LabelSource]:
    """{output: the ArgMax that feeds it as a mask} for outputs computed from an ArgMax's classes by arithmetic
    (PP-Matting's hard fusion: argmax -> Equal -> Cast -> Mul -> alpha): its classes compared (MASK_TESTS) and the
    result computed on. Not an ArgMax used as an index (CLIP's last-token pooling), nor a label output itself."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output if o}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def masks(name: str, depth: int = 0) -> bool:
        return any(c.op_type in MASK_TESTS or (depth < 4 and c.op_type in ORDER_KEEPING
                                                and masks(c.output[0], depth + 1)) for c in consumers.get(name, []))
    labels = label_sources(model)
    found = {}
    for name in names:
        if name in labels:
            continue
        seen, todo = set(), [name]
        while todo:
            node = producer.get(todo.pop())
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type == "ArgMax" and masks(node.output[0]):
                attrs = {a.name: a.i for a in node.attribute}
                found[name] = LabelSource(name, node.input[0], int(attrs.get("axis", 0)))
                break
            todo.extend(i for i in node.input if i)
    return found


def excuse_mask_ties(refs: list[np.ndarray], gots: list[np.ndarray], scores: list[np.ndarray], axis: int,
                     tie_margin: float, max_share: float) -> dict | None:
    """Figures of a hard-mask output over the values where the mask's classes are decisive: a value at a position
    where the top-2 margin of `scores` (the FP32 model's, the ArgMax's input) is within tie_margin x their spread may
    jump by the mask's step (another class chosen at a near-tie, as an argmax agreement excuses). None where the
    positions do not line up with the output's values or more than `max_share` of the values would be excused."""
    z = [np.asarray(s, np.float64) for s in scores]
    flat = np.concatenate([s.ravel() for s in z])
    spread = float(flat.max() - flat.min()) if flat.size else 0.0
    if spread <= 0 or not np.isfinite(spread):
        return None
    keep_r, keep_g, excused, total = [], [], 0, 0
    for r, g, s in zip(refs, gots, z):
        ax = axis % s.ndim
        if s.shape[ax] < 2:
            return None
        part = np.partition(s, -2, axis=ax)
        margin = np.take(part, [-1], axis=ax) - np.take(part, [-2], axis=ax)       # keepdims: size 1 on the axis
        try:
            tie = np.broadcast_to(margin <= tie_margin * spread, np.shape(r))
        except ValueError:
            return None
        keep_r.append(np.asarray(r)[~tie])
        keep_g.append(np.asarray(g)[~tie])
        excused, total = excused + int(tie.sum()), total + tie.size
    if not total or excused > max_share * total or not sum(k.size for k in keep_r):
        return None
    m = compare_pooled([np.concatenate(keep_r)], [np.concatenate(keep_g)], False)
    m.update({"kind": "hard mask", "near_tie_values_excused": excused, "values": total})
    return m
