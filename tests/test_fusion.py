"""Fusion pass (convert/fusion/) on the graphs paddle2onnx writes: tiny BERT/ERNIE encoders at several geometries.

Fused vs unfused numerics on padded batches (both mask forms), what fused and how many, the conversion gate on the
fused bundle, and models that are not encoders left as they were.
"""
import collections

import numpy as np
import onnx
import pytest

from paddle2ort.convert import ConvertConfig, convert
from paddle2ort.convert.fusion import fuse_attention, fuse_encoder, quantizable_attention
from paddle2ort.convert.validate import thresholds_with_overrides
from paddle2ort.runtime import load_bundle
from paddle2ort.runtime.session import create_session

LAYERS = 2      # tests/paddle_models.py build_geometry


@pytest.fixture(scope="module")
def unfused(tiny_models, tmp_path_factory):
    """kind -> the FP32 ONNX paddle2onnx wrote (renamed, not fused), converted once per module."""
    cache = {}

    def get(kind: str) -> onnx.ModelProto:
        if kind not in cache:
            out = tmp_path_factory.mktemp("unfused") / kind
            convert(ConvertConfig(source=tiny_models(kind), output=out, validate=False, fuse=False))
            cache[kind] = onnx.load(str(out / "model.fp32.onnx"))
        return cache[kind]
    return get


def _feeds(model: onnx.ModelProto, batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    """Token ids with right padding of varying length (row 0 unpadded, others padded to 1..seq-1 tokens)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 120, (batch, seq)).astype(np.int64)
    for r in range(1, batch):
        ids[r, int(rng.integers(1, seq)):] = 0
    names = [i.name for i in model.graph.input]
    feeds = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": (ids != 0).astype(np.int64)}
    return {n: feeds[n] for n in names}


def _run(model: onnx.ModelProto, feeds: dict) -> np.ndarray:
    import onnxruntime as ort
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _close(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference relative to the output's spread (the gate's pooled figure)."""
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


@pytest.mark.parametrize("kind", ["bert_h32_n2", "bert_h64_n4", "ernie_h32_n4", "ernie_h64_n2"])
def test_fused_equals_unfused(unfused, kind):
    model = unfused(kind)
    fused, counts = fuse_encoder(model)
    onnx.checker.check_model(fused)
    ops = collections.Counter(n.op_type for n in fused.graph.node)
    # what fused: every attention block, both residual layer norms of each layer, each layer's bias + GELU
    assert counts["Attention"] == ops["Attention"] == LAYERS
    assert ops["Softmax"] == 0 and ops["MatMul"] <= 3 * LAYERS + 2        # Q/K/V and scores MatMuls are gone
    assert counts["SkipLayerNormalization"] + counts.get("EmbedLayerNormalization", 0) >= 2 * LAYERS
    assert counts["BiasGelu"] == LAYERS
    assert quantizable_attention(fused)                                  # masks went in as mask_index
    assert any(n.op_type == "Softmax" for n in model.graph.node)        # the input model is left as it was
    for batch, seq, seed in ((1, 7, 0), (4, 16, 1), (3, 33, 2)):
        feeds = _feeds(model, batch, seq, seed)
        ref, got = _run(model, feeds), _run(fused, feeds)
        assert got.shape == ref.shape
        assert _close(ref, got) <= 1e-4, (batch, seq)


@pytest.mark.parametrize("kind", ["bert_h64_n2", "ernie_h32_n2"])
def test_attention_bias_form_equals_unfused(unfused, kind):
    """The general mask form (additive attention_bias, any mask values) gives the same numbers."""
    import copy
    model = unfused(kind)
    fused = copy.deepcopy(model)
    assert fuse_attention(fused, use_mask_index=False) == LAYERS
    assert not quantizable_attention(fused)                   # QAttention would drop attention_bias: not quantized
    feeds = _feeds(model, 3, 12, 3)
    assert _close(_run(model, feeds), _run(fused, feeds)) <= 1e-4


def test_padding_is_masked_after_fusion(unfused):
    """A padded row gives the logits of the same tokens unpadded (the mask reaches the fused op)."""
    fused, _ = fuse_encoder(unfused("bert_h32_n4"))
    feeds = _feeds(fused, 1, 6, 4)
    padded = {k: np.concatenate([v, np.zeros((1, 5), v.dtype)], axis=1) for k, v in feeds.items()}
    a, b = _run(fused, feeds), _run(fused, padded)
    assert _close(a, b) <= 1e-4


def test_mask_free_encoder_fuses(unfused):
    """paddle.nn.TransformerEncoder without a mask: attention fused with no mask input."""
    model = unfused("encoder")
    fused, counts = fuse_encoder(model)
    att = [n for n in fused.graph.node if n.op_type == "Attention"]
    assert counts["Attention"] == len(att) == 2 and all(len(n.input) == 3 for n in att)
    feeds = {"input_ids": np.random.default_rng(5).integers(0, 50, (2, 9)).astype(np.int64)}
    assert _close(_run(model, feeds), _run(fused, feeds)) <= 1e-4


def test_non_encoder_left_alone(unfused):
    model = unfused("mlp")
    fused, counts = fuse_encoder(model)
    assert "Attention" not in counts


def test_fused_bundle_through_the_gate(tiny_models, tmp_path):
    """The default conversion fuses each precision as measured best (FP16: everything, the mask as key lengths;
    FP32: no offline SkipLayerNorm; INT8: unfused), records what fused per precision, and every precision passes
    the gate."""
    out = tmp_path / "bundle"
    res = convert(ConvertConfig(source=tiny_models("bert_h64_n4"), output=out, precisions=("fp32", "fp16", "int8"),
                                # random tiny weights: near-constant logits that INT8 noise dominates
                                thresholds=thresholds_with_overrides({"int8.min_cosine": 0.0,
                                                                      "int8.min_argmax_agreement": 0.0})))
    m = res.manifest
    fus = m.extra["fusions"]
    assert fus["fp16"]["Attention"] == fus["fp32"]["Attention"] == LAYERS
    assert fus["fp16"]["SkipLayerNormalization"] >= 2 * LAYERS and "SkipLayerNormalization" not in fus["fp32"]
    assert "int8" not in fus
    assert all(m.validation[p]["passed"] for p in ("fp32", "fp16", "int8"))
    assert m.validation["fp32"]["max_rel_diff"] <= 1e-4                 # fused FP32 vs Paddle
    ops = {p: collections.Counter(n.op_type for n in onnx.load(str(out / m.models[p].file)).graph.node)
           for p in m.models}
    assert ops["fp16"]["Attention"] == ops["fp32"]["Attention"] == LAYERS and ops["int8"]["Attention"] == 0
    assert ops["fp16"]["ReduceSum"] > ops["fp32"]["ReduceSum"]          # FP16 (GPU): the mask as key lengths
    assert load_bundle(out, verify=True).manifest == m
    sess = create_session(out / m.models["fp16"].file)
    assert sess.run(None, _feeds(onnx.load(str(out / m.models["fp32"].file)), 2, 10, 6))[0].shape == (2, 3)


def test_fused_int8_quantizes_attention(tiny_models, tmp_path):
    from paddle2ort.convert.fusion import FusionConfig, OrtFusionOptions
    out = tmp_path / "int8"
    res = convert(ConvertConfig(source=tiny_models("bert_h32_n2"), output=out, precisions=("int8",),
                                fusion=FusionConfig(int8=OrtFusionOptions()),
                                thresholds=thresholds_with_overrides({"int8.min_cosine": 0.0,
                                                                      "int8.min_argmax_agreement": 0.0})))
    m = res.manifest
    assert m.extra["fusions"]["int8"]["Attention"] == LAYERS and m.validation["int8"]["passed"]
    assert "Attention" in m.models["int8"].options["op_types"]
    assert any(n.op_type == "QAttention" for n in onnx.load(str(out / m.models["int8"].file)).graph.node)


def test_fuse_off_keeps_paddle2onnx_graph(tiny_models, tmp_path):
    out = tmp_path / "plain"
    res = convert(ConvertConfig(source=tiny_models("ernie_h32_n2"), output=out, fuse=False, validate=False))
    assert "fusions" not in res.manifest.extra
    assert not any(n.op_type == "Attention" for n in onnx.load(str(out / "model.fp32.onnx")).graph.node)


def test_family_switches(unfused):
    """Each onnxruntime family can be left out; attention still fuses and the numbers stay the same."""
    from paddle2ort.convert.fusion import OrtFusionOptions
    model = unfused("bert_h32_n2")
    fused, counts = fuse_encoder(model, OrtFusionOptions(skip_layer_norm=False, bias_gelu=False))
    assert counts["Attention"] == LAYERS and "SkipLayerNormalization" not in counts and "BiasGelu" not in counts
    feeds = _feeds(model, 3, 10, 7)
    assert _close(_run(model, feeds), _run(fused, feeds)) <= 1e-4


@pytest.mark.parametrize("kind", ["bert_h32_n2", "ernie_h64_n2"])
def test_key_lengths_mask_equals_unfused(unfused, kind):
    """The 1-D key-lengths mask (what the CUDA fused attention kernels take) gives the unfused numbers on
    right-padded rows, whether fused that way or rewritten from a fused graph's 2-D mask_index."""
    import copy

    from paddle2ort.convert.fusion import KEY_LENGTHS, to_key_lengths
    model = unfused(kind)
    direct, counts = fuse_encoder(model, KEY_LENGTHS)
    rewritten, _ = fuse_encoder(model)
    assert to_key_lengths(rewritten) == counts["Attention"] == LAYERS
    assert to_key_lengths(copy.deepcopy(rewritten)) == 0                 # nothing left to rewrite
    for fused in (direct, rewritten):
        onnx.checker.check_model(fused)
        masks = {n.input[3] for n in fused.graph.node if n.op_type == "Attention"}
        assert len(masks) == 1 and fused.graph.node[[n.output[0] for n in fused.graph.node].index(
            masks.pop())].op_type == "ReduceSum"
        for batch, seq, seed in ((1, 7, 0), (4, 16, 1)):
            feeds = _feeds(model, batch, seq, seed)
            assert _close(_run(model, feeds), _run(fused, feeds)) <= 1e-4, (batch, seq)


@pytest.mark.parametrize("kind", ["bert_h32_n2", "ernie_h64_n2"])
def test_kernel_encoder_runs_the_fused_graph_as_onnxruntime_does(unfused, kind, tmp_path):
    """read_encoder walks the fused graph (EmbedLayerNormalization, then Attention / SkipLayerNormalization /
    BiasGelu layers) into the kernel encoder's weights and cuts the rest (pooling, classifier) into a head model;
    its twins + that head give onnxruntime's outputs of the whole fused graph within float16 rounding (the twins
    round where the GPU writes float16) and the tanh-vs-erf GELU gap; a graph not in that form is refused by name."""
    from paddle2ort.convert.fusion import KEY_LENGTHS, NO_SKIP
    from paddle2ort.runtime.errors import BadInputError
    from paddle2ort.runtime.kernels.encoder_graph import GraphEncoder, read_encoder
    model = unfused(kind)
    fused, counts = fuse_encoder(model, KEY_LENGTHS)
    onnx.save(fused, str(tmp_path / "fused.onnx"))
    g = read_encoder(tmp_path / "fused.onnx")
    assert len(g.weights.layers) == counts["Attention"] == LAYERS and g.head_inputs[0] == g.hidden
    enc = GraphEncoder(tmp_path / "fused.onnx", device="cpu")
    for batch, seq, seed in ((1, 7, 0), (4, 16, 1)):
        feeds = _feeds(model, batch, seq, seed)
        lens = enc.prefix.run(None, {n: feeds[n] for n in g.prefix_inputs})[0]
        assert np.array_equal(lens, (feeds["input_ids"] != 0).sum(1))     # the graph's own key lengths
        # ~5e-4 here; the same rows with the padding attended measured 4e-3 to 1.1e-2
        assert _close(_run(fused, feeds), enc.run(feeds)[0]) <= 2e-3, (batch, seq)
    left = _feeds(model, 2, 8, 3)
    if "attention_mask" in left:                       # a model that takes the mask (the ERNIE one derives it)
        left["attention_mask"] = left["attention_mask"][:, ::-1].copy()
        with pytest.raises(BadInputError, match="not right padding"):
            enc.run(left)
    partial, _ = fuse_encoder(model, NO_SKIP)
    onnx.save(partial, str(tmp_path / "partial.onnx"))
    with pytest.raises(BadInputError, match="EmbedLayerNormalization|SkipLayerNormalization"):
        read_encoder(tmp_path / "partial.onnx")


def test_kernel_encoder_reads_a_converted_bundle(clf_bundle):
    """A bundle as `paddle2ort convert` writes it: its FP16 model (fused, found through the manifest) read into the
    kernel encoder, whose twins + the cut models give the FP32 model's logits within FP16 rounding."""
    from paddle2ort.runtime.kernels.encoder_graph import GraphEncoder
    m = load_bundle(clf_bundle, verify=True).manifest
    enc = GraphEncoder(clf_bundle / m.models["fp16"].file, device="cpu")
    assert enc.graph.float_type is np.float16 and enc.graph.weights.embeds
    fp32 = onnx.load(str(clf_bundle / m.models["fp32"].file))
    feeds = _feeds(fp32, 3, 12, 4)
    got, want = enc.run(feeds)[0], _run(fp32, feeds)
    assert got.shape == want.shape and _close(want, got) <= 2e-2
    top2 = np.sort(want, 1)[:, -2:]
    near_tie = top2[:, 1] - top2[:, 0] < 1e-2 * np.ptp(want)           # the gate's tie rule, row by row
    assert ((got.argmax(1) == want.argmax(1)) | near_tie).all()


def test_classifier_kernel_encoder_option(clf_bundle):
    """TextClassifier(encoder="kernels") refuses a CPU session by name (it runs on a CUDA GPU) and a precision
    other than FP16 (checked before any session is built); its runner, on the twins, pads a batch to its bucket and gives the FP32 model's logits within FP16 rounding."""
    from paddle2ort.runtime.buckets import BucketSpec
    from paddle2ort.runtime.errors import BadInputError
    from paddle2ort.runtime.kernels.encoder_graph import KernelRunner
    from paddle2ort.runtime.pipelines import TextClassifier
    from paddle2ort.runtime.session import SessionOptions
    with pytest.raises(BadInputError, match="runs on a CUDA GPU"):
        TextClassifier(clf_bundle, encoder="kernels")
    with pytest.raises(BadInputError, match="runs the bundle's FP16 graph .* not 'fp32'"):
        TextClassifier(clf_bundle, encoder="kernels", precision="fp32", session=SessionOptions(device="gpu"))
    with pytest.raises(BadInputError, match="encoder must be"):
        TextClassifier(clf_bundle, encoder="cuda")
    m = load_bundle(clf_bundle).manifest
    runner = KernelRunner(clf_bundle / m.models["fp16"].file, BucketSpec.for_max_length(32, (1, 8)), device="cpu")
    fp32 = onnx.load(str(clf_bundle / m.models["fp32"].file))
    seen, run = [], runner.encoder.run
    runner.encoder.run = lambda f: (seen.append(f["input_ids"].shape), run(f))[1]
    feeds = _feeds(fp32, 3, 11, 5)                   # 3 rows of 11 tokens -> the (8, 16) bucket
    got, want = runner(feeds)[0], _run(fp32, feeds)
    assert got.shape == want.shape == (3, 3) and _close(want, got) <= 2e-2
    assert seen == [(8, 16)]


def test_first_row_pass_runs_a_cls_classifiers_last_layer_at_row_zero(tiny_models, unfused, tmp_path):
    """PaddleNLP's ERNIE classifier pools [CLS]: the conversion runs its last layer at row 0 (one Attention fewer to
    fuse, the last layer's Q / O / FFN on one row), says so in the manifest, and the logits are the whole graph's;
    the kernel encoder then takes the other layers and leaves the pruned one to the head."""
    from paddle2ort.convert.fusion import FusionConfig, prune_to_first_row
    from paddle2ort.runtime.kernels.encoder_graph import GraphEncoder
    whole = unfused("ernie_h64_n2")
    out = tmp_path / "b"
    m = convert(ConvertConfig(source=tiny_models("ernie_h64_n2"), output=out, precisions=("fp32", "fp16"),
                              fusion=FusionConfig(first_row=("fp32", "fp16")))).manifest
    assert m.extra["last_layer_first_row"] == ["fp32", "fp16"]
    assert all(m.validation[p]["passed"] for p in ("fp32", "fp16"))
    assert m.extra["fusions"]["fp32"]["Attention"] == m.extra["fusions"]["fp16"]["Attention"] == LAYERS - 1
    pruned = onnx.load(str(out / m.models["fp32"].file))
    for batch, seq, seed in ((1, 7, 0), (4, 20, 1)):
        feeds = _feeds(whole, batch, seq, seed)
        assert _close(_run(whole, feeds), _run(pruned, feeds)) <= 1e-5
    g = GraphEncoder(out / m.models["fp16"].file, device="cpu")
    feeds = _feeds(whole, 3, 12, 2)
    assert len(g.graph.weights.layers) == LAYERS - 1
    assert _close(_run(whole, feeds), g.run(feeds)[0]) <= 1e-2
    # off by name, and the unfused form of a conversion without fusion keeps every row
    assert prune_to_first_row(whole, None)[1] and not prune_to_first_row(pruned, None)[1]
    off = convert(ConvertConfig(source=tiny_models("ernie_h64_n2"), output=tmp_path / "off",
                                fusion=FusionConfig(first_row=()))).manifest
    assert "last_layer_first_row" not in off.extra and off.extra["fusions"]["fp32"]["Attention"] == LAYERS
    # the defaults: the CPU precisions only; FP16 (the GPU's) keeps the whole layer until measured there
    d = convert(ConvertConfig(source=tiny_models("ernie_h64_n2"), output=tmp_path / "d",
                              precisions=("fp32", "fp16", "int8"))).manifest
    assert d.extra["last_layer_first_row"] == ["fp32", "int8"]
    assert d.extra["fusions"]["fp32"]["Attention"] == LAYERS - 1 and d.extra["fusions"]["fp16"]["Attention"] == LAYERS
    assert all(d.validation[p]["passed"] for p in ("fp32", "fp16", "int8"))


def test_first_row_pass_leaves_other_readers_whole(unfused):
    """Mean pooling (the zoo's BERT classifier) reads every row; a graph that also outputs the hidden states reads
    them whole: neither is rewritten."""
    from onnx import helper

    from paddle2ort.convert.fusion import first_row, prune_to_first_row
    assert first_row.plan(unfused("bert_h32_n2")) is None
    model = onnx.ModelProto()
    model.CopyFrom(unfused("ernie_h32_n4"))
    assert first_row.plan(model) is not None
    g = first_row._Graph(model)
    last = next(n.input[0] for n in model.graph.node if first_row._row0_selection(g, n))
    model.graph.output.append(helper.make_tensor_value_info(last, onnx.TensorProto.FLOAT, None))
    plan = first_row.plan
    assert plan(model) is None and prune_to_first_row(model, None) == (model, False)


def test_first_row_pass_keeps_the_graph_whole_when_its_self_check_fails(unfused, monkeypatch):
    """The pass proves itself on the samples: a rewrite that slices the keys instead of the queries (a stand-in for
    any form it misreads) gives other logits, so the original graph is kept. (The tiny model's Q and K weights are
    scaled up: random ones attend almost uniformly, where the keys hardly matter.)"""
    from onnx import numpy_helper

    from paddle2ort.convert.fusion import first_row
    model = onnx.ModelProto()
    model.CopyFrom(unfused("ernie_h32_n4"))
    x, q_mm, residual = first_row.plan(model)
    k_mm = next(n for n in model.graph.node if n.op_type == "MatMul" and x in n.input and n is not q_mm)
    for t in model.graph.initializer:
        if t.name in (q_mm.input[1], k_mm.input[1]):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 30, t.name))
    monkeypatch.setattr(first_row, "plan", lambda m: (x, k_mm, residual))
    samples = [_feeds(model, 2, 9, 3)]
    assert first_row.prune_to_first_row(model, samples) == (model, False)
    monkeypatch.undo()
    pruned, done = first_row.prune_to_first_row(model, samples)
    assert done and _close(_run(model, samples[0]), _run(pruned, samples[0])) <= 1e-5


def test_first_row_benchmark_converts_both_ways_and_times_them(tiny_models, tmp_path):
    """benchmarks/first_row on a tiny ERNIE: two gated bundles (the pass off / on), rows for each variant,
    precision and length, the two variants' logits the same, and the Markdown reads the rows; a mean-pooled source
    is refused by name (the pass does not apply to it)."""
    from paddle2ort.benchmarks import first_row as B
    dirs = B.convert_both(tiny_models("ernie_h32_n4"), tmp_path, ("fp32",))
    rows, agree = B.time_both(dirs, ("fp32",), 2, (8, 16), 2, 1, max_id=100)
    assert [(r["seq"], r["variant"]) for r in rows] == [(8, B.VARIANTS[0]), (8, B.VARIANTS[1]),
                                                        (16, B.VARIANTS[0]), (16, B.VARIANTS[1])]
    assert agree["fp32"] <= 1e-5 and all(r["ms"] > 0 and len(r["runs_ms"]) == 2 for r in rows)
    res = {"model": "tiny", "cpu": {"model": "cpu", "isa": ["avx2"]}, "threads": 1, "batch": 2, "repeats": 2,
           "rows": rows, "agreement": agree}
    md = B.report(res)
    assert md.count("| fp32 |") == 2 and set(B.speedups(res)["fp32"]) == {8, 16} and "Paddle" not in B.table(res)
    peer = B.time_peer(tiny_models("ernie_h32_n4"), ["input_ids", "token_type_ids"], 2, (8, 16), 2, 1, max_id=100)
    assert [(r["seq"], r["variant"]) for r in peer] == [(8, B.PEER), (16, B.PEER)]
    assert all(r["ms"] > 0 and len(r["runs_ms"]) == 2 for r in peer)
    ms = {r["variant"]: r["ms"] for r in rows if r["seq"] == 8}
    res["rows"] = rows + [{"precision": "fp32", "batch": 2, "seq": 8, "variant": B.PEER, "ms": 2 * ms[B.VARIANTS[1]]}]
    peer = B.versus_peer(res)
    assert peer[B.VARIANTS[1]] == {8: 2.0} and f"| {2 * ms[B.VARIANTS[1]]:.2f} | " in B.table(res)
    assert "| fp32 | 16 |" in B.table(res) and B.table(res).count(" - | - |") == 1     # 16 tokens: no peer row
    with pytest.raises(RuntimeError, match="did not apply"):
        B.convert_both(tiny_models("bert_h32_n2"), tmp_path / "bert", ("fp32",))
