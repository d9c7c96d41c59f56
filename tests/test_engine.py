"""The kernel engine (runtime/kernels/engine.py) on CPU: its step is the NumPy twins of decode.cu, so these tests
prove the twins' math against the onnxruntime fused graph (the parity oracle) on tiny random models — FP32,
weight-only int8 and int4 (float and integer zero points), GQA groups 2 and 3, q/k/v bias, several attention splits,
later turns and beams — and each twin against a plain formula. The kernels themselves are compared with these twins
on the GPU (tests/test_engine_gpu.py)."""
import numpy as np
import pytest

from paddle2ort.convert.llm.fused import DecoderSpec, build_decoder, build_variant, random_state, save_model
from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.fused import FusedDecoder
from paddle2ort.runtime.generation import Decoder, GenerationConfig, Generator, generate
from paddle2ort.runtime.kernels import engine_reference as R
from paddle2ort.runtime.kernels.engine import KernelEngine, Packed, _pair, open_decoder
from paddle2ort.runtime.session import SessionOptions

from near_tie import (NearTieBeams, beam_clear_divergences, clear_divergences, fused_logits_of, path_margins,
                      same_up_to_a_near_tie, stepped_logits, teacher_forced_logits, teacher_forced_margins)

pytestmark = pytest.mark.unit

CFG = {"vocab_size": 96, "hidden_size": 192, "intermediate_size": 128, "num_hidden_layers": 2,
       "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 32, "rms_norm_eps": 1e-5,
       "rope_theta": 10000.0, "max_position_embeddings": 128}
PROMPTS = [[5, 9, 14, 3, 77, 20, 31], [8, 1], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51]]


def _build(tmp, precision: str, bias: bool, heads: int = 6):
    spec = DecoderSpec.from_config({**CFG, "num_attention_heads": heads}, qkv_bias=bias)
    state = random_state(spec, seed=3, std=0.08)
    path = tmp / f"{precision}-{bias}-{heads}.onnx"
    if precision == "fp32":
        save_model(build_decoder(spec, state, "float32"), path)
    else:
        build_variant(spec, state, precision, path, accuracy_level=None, compute_dtype="float32")
    return path, spec.to_json()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("engine")
    return {k: _build(tmp, *k) for k in [("fp32", True, 6), ("fp32", False, 4), ("int8", True, 6),
                                         ("int4", False, 6)]}


def _teacher_forced(dec, prompts, steps):
    """Logits [B, V] after the prompt and after each of `steps` fed tokens (the same tokens for every decoder)."""
    dec.start(len(prompts))
    logits, rows = dec.append(prompts, np.zeros(len(prompts), np.int64), steps + 1)
    out = [np.asarray(logits if rows is None else logits[rows], np.float32).reshape(len(prompts), -1)]
    for j in range(steps):
        dec.next_ids[:, 0] = [(7 * j + 3 * b) % 90 + 1 for b in range(len(prompts))]
        dec.seqlens[...] += 1
        out.append(np.array(dec.step(None)[0], np.float32).reshape(len(prompts), -1))
    return np.stack(out)


@pytest.mark.parametrize("key,tol", [(("fp32", True, 6), 1e-4), (("fp32", False, 4), 1e-4),
                                     (("int8", True, 6), 2e-3), (("int4", False, 6), 2e-3)])
def test_engine_logits_match_the_fused_graph(models, key, tol):
    path, spec = models[key]
    eng = KernelEngine(path, spec, device="cpu", max_length=40, chunk=8, native=False)      # 5 splits
    assert isinstance(eng, Decoder) and eng.nsplit == 5
    ort = FusedDecoder(path, spec, SessionOptions(device="cpu"), max_length=40)
    got, want = _teacher_forced(eng, PROMPTS, 10), _teacher_forced(ort, PROMPTS, 10)
    err = np.abs(got - want).max() / (want.max() - want.min())
    assert err <= tol, f"{key}: max |engine - onnxruntime| = {err:.2e} of the logits' range"


def _eps(logits) -> float:
    """1e-3 of the reference's logit range: the twins' fp32 logits agree with onnxruntime's within 1e-4 of it
    (test_engine_logits_match_the_fused_graph), so no flip of a larger margin is rounding."""
    return 1e-3 * float(np.ptp(np.concatenate(logits)))


def _greedy_reference(ort, cfg, prompts=PROMPTS):
    """The fused graph's greedy tokens, and the near-tie rule's (margins, eps) from its logits on that path."""
    want = generate(ort, prompts, cfg, 0)
    logits = [teacher_forced_logits(fused_logits_of(ort), p, w) for p, w in zip(prompts, want)]
    eps = _eps(logits)
    return want, [path_margins(lg, w, eps) for lg, w in zip(logits, want)], eps


def test_engine_tokens_turns_and_beams_match_the_fused_graph(models):
    """The engine's greedy and beam tokens (and a second turn's) are the fused graph's up to a near-tie of the fused
    graph's (tests/near_tie.py); seeded sampling is compared exactly."""
    path, spec = models[("fp32", True, 6)]
    eng = KernelEngine(path, spec, device="cpu", max_length=64, chunk=16, native=False)
    ort = FusedDecoder(path, spec, SessionOptions(device="cpu"), max_length=64)
    cfg = GenerationConfig(max_new_tokens=12)
    want, margins, eps = _greedy_reference(ort, cfg)
    got = generate(eng, PROMPTS, cfg, 0)
    assert not clear_divergences(got, want, margins, eps), (got, want)
    cfg = GenerationConfig(max_new_tokens=8, num_beams=3)
    with NearTieBeams() as rec:
        want = generate(ort, PROMPTS, cfg, 0)
    got = generate(eng, PROMPTS, cfg, 0)
    assert not beam_clear_divergences(got, want, rec.margins(), eps), (got, want)
    # a seeded draw flips only where it falls within rounding of a CDF edge: compared exactly (tests/test_serving.py)
    cfg = GenerationConfig(max_new_tokens=10, do_sample=True, top_k=20, seed=11)
    assert generate(eng, PROMPTS, cfg, 0) == generate(ort, PROMPTS, cfg, 0), cfg
    runs = []
    for dec in (eng, ort):                        # a second turn: the chunks fed as steps after the cached ones
        gen = Generator(dec, GenerationConfig(max_new_tokens=4), 0)
        gen.append_tokens(PROMPTS)
        while not gen.is_done():
            gen.generate_next_token()
        first = gen.results()
        gen.append_tokens([[11, 12], [13], [14, 15, 16]])
        while not gen.is_done():
            gen.generate_next_token()
        runs.append((first, gen.results()))
    (got1, got2), (want1, want2) = runs
    _, margins1, eps = _greedy_reference(ort, GenerationConfig(max_new_tokens=4))
    turn2 = [list(p) + w + t for p, w, t in zip(PROMPTS, want1, ([11, 12], [13], [14, 15, 16]))]
    margins2 = [teacher_forced_margins(fused_logits_of(ort), c, w, eps) for c, w in zip(turn2, want2)]
    assert not clear_divergences(got1, want1, margins1, eps), (got1, want1)
    for g1, w1, g2, w2, m2 in zip(got1, want1, got2, want2, margins2):   # the second turn, where the first was equal
        assert g1 != w1 or same_up_to_a_near_tie(g2, w2, m2, eps), (g2, w2)


def test_prompt_pass_by_the_fused_graph_writes_the_engine_cache(models):
    """prefill="onnxruntime" (the default on GPUs): the fused graph's prompt call fills our cache buffers in place,
    then our steps continue: the same tokens as our own prompt pass."""
    path, spec = models[("int8", True, 6)]
    cfg = GenerationConfig(max_new_tokens=10)
    ort = KernelEngine(path, spec, device="cpu", max_length=40, prefill="onnxruntime", native=False)
    assert ort.prefill_by == "onnxruntime fused graph"
    own = KernelEngine(path, spec, device="cpu", max_length=40, native=False)
    want = generate(own, PROMPTS, cfg, 0)
    logits = stepped_logits(own, PROMPTS, want)                  # our prompt pass's path, stepped as it decodes
    # int8: onnxruntime's and the twins' logits part by <= 2e-3 of the range (logits test): a flip needs twice that
    eps = 4e-3 * float(np.ptp(np.concatenate(logits)))
    got = generate(ort, PROMPTS, cfg, 0)
    assert not clear_divergences(got, want, [path_margins(lg, w, eps) for lg, w in zip(logits, want)], eps), \
        (got, want)


def test_twins_against_plain_formulas():
    rng = np.random.default_rng(0)
    # attention: the split partials merged = one softmax over all positions, per GQA group
    b, kvh, g, d, cap = 2, 2, 3, 32, 50
    q = rng.normal(size=(b, kvh * g * d)).astype(np.float32)
    kc, vc = rng.normal(size=(2, b, kvh, cap, d)).astype(np.float32)
    seqlens = np.array([37, 4], np.int32)
    out = R.attn_combine(*R.attn_split(q, kc, vc, seqlens, 0.2, 8, 7), seqlens, 8)
    for groups in (1, 3, 16):            # attention v2's twin: lane groups with online softmaxes, merged per split
        online = R.attn_combine(*R.attn_online(q, kc, vc, seqlens, 0.2, 8, 7, groups), seqlens, 8)
        np.testing.assert_allclose(online, out, rtol=1e-5, atol=1e-6)
    for r in range(b):
        n = seqlens[r] + 1
        qh = q[r].reshape(kvh, g, d)
        s = np.einsum("hgd,htd->hgt", qh, kc[r, :, :n]) * 0.2
        p = np.exp(s - s.max(-1, keepdims=True))
        want = np.einsum("hgt,htd->hgd", p / p.sum(-1, keepdims=True), vc[r, :, :n]).reshape(-1)
        np.testing.assert_allclose(out[r], want, rtol=1e-5, atol=1e-6)
    # int4 blocks with integer (packed uint8) and float zero points: (q - zp) * scale
    n, k, block = 6, 64, 32
    qv = rng.integers(0, 16, size=(n, k)).astype(np.uint8)
    packed = (qv[:, 0::2] | (qv[:, 1::2] << 4)).astype(np.uint8)
    scale = rng.uniform(0.01, 0.1, size=(n, 2)).astype(np.float16)
    zi = rng.integers(0, 16, size=(n, 2)).astype(np.uint8)
    for zp, zf in (((zi[:, 0] | (zi[:, 1] << 4)).astype(np.uint8), zi), (zi.astype(np.float16) + 0.5, zi + 0.5)):
        got = Packed("q4", packed, _pair(scale, zp, n, 2, 4), n, k, block).dense()
        want = (qv.reshape(n, 2, block) - np.float16(zf)[..., None].astype(np.float32)) * scale.astype(
            np.float32)[..., None]
        np.testing.assert_allclose(got, want.reshape(n, k), rtol=1e-6)
    # q|k|v: rotary is a rotation (norms kept) and k/v land at the row's position
    w = rng.normal(size=(5 * 32, 64)).astype(np.float32)
    x = rng.normal(size=(2, 64)).astype(np.float32)
    kc, vc = np.zeros((2, 2, 2, 10, 32), np.float32)
    qo = np.zeros((2, 32), np.float32)
    ang = rng.uniform(0, 6, size=(10, 16)).astype(np.float32)
    R.gemv_qkv(w, x, np.ones(64, np.float32), 1e-6, None, qo, kc, vc, np.cos(ang), np.sin(ang), np.array([3, 9]),
               1, 2)
    y = x * R.rms(x, 1e-6) @ w.T
    np.testing.assert_allclose(np.linalg.norm(qo, axis=-1), np.linalg.norm(y[:, :32], axis=-1), rtol=1e-5)
    np.testing.assert_allclose(vc[1, :, 9], y[1, 96:].reshape(2, 32), rtol=1e-5, atol=1e-5)
    assert not kc[0, :, :3].any() and not kc[0, :, 4:].any() and kc[0, :, 3].any()


def test_engine_refuses_what_the_kernels_do_not_cover(models, tmp_path):
    path, spec = models[("fp32", True, 6)]
    with pytest.raises(BadInputError, match="onnxruntime fused decoder"):
        KernelEngine(path, {**spec, "family": "gpt"}, device="cpu")
    with pytest.raises(BadInputError, match="exceeds the model's 128 positions"):
        KernelEngine(path, spec, device="cpu", max_length=4096)
    # CPU, auto: the compiled step where the host builds it (tests/test_cpu_step.py), else the fused graph
    from paddle2ort.runtime.kernels.cpu import available
    assert isinstance(open_decoder(path, spec, device="cpu"), KernelEngine if available() else FusedDecoder)
    assert isinstance(open_decoder(path, spec, engine="kernels", device="cpu"), KernelEngine)
    assert KernelEngine(path, spec, device="cpu", native=False).prefill_by == "kernel engine"
    with pytest.raises(BadInputError, match="prefill must be"):
        KernelEngine(path, spec, device="cpu", prefill="fast")
    with pytest.raises(BadInputError, match="engine must be"):
        open_decoder(path, spec, engine="fast")


def test_engine_bench_parity_and_verdicts_from_a_run(models):
    """engine_bench's pure parts on CPU decoders: teacher-forced logits of both engines, the near-tie rule, and the
    targets computed from a results dict."""
    from paddle2ort.benchmarks.gpu import engine_bench as E
    path, spec = models[("fp32", True, 6)]
    cont = np.array([[(3 * j + b) % 90 + 1 for j in range(6)] for b in range(3)], np.int64)
    lo = E.forced_logits(KernelEngine(path, spec, device="cpu", max_length=40, native=False), PROMPTS, cont)
    lr = E.forced_logits(FusedDecoder(path, spec, SessionOptions(device="cpu"), max_length=40), PROMPTS, cont)
    assert lo.shape == (3, 6, 96)
    m = E.near_tie_mismatches(lo, lr)
    assert m["decisive_mismatches"] == 0 and m["positions"] == 18
    flipped = lr.copy()
    flipped[0, 0, lr[0, 0].argmin()] = lr[0, 0].max() + 1.0            # a decisive flip of the oracle
    assert E.near_tie_mismatches(lo, flipped)["decisive_mismatches"] == 1
    row = lambda s, p, b, q, tok, ttft=10.0: {"system": s, "precision": p, "batch": b, "prompt": q, "new": 128,  # noqa
                                               "tok_s_per_seq": tok, "tok_s_aggregate": tok * b, "ttft_ms": ttft,
                                               "step_ms": 1e3 / tok, "pct_hbm_roofline": tok / 40}
    res = {"device": {"gpu": "test"}, "copy_bandwidth_gb_s": 4000.0, "reps": 1,
           "golden": {"ours_vs_ort_teacher_forced": m},
           "configs": {"qwen2.5-0.5b": {"rows": [row(E.OURS, "fp16", 1, 128, 2000), row(E.ORT, "fp16", 1, 128, 800),
                                                 row(E.OURS, "int4", 1, 128, 3000), row(E.OURS, "fp16", 8, 128, 1500),
                                                 row(E.OURS, "fp16", 1, 2048, 1700, 20.0),
                                                 row(E.ORT, "fp16", 1, 2048, 700, 25.0)]}}}
    got = {v["target"].split(",")[0]: (v["value"], v["met"]) for v in E.verdicts(res)}
    assert got["% of copy bandwidth"] == (50.0, False)
    assert got["ours / onnxruntime fused graph"] == (2.5, True)
    assert got["int4 / FP16 tokens/s"] == (1.5, False)
    assert got["batch-8 aggregate / batch 1"] == (6.0, True)
    assert got["TTFT ours / onnxruntime fused graph"] == (0.8, True)
    assert "| ours (kernel engine) | fp16 | 1 | 128+128 |" in E.markdown(res)


@pytest.mark.parametrize("key", [("fp32", True, 6), ("int4", False, 6)])
def test_prompt_graph_without_its_head_outputs_the_heads_input(models, key):
    """fused.without_head (the kernel engine's GPU prompt pass): 'logits' become the final-norm hidden states, and
    those times the LM head (as the engine reads it from the same file) are the full graph's logits."""
    from paddle2ort.runtime.fused import without_head
    from paddle2ort.runtime.kernels.engine import load_weights
    path, spec = models[key]
    cut = without_head(path)
    full = FusedDecoder(path, spec, max_length=40)
    hidden = FusedDecoder(cut, dict(spec, vocab_size=spec["hidden_size"]), max_length=40)
    want, rows = full.prefill(full.state(3), PROMPTS, 0)
    got, rows2 = hidden.prefill(hidden.state(3), PROMPTS, 0)
    assert got.shape == (3 * max(map(len, PROMPTS)), spec["hidden_size"]) and np.array_equal(rows, rows2)
    head = load_weights(path, spec).head.dense()                         # [V, H]
    tol = 1e-4 if key[0] == "fp32" else 2e-3               # the quantized head: onnxruntime's block kernel
    np.testing.assert_allclose(np.asarray(got[rows], np.float32) @ head.T, want[rows], rtol=0,
                               atol=tol * np.abs(want[rows]).max())
    import onnx
    kept = {t.name for t in onnx.load_from_string(cut).graph.initializer}
    assert not {n for n in kept if n.startswith("lm_head")}               # the head's weights are not loaded


def test_without_head_refuses_a_graph_without_one(tmp_path):
    from onnx import TensorProto, helper, save

    from paddle2ort.runtime.fused import without_head
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["logits"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1])])
    save(helper.make_model(g), tmp_path / "m.onnx")
    with pytest.raises(BadInputError, match="no single LM head"):
        without_head(tmp_path / "m.onnx")


def test_attention_version_follows_the_geometry():
    """v2 (attn_online) wherever a lane group (head size / 8 lanes) tiles a warp, any GQA group (a block takes a
    slice of <= 4 heads); else v1; v1 only where its shared memory fits the split; an explicit choice the geometry
    cannot run is one clear error. The CPU engine runs the chosen kernel's twin."""
    from paddle2ort.runtime.kernels.engine import (attention_chunk, attention_version, attention_versions,
                                                   head_slices, module_names)
    assert attention_version(7, 64) == "v2" and attention_version(16, 256) == "v2"
    assert attention_version(4, 96) == "v1"                                              # 12 lanes a row
    assert attention_versions(3, 64) == ["v2", "v1"] and attention_versions(4, 96) == ["v1"]
    assert attention_versions(32, 128, 128) == ["v2"]                 # v1's scores [G][CHUNK] would not fit
    assert [head_slices(g) for g in (1, 4, 5, 7, 8, 16)] == [1, 1, 2, 2, 2, 4]
    assert attention_chunk({"num_heads": 32, "kv_heads": 1, "head_dim": 128}) == 128
    assert attention_version(7, 64, "v1") == "v1"
    with pytest.raises(BadInputError, match="attention v2 needs"):
        attention_version(4, 96, "v2")
    with pytest.raises(BadInputError, match="attention must be one of"):
        attention_version(7, 64, "v3")
    assert {"attn_online", "attn_split"} <= set(module_names(("-DHD=64", "-DGQA=7", "-DCHUNK=128", "-DFMTS=0",
                                                               "-DWITH_ATTN=1")))
    assert "attn_split" not in module_names(("-DHD=128", "-DGQA=32", "-DCHUNK=128", "-DFMTS=0", "-DWITH_ATTN=1"))


@pytest.mark.parametrize("attention", ["v2", "v1"])
def test_both_attention_twins_give_the_fused_graphs_tokens(models, attention):
    path, spec = models[("fp32", True, 6)]
    cfg = GenerationConfig(max_new_tokens=6)
    eng = KernelEngine(path, spec, device="cpu", max_length=40, chunk=8, attention=attention, native=False)
    assert eng.attention == attention
    ort = FusedDecoder(path, spec, SessionOptions(device="cpu"), max_length=40)
    want, margins, eps = _greedy_reference(ort, cfg)
    got = generate(eng, PROMPTS, cfg, 0)
    assert not clear_divergences(got, want, margins, eps), (got, want)


def test_prompt_buckets_pad_up_and_stop_at_the_cache():
    """prompt_graphs' padded lengths: the smallest bucket that holds the prompt, none past the largest bucket or
    the cache (those run as they are)."""
    from paddle2ort.runtime.kernels.engine import PROMPT_BUCKETS, prompt_bucket
    assert [prompt_bucket(n, 4096) for n in (1, 16, 17, 128, 129, 512)] == [16, 16, 32, 128, 256, 512]
    assert prompt_bucket(513, 4096) is None and prompt_bucket(100, 120) is None
    assert list(PROMPT_BUCKETS) == sorted(PROMPT_BUCKETS)


def _pages_present(a: np.ndarray) -> np.ndarray:
    """Which of a's base pages (4 KiB on x86-64) are mapped (/proc/self/pagemap's present bit, readable without
    privileges)."""
    import mmap
    first, last = a.ctypes.data // mmap.PAGESIZE, (a.ctypes.data + a.nbytes - 1) // mmap.PAGESIZE
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(first * 8)
        ents = np.frombuffer(f.read((last - first + 1) * 8), np.uint64)
    return (ents >> np.uint64(63)).astype(bool)


def test_host_cache_commits_only_the_positions_written():
    """The CPU cache is zeros whose pages are mapped as positions are written, 4 KiB at a time: writing the first
    positions of every (layer, K/V, row, head) slice maps about a page a slice, not the whole cache (numpy's huge
    pages did: a 7-token prompt committed a 4,096-position cache at batch 8)."""
    from paddle2ort.runtime.kernels.engine import cache_zeros
    shape = (2, 2, 2, 3, 4096, 64)                        # 24 slices of 1 MiB
    cache = cache_zeros(shape, np.float32)
    assert cache.shape == shape and cache.dtype == np.float32 and cache.flags.writeable and cache.flags.c_contiguous
    cache[..., :5, :] = 1.0                               # 5 positions = 1,280 bytes at the start of each slice
    assert float(cache[..., :5, :].sum()) == 24 * 5 * 64
    import os
    if not os.access("/proc/self/pagemap", os.R_OK):
        pytest.skip("no /proc/self/pagemap to read on this host")
    present = _pages_present(cache)
    assert present.sum() <= 2 * 24, f"{present.sum()} of {present.size} pages mapped for 24 slices' first positions"
    assert float(cache[..., 5:, :].max()) == 0.0          # the rest reads as zeros
