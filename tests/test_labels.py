"""Label outputs judged as labels (convert.labels): an ArgMax's integers that another precision or ISA moves at
near-ties pass; what a broken conversion does (zeroed or biased scores, one class everywhere, labels shifted) is
refused; a reference with one label everywhere cannot be judged (exit 2). onnx + onnxruntime graphs only."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from paddle2ort.convert.errors import BadInputError, ValidationError
from paddle2ort.convert.labels import compare_labels, label_sources
from paddle2ort.convert.metrics import DEFAULT_THRESHOLDS
from paddle2ort.convert.validate import gate_text, summary, validate
from paddle2ort.runtime.manifest import TensorSpec

pytestmark = pytest.mark.unit

C = 5


def label_graph(w: np.ndarray, bias: np.ndarray | None = None, after=("Cast",), probs: bool = False,
                half: bool = False) -> onnx.ModelProto:
    """x [N, T, 8] -> scores = x @ w (+ bias) [N, T, C] -> ArgMax(axis 2, keepdims) -> `after` ops -> labels;
    half: the weights rounded to float16 as an FP16 model's are (under another name: not the FP32 weight changed)."""
    wn = "w16" if half else "w"
    inits = [numpy_helper.from_array((w.astype(np.float16) if half else w).astype(np.float32), wn),
             numpy_helper.from_array(np.zeros(C, np.float32) if bias is None else bias.astype(np.float32), "b"),
             numpy_helper.from_array(np.array([0, -1], np.int64), "flat")]
    nodes = [helper.make_node("MatMul", ["x", wn], ["xw"]), helper.make_node("Add", ["xw", "b"], ["scores"]),
             helper.make_node("ArgMax", ["scores"], ["am"], axis=2, keepdims=1)]
    cur = "am"
    for i, op in enumerate(after):
        nxt = "labels" if i == len(after) - 1 else f"t{i}"
        kw = {"to": TensorProto.INT32} if op == "Cast" else {"perm": [0, 2, 1]} if op == "Transpose" else {}
        ins = [cur, "flat"] if op == "Reshape" else [cur]
        nodes.append(helper.make_node(op, ins, [nxt], **kw))
        cur = nxt
    outs = [helper.make_tensor_value_info("labels", TensorProto.INT32 if "Cast" in after else TensorProto.INT64,
                                          None)]
    if probs:
        nodes.append(helper.make_node("Softmax", ["scores"], ["probs"], axis=-1))
        outs.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None, 8])],
                          outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def reference(w, xs, bias=None):
    """Paddle's side: labels [N, T, 1] int32 from float64 scores."""
    b = np.zeros(C) if bias is None else bias
    return [[np.argmax(x.astype(np.float64) @ w + b, -1)[..., None].astype(np.int32)] for x in xs]


@pytest.fixture
def case(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, C))
    xs = [(20 * rng.standard_normal((2, 2000, 8))).astype(np.float32) for _ in range(3)]   # float16 ulps ~0.03
    fp32 = tmp_path / "model.fp32.onnx"
    onnx.save(label_graph(w), str(fp32))
    return w, xs, reference(w, xs), fp32


def run(tmp_path, name, model, prec, xs, refs, fp32=None):
    path = tmp_path / name
    onnx.save(model, str(path))
    return validate(prec, path, [{"x": x} for x in xs], refs, [TensorSpec("labels", "int32", ["N", "T", 1])],
                    DEFAULT_THRESHOLDS[prec], fp32_model=fp32)


def test_label_sources_read_from_the_graph():
    w = np.ones((8, C))
    assert label_sources(label_graph(w))["labels"].scores == "scores"
    assert label_sources(label_graph(w, after=("Squeeze", "Cast")))["labels"].axis == 2
    assert label_sources(label_graph(w, after=("Reshape",)))                    # order kept: still labels
    assert not label_sources(label_graph(w, after=("Transpose",)))              # reordered: compared exactly
    assert set(label_sources(label_graph(w, probs=True))) == {"labels"}         # the softmax is no label
    as_float = label_graph(w)
    as_float.graph.node[-1].attribute[0].i = TensorProto.FLOAT                  # argmax(x).astype("float32")
    assert label_sources(as_float)["labels"].scores == "scores"


def test_near_ties_moved_by_rounding_pass(case, tmp_path):
    w, xs, refs, fp32 = case
    rep = run(tmp_path, "own.onnx", onnx.load(str(fp32)), "fp32", xs, refs)
    assert rep["passed"] and gate_text(summary(rep)).startswith("labels agree")
    moved = run(tmp_path, "int8.onnx", label_graph(w, half=True), "int8", xs, refs, fp32)
    m = moved["results"][0]["metrics"]
    assert m["kind"] == "labels" and m["margin_scores"] == "fp32 model"
    assert m["argmax_agreement_all_rows"] < 1.0, "the case must move some labels at their ties"
    assert m["argmax_agreement"] == 1.0 and m["near_ties"] > 0


@pytest.mark.parametrize("fault", ["zeroed scores", "class bias", "labels shifted", "other weights"])
def test_broken_labels_are_refused(case, tmp_path, fault):
    w, xs, refs, fp32 = case
    rng = np.random.default_rng(2)
    model = {"zeroed scores": lambda: label_graph(0 * w),
             "class bias": lambda: label_graph(w, bias=np.eye(C)[1] * 60.0),      # 15% of the scores' range
             "labels shifted": lambda: label_graph(w, after=("Cast",)),
             "other weights": lambda: label_graph(rng.standard_normal(w.shape))}[fault]()
    if fault == "labels shifted":
        refs = [[(r[0] + 1) % C] for r in refs]
    for prec, ref_model in (("fp32", None), ("fp16", fp32), ("int8", fp32)):
        with pytest.raises(ValidationError, match="label") as e:
            run(tmp_path, f"{prec}.onnx", model, prec, xs, refs, ref_model)
        assert "near_ties=" in str(e.value)


def test_one_class_everywhere_is_refused_by_the_class_average(tmp_path):
    """90% of the reference's labels are class 0: a model answering 0 everywhere agrees on 90% of them, and on
    none of the other classes."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, C))
    bias = np.array([10.0, 0, 0, 0, 0])
    xs = [rng.standard_normal((2, 400, 8)).astype(np.float32) for _ in range(3)]
    refs = reference(w, xs, bias)
    share = np.mean(np.concatenate([r[0].ravel() for r in refs]) == 0)
    assert share > DEFAULT_THRESHOLDS["int8"].min_argmax_agreement
    fp32 = tmp_path / "model.fp32.onnx"
    onnx.save(label_graph(w, bias=bias), str(fp32))
    with pytest.raises(ValidationError, match="averaged over the reference's classes"):
        run(tmp_path, "int8.onnx", label_graph(w, bias=bias + np.array([100, 0, 0, 0, 0])), "int8", xs, refs, fp32)


def test_a_reference_of_one_label_cannot_be_judged(case, tmp_path):
    w, xs, refs, fp32 = case
    with pytest.raises(BadInputError, match="one label on every element"):
        run(tmp_path, "fp32.onnx", onnx.load(str(fp32)), "fp32", xs, [[np.zeros_like(r[0])] for r in refs])


def test_the_probe_leaves_nothing_behind(case, tmp_path):
    w, xs, refs, fp32 = case
    before = sorted(p.name for p in tmp_path.iterdir())
    run(tmp_path, "model.fp32.onnx", onnx.load(str(fp32)), "fp32", xs, refs)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_labels_that_do_not_line_up_are_compared_exactly():
    refs = [np.zeros((2, 3), np.int64)]
    assert compare_labels(refs, refs, [np.zeros((2, 4, C))], 2, 1e-3, own=True) is None


def test_softmax_outputs_agree_along_their_class_axis(tmp_path):
    """A segmenter's probabilities [N, C, L]: the argmax agreement is per position over the C classes (the
    Softmax's axis, read from the graph), not along the last, spatial axis."""
    from paddle2ort.convert.labels import softmax_axes
    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["probs"], axis=1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, C, 64])],
                          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, C, 64])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert softmax_axes(model) == {"probs": 1}
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    xs = [np.random.default_rng(i).standard_normal((2, C, 64)).astype(np.float32) for i in range(2)]
    refs = [[np.exp(x) / np.exp(x).sum(1, keepdims=True)] for x in xs]
    rep = validate("fp32", path, [{"x": x} for x in xs], refs, [TensorSpec("probs", "float32", ["N", C, 64])],
                   DEFAULT_THRESHOLDS["fp32"])
    m = rep["results"][0]["metrics"]
    assert m["argmax_rows"] + m["near_ties"] == 2 * 2 * 64 and m["argmax_agreement"] == 1.0


def test_a_softmax_over_wide_logits_is_held_to_its_logits_bound(tmp_path):
    """Logits over tens (a random-weight segmenter on generated images): FP32 rounding of 1e-5 of their spread moves
    the probabilities by more than 1e-4 of theirs (at most 1), and FP32 was refused. The worst error is judged against
    the logits' spread and std (a softmax halves absolute errors at most); a wrong softmax still fails its cosine."""
    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["probs"], axis=1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, C, 64])],
                          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, C, 64])])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    xs = []
    for i in range(2):                       # logits over ~200, the top two of each position within 1 of each other
        rng = np.random.default_rng(i)
        x = 30 * rng.standard_normal((2, C, 64))
        x[:, 0] = x.max(1) + 5
        x[:, 1] = x[:, 0] + rng.choice([-1, 1], (2, 64)) * rng.uniform(0.1, 1, (2, 64))
        xs.append(x.astype(np.float32))
    soft = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
    spec = [TensorSpec("probs", "float32", ["N", C, 64])]
    jitter = lambda x: 0.01 * np.where(np.arange(C) % 2, 1, -1)[None, :, None] * (np.arange(64) < 2)  # noqa: E731
    # 4e-5 of the logits' spread, at 2 of 64 positions (as rounding: large at a few, small at most)
    rounded = [[soft(x.astype(np.float64) + jitter(x)).astype(np.float32)] for x in xs]
    rep = validate("fp32", path, [{"x": x} for x in xs], rounded, spec, DEFAULT_THRESHOLDS["fp32"])
    m = rep["results"][0]["metrics"]
    assert m["max_abs_diff"] > 1e-4 and "logits_scale" in m and m["max_rel_diff"] <= 1e-4
    wrong = [[soft(np.roll(x, 1, axis=1).astype(np.float64)).astype(np.float32)] for x in xs]
    with pytest.raises(ValidationError, match="cosine"):
        validate("fp32", path, [{"x": x} for x in xs], wrong, spec, DEFAULT_THRESHOLDS["fp32"])


def test_the_probe_runs_on_a_read_only_bundle(case, tmp_path):
    """`paddle2ort validate` judges a published bundle: the probe copy is written elsewhere (beside the model it
    failed on a read-only folder, and a killed run left a file that broke the bundle's checksums)."""
    import os
    import stat
    w, xs, refs, fp32 = case
    home = tmp_path / "bundle"
    home.mkdir()
    model = home / "model.fp32.onnx"
    model.write_bytes(fp32.read_bytes())
    home.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        rep = validate("fp32", model, [{"x": x} for x in xs], refs, [TensorSpec("labels", "int32", ["N", "T", 1])],
                       DEFAULT_THRESHOLDS["fp32"])
        assert rep["passed"] and os.listdir(home) == ["model.fp32.onnx"]
    finally:
        home.chmod(stat.S_IRWXU)


def test_a_few_labels_are_judged_by_their_decisive_ones(tmp_path):
    """A classifier exported with its argmax gives the gate 3 labels; one flip at a near-tie is 1 in 3 over all of
    them, so the agreement over all labels is judged from 100 labels on, the decisive agreement always."""
    from paddle2ort.convert.labels import label_violations
    m = compare_labels([np.array([1, 2, 3])], [np.array([1, 2, 4])],
                       [np.array([[0, 5, 0, 0, 0], [0, 0, 5, 0, 0], [0, 0, 0, 5, 5.001]])], 1, 1e-2, own=False)
    assert m["near_ties"] == 1 and m["argmax_agreement"] == 1.0 and m["argmax_agreement_all_rows"] < 0.7
    assert not label_violations(m, DEFAULT_THRESHOLDS["int8"])
