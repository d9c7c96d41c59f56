"""decode.cu's kernels against their NumPy twins (kernels/engine_reference.py) on the GPU, and the kernel engine on
the GPU against the same engine on its twins (CPU), eager against CUDA graph. Skipped without CuPy and a CUDA
device (CI compiles nothing here; tests/test_engine.py runs every twin there)."""
import numpy as np
import pytest

from near_tie import clear_divergences, path_margins, stepped_logits
from paddle2ort.convert.llm.fused import DecoderSpec, build_decoder, build_variant, random_state, save_model
from paddle2ort.runtime.generation import GenerationConfig, advance, generate
from paddle2ort.runtime.kernels import engine_reference as R
from paddle2ort.runtime.kernels.engine import (V2_SHAPES, V3_FORMATS, V3_SPLITS, V3S_SPLITS, KernelEngine, Packed, Plan,
                                               _pair, attention_twin, kernels, launch_attention, split_scratch)
from paddle2ort.runtime.kernels.engine import launch_gemv as _launch_gemv
from cuda_device import cupy_and_device

cp, pytestmark = cupy_and_device()


def _packed(fmt: str, n: int, k: int, rng, block: int = 32) -> Packed:
    if fmt in ("f16", "f32"):
        return Packed(fmt, (rng.normal(size=(n, k)) * 0.1).astype(np.float16 if fmt == "f16" else np.float32),
                      None, n, k)
    kb = k // block
    scale = rng.uniform(0.005, 0.03, size=(n, kb)).astype(np.float16)
    w = rng.integers(0, 256, size=(n, k if fmt == "q8" else k // 2), dtype=np.uint8)
    lo, hi = (100, 156) if fmt == "q8" else (5, 10)
    zp = rng.uniform(lo, hi, (n, kb))               # integer zero points in the 1st and 3rd quarters of the rows,
    whole = (np.arange(n) * 4 // n) % 2 == 0        # float ones in the others (v3's two decode paths)
    zp = np.where(whole[:, None], np.rint(zp), zp).astype(np.float16)
    return Packed(fmt, w, _pair(scale, zp, n, kb, 8 if fmt == "q8" else 4), n, k, block)


def _dense(p: Packed, a16: bool) -> np.ndarray:
    """The twin's weight: float32, or (v3) rounded to float16 as the kernel dequantizes it."""
    return p.dense(np, np.float16).astype(np.float32) if a16 else p.dense()


def _close(got, want, tol=2e-3):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-6)
    assert err <= tol, f"max |kernel - twin| {err:.2e} of max |twin|"


PLANS = ([("v1", 2, 1, 8), ("v1", 4, 1, 8)] + [("v2", *shape) for shape in V2_SHAPES]
         + [("v3", 16, ks, 8) for ks in V3_SPLITS]
         + [("v3s", 16, ks, 8, ksl) for ks in V3S_SPLITS for ksl in (2, 3)])


def launch_gemv(kern, mode, p, *args, plan, **kw):
    """engine.launch_gemv with room for a block-split plan's partial sums (a fresh, zeroed pair each launch)."""
    return _launch_gemv(kern, mode, p, *args, plan=plan, scratch=split_scratch(cp, [(p, plan)], args[3]), **kw)


def _plan(version, r, ks, nb, ksl=1):
    if version == "v1":
        return lambda mode, fmt: Plan(f"gemv_{mode}_{fmt}" + ("_r4" if r == 4 else ""), r)
    if version == "v3":
        return lambda mode, fmt: Plan(f"gemv3_{mode}_{fmt}_k{ks}", r, ks, nb)
    if version == "v3s":                                 # K split over blocks too; the LM head has no such entry
        return lambda mode, fmt: Plan(f"gemv3{'s' if mode != 'logits' else ''}_{mode}_{fmt}_k{ks}", r, ks, nb,
                                      ksl if mode != "logits" else 1)
    return lambda mode, fmt: Plan(f"gemv2_{mode}_{fmt}_r{r}_k{ks}_b{nb}", r, ks, nb)


@pytest.mark.parametrize("fmt", ["f16", "f32", "q8", "q4"])
@pytest.mark.parametrize("plan", PLANS, ids=lambda p: "{}-r{}-k{}-b{}".format(*p) + (f"-s{p[4]}" if len(p) > 4 else ""))
@pytest.mark.parametrize("batch,k_in", [(1, 576), (3, 2080), (11, 576), (1, 2080)])
def test_gemv_kernels_match_their_twins(fmt, plan, batch, k_in):
    """Every GEMV entry (v1, each v2 shape, each v3 K split) against its twin (v3: the a16 twins, float16
    activations and weights); K = 576 (a part chunk) and 2080 (several chunks a warp, a part chunk at the end, K
    split over warps)."""
    if plan[0] in ("v3", "v3s") and fmt not in V3_FORMATS:
        pytest.skip("v3 takes float16 / int8 / int4 weights (a float32 head stays on v2)")
    a16 = plan[0] in ("v3", "v3s")
    rng = np.random.default_rng(batch + k_in)
    hd, nh, kvh, inter, cap = 64, 7, 1, 160, 40
    kern = kernels(hd, nh // kvh, 128)                  # the engine's modules for this geometry (compiled once)
    mk = _plan(*plan)
    x = rng.normal(size=(batch, k_in)).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, k_in).astype(np.float16)
    xd, gd = cp.asarray(x), cp.asarray(gamma)
    # residual add and LM head (odd K tiles: 576 = 2.25 x 256)
    p = _packed(fmt, 96, k_in, rng)
    dense, pd = _dense(p, a16), p.to(cp)
    out = rng.normal(size=(batch, 96)).astype(np.float32)
    od = cp.asarray(out)
    launch_gemv(kern, "resid", pd, xd, None, 1e-6, batch, od, ldo=96, plan=mk("resid", fmt))
    R.gemv_resid(dense, x, out, a16)
    _close(od.get(), out)
    od = cp.zeros((batch, 96), cp.float32)
    launch_gemv(kern, "logits", pd, xd, gd, 1e-6, batch, od, ldo=96, plan=mk("logits", fmt))
    _close(od.get(), R.gemv_logits(dense, x, gamma, 1e-6, a16))
    # gate|up + SwiGLU
    p = _packed(fmt, 2 * inter, k_in, rng)
    od = cp.zeros((batch, inter), cp.float32)
    launch_gemv(kern, "swiglu", p.to(cp), xd, gd, 1e-6, batch, od, inter=inter, plan=mk("swiglu", fmt))
    _close(od.get(), R.gemv_swiglu(_dense(p, a16), x, gamma, 1e-6, inter, a16))
    # q|k|v + bias + rotary + cache append at per-row positions
    p = _packed(fmt, (nh + 2 * kvh) * hd, k_in, rng)
    bias = (rng.normal(size=p.n) * 0.1).astype(np.float16)
    ang = rng.uniform(0, 6, size=(cap, hd // 2)).astype(np.float32)
    cos, sin = np.cos(ang), np.sin(ang)
    seqlens = rng.integers(0, cap, batch).astype(np.int32)
    q, kc, vc = np.zeros((batch, nh * hd), np.float32), *np.zeros((2, batch, kvh, cap, hd), np.float16)
    qd, kcd, vcd = cp.asarray(q), cp.asarray(kc), cp.asarray(vc)
    launch_gemv(kern, "qkv", p.to(cp), xd, gd, 1e-6, batch, qd, bias=cp.asarray(bias), kc=kcd, vc=vcd,
                cos=cp.asarray(cos), sin=cp.asarray(sin), seqlens=cp.asarray(seqlens), nh=nh, kvh=kvh, cap=cap,
                plan=mk("qkv", fmt))
    R.gemv_qkv(_dense(p, a16), x, gamma, 1e-6, bias, q, kc, vc, cos, sin, seqlens, nh, kvh, a16)
    _close(qd.get(), q)
    _close(kcd.get(), kc, 5e-3)
    _close(vcd.get(), vc, 5e-3)


@pytest.mark.parametrize("version", ["v2", "v1"])
@pytest.mark.parametrize("hd,group,kvh,chunk", [(64, 7, 2, 128), (64, 3, 3, 64), (128, 4, 2, 128), (256, 8, 1, 64),
                                                (128, 16, 2, 64),
                                                (64, 1, 4, 128)])
def test_attention_kernels_match_their_twins(hd, group, kvh, chunk, version):
    rng = np.random.default_rng(hd + group)
    batch, cap = 3, 1100
    kern = kernels(hd, group, chunk, fmts=())           # the attention module alone
    nsplit = -(-cap // chunk)
    q = rng.normal(size=(batch, kvh * group * hd)).astype(np.float32)
    kc, vc = rng.normal(size=(2, batch, kvh, cap, hd)).astype(np.float16)
    seqlens = np.array([0, cap - 1, 517], np.int32)[:batch]
    part_o = cp.zeros((batch, kvh * group, nsplit, hd), cp.float32)
    part_ml = cp.zeros((batch, kvh * group, nsplit, 2), cp.float32)
    out = cp.zeros((batch, kvh * group * hd), cp.float32)
    counter = cp.zeros((batch, kvh * group), cp.int32)
    want = R.attn_combine(*attention_twin(version, hd)(q, kc, vc, seqlens, hd ** -0.5, chunk, nsplit), seqlens,
                          chunk)
    for _ in range(2):                                   # the split counter resets itself: a second launch agrees
        out[...] = 0
        launch_attention(kern, cp.asarray(q), cp.asarray(kc), cp.asarray(vc), cp.asarray(seqlens), part_o, part_ml,
                         out, hd ** -0.5, counter, version)
        _close(out.get(), want, 1e-4)
        assert not counter.any()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A Qwen2-like tiny decoder (GQA group 7, head size 64, q/k/v bias): fp16 (float32 head) and int4 files."""
    cfg = {"vocab_size": 512, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
           "num_attention_heads": 14, "num_key_value_heads": 2, "head_dim": 64, "rms_norm_eps": 1e-6,
           "rope_theta": 1e6, "max_position_embeddings": 1024}
    spec = DecoderSpec.from_config(cfg, qkv_bias=True)
    state = random_state(spec, seed=5, std=0.08)
    tmp = tmp_path_factory.mktemp("engine_gpu")
    save_model(build_decoder(spec, state, "float16", "float32"), tmp / "fp16.onnx")
    build_variant(spec, state, "int4", tmp / "int4.onnx")
    return tmp, spec.to_json()


@pytest.mark.parametrize("gemv,attention", [("auto", "v2"), ("v3", "v2"), ("v2", "v2"), ("v1", "v2"), ("v2", "v1")])
@pytest.mark.parametrize("name", ["fp16", "int4"])
def test_engine_on_the_gpu_matches_its_twins(tiny, name, gemv, attention):
    tmp, spec = tiny
    prompts = [list(range(3, 303)), [7, 8, 9], list(range(100, 140)), [5] * 20, list(range(200, 330))]
    # 300 tokens: three attention splits of 128; five rows: four weight rows a warp
    cfg = GenerationConfig(max_new_tokens=24)
    gpu = KernelEngine(tmp / f"{name}.onnx", spec, device="gpu", max_length=400, prefill="kernels", gemv=gemv,
                       attention=attention)
    cpu = KernelEngine(tmp / f"{name}.onnx", spec, device="cpu", max_length=400, attention=attention)
    eager = KernelEngine(tmp / f"{name}.onnx", spec, device="gpu", max_length=400, cuda_graph=False,
                         prefill="kernels", gemv=gemv, attention=attention)
    want = generate(cpu, prompts, cfg, 0)
    got = generate(gpu, prompts, cfg, 0)
    eager.chosen = gpu.chosen                                          # auto: the plans the first engine timed
    assert got == generate(eager, prompts, cfg, 0)                    # the CUDA graph replays the eager step
    assert gpu.rows_per_warp(len(prompts)) == 4 and gpu.rows_per_warp(1) == 2
    same = sum(a == b for g, w in zip(got, want) for a, b in zip(g, w)) / sum(len(w) for w in want)
    assert same >= 0.9, f"GPU kernels vs CPU twins: {same:.1%} of greedy tokens agree"
    # teacher-forced logits of a few steps
    for dec in (gpu, cpu):
        dec.start(len(prompts))
        dec.append(prompts, np.zeros(len(prompts), np.int64), 8)
    for j in range(6):
        for dec in (gpu, cpu):
            advance(dec, np.array([j + 1, 2 * j + 5, 40 - j, 7, 99 - j], np.int64))
        a, b = gpu.host(gpu.step(None)[0]), cpu.step(None)[0]
        _close(a, b, 2e-2)


@pytest.mark.parametrize("gemv", ["v3", "v2"])
@pytest.mark.parametrize("name", ["fp16", "int4"])
def test_programmatic_dependent_launch_changes_no_bit(tiny, name, gemv):
    """pdl=True (the default from sm_90): the same kernels in the same order, each allowed to start while the
    previous one ends -> the same logits bit for bit as plain stream order, in the CUDA graph and eagerly; and
    pipeline=True (each kernel launched one whole kernel ahead, prefetching all its weights) likewise."""
    from paddle2ort.runtime.kernels import pdl
    if not pdl.supported(cp):
        pytest.skip("programmatic dependent launch needs compute capability 9.0+")
    tmp, spec = tiny
    prompts = [list(range(3, 303)), [7, 8, 9], list(range(100, 140))]
    outs = []
    for kw in ({"pdl": True}, {"pdl": False}, {"pdl": True, "cuda_graph": False}, {"pdl": True, "pipeline": True},
               {"pdl": True, "pipeline": True, "cuda_graph": False}):
        dec = KernelEngine(tmp / f"{name}.onnx", spec, device="gpu", max_length=400, prefill="kernels", gemv=gemv,
                           **kw)
        assert dec.pdl is kw["pdl"] and dec.pipeline is kw.get("pipeline", False)
        dec.start(len(prompts))
        dec.append(prompts, np.zeros(len(prompts), np.int64), 8)
        steps = []
        for j in range(8):
            advance(dec, np.array([j + 1, 2 * j + 5, 40 - j], np.int64))
            steps.append(dec.host(dec.step(None)[0]).copy())
        outs.append(np.stack(steps))
        dec.release()
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_prompt_pass_by_the_fused_graph_fills_our_cache(tiny):
    """prefill="onnxruntime": the fused graph's prompt call writes our cache in place; the tokens follow ours up to
    a near tie of ours (the prompt passes' float16 sums differ by rounding, which moves with the GPU's kernels)."""
    from paddle2ort.runtime.session import gpu_available
    if not gpu_available():
        pytest.skip("needs onnxruntime's CUDA provider")
    tmp, spec = tiny
    prompts = [list(range(3, 203)), [7, 8, 9]]
    cfg = GenerationConfig(max_new_tokens=16)
    ort = KernelEngine(tmp / "fp16.onnx", spec, device="gpu", max_length=300, prefill="onnxruntime")
    ours = KernelEngine(tmp / "fp16.onnx", spec, device="gpu", max_length=300, prefill="kernels")
    assert ort.prefill_by == "onnxruntime fused graph" and ort.prompt_hidden     # cut before the LM head
    got, want = generate(ort, prompts, cfg, 0), generate(ours, prompts, cfg, 0)
    logits = stepped_logits(ours, prompts, want)          # our prompt pass's margins on its own path
    eps = 2e-2 * max(float(np.ptp(lg)) for lg in logits)  # float16 prompt passes in other kernels (_close's 2e-2)
    assert not clear_divergences(got, want, [path_margins(lg, row, eps) for lg, row in zip(logits, want)], eps)


def test_captured_prompt_pass_matches_the_plain_one(tiny):
    """prompt_graphs (the default): the prompt pass right-padded to its length bucket and replayed as a CUDA graph gives the
    plain prompt pass's last logits (other GEMM shapes: within float16 rounding), for one row and for a batch of
    unequal rows, in two buckets of one engine, and the same bits on every replay."""
    from paddle2ort.runtime.kernels.engine import prompt_bucket
    from paddle2ort.runtime.session import gpu_available
    if not gpu_available():
        pytest.skip("needs onnxruntime's CUDA provider")
    tmp, spec = tiny
    plain = KernelEngine(tmp / "fp16.onnx", spec, device="gpu", max_length=300, prefill="onnxruntime",
                         prompt_graphs=False)
    graphed = KernelEngine(tmp / "fp16.onnx", spec, device="gpu", max_length=300, prefill="onnxruntime")
    assert graphed.prompt_graphs and not plain.prompt_graphs
    assert prompt_bucket(10, 300) == 16 and prompt_bucket(100, 300) == 128 and prompt_bucket(600, 4096) is None
    for prompts in ([list(range(5, 15))], [list(range(3, 103))], [list(range(5, 15)), list(range(40, 140))]):
        outs = []
        for dec in [plain] + [graphed] * 4:           # onnxruntime warms up, captures, then replays
            dec.start(len(prompts))
            logits, rows = dec.append(prompts, np.zeros(len(prompts), np.int64), 8)
            outs.append(dec.host(logits).astype(np.float32))
        _close(outs[1], outs[0], 2e-2)
        assert all(np.array_equal(outs[-1], o) for o in outs[2:]), "replays of the captured prompt pass differ"
    assert set(graphed.states[1].prompts) == {16, 128} and set(graphed.states[2].prompts) == {128}
    plain.release()
    graphed.release()


@pytest.mark.parametrize("name", ["fp16", "int4"])
def test_persistent_step_matches_the_kernel_a_phase_step(tiny, name):
    """step="persistent" (every layer in one kernel, grid barriers) against step="kernels" with the same v3 GEMVs:
    teacher-forced logits within 2e-3 of the range (the split-K sums add in another order), greedy tokens the same
    up to a near tie of the kernel-a-phase step; the persistent step eager, in its CUDA graph and run twice the same
    bits (its sums have a fixed order)."""
    tmp, spec = tiny
    prompts = [list(range(3, 303)), [7, 8, 9], list(range(100, 140)), [5] * 20, list(range(200, 330))]
    mk = lambda **kw: KernelEngine(tmp / f"{name}.onnx", spec, device="gpu", max_length=400,  # noqa: E731
                                   prefill="kernels", gemv="v3", **kw)
    ref, ours = mk(step="kernels"), mk(step="persistent")
    runs = []
    for dec in (ref, ours, mk(step="persistent", cuda_graph=False), mk(step="persistent")):
        dec.start(len(prompts))
        dec.append(prompts, np.zeros(len(prompts), np.int64), 8)
        steps = []
        for j in range(6):
            advance(dec, np.array([j + 1, 2 * j + 5, 40 - j, 7, 99 - j], np.int64))
            steps.append(dec.host(dec.step(None)[0]).copy())
        assert (dec.states[len(prompts)].step is not None) == (dec is not ref)
        runs.append(np.stack(steps))
        dec.release()
    _close(runs[1], runs[0], 2e-3)
    assert np.array_equal(runs[1], runs[2]) and np.array_equal(runs[1], runs[3])
    cfg = GenerationConfig(max_new_tokens=24)
    want, got = generate(ref, prompts, cfg, 0), generate(ours, prompts, cfg, 0)
    logits = stepped_logits(ref, prompts, want)           # the kernel-a-phase step's margins on its own path
    eps = 2e-3 * max(float(np.ptp(lg)) for lg in logits)  # what the two steps' logits may part by (above)
    assert not clear_divergences(got, want, [path_margins(lg, row, eps) for lg, row in zip(logits, want)], eps)
