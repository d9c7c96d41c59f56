"""Detection lists — the outputs of a non-maximum suppression — compared as sets of boxes, not element by element.

A detector's NMS output holds rows (class, score, x1, y1, x2, y2[, ...]) (Paddle's multiclass_nms*, as paddle2onnx
exports it) sorted by score. Another precision, or another ISA's kernels, moves scores by a little: two near-equal
scores swap rows, and a detection at the cut (keep_top_k, the score threshold) leaves while its neighbour enters.
Row by row that reads as a broken model (PicoDet FP16: cosine 0.91, argmax agreement 0.80) although 99 of its 100
detections are the reference's. So rows are matched by class and overlap, greedy by reference score: IoU >= 0.8 is
the same candidate box (its score and corners then held to the usual error bounds); IoU >= 0.5 (as detection
benchmarks match) a neighbour of its NMS cluster kept instead, which a box whose IoU with a stronger one sits at the
NMS threshold does under rounding (PicoDet FP16, 1 of 198) and a fault that moves every box does too, so it counts
against the agreement with the precision's usual allowance. An unmatched detection counts against the model only
where its score is clear of the other list's cut (the near-tie rule: within tie_margin x the reference's score
spread of that cut it may fall either side on another host).

Which outputs are detection lists is read from the graph (downstream of a NonMaxSuppression or, a DETR's
post-processing, a TopK node, rank 2, a float row of at least 6 whose first column is whole class ids), never from
output names. Written by hand: onnx and onnxruntime compare no detection sets, and
pycocotools' matching scores a model against ground truth, not two models' lists. NumPy and onnx only.
"""
from __future__ import annotations

import numpy as np

from .metrics import compare_pooled

SAME_IOU = 0.8              # one candidate box, moved by rounding (FP16/INT8 move corners by well under 5% of a side)
MATCH_IOU = 0.5             # below SAME_IOU, down to this: a neighbour of the same NMS cluster kept instead
PROBABILITY_FLOOR = 0.1    # a probability score's error is judged against at least this much of its [0, 1] range
ROW = 6                     # class, score, x1, y1, x2, y2 (extra columns, e.g. a rotated box's, are compared too)


SELECTING = ("NonMaxSuppression", "TopK")   # ops that pick a data-dependent set of candidates (a DETR keeps its top k)


def nms_outputs(model) -> set[str]:
    """Names of the graph outputs computed from a NonMaxSuppression's or TopK's result (any path): a detector's
    list of kept candidates (a DETR's post-processing selects its top-k queries with no NMS)."""
    producer = {o: n for n in model.graph.node for o in n.output if o}
    memo: dict[str, bool] = {}

    def after_nms(name: str) -> bool:
        todo, seen = [name], set()
        while todo:
            cur = todo.pop()
            if cur in memo:
                if memo[cur]:
                    return True
                continue
            if cur in seen:
                continue
            seen.add(cur)
            node = producer.get(cur)
            if node is None:
                continue
            if node.op_type in SELECTING:
                return True
            todo.extend(i for i in node.input if i)
        return False

    out = set()
    for o in model.graph.output:
        memo[o.name] = after_nms(o.name)
        if memo[o.name]:
            out.add(o.name)
    return out


def is_detection_list(ref: np.ndarray) -> bool:
    """A float [N, >= 6] array whose first column holds class ids (whole numbers): one detection a row. (Logits
    [N, C] downstream of a TopK, e.g. a mixture-of-experts router's, are not.)"""
    if not (ref.ndim == 2 and ref.shape[1] >= ROW and np.issubdtype(ref.dtype, np.floating)):
        return False
    ids = ref[:, 0][np.isfinite(ref[:, 0])]
    return bool(np.all(ids == np.round(ids)))


def _corners(b: np.ndarray) -> np.ndarray:
    """(x1, y1, x2, y2) with x1 <= x2 and y1 <= y2 (a decoder fed odd scale factors may write them swapped)."""
    return np.concatenate([np.minimum(b[..., :2], b[..., 2:4]), np.maximum(b[..., :2], b[..., 2:4])], -1)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (x1, y1, x2, y2) box with each row of boxes [M, 4]; two boxes of no area overlap fully where they
    are the same point or line (to float32 rounding of their size), else not at all."""
    box, boxes = _corners(box), _corners(boxes)
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = w * h
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    union = area(box) + area(boxes) - inter
    tol = 1e-6 * max(float(np.abs(box).max()), 1.0)
    same = np.all(np.abs(boxes - box) <= tol, axis=-1)
    return np.where(union > 0, inter / np.where(union > 0, union, 1), same.astype(np.float64))


def match(ref: np.ndarray, got: np.ndarray, iou_min: float = MATCH_IOU) -> list[tuple[int, int]]:
    """Greedy matching, highest reference score first: each reference row to the unused row of `got` of the same
    class with the largest IoU, when that IoU >= iou_min. -> [(ref row, got row)]."""
    pairs, used = [], np.zeros(len(got), bool)
    for i in np.argsort(-ref[:, 1], kind="stable"):
        cand = np.nonzero(~used & (got[:, 0] == ref[i, 0]))[0]
        if not len(cand):
            continue
        ious = _iou(ref[i, 2:6], got[cand, 2:6])
        k = int(np.argmax(ious))
        if ious[k] >= iou_min:
            used[cand[k]] = True
            pairs.append((int(i), int(cand[k])))
    return pairs


def _finite_rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return a[np.all(np.isfinite(a), axis=1)] if len(a) else a.reshape(0, a.shape[1] if a.ndim == 2 else ROW)


def compare_detections(refs: list[np.ndarray], gots: list[np.ndarray], tie_margin: float) -> dict:
    """Per sample, the two lists matched (`match`); -> the matched pairs' aligned rows [P, C] of reference and
    model (for the error figures), and the agreement: matched / (matched + unmatched detections of either list
    whose score is clear of the other list's lowest score by more than tie_margin x the reference's score spread).
    A model with NaN rows or the wrong row width has none of its rows matched."""
    ref_rows, got_rows = [], []
    matched = swapped = missed = extra = near = 0
    scores = np.concatenate([np.asarray(r, np.float64)[:, 1] for r in refs if len(r)] or [np.zeros(0)])
    scores = scores[np.isfinite(scores)]
    eps = tie_margin * (float(scores.max() - scores.min()) if scores.size > 1 else 1.0)
    for r, g in zip(refs, gots):
        r = _finite_rows(r)
        g = _finite_rows(g) if g.ndim == 2 and g.shape[1] == r.shape[1] else np.zeros((0, r.shape[1]))
        pairs = match(r, g, SAME_IOU)
        ri = np.array([i for i, _ in pairs], np.int64)
        gi = np.array([j for _, j in pairs], np.int64)
        ref_rows.append(r[ri])
        got_rows.append(g[gi])
        matched += len(pairs)
        rest_r, rest_g = np.setdiff1d(np.arange(len(r)), ri), np.setdiff1d(np.arange(len(g)), gi)
        # a neighbour of the same cluster kept instead: an NMS near-tie (two members' IoU at its threshold) or a
        # fault (every box moved); no error figures (they are not one box), and no agreement either
        near_pairs = [(rest_r[i], rest_g[j]) for i, j in match(r[rest_r], g[rest_g], MATCH_IOU)]
        swapped += len(near_pairs)
        left_r = np.setdiff1d(rest_r, [i for i, _ in near_pairs])
        left_g = np.setdiff1d(rest_g, [j for _, j in near_pairs])
        # an unmatched detection scored within eps of the cut (the lower of the two lists' lowest scores: a score
        # threshold's or a keep_top_k's) is a near-tie; one far above it is not (a list cut in half: the lost
        # half lies between the two lowest scores, not at them)
        cut = min(g[:, 1].min() if len(g) else -np.inf,     # an empty list has no cut: all the other's count
                  r[:, 1].min() if len(r) else -np.inf)
        tie_r = np.abs(r[left_r, 1] - cut) <= eps
        tie_g = np.abs(g[left_g, 1] - cut) <= eps
        near += int(tie_r.sum() + tie_g.sum())
        missed += int((~tie_r).sum())
        extra += int((~tie_g).sum())
    decisive = matched + swapped + missed + extra
    return {"aligned_ref": np.concatenate(ref_rows), "aligned_got": np.concatenate(got_rows),
            "argmax_agreement": matched / decisive if decisive else None, "argmax_rows": decisive,
            "near_ties": near, "detections": {"matched": matched, "swapped": swapped, "missed": missed,
                                              "extra": extra, "at_the_cut": near, "same_iou": SAME_IOU,
                                              "match_iou": MATCH_IOU, "score_eps": eps}}


def compare_detection_lists(refs: list[np.ndarray], gots: list[np.ndarray], tie_margin: float) -> dict:
    """The gate's figures for a detection-list output (metrics.violations reads them): the matched pairs' scores
    and their box coordinates each against their own spread (a model that zeroes the scores but keeps the boxes
    must not hide behind the coordinates' range), the worst of the two, and the detection agreement as the
    argmax agreement."""
    d = compare_detections(refs, gots, tie_margin)
    ar, ag = d.pop("aligned_ref"), d.pop("aligned_got")
    parts = [_probability_scale(compare_pooled([ar[:, 1]], [ag[:, 1]], False), ar[:, 1], ag[:, 1]),
             compare_pooled([ar[:, 2:]], [ag[:, 2:]], False)]
    m = dict(max(parts, key=lambda p: p["max_rel_diff"]))         # its max_abs_diff and spread go together
    rms = max(parts, key=lambda p: p["rel_rmse"])
    m.update({"rel_rmse": rms["rel_rmse"], "std": rms["std"], "cosine": min(p["cosine"] for p in parts),
              "nonfinite": sum(int(np.sum(~np.isfinite(np.asarray(g, np.float64)))) for g in gots),
              "signal": any(p["signal"] for p in parts), "kind": "detections", **d})
    return m


def _probability_scale(m: dict, ref: np.ndarray, got: np.ndarray) -> dict:
    """Scores that are probabilities (every reference score in [0, 1]) judged against at least PROBABILITY_FLOOR
    of that range: a DETR's top-k scores cluster near its best (std 0.039 on a trial RT-DETR), and FP16's 0.0016
    rms error, which moves no score across any threshold a user sets, read as 4% of that spread."""
    ok = np.isfinite(ref) & np.isfinite(got)
    if not ref.size or not ok.any() or not np.all((ref >= 0) & (ref <= 1)) or "shape_ref" in m:
        return m
    diff = np.abs(got[ok] - ref[ok])
    m = dict(m)
    m["max_rel_diff"] = min(m["max_rel_diff"], float(diff.max()) / PROBABILITY_FLOOR)
    m["rel_rmse"] = min(m["rel_rmse"], float(np.sqrt(np.mean(diff ** 2))) / PROBABILITY_FLOOR)
    m["spread"], m["std"] = max(m["spread"], PROBABILITY_FLOOR), max(m["std"], PROBABILITY_FLOOR)
    return m


def count_tolerance(m: dict) -> int:
    """How far a per-image detection count computed with the same NMS may move: one a detection at the cut."""
    return int(m.get("detections", {}).get("at_the_cut", 0))


def compare_nms_outputs(model, names: list[str], refs: list[list[np.ndarray]], got: list[list[np.ndarray]],
                        tie_margin: float) -> dict[int, dict]:
    """{output index: figures} for the outputs computed by a NonMaxSuppression: detection lists
    (compare_detection_lists) and, judged after them, its integer outputs: rank 1, per-image counts, may move by
    one a detection at the cut; others are the kept candidates' indices, reordered as the list is and judged
    through it (an index picks the row's class, score and box, which the list compares), reported only. Other
    outputs are absent (compared element by element). model: the ONNX ModelProto; refs / got: per sample, per
    output."""
    after = nms_outputs(model)
    special: dict[int, dict] = {}
    for j, name in enumerate(names):
        rs = [r[j] for r in refs]
        if name in after and all(is_detection_list(np.asarray(r)) for r in rs):
            special[j] = compare_detection_lists(rs, [np.asarray(g[j]) for g in got], tie_margin)
    tolerance = sum(count_tolerance(m) for m in special.values())
    if not special:
        return special
    for j, name in enumerate(names):
        rs = [np.asarray(r[j]) for r in refs]
        if name in after and j not in special and all(np.issubdtype(r.dtype, np.integer) for r in rs):
            m = compare_pooled(rs, [np.asarray(g[j]) for g in got], False)
            counts = all(r.ndim == 1 for r in rs)
            m.update({"kind": "detection_counts", "count_tolerance": tolerance} if counts else
                     {"kind": "detection_indices"})
            special[j] = m
    return special
