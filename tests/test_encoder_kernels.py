"""The encoder kernels' CPU side (runtime/kernels/encoder.py): the NumPy twins against independent float64 math,
the CPU KernelEncoder, the geometry checks, and encoder.cu compiling for every head size the attention takes (with
nvcc; the GPU side: tests/test_encoder_kernels_gpu.py)."""
import re
import shutil
import subprocess

import numpy as np
import pytest

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.kernels import encoder as E
from paddle2ort.runtime.kernels.cublaslt import gelu_tanh

pytestmark = pytest.mark.unit
NVCC = shutil.which("nvcc")


def _attention64(qkv, lens, nh, scale):
    """Per batch row and head, in float64, only the unmasked keys."""
    b = len(lens)
    t, h3 = qkv.shape
    s, h = t // b, h3 // 3
    d = h // nh
    out = np.zeros((t, h))
    for i in range(b):
        n = int(min(max(lens[i], 0), s))
        for j in range(nh):
            rows = qkv[i * s:(i + 1) * s].astype(np.float64)
            q, k, v = (rows[:, c * h + j * d:c * h + (j + 1) * d] for c in range(3))
            if n == 0:
                continue
            sc = q @ k[:n].T * scale
            p = np.exp(sc - sc.max(1, keepdims=True))
            out[i * s:(i + 1) * s, j * d:(j + 1) * d] = (p / p.sum(1, keepdims=True)) @ v[:n]
    return out


@pytest.mark.parametrize("b, s, nh, d, lens", [(2, 16, 2, 32, [16, 5]), (3, 100, 4, 64, [100, 1, 0]),
                                                (1, 130, 2, 64, [129])])
def test_attention_twin_masks_keys_past_each_rows_length(b, s, nh, d, lens):
    rng = np.random.default_rng(s)
    qkv = rng.normal(size=(b * s, 3 * nh * d)).astype(np.float16)
    lens = np.array(lens)
    got = E.attention_reference(qkv, lens, nh, 1 / np.sqrt(d))
    np.testing.assert_allclose(got, _attention64(qkv, lens, nh, 1 / np.sqrt(d)), atol=1e-5)
    # what lies past a row's length does not reach its output
    qkv2 = qkv.copy()
    for i, n in enumerate(lens):
        qkv2[i * s + n:(i + 1) * s, nh * d:] = 7
    same = np.concatenate([np.arange(i * s, (i + 1) * s) for i in range(b)])
    np.testing.assert_allclose(E.attention_reference(qkv2, lens, nh, 1 / np.sqrt(d))[same], got[same], atol=1e-6)


def test_layer_norm_twin_normalizes_each_row():
    rng = np.random.default_rng(0)
    x = rng.normal(3, 5, size=(6, 64))
    y = E.layer_norm_reference(x, np.ones(64), np.zeros(64), 1e-12)
    np.testing.assert_allclose(y.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(1), 1, atol=1e-4)
    g, b = rng.normal(size=64), rng.normal(size=64)
    np.testing.assert_allclose(E.layer_norm_reference(x, g, b, 1e-12), y * g + b, rtol=1e-5, atol=1e-5)


def _bert64(w: E.EncoderWeights, ids, lens):
    """BERT in float64 with tanh GELU, no float16 rounding: what the float16 stack approximates."""
    b, s = ids.shape
    f = lambda a: np.asarray(a, np.float64)   # noqa: E731

    def ln(x, g, be):
        m = x.mean(-1, keepdims=True)
        return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + w.eps) * f(g) + f(be)
    x = ln(f(w.word)[ids] + f(w.pos)[:s][None] + f(w.types)[0], *w.emb_ln).reshape(b * s, -1)
    for l in w.layers:
        qkv = x @ f(l.wqkv) + f(l.bqkv)
        att = _attention64(qkv, lens, w.num_heads, 1 / np.sqrt(w.head_dim))
        x = ln(x + att @ f(l.wo) + f(l.bo), *l.ln1)
        x = ln(x + gelu_tanh(x @ f(l.w1) + f(l.b1)) @ f(l.w2) + f(l.b2), *l.ln2)
    return x


def test_the_stack_twin_is_bert_within_float16_rounding():
    w = E.random_weights(layers=2, hidden=64, heads=2, inter=128, vocab=50, positions=40, std=0.1)
    rng = np.random.default_rng(1)
    ids, lens = rng.integers(0, 50, (2, 24)), np.array([24, 9])
    got = E.KernelEncoder(w, device="cpu").forward(ids, lens)
    want = _bert64(w, ids, lens).reshape(2, 24, -1)
    assert got.shape == (2, 24, 64)
    assert np.abs(got - want).max() < 3e-2 * np.abs(want).max()
    assert np.abs(got[1, :9] - want[1, :9]).mean() < 5e-3 * np.abs(want).max()


def test_attention_options_are_checked_by_name():
    w = E.random_weights(layers=1, hidden=256, heads=2, inter=256, vocab=4, positions=4)      # head size 128
    A = E.AttentionConfig
    for cfg, match in ((A(keys=128), "attention keys 128 needs head size <= 64"),
                       (A(stages=2), "attention stages 2 needs head size <= 64"),
                       (A(warps=3), "attention warps must be one of"), (A(keys=16), "attention keys must be one of"),
                       (A(min_blocks=3), "attention min_blocks must be one of")):
        with pytest.raises(BadInputError, match=match):
            E.KernelEncoder(w, device="cpu", attention=cfg)
    E.KernelEncoder(w, device="cpu", attention=A(keys=32, min_blocks=6))


@pytest.mark.parametrize("hidden, heads, match", [(96, 4, "head size 24"), (2048, 16, "multiples of 8 up to")])
def test_unfit_geometries_are_refused_by_name(hidden, heads, match):
    w = E.random_weights(layers=1, hidden=hidden, heads=heads, inter=hidden, vocab=4, positions=4)
    with pytest.raises(BadInputError, match=match):
        w.check(gpu=True)
    E.KernelEncoder(w, device="cpu")                    # the twins take any geometry


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
def test_encoder_kernels_compile_for_every_head_size(tmp_path):
    A = E.AttentionConfig
    for hd, cfg in [(hd, A()) for hd in E.HEAD_DIMS] + [
            (64, A(warps=8)), (64, A(keys=128)), (32, A(warps=8, keys=128)), (64, A(stages=2)),
            (32, A(warps=8, stages=2)), (64, A(keys=32, min_blocks=5)), (64, A(keys=32, min_blocks=6)),
            (128, A(keys=32, min_blocks=4)), (64, A(keys=32, stages=2, min_blocks=5))]:
        cfg.check(hd)
        ptx = tmp_path / f"enc{hd}-{cfg.warps}-{cfg.keys}-{cfg.stages}-{cfg.min_blocks}.ptx"
        r = subprocess.run([NVCC, *cfg.options(hd), "-arch=sm_90", "--ptx", str(E.SOURCE), "-o", str(ptx)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        entries = set(re.findall(r"\.entry\s+(\w+)", ptx.read_text()))
        assert entries == {"layer_norm_f16", "embed_layer_norm_f16", "attention_qkv_f16"}


class _T:
    """Just enough of a torch tensor for weights_from_bert."""

    def __init__(self, a):
        self.a = np.asarray(a, np.float32)

    def detach(self):
        return self

    def float(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self.a


class _FakeBert:
    def __init__(self, h=64, i=128, layers=2, heads=2, rng=np.random.default_rng(0)):
        from types import SimpleNamespace
        self.config = SimpleNamespace(num_hidden_layers=layers, num_attention_heads=heads, layer_norm_eps=1e-12)
        sd = {"embeddings.word_embeddings.weight": rng.normal(size=(30, h)),
              "embeddings.position_embeddings.weight": rng.normal(size=(20, h)),
              "embeddings.token_type_embeddings.weight": rng.normal(size=(2, h)),
              "embeddings.LayerNorm.weight": rng.normal(size=h), "embeddings.LayerNorm.bias": rng.normal(size=h)}
        for l in range(layers):
            p = f"encoder.layer.{l}."
            for name, (o, n) in {"attention.self.query": (h, h), "attention.self.key": (h, h),
                                 "attention.self.value": (h, h), "attention.output.dense": (h, h),
                                 "intermediate.dense": (i, h), "output.dense": (h, i)}.items():
                sd[p + name + ".weight"], sd[p + name + ".bias"] = rng.normal(size=(o, n)), rng.normal(size=o)
            for name in ("attention.output.LayerNorm", "output.LayerNorm"):
                sd[p + name + ".weight"], sd[p + name + ".bias"] = rng.normal(size=h), rng.normal(size=h)
        self.sd = sd

    def state_dict(self):
        return {k: _T(v) for k, v in self.sd.items()}


def test_bert_weights_pack_qkv_and_transpose_every_linear():
    from paddle2ort.benchmarks.encoder_kernels import weights_from_bert
    net = _FakeBert()
    w = weights_from_bert(net)
    w.check()
    sd, l0 = net.sd, w.layers[0]
    h = 64
    for j, n in enumerate(("query", "key", "value")):
        np.testing.assert_allclose(l0.wqkv[:, j * h:(j + 1) * h], sd[f"encoder.layer.0.attention.self.{n}.weight"].T,
                                   rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(l0.bqkv[j * h:(j + 1) * h], sd[f"encoder.layer.0.attention.self.{n}.bias"],
                                   rtol=1e-3, atol=1e-3)
    assert l0.w1.shape == (64, 128) and l0.w2.shape == (128, 64) and w.num_heads == 2 and w.eps == 1e-12
    np.testing.assert_allclose(l0.w2, sd["encoder.layer.0.output.dense.weight"].T, rtol=1e-3, atol=1e-3)


def test_parity_judges_the_unpadded_positions_only():
    from paddle2ort.benchmarks.encoder_kernels import parity
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2, 6, 4)).astype(np.float32)
    mask = np.array([[1] * 6, [1] * 3 + [0] * 3])
    ours = ref.copy()
    ours[1, 4] += 100                                   # a padded position: not judged
    assert parity(ours, ref, mask)["ok"]
    ours[1, 1, 0] += 0.1 * np.ptp(ref[mask.astype(bool)])   # an unpadded one, 10% of the judged range off
    p = parity(ours, ref, mask)
    assert not p["ok"] and p["max_abs_over_range"] == pytest.approx(0.1, rel=1e-2)


def test_report_and_speedup_read_the_rows():
    from paddle2ort.benchmarks.encoder_kernels import OURS, REF, report, speedup
    res = {"device": {"gpu": "NVIDIA H200"}, "seq": 128, "repeats": 50, "parity_limits": [2e-2, 2e-3],
           "parity": {"bert_base": {"max_abs_over_range": 1e-3, "mean_abs_over_range": 1e-4, "ok": True}},
           "rows": [{"system": OURS, "geometry": "bert_base", "batch": b, "ms": ms}
                    for b, ms in ((1, 0.3), (8, 0.6), (32, 1.5))]
           + [{"system": REF, "geometry": "bert_base", "batch": 32, "ms": 2.4}]}
    assert speedup(res, "bert_base") == pytest.approx(1.6)
    md = report(res)
    assert f"| bert_base | {OURS} | 0.300 | 0.600 | 1.500 | 1.60x |" in md
    assert f"| bert_base | {REF} | - | - | 2.400 | 1.00x |" in md and "| bert_base | 1.00e-03 | 1.00e-04 | yes |" in md
    res["classifier"] = [{"name": "FP16-GPU kernel encoder", "samples": 3815, "accuracy": 0.7305,
                          "ms_per_sample": 0.0121, "argmax_agreement_vs_onnxruntime": 0.999}]
    assert "| FP16-GPU kernel encoder | 3815 | 73.05% | 0.0121 | 99.90% |" in report(res)
    res["classifier_stages"] = {"batch": 32, "seq": 64, "rows": 32, "length": 41, "repeats": 50,
                                "ms": {"onnxruntime bucket (whole model)": 0.31}}
    assert "(32 rows of up to 41 tokens, its bucket 32 x 64)" in report(res)
    assert "| onnxruntime bucket (whole model) | 0.310 |" in report(res)
    res["graph_agreement"] = {"bert_base": {"kernels": {"1": 1e-3, "32": 2e-3}}}
    assert "- bert_base, kernels: b1 1.0e-03, b32 2.0e-03" in report(res)


@pytest.mark.parametrize("head", ["cls", "mean"])
def test_graph_encoder_runs_an_inline_fused_graph_as_onnxruntime_does(tmp_path, head):
    """A fused encoder graph built inline (benchmarks/encoder_graphs.py): GraphEncoder's twins + the cut prefix and head
    give onnxruntime's logits of the whole graph; with the padding attended they would not."""
    import onnx
    import onnxruntime as ort

    from paddle2ort.benchmarks.encoder_graphs import fused_encoder_model, padded_feeds
    from paddle2ort.runtime.kernels.encoder_graph import GraphEncoder
    w = E.random_weights(layers=2, hidden=64, heads=2, inter=128, vocab=60, positions=32, std=0.1, seed=3)
    onnx.save(fused_encoder_model(w, head=head), str(tmp_path / "m.onnx"))
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    enc = GraphEncoder(tmp_path / "m.onnx", device="cpu")
    g = enc.graph
    assert len(g.weights.layers) == 2 and g.weights.embeds and g.head_inputs[0] == g.hidden
    for batch, seq, seed in ((1, 9, 0), (4, 16, 1)):
        feeds = padded_feeds(batch, seq, 60, seed)
        want, got = sess.run(None, feeds)[0], enc.run(feeds)[0]
        assert np.abs(got - want).max() <= 5e-3 * np.abs(want).max(), (batch, seq)
    feeds = padded_feeds(4, 16, 60, 1)
    unmasked = E.KernelEncoder(w, device="cpu").forward(feeds["input_ids"], np.full(4, 16))
    masked = E.KernelEncoder(w, device="cpu").forward(feeds["input_ids"], feeds["attention_mask"].sum(1))
    assert np.abs(unmasked[1:, 0] - masked[1:, 0]).max() > 1e-2      # the padding reaches the [CLS] rows if attended


def test_graph_cuts_need_no_shape_inference_from_the_extractor(tmp_path, monkeypatch):
    """onnx after 1.17 extracts only names the model already types (its Extractor no longer infers shapes; an H200
    run failed on "lens" so): read_encoder types every cut tensor itself, whichever onnx is installed."""
    import onnx
    import onnx.utils

    from paddle2ort.benchmarks.encoder_graphs import fused_encoder_model
    from paddle2ort.runtime.kernels.encoder_graph import read_encoder

    class TypedOnly(onnx.utils.Extractor):
        def extract_model(self, input_names, output_names):
            g = self.model.graph
            typed = {v.name for v in list(g.value_info) + list(g.input) + list(g.output)}
            untyped = [n for n in list(input_names) + list(output_names) if n not in typed]
            assert not untyped, f"not in value_info: {untyped}"
            return super().extract_model(input_names, output_names)

        def __init__(self, model):
            super().__init__(model)
            self.model = model          # what a later onnx keeps: the model as given, not its inferred copy

    monkeypatch.setattr(onnx.utils, "Extractor", TypedOnly)
    w = E.random_weights(layers=1, hidden=64, heads=2, inter=128, vocab=60, positions=32, std=0.1, seed=3)
    onnx.save(fused_encoder_model(w, head="cls"), str(tmp_path / "m.onnx"))
    g = read_encoder(tmp_path / "m.onnx")
    assert g.prefix_inputs and g.head_inputs[0] == g.hidden


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_the_first_row_form_of_a_fused_graph_gives_its_logits(tmp_path, dtype):
    """encoder_graphs' first_row form (the last layer at row 0, as convert/fusion/first_row.py leaves it) gives the
    whole graph's logits (peaked attention: weights at std 0.3), and the kernel encoder takes the fused layers
    before it, the head the row-0 layer."""
    import onnx
    import onnxruntime as ort

    from paddle2ort.benchmarks.encoder_graphs import fused_encoder_model, padded_feeds
    from paddle2ort.runtime.kernels.encoder_graph import GraphEncoder
    w = E.random_weights(layers=2, hidden=64, heads=2, inter=128, vocab=60, positions=32, std=0.3, seed=3)
    whole, row0 = fused_encoder_model(w, dtype=dtype), fused_encoder_model(w, dtype=dtype, first_row=True)
    feeds = padded_feeds(4, 16, 60, 1)
    want, got = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
                 for m in (whole, row0))
    assert np.abs(got - want).max() <= (1e-5 if dtype == np.float32 else 3e-3) * np.ptp(want)
    onnx.save(row0, str(tmp_path / "row0.onnx"))
    g = GraphEncoder(tmp_path / "row0.onnx", device="cpu")
    assert len(g.graph.weights.layers) == 1
    assert np.abs(g.run(feeds)[0] - want).max() <= 3e-3 * np.ptp(want)
    with pytest.raises(ValueError, match="needs the \\[CLS\\] head"):
        fused_encoder_model(w, head="mean", first_row=True)


def test_classifier_stages_time_each_stage_of_the_median_batch(tmp_path):
    """encoder_kernels.classifier_stages on the CPU (twins, onnxruntime's CPU provider): the median-length batch
    padded to its bucket, every stage and head way timed, the kernel path's outputs those of onnxruntime's bucket."""
    import onnx
    from types import SimpleNamespace

    from paddle2ort.benchmarks.encoder_graphs import fused_encoder_model, padded_feeds
    from paddle2ort.benchmarks.encoder_kernels import classifier_stages
    from paddle2ort.runtime.buckets import BucketRunner, BucketSpec, batch_buckets, bucket_for
    from paddle2ort.runtime.kernels.encoder_graph import HEADS, KernelRunner
    w = E.random_weights(layers=1, hidden=64, heads=2, inter=128, vocab=60, positions=64, std=0.1, seed=4)
    onnx.save(fused_encoder_model(w), str(tmp_path / "m.onnx"))
    spec = BucketSpec.for_max_length(64, batch_buckets(8))
    kernels = KernelRunner(tmp_path / "m.onnx", spec, pad_values={"input_ids": 0}, device="cpu")
    ort = BucketRunner(tmp_path / "m.onnx", kernels.output_names, spec=spec, pad_values={"input_ids": 0})
    feeds = [padded_feeds(3, n, 60, n) for n in (5, 20, 40)]
    st = classifier_stages(SimpleNamespace(runner=ort), SimpleNamespace(runner=kernels), feeds, repeats=3)
    assert (st["rows"], st["length"], st["batch"], st["seq"]) == (3, 20, bucket_for(3, spec.batch), 32)
    assert len(st["ms"]) == 4 + 2 * len(HEADS) and all(v > 0 for v in st["ms"].values())
    got, want = kernels(feeds[1])[0], ort(feeds[1])[0]
    assert got.shape == (3, 3) and np.abs(got - want).max() <= 5e-3 * np.abs(want).max()


def test_graph_rows_time_both_runners_on_the_same_fused_graph(tmp_path):
    """encoder_kernels.graph_rows on the CPU (onnxruntime's CPU provider, the kernels' twins): a row per runner and
    batch, and the two runners' logits agree on the padded rows."""
    from paddle2ort.benchmarks import encoder_kernels as K
    w = E.random_weights(layers=2, hidden=64, heads=2, inter=128, vocab=30000, positions=128, std=0.1, seed=6)
    rows, agree = K.graph_rows("tiny", w, tmp_path, repeats=2, device="cpu", batches=(1, 2))
    systems = [K.GRAPH_ORT, K.GRAPH_OURS, K.GRAPH_ORT_ROW0, K.GRAPH_OURS_ROW0]
    assert [(r["system"], r["batch"]) for r in rows] == [(s, b) for b in (1, 2) for s in systems]
    assert all(r["ms"] > 0 and r["geometry"] == "tiny" for r in rows)
    assert set(agree) == set(systems[1:]) and all(set(a) == {1, 2} and max(a.values()) < 5e-3 for a in agree.values())


def test_timed_predictions_put_each_batch_back_in_text_order():
    from types import SimpleNamespace

    from paddle2ort.benchmarks.classifier import timed_predictions
    idx = [np.array([2, 0]), np.array([1])]
    feeds = [{"x": np.array([[0.0, 1.0], [1.0, 0.0]])}, {"x": np.array([[0.0, 1.0]])}]
    clf = SimpleNamespace(logits=lambda f: f["x"])
    pred, passes = timed_predictions(clf, 3, idx, feeds)
    assert pred.tolist() == [0, 1, 1] and len(passes) == 3 and all(p >= 0 for p in passes)
