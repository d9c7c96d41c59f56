"""Shape buckets (runtime/buckets.py): bucket choice, length-sorted plans, padding; the bucketed runner equals the
plain one (CPU here: IO binding, static per-bucket sessions; the CUDA graph path is the same code with a flag)."""
import numpy as np
import pytest

from paddle2ort.runtime.buckets import (BucketRunner, BucketSpec, bucket_for, length_sorted_batches, pad_to_bucket,
                                        plan_batches, row_lengths, split_by_length)
from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.session import SessionOptions, create_session

from near_tie import top2_margins


@pytest.mark.unit
@pytest.mark.parametrize("n,expect", [(1, 16), (16, 16), (17, 32), (100, 128), (256, 256)])
def test_bucket_for_is_the_smallest_that_fits(n, expect):
    assert bucket_for(n, BucketSpec().seq) == expect


@pytest.mark.unit
@pytest.mark.parametrize("n", [0, 257])
def test_bucket_for_refuses_what_does_not_fit(n):
    with pytest.raises(BadInputError, match="bucket"):
        bucket_for(n, BucketSpec().seq)


@pytest.mark.unit
@pytest.mark.parametrize("seq,batch", [((), (1,)), ((32, 16), (1,)), ((16, 16), (1,)), ((16,), (0, 8)),
                                       ((16,), (True,))])
def test_spec_refuses_bad_buckets(seq, batch):
    with pytest.raises(BadInputError, match="buckets"):
        BucketSpec(seq, batch)


@pytest.mark.unit
def test_spec_for_max_length_covers_every_row():
    assert BucketSpec.for_max_length(128).seq == (16, 32, 64, 128)
    assert BucketSpec.for_max_length(200).seq == (16, 32, 64, 128, 200)
    assert BucketSpec.for_max_length(10).seq == (10,)


@pytest.mark.unit
def test_length_sorted_batches_partition_shortest_first():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, 101)
    batches = length_sorted_batches(lengths, 32)
    assert [len(b) for b in batches] == [32, 32, 32, 5]
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(101))                 # every row exactly once
    assert (np.diff(lengths[flat]) >= 0).all()                       # shortest first
    assert length_sorted_batches([3, 1, 3, 1], 4)[0].tolist() == [1, 3, 0, 2]   # stable on ties


@pytest.mark.unit
def test_plan_batches_picks_buckets_per_batch():
    lengths = [5] * 3 + [40] * 30 + [200] * 10
    plan = plan_batches(lengths, BucketSpec())
    assert [(len(p.indices), p.batch, p.seq) for p in plan] == [(32, 32, 64), (11, 32, 256)]
    plan = plan_batches([7], BucketSpec())
    assert [(p.batch, p.seq) for p in plan] == [(1, 16)]


@pytest.mark.unit
def test_pad_to_bucket_pads_positions_and_repeats_rows():
    ids = np.array([[5, 6, 7], [8, 9, 1]], np.int64)
    mask = np.ones_like(ids)
    out = pad_to_bucket({"input_ids": ids, "attention_mask": mask}, 4, 5, {"input_ids": 1})
    assert out["input_ids"].shape == out["attention_mask"].shape == (4, 5)
    assert (out["input_ids"][:2, :3] == ids).all() and (out["input_ids"][:2, 3:] == 1).all()
    assert (out["attention_mask"][:2, 3:] == 0).all()
    assert (out["input_ids"][2:] == out["input_ids"][1]).all()       # extra rows copy the last real row
    assert out["input_ids"].dtype == np.int64
    with pytest.raises(BadInputError, match="does not fit"):
        pad_to_bucket({"input_ids": ids}, 1, 5)


def _pooling_model(path):
    """Masked mean pooling of an embedding -> logits [batch, 3] and the masked hidden states [batch, sequence, 4]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((50, 4)).astype(np.float32), "E"),
             numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(np.array([2], np.int64), "ax2"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1")]
    nodes = [helper.make_node("Gather", ["E", "input_ids"], ["emb"]),
             helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["mf", "ax2"], ["m3"]),
             helper.make_node("Mul", ["emb", "m3"], ["hidden"]),
             helper.make_node("ReduceSum", ["hidden", "ax1"], ["num"], keepdims=0),
             helper.make_node("ReduceSum", ["m3", "ax1"], ["den"], keepdims=0),
             helper.make_node("Div", ["num", "den"], ["pooled"]),
             helper.make_node("MatMul", ["pooled", "W"], ["logits"])]
    dims = ["batch", "sequence"]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info(n, TensorProto.INT64, dims)
                                              for n in ("input_ids", "attention_mask")],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
                               helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [*dims, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)  # any onnxruntime
    onnx.save(model, str(path))
    return path


def _ragged_feeds(rng, n, width):
    ids = rng.integers(2, 50, (n, width)).astype(np.int64)
    mask = np.ones_like(ids)
    for r in range(n):
        k = int(rng.integers(1, width + 1))
        ids[r, k:], mask[r, k:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.unit
def test_bucket_runner_equals_plain_run(tmp_path):
    model = _pooling_model(tmp_path / "m.onnx")
    plain = create_session(model)
    runner = BucketRunner(model, ["logits", "hidden"], SessionOptions(), BucketSpec((8, 16, 32), (1, 4, 8)),
                          seq_outputs=("hidden",))
    rng = np.random.default_rng(2)
    for n, width in ((1, 3), (3, 8), (5, 17), (8, 32), (19, 11)):     # 19 rows: three chunks of <= 8
        feeds = _ragged_feeds(rng, n, width)
        ref = plain.run(["logits", "hidden"], feeds)
        got = runner(feeds)
        for r, g in zip(ref, got):
            assert g.shape == r.shape
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
    assert set(runner.buckets) == {(1, 8), (4, 8), (4, 16), (8, 32), (8, 16), (4, 16)}
    again = runner.buckets[(4, 16)].runs
    runner(_ragged_feeds(rng, 3, 9))                                 # the same bucket is reused, not rebuilt
    assert runner.buckets[(4, 16)].runs == again + 1


@pytest.mark.unit
def test_split_by_length_only_when_it_saves_tokens():
    spec = BucketSpec((64, 128), (1, 8, 16, 32))
    groups = split_by_length([128] * 16 + [64] * 16, spec)          # the GPU bench's rows: 3,072 tokens, not 4,096
    assert [(len(g.indices), g.batch, g.seq) for g in groups] == [(16, 16, 64), (16, 16, 128)]
    assert groups[0].indices.tolist() == list(range(16, 32))
    assert split_by_length([128] * 16 + [64] * 16, BucketSpec((64, 128), (1, 8, 32))) is None   # 16 rows -> 32
    assert split_by_length([128] * 16 + [64] * 16, spec, call_cost_tokens=1024) is None
    assert split_by_length([100, 120], spec) is None                 # one sequence bucket


@pytest.mark.unit
def test_row_lengths_from_mask_or_pad_ids():
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert row_lengths({"attention_mask": mask}).tolist() == [2, 4, 1]
    assert row_lengths({"input_ids": np.array([[5, 1, 1], [5, 6, 7]])}, {"input_ids": 1}).tolist() == [1, 3]
    assert row_lengths({"x": mask}) is None


@pytest.mark.unit
def test_split_runner_equals_plain_run(tmp_path):
    model = _pooling_model(tmp_path / "m.onnx")
    plain = create_session(model)
    runner = BucketRunner(model, ["logits"], SessionOptions(), BucketSpec((8, 16, 32), (1, 4, 8)),
                          split_lengths=True)
    rng = np.random.default_rng(3)
    for n, width in ((2, 30), (8, 32), (19, 31)):
        feeds = _ragged_feeds(rng, n, width)
        np.testing.assert_allclose(runner(feeds)[0], plain.run(["logits"], feeds)[0], rtol=1e-5, atol=1e-6)
    assert len({s for _, s in runner.buckets}) > 1                  # rows of one batch ran in several buckets


@pytest.mark.unit
def test_bucket_sessions_are_static(tmp_path):
    """Each bucket's session sees fixed shapes (the symbolic dims are overridden through the session factory)."""
    model = _pooling_model(tmp_path / "m.onnx")
    runner = BucketRunner(model, ["logits"], SessionOptions(), BucketSpec((16,), (4,)))
    b = runner.bucket(4, 16)
    assert [i.shape for i in b.session.get_inputs()] == [[4, 16], [4, 16]]


def test_classifier_on_buckets_equals_without(clf_bundle):
    """The classifier's logits through the bucketed runner (what it uses on a GPU) equal the plain runner's."""
    from paddle2ort.runtime.pipelines import TextClassifier
    texts = ["great movie", "", "awful " * 40, "not bad at all, I liked the ending", "meh", "x" * 300] * 3
    clf = TextClassifier(clf_bundle, batch_size=4)
    ref = clf.predict_logits(texts)
    clf.runner = BucketRunner(clf.bundle.model_path(clf.precision), [clf.output_name], SessionOptions(),
                              BucketSpec.for_max_length(clf.max_seq_length, batch=(1, 2, 4)),
                              pad_values={"input_ids": clf.tokenizer.pad_id})
    got = clf.predict_logits(texts)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    # the labels: the plain runner's, except where its top-2 margin is a near-tie (tests/near_tie.py); the bound
    # above lets a logit move 1e-4 of its size + 1e-5, so a flip needs a margin within twice that
    eps = 2 * (1e-4 * float(np.abs(ref).max()) + 1e-5)
    assert ((got.argmax(-1) == ref.argmax(-1)) | (top2_margins(ref) <= eps)).all()


@pytest.mark.unit
def test_cpu_encoder_session_defaults_and_overrides():
    """The classifier's CPU session: no spinning, no load-time SkipLayerNormFusion, unless the caller chose spinning;
    GPU and explicit-provider sessions are left as given."""
    from paddle2ort.runtime.pipelines import cpu_encoder_session
    tuned = cpu_encoder_session(SessionOptions(intra_op_threads=2, disabled_optimizers=("ConstantFolding",)))
    assert tuned.intra_op_spinning is False and tuned.intra_op_threads == 2
    assert tuned.disabled_optimizers == ("ConstantFolding", "SkipLayerNormFusion")
    for given in (SessionOptions(intra_op_spinning=True), SessionOptions(device="gpu"),
                  SessionOptions(providers=("CPUExecutionProvider",))):
        assert cpu_encoder_session(given) == given
