"""The decode-loop kernels: NumPy twins against the host loop's reference functions (CPU, CI), every CUDA source
compiled by nvcc where a CUDA toolkit is installed (CI installs none: that test skips there; the GPU runs under
benchmarks/device compile them), and kernel vs twin on the device (skipped without a GPU)."""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from paddle2ort.runtime.kernels import SamplerParams, philox_uniform, reference as R

KERNELS = Path(R.__file__).parent


def ref_keep(logits, top_k, top_p):
    """Slow per-row reference: top-k keeps everything >= the k-th largest; top-p keeps the smallest set of the
    most likely (value order, ties at the threshold kept) whose mass reaches p."""
    keep = np.ones_like(logits, bool)
    for r in range(logits.shape[0]):
        x = logits[r]
        if 0 < top_k < len(x):
            keep[r] &= x >= np.sort(x)[::-1][top_k - 1]
        if top_p < 1.0:
            probs = np.where(keep[r], np.exp(x.astype(np.float64) - x.max()), 0.0)
            probs /= probs.sum()
            mass, tau = 0.0, None
            for i in sorted(np.nonzero(keep[r])[0], key=lambda i: (-x[i], i)):
                mass += probs[i]
                if mass >= top_p:
                    tau = x[i]
                    break
            keep[r] &= x >= (tau if tau is not None else -np.inf)
    return keep


def ref_probs(logits, temperature, top_k, top_p):
    x = logits.astype(np.float32) / np.float32(temperature)
    keep = ref_keep(x, top_k, top_p)
    e = np.where(keep, np.exp(x.astype(np.float64) - x.max(-1, keepdims=True)), 0.0)
    return e / e.sum(-1, keepdims=True)


def test_philox_known_answer_and_spread():
    # Random123 known-answer vector: counter 0, key 0 -> first word 0x6627e8d5 (24 high bits kept)
    assert philox_uniform(0, 0, np.array([0]))[0] == 0x6627E8 / 2**24
    u = philox_uniform(1234, 7, np.arange(100_000))
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.005 and len(np.unique(u)) > 99_000
    assert not np.array_equal(u[:10], philox_uniform(1234, 8, np.arange(10)))


def _state(b, v, max_new=4):
    return dict(next_ids=np.zeros((b, 1), np.int64), tokens_out=np.zeros((b, max_new), np.int32),
                seqlens=np.full(b, 5, np.int32), finished=np.zeros(b, np.uint8), seen=np.zeros((b, v), np.uint8))


def test_twin_greedy_ties_penalty_stop_and_state():
    logits = np.array([[1.0, 3.0, 3.0, -2.0], [0.5, 0.1, 2.0, 2.0]], np.float32)
    s = _state(2, 4)
    R.sample_rows(logits, None, SamplerParams(), **s, stop_ids=np.array([2], np.int32))
    assert s["next_ids"][:, 0].tolist() == [1, 2]                      # ties -> lowest id, as numpy.argmax
    assert s["finished"].tolist() == [0, 1] and s["seqlens"].tolist() == [6, 6]
    assert s["seen"][0, 1] == 1 and s["seen"][1, 2] == 1 and s["tokens_out"][:, 0].tolist() == [1, 2]
    # finished rows emit pad; the penalty turns row 0 away from token 1; suppression hides the stop token
    p = SamplerParams(penalty=4.0, step=1, pad_id=9)
    R.sample_rows(logits, None, p, **s, stop_ids=np.array([2], np.int32))
    assert s["next_ids"][:, 0].tolist() == [2, 9] and s["finished"].tolist() == [1, 1]
    s = _state(2, 4)
    R.sample_rows(logits, np.array([1, 0], np.int32), SamplerParams(suppress_stop=True), **s,
                  stop_ids=np.array([2], np.int32))
    assert s["next_ids"][:, 0].tolist() == [3, 1] and s["finished"].tolist() == [0, 0]   # rows picks logits rows


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (5, 1.0), (0, 0.7), (20, 0.9), (1, 1.0), (0, 0.05), (12, 0.999)])
def test_twin_keep_mask_matches_the_reference(top_k, top_p):
    x = np.random.default_rng(0).normal(size=(4, 300)).astype(np.float32) * 3
    x[0, :3] = x[0].max() + 1                                          # a three-way tie at the top
    got = R.keep_mask(x, top_k, top_p)
    np.testing.assert_array_equal(got, ref_keep(x, top_k, top_p))
    assert got.sum(-1).min() >= 1 and (top_k == 0 or got[0].sum() >= min(3, max(top_k, 3)))


def test_twin_sampling_distribution():
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(1, 50)) * 2).astype(np.float32)
    cfg = dict(temperature=0.8, top_k=12, top_p=0.9)
    probs = ref_probs(logits, **cfg)[0]
    np.testing.assert_allclose(R.sampling_probs(logits, SamplerParams(do_sample=True, **cfg))[0], probs, atol=1e-12)
    n = 20000
    draws = np.empty(n, np.int64)
    for i in range(n):                       # one uniform per (seed, step, row): steps give independent draws
        s = _state(1, 50, 1)
        R.sample_rows(logits, None, SamplerParams(do_sample=True, step=i, seed=42, **cfg), s["next_ids"])
        draws[i] = s["next_ids"][0, 0]
    freq = np.bincount(draws, minlength=50) / n
    assert set(np.nonzero(freq)[0]) <= set(np.nonzero(probs)[0])      # never outside top-k/top-p
    assert 0.5 * np.abs(freq - probs).sum() < 0.02                      # total variation distance


def test_cuda_sources_compile_with_nvcc(tmp_path):
    nvcc = shutil.which("nvcc") or (Path("/usr/local/cuda/bin/nvcc") if Path("/usr/local/cuda/bin/nvcc").exists()
                                    else None)
    if nvcc is None:
        pytest.skip("nvcc not installed (no CUDA toolkit here; CI installs none, so CI never runs this check)")
    sources = sorted(KERNELS.glob("*.cu"))
    assert sources
    for src in sources:
        r = subprocess.run([str(nvcc), "-std=c++17", "-arch=sm_80", "-c", str(src), "-o", str(tmp_path / "k.o")],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{src.name} does not compile:\n{r.stderr}"


# ------------------------------------------------------------------------------------------- device
def _cupy_gpu():
    try:
        import cupy as cp
        return cp if cp.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:  # noqa: BLE001 - no cupy or no driver: skip
        return None


cp = _cupy_gpu()
gpu = pytest.mark.skipif(cp is None, reason="needs CuPy and an NVIDIA GPU")


def _run_both(logits, p, rows=None, stop=None, penalty_seen=None):
    from paddle2ort.runtime.kernels import cuda as K
    b = logits.shape[0] if rows is None else len(rows)
    h = _state(b, logits.shape[-1], max_new=8)
    if penalty_seen is not None:
        h["seen"][...] = penalty_seen
    d = {k: cp.asarray(v) for k, v in h.items()}
    stop_h = np.zeros(0, np.int32) if stop is None else np.asarray(stop, np.int32)
    R.sample_rows(logits, rows, p, **h, stop_ids=stop_h)
    K.sample_rows(cp.asarray(logits), None if rows is None else cp.asarray(rows), p, d["next_ids"], d["seen"],
                  None if stop is None else cp.asarray(stop_h), d["tokens_out"], d["seqlens"], d["finished"])
    cp.cuda.Device().synchronize()
    return h, {k: v.get() for k, v in d.items()}


@gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_kernel_greedy_equals_twin(dtype):
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(32, 49152)).astype(dtype)
    logits[3, [5, 40000]] = logits[3].max() + 1                           # a tie: lowest id wins
    seen = (rng.random((32, 49152)) < 0.01).astype(np.uint8)
    h, d = _run_both(logits, SamplerParams(penalty=1.3), penalty_seen=seen, stop=[2, 7])
    for k in h:
        np.testing.assert_array_equal(h[k], d[k], err_msg=k)
    assert d["next_ids"][3, 0] == 5


@gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (50, 1.0), (0, 0.9), (40, 0.8)])
def test_kernel_sampling_equals_twin(dtype, top_k, top_p):
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=(64, 49152)) * 4).astype(dtype)
    agree = []
    for step in range(8):
        p = SamplerParams(do_sample=True, temperature=0.7, top_k=top_k, top_p=top_p, step=step, seed=99)
        h, d = _run_both(logits, p)
        agree.append(np.mean(h["next_ids"] == d["next_ids"]))
    # same uniforms, same thresholds: only float32-vs-float64 rounding at a CDF boundary may differ
    assert np.mean(agree) >= 0.99, agree


@gpu
def test_kernel_sampling_distribution():
    from paddle2ort.runtime.kernels import cuda as K
    rng = np.random.default_rng(4)
    row = (rng.normal(size=(1, 1000)) * 2).astype(np.float32)
    n = 4096
    logits = cp.asarray(np.repeat(row, n, 0))           # n identical rows: one draw each (counter = row)
    ids = cp.zeros((n, 1), cp.int64)
    cfg = dict(temperature=1.0, top_k=30, top_p=0.95)
    K.sample_rows(logits, None, SamplerParams(do_sample=True, seed=5, **cfg), ids)
    freq = np.bincount(ids.get()[:, 0], minlength=1000) / n
    probs = ref_probs(row, **cfg)[0]
    assert set(np.nonzero(freq)[0]) <= set(np.nonzero(probs)[0])
    assert 0.5 * np.abs(freq - probs).sum() < 0.05


def test_beam_topk_twin_orders_ties_and_skips_dead_beams():
    """2 prompts x 2 beams over a 6-token vocabulary: best first, ties to the lower flat index, a -inf beam never
    expands, suppressed stop tokens never chosen but still in the log-softmax's normalizer."""
    logits = np.log(np.array([[1, 2, 2, 1, 1, 1], [9, 9, 9, 9, 9, 9],
                              [1, 1, 1, 1, 1, 5], [5, 1, 1, 1, 1, 1]], np.float32))
    scores = np.array([0.0, -np.inf, -1.0, -0.5], np.float32)
    rs, ri = R.beam_topk(logits, None, scores, beams=2, stop_ids=np.array([5], np.int32), suppress_stop=True)
    assert rs.shape == ri.shape == (4, 4) and (ri[1] == -1).all() and np.isneginf(rs[1]).all()
    assert ri[3].tolist() == [6, 7, 8, 9]                                      # row 1 of prompt 1: k * V + t
    s, idx = R.merge_beams(rs, ri, beams=2)
    np.testing.assert_allclose(s[0, :2], [np.log(2) - np.log(8.0)] * 2, rtol=1e-6)
    assert idx[0].tolist() == [1, 2, 0, 3]                                     # ties in index order
    assert idx[1, 0] == 6 and not np.isin(idx[1] % 6, [5]).any()
    tiny = np.zeros((2, 1), np.float32)                                        # 1-token vocabulary
    s3, idx3 = R.merge_beams(*R.beam_topk(tiny, None, np.array([0.0, -np.inf], np.float32), beams=2), beams=2)
    assert idx3[0].tolist() == [0, -1, -1, -1] and np.isneginf(s3[0, 1:]).all()


def test_beam_rows_then_merge_equals_the_global_top_2k():
    """Per-row 2K best, merged, = the 2K best of all K x V candidates (stable order), with ties planted."""
    rng = np.random.default_rng(0)
    beams, vocab = 4, 300
    logits = rng.normal(size=(2 * beams, vocab)).astype(np.float32).round(1)   # many exact ties
    scores = rng.normal(size=2 * beams).astype(np.float32).round(1)
    s, idx = R.merge_beams(*R.beam_topk(logits, None, scores, beams), beams)
    x = logits.astype(np.float32)
    lse = x.max(-1, keepdims=True) + np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True,
                                                                                       dtype=np.float32))
    cand = ((scores[:, None] + x) - lse).reshape(2, -1)
    order = np.argsort(-cand, axis=-1, kind="stable")[:, :2 * beams]
    assert (idx == order).all()
    np.testing.assert_array_equal(s, np.take_along_axis(cand, order, -1))


@gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("beams", [1, 4, 8])
def test_kernel_beam_topk_equals_twin(dtype, beams):
    from paddle2ort.runtime.kernels import cuda as K
    rng = np.random.default_rng(beams)
    groups, vocab = 3, 49152 + 3
    logits = (rng.normal(size=(groups * beams, vocab)) * 3).astype(dtype)
    logits[0, [10, 20]] = logits[0].max() + 2                                         # exact tie in one row
    scores = rng.normal(size=groups * beams).astype(np.float32) - 1
    scores[1] = -np.inf if beams > 1 else scores[1]
    seen = (rng.random((groups * beams, vocab)) < 0.01).astype(np.uint8)
    seen[0, [10, 20]] = 0
    stop = np.array([7, 11], np.int32)
    kw = dict(penalty=1.2, suppress_stop=True)
    hs, hi = R.beam_topk(logits, None, scores, beams, seen, stop, **kw)
    ds, di = K.beam_topk(cp.asarray(logits), None, cp.asarray(scores), beams, cp.asarray(seen), cp.asarray(stop),
                         **kw)
    ds, di = ds.get(), di.get()
    np.testing.assert_allclose(ds, hs, rtol=0, atol=2e-5)
    # indices equal except where the scores are within float32 rounding of each other (tie-aware)
    close = np.abs(np.diff(hs, axis=-1)) < 2e-5
    amb = np.zeros_like(hi, bool)
    amb[:, 1:] |= close
    amb[:, :-1] |= close
    assert (hi[~amb] == di[~amb]).all()
    assert di[0, 0] == 10 and di[0, 1] == 20                                         # the tie, lower id first
    if beams > 1:
        assert (di[1] == -1).all()                                                   # the -inf beam
    assert not np.isin(di[di >= 0] % vocab, stop).any()


@gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("vocab", [151936, 49152 + 5])
def test_kernel_plain_greedy_equals_twin(dtype, vocab):
    """The unpenalized greedy path (16-byte loads on aligned rows, one by one on the others and the tail)."""
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(8, vocab)).astype(dtype)
    logits[1, [3, vocab - 1]] = logits[1].max() + 1                       # tie: lowest id wins
    logits[2, vocab - 2] = logits[2].max() + 1                           # the maximum in the tail
    h, d = _run_both(logits, SamplerParams())
    for k in h:
        np.testing.assert_array_equal(h[k], d[k], err_msg=k)
    assert d["next_ids"][1, 0] == 3 and d["next_ids"][2, 0] == vocab - 2
