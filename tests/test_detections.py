"""Detection lists judged as sets (convert.detections): what a detector's NMS output may do under another precision or
ISA (reorder near-equal scores, swap a detection at the cut) passes; what a broken conversion does (zeroed or offset
scores, moved boxes, lost or invented detections, shifted classes, wrong counts) is refused. NumPy and onnx only."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from paddle2ort.convert.detections import compare_nms_outputs, match, nms_outputs
from paddle2ort.convert.metrics import DEFAULT_THRESHOLDS, violations

FP16 = DEFAULT_THRESHOLDS["fp16"]


def detections(n: int = 40, seed: int = 0) -> np.ndarray:
    """n detections (class, score, x1, y1, x2, y2) of 5 classes on a 400-pixel image, sorted by class then score
    as multiclass_nms writes them; scores well apart (no near-ties among the first n)."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 300, (n, 2))
    wh = rng.uniform(10, 80, (n, 2))
    rows = np.column_stack([rng.integers(0, 5, n), np.linspace(0.95, 0.2, n), xy, xy + wh]).astype(np.float32)
    return rows[np.lexsort((-rows[:, 1], rows[:, 0]))]


def nms_graph() -> onnx.ModelProto:
    """boxes/scores -> NonMaxSuppression -> a [N, 6] detection list and a [1] count; plus an output before it."""
    nodes = [helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["sel"]),
             helper.make_node("Cast", ["sel"], ["self"], to=TensorProto.FLOAT),
             helper.make_node("Concat", ["self", "self"], ["dets"], axis=1),
             helper.make_node("Shape", ["sel"], ["shape"]),
             helper.make_node("Slice", ["shape", "zero", "one"], ["count"]),
             helper.make_node("Relu", ["scores"], ["raw_scores"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 10, 4]),
                                       helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2, 10])],
                          [helper.make_tensor_value_info("dets", TensorProto.FLOAT, [None, 6]),
                           helper.make_tensor_value_info("count", TensorProto.INT64, [1]),
                           helper.make_tensor_value_info("raw_scores", TensorProto.FLOAT, [1, 2, 10])],
                          [helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
                           helper.make_tensor("one", TensorProto.INT64, [1], [1])])
    return helper.make_model(g)


def judge(ref: np.ndarray, got: np.ndarray, thr=FP16, count_ref=None, count_got=None) -> list[str]:
    refs, gots = [[ref, np.array([len(ref) if count_ref is None else count_ref]), ref[:, 1:2]]], \
        [[got, np.array([len(got) if count_got is None else count_got]), ref[:, 1:2]]]
    figs = compare_nms_outputs(nms_graph(), ["dets", "count", "raw_scores"], refs, gots, thr.tie_margin)
    assert set(figs) == {0, 1}, "the detection list and its count are judged as NMS outputs, the rest is not"
    return violations(figs[0], thr, exact=False) + violations(figs[1], thr, exact=False)


def test_nms_outputs_are_read_from_the_graph():
    assert nms_outputs(nms_graph()) == {"dets", "count"}


def test_rounding_noise_and_reordered_near_ties_pass():
    ref = detections()
    got = ref.copy()
    got[:, 2:] += np.random.default_rng(1).normal(0, 0.05, got[:, 2:].shape)   # FP16 box rounding
    got[:, 1] += np.random.default_rng(2).normal(0, 5e-4, len(got))
    got = got[np.random.default_rng(3).permutation(len(got))]                   # any order
    assert judge(ref, got) == []
    assert judge(ref, ref, DEFAULT_THRESHOLDS["fp32"]) == []


def test_a_detection_swapped_at_the_cut_is_a_near_tie():
    ref = detections()
    low = int(np.argmin(ref[:, 1]))
    got = np.delete(ref, low, axis=0)
    newcomer = ref[low].copy()
    newcomer[2:] += 200                                       # another box, scored a hair below the cut
    newcomer[1] -= 1e-3
    got = np.vstack([got, newcomer])
    assert judge(ref, got, count_got=len(got)) == []


def test_a_lost_confident_detection_is_refused():
    ref = detections()
    got = np.delete(ref, np.argsort(-ref[:, 1])[:3], axis=0)   # the three best gone
    v = judge(ref, got)
    assert any("detection agreement" in x and "3 missed" in x for x in v), v


def test_an_invented_confident_detection_is_refused():
    ref = detections()
    extra = ref[np.argmax(ref[:, 1])].copy()
    extra[2:] += 150
    invented = np.stack([extra, extra + [0, 0, 5, 5, 5, 5], extra + [0, 0, -150, 0, -150, 0]])
    v = judge(ref, np.vstack([ref, invented]), count_got=len(ref))
    assert any("3 extra" in x for x in v), v


@pytest.mark.parametrize("fault", ["scores zeroed", "scores offset", "boxes moved", "classes shifted", "empty",
                                   "all zero", "nan"])
def test_broken_detection_lists_are_refused(fault):
    ref = detections()
    got = ref.copy()
    if fault == "scores zeroed":
        got[:, 1] = 0
    elif fault == "scores offset":
        got[:, 1] += 0.5 * ref[:, 1].std()
    elif fault == "boxes moved":
        got[:, 2:] += 8                                       # still IoU >= 0.5 with the reference: matched
    elif fault == "classes shifted":
        got[:, 0] = (got[:, 0] + 1) % 5
    elif fault == "empty":
        got = got[:0]
    elif fault == "all zero":
        got[:] = 0
    else:
        got[::2] = np.nan
    assert judge(ref, got, count_got=len(ref)) != [], fault


def test_a_count_beyond_the_detections_at_the_cut_is_refused():
    ref = detections()
    assert judge(ref, ref, count_got=len(ref) + 1)
    assert any("detection count" in x for x in judge(ref, ref, count_got=len(ref) + 1))


def test_match_is_greedy_by_score_and_within_class():
    ref = np.array([[0, 0.9, 0, 0, 10, 10], [0, 0.8, 1, 1, 11, 11], [1, 0.7, 0, 0, 10, 10]], np.float32)
    got = np.array([[1, 0.7, 0, 0, 10, 10], [0, 0.8, 1, 1, 11, 11], [0, 0.9, 0, 0, 10, 10]], np.float32)
    assert sorted(match(ref, got)) == [(0, 2), (1, 1), (2, 0)]
    swapped = ref.copy()
    swapped[:, 2:] = swapped[:, [4, 5, 2, 3]]                 # corners written the other way round: the same boxes
    assert sorted(match(ref, swapped)) == [(0, 0), (1, 1), (2, 2)]


def _neighbour(row: np.ndarray) -> np.ndarray:
    """Another member of the row's NMS cluster: IoU about 0.6 with it, a lower score."""
    n = row.copy()
    w = row[4] - row[2]
    n[[2, 4]] += 0.25 * w
    n[1] *= 0.5
    return n


def test_a_neighbour_kept_instead_counts_against_the_agreement_only():
    ref = detections()
    got = ref.copy()
    i = int(np.argsort(-ref[:, 1])[5])
    got[i] = _neighbour(ref[i])                 # FP16 suppressed it at the NMS threshold; its neighbour survived
    assert judge(ref, got) == []                # 39 of 40 the same box: within FP16's allowance, no score error
    v = judge(ref, np.stack([_neighbour(r) for r in ref]))
    assert any("40 a neighbour kept instead" in x for x in v), v


def topk_graph() -> onnx.ModelProto:
    """A DETR's post-processing: scores -> TopK -> gather of the kept queries' rows -> a [N, 6] list; beside it a
    router's logits [N, 8] computed after a TopK too (not a detection list: its first column is no class id)."""
    nodes = [helper.make_node("TopK", ["scores", "k"], ["vals", "idx"], axis=0),
             helper.make_node("Gather", ["rows", "idx"], ["dets"], axis=0),
             helper.make_node("Gather", ["logits_in", "idx"], ["logits"], axis=0)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [30]),
                                       helper.make_tensor_value_info("rows", TensorProto.FLOAT, [30, 6]),
                                       helper.make_tensor_value_info("logits_in", TensorProto.FLOAT, [30, 8])],
                          [helper.make_tensor_value_info("dets", TensorProto.FLOAT, [None, 6]),
                           helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 8])],
                          [helper.make_tensor("k", TensorProto.INT64, [1], [20])])
    return helper.make_model(g)


def test_a_top_k_list_is_judged_as_detections_and_logits_are_not():
    assert nms_outputs(topk_graph()) == {"dets", "logits"}
    ref = detections(20)
    ref[:, 1] = np.linspace(0.95, 0.85, 20)             # a DETR's top-k scores cluster near its best (std ~0.03)
    logits = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    got = ref[np.random.default_rng(1).permutation(20)]
    got[:, 1] += np.random.default_rng(2).normal(0, 0.0016, 20)          # FP16's error on the trial's RT-DETR
    figs = compare_nms_outputs(topk_graph(), ["dets", "logits"], [[ref, logits]], [[got, logits]], FP16.tie_margin)
    assert set(figs) == {0} and figs[0]["kind"] == "detections"     # the logits stay judged element by element
    assert violations(figs[0], FP16, exact=False) == []
    off = ref.copy()
    off[:, 1] -= 0.05                                   # every score lowered by 0.05: refused
    figs = compare_nms_outputs(topk_graph(), ["dets", "logits"], [[ref, logits]], [[off, logits]], FP16.tie_margin)
    assert violations(figs[0], FP16, exact=False) != []
    assert violations(compare_nms_outputs(topk_graph(), ["dets"], [[ref]], [[got]], 0.0)[0],
                      DEFAULT_THRESHOLDS["fp32"], exact=False) != []    # FP32's bounds still see 0.0016
