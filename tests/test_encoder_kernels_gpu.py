"""encoder.cu's kernels and the KernelEncoder on the GPU against their NumPy twins (runtime/kernels/encoder.py), and
the captured CUDA graph against the launched pass. Skipped without CuPy and a CUDA device."""
import numpy as np
import pytest

from paddle2ort.runtime.kernels import encoder as E
from paddle2ort.runtime.kernels.bench_engine import rel_err
from cuda_device import cupy_and_device

cp, pytestmark = cupy_and_device()


def _rel(got, want):
    return rel_err(cp.asnumpy(got), want)


A = E.AttentionConfig


@pytest.mark.parametrize("cfg", [A(), A(warps=8), A(keys=128), A(warps=8, keys=128), A(stages=2), A(warps=8, stages=2),
                                 A(keys=32, min_blocks=5), A(keys=32, min_blocks=6), A(keys=32, stages=2, min_blocks=5)],
                         ids=repr)
@pytest.mark.parametrize("b, s, nh, d, lens", [(2, 128, 12, 64, [128, 64]), (3, 100, 4, 32, [100, 1, 0]),
                                                (1, 200, 2, 128, [131]), (4, 16, 12, 32, [16, 3, 8, 15]),
                                                (2, 64, 6, 64, [64, 63])])
def test_attention_kernel_matches_its_twin(b, s, nh, d, lens, cfg):
    try:
        cfg.check(d)
    except E.BadInputError as e:
        pytest.skip(f"not a configuration for head size {d}: {e}")
    rng = np.random.default_rng(s + d)
    qkv = rng.normal(size=(b * s, 3 * nh * d)).astype(np.float16)
    out = cp.zeros((b * s, nh * d), np.float16)
    E.launch_attention(cp.asarray(qkv), cp.asarray(np.array(lens, np.int32)), out, nh, s, 1 / np.sqrt(d), cfg)
    want = E.attention_reference(qkv, np.array(lens), nh, 1 / np.sqrt(d))
    assert _rel(out, want) < 1e-2


@pytest.mark.parametrize("rows, h", [(37, 384), (256, 768), (5, 1024), (3, 8)])
def test_layer_norm_kernel_matches_its_twin(rows, h):
    rng = np.random.default_rng(h)
    x, g, b = (rng.normal(1, 3, size=(rows, h)).astype(np.float16), rng.normal(size=h).astype(np.float16),
               rng.normal(size=h).astype(np.float16))
    out = cp.zeros((rows, h), np.float16)
    E.launch_layer_norm(cp.asarray(x), cp.asarray(g), cp.asarray(b), out, 1e-12)
    assert _rel(out, E.layer_norm_reference(x, g, b, 1e-12)) < 5e-3


@pytest.mark.parametrize("hidden, heads", [(384, 12), (768, 12)])
def test_the_encoder_matches_its_twin_and_its_graph_the_launched_pass(hidden, heads):
    w = E.random_weights(layers=2, hidden=hidden, heads=heads, inter=4 * hidden, vocab=1000, positions=512, std=0.05)
    rng = np.random.default_rng(hidden)
    ids, lens = rng.integers(0, 1000, (4, 128)), np.array([128, 64, 1, 100])
    want = E.forward_reference(w, ids, lens).reshape(4, 128, -1)
    graphed = E.KernelEncoder(w)
    got = cp.asnumpy(graphed.forward(ids, lens)).astype(np.float32)
    assert np.abs(got - want).max() < 3e-2 * np.abs(want).max()
    again = cp.asnumpy(graphed.forward(ids, lens))                # the replay
    launched = cp.asnumpy(E.KernelEncoder(w, cuda_graph=False).forward(ids, lens))
    assert np.array_equal(again, got.astype(np.float16)) and np.array_equal(launched, again)


@pytest.mark.parametrize("head", ["cls", "mean", "cls-row0"])
def test_graph_encoder_on_the_gpu_matches_its_twins(tmp_path, head):
    """GraphEncoder on an inline FP16 fused graph (benchmarks/encoder_graphs.py): the GPU kernels + the cut head give the
    twins' logits, and onnxruntime's own run of the whole graph where its CUDA provider loads."""
    from paddle2ort.runtime.session import gpu_available
    if not gpu_available():
        pytest.skip("needs onnxruntime's CUDA provider (the head runs in onnxruntime)")
    import onnx
    import onnxruntime as ort

    from paddle2ort.benchmarks.encoder_graphs import fused_encoder_model, padded_feeds
    from paddle2ort.runtime.kernels.encoder_graph import GraphEncoder
    w = E.random_weights(layers=2, hidden=256, heads=4, inter=512, vocab=500, positions=128, std=0.05, seed=5)
    onnx.save(fused_encoder_model(w, head=head.split("-")[0], dtype=np.float16, first_row=head.endswith("row0")),
              str(tmp_path / "m.onnx"))    # cls-row0: the last layer at row 0 (the head runs it)
    gpu, cpu = GraphEncoder(tmp_path / "m.onnx"), GraphEncoder(tmp_path / "m.onnx", device="cpu")
    feeds = padded_feeds(8, 64, 500, 2)
    got, twin = gpu.run(feeds)[0], cpu.run(feeds)[0]
    assert np.abs(got - twin).max() <= 1e-2 * np.abs(twin).max()
    # the head's ways: its bucket (CUDA graph where onnxruntime captures it) reads the encoder's buffer in place,
    # on every call of the shape and after another shape's; the dynamic session gives the same logits (to its rounding)
    other = padded_feeds(4, 32, 500, 3)
    dyn = GraphEncoder(tmp_path / "m.onnx", head="dynamic")
    for f in (feeds, other, feeds, other):
        a, b = gpu.run(f)[0], dyn.run(f)[0]
        assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max(), f["input_ids"].shape   # static shapes: other kernels
    assert {k[:2] for k in gpu.head_buckets} == {(8, 64), (4, 32)} and not dyn.head_buckets
    assert head != "cls" or gpu.head_mode == "graphs"      # a [CLS] head is all on CUDA: captured
    if "CUDAExecutionProvider" in ort.get_available_providers():
        sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CUDAExecutionProvider"])
        want = sess.run(None, feeds)[0]
        assert np.abs(got - want).max() <= 2e-2 * np.abs(want).max()


def test_weights_without_embeddings_take_the_embedded_input_on_every_run():
    """A graph whose embeddings stay in onnxruntime (GraphEncoder's prefix): the layers start from hidden0 on the
    first call (launched, then captured and replayed) and on every replay after it."""
    from dataclasses import replace
    w = replace(E.random_weights(layers=2, hidden=128, heads=4, inter=256, vocab=10, positions=64, std=0.05, seed=9),
                word=None, pos=None, types=None, emb_ln=None)
    rng = np.random.default_rng(9)
    ids, lens = np.zeros((2, 32), np.int64), np.array([32, 20])
    h0 = rng.normal(size=(2, 32, 128)).astype(np.float16)
    want = E.forward_reference(w, ids, lens, hidden0=h0).reshape(2, 32, -1)
    enc = E.KernelEncoder(w)
    for _ in range(3):
        got = cp.asnumpy(enc.forward(ids, lens, hidden0=h0)).astype(np.float32)
        assert np.abs(got - want).max() < 3e-2 * np.abs(want).max()
