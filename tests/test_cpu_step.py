"""The compiled CPU step (runtime/kernels/cpu_step.c through kernels/cpu.py) against its NumPy twin (the engine's
twins with int8 products quantizing their input, engine_reference.quantize_a8) and against the onnxruntime fused
graph, on tiny random LLaMA/Qwen2-family decoders: FP32 and weight-only int8 (blocks of 32 and 64, integer zero
points), q/k/v bias, GQA groups 1-4, heads of 32 and 64, rows at different positions, 1-3 threads, and every ISA
path this host can run (native, x86-64-v3 = AVX2 without VNNI, x86-64 = scalar). Skipped without a C compiler, as the
engine then is."""
import platform

import numpy as np
import pytest

from paddle2ort.convert.llm.fused import DecoderSpec, build_decoder, build_variant, random_state, save_model
from paddle2ort.runtime.errors import BadInputError, DeviceError
from paddle2ort.runtime.fused import FusedDecoder
from paddle2ort.runtime.kernels import cpu
from paddle2ort.runtime.kernels import engine_reference as R
from paddle2ort.runtime.kernels.engine import KernelEngine, open_decoder
from paddle2ort.runtime.session import SessionOptions

from test_engine import _teacher_forced

pytestmark = pytest.mark.unit

try:
    cpu.load()
except DeviceError as e:                                     # no compiler: the engine falls back, nothing to test
    pytest.skip(f"the compiled CPU step does not build here: {e}", allow_module_level=True)

# hidden 256 and FFN 384: 8 and 12 blocks of 32 a row, so the 8-at-a-time scale pass and its scalar tail both run
CFG = {"vocab_size": 120, "hidden_size": 256, "intermediate_size": 384, "num_hidden_layers": 2,
       "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 32, "rms_norm_eps": 1e-5,
       "rope_theta": 10000.0, "max_position_embeddings": 128}
PROMPTS = [[5, 9, 14, 3, 77, 20, 31], [8, 1], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53]]


def _build(tmp, precision: str, bias: bool, kv_heads: int, block: int = 32, head_dim: int = 32):
    cfg = {**CFG, "num_key_value_heads": kv_heads, "head_dim": head_dim,
           "num_attention_heads": CFG["hidden_size"] // head_dim}
    spec = DecoderSpec.from_config(cfg, qkv_bias=bias)
    state = random_state(spec, seed=5, std=0.08)
    path = tmp / f"{precision}-{bias}-{kv_heads}-{block}-{head_dim}.onnx"
    if precision == "fp32":
        save_model(build_decoder(spec, state, "float32"), path)
    else:
        build_variant(spec, state, precision, path, block_size=block, accuracy_level=None, compute_dtype="float32")
    return path, spec.to_json()


# (precision, q/k/v bias, kv heads[, block, head size]): GQA groups 1, 2 and 4; a head of 64 takes the attention's
# register-blocked path, 32 its general one
KEYS = [("fp32", True, 4), ("fp32", False, 8), ("int8", True, 4), ("int8", False, 8), ("int8", True, 2, 64),
        ("fp32", True, 2, 32, 64), ("int8", False, 1, 32, 64)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cpu_step")
    return {k: _build(tmp, *k) for k in KEYS + [("int4", False, 4)]}


def _ids(j: int, rows: int) -> list[int]:
    return [(7 * j + 3 * b) % 110 + 1 for b in range(rows)]


def _prefilled(path, spec, **kw) -> KernelEngine:
    """An engine after our own prompt pass (NumPy, the same for every engine compared) on PROMPTS."""
    eng = KernelEngine(path, spec, device="cpu", max_length=48, prefill="kernels", **kw)
    eng.start(len(PROMPTS))
    eng.append(PROMPTS, np.zeros(len(PROMPTS), np.int64), 20)
    return eng


def _errors(got, want) -> np.ndarray:
    return (np.abs(np.asarray(got, np.float64) - want) / np.ptp(want)).reshape(-1)


def _step_pair(ours, twin, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One teacher-forced step of both engines from the same cache (the twin gets ours first): errors of the
    logits and of the cache (the k, v appended) over their ranges, and per row how near the twin's int8 product
    inputs came to a rounding boundary (a8_tie_distance; inf without int8 products)."""
    for e in (ours, twin):
        e.active.ids[:, 0] = _ids(j, len(PROMPTS))
        e.active.seqlens[...] += 1
    twin.active.cache[...] = ours.active.cache
    got = np.array(ours.step(None)[0], np.float32)
    near, quantize = np.full(len(PROMPTS), np.inf), R.quantize_a8

    def recorded(x):
        nonlocal near
        near = np.minimum(near, a8_tie_distance(x))
        return quantize(x)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(R, "quantize_a8", recorded)
        twin._twins(twin.active, a8=True)
    return _errors(got, twin.active.logits), _errors(ours.active.cache, twin.active.cache), near


def a8_tie_distance(x) -> np.ndarray:
    """Per row of x [B, K]: the smallest distance, in units of its block's scale, of an element of x / scale (as
    quantize_a8 computes it) to a .5 rounding boundary: where another summation order may round it the other way."""
    b = np.asarray(x, np.float32).reshape(len(x), -1, R.QK)
    s = np.abs(b).max(-1, keepdims=True) / np.float32(127)
    u = b * np.where(s > 0, np.float32(1) / np.where(s > 0, s, 1), 0).astype(np.float32)
    return np.abs(np.abs(u - np.floor(u)) - 0.5).reshape(len(x), -1).min(-1)


# The near-tie rule of int8 products: both sides quantize inputs that differ in their last bits (another summation
# order, another ISA's or BLAS's), so an input within that of a .5 boundary may round the other way -- one unit of
# its block's scale -- and move its row's later outputs a little (up to ~9e-3 of the range). The two sides' inputs
# part by ~1e-6 of their block's max, times 127 in scale units: the rows that moved had their twin's nearest input
# at most 9.9e-5 of a unit from a boundary (measured on AVX-512 VNNI, AVX2 and scalar paths, 432 row-steps); 3e-4
# leaves room for other hosts' sums. A row-step further from every boundary must agree to float32.
A8_TIE = 3e-4


def _check(errs: list, fmt: str, near: list | None = None) -> None:
    """float32 products: float32 agreement everywhere. int8 products: the typical element still agrees to float32,
    the worst is one rounding flip's effect, and (near: per step, each row's a8_tie_distance) only a row-step whose
    inputs came within A8_TIE of a rounding boundary may part by more than float32 rounding; without `near`, at
    most a quarter of the elements do (the cache: only each row's new position can)."""
    e = np.concatenate([x.reshape(-1) for x in errs])
    assert np.median(e) <= 1e-6, f"median {np.median(e):.1e} of the range"
    assert e.max() <= (1e-5 if fmt == "fp32" else 2e-2), f"worst {e.max():.1e} of the range"
    if near is None:
        assert (e > 1e-5).mean() <= 0.25, f"{(e > 1e-5).mean():.0%} of the elements off by > 1e-5 of the range"
        return
    clear = [(j, r, float(d[r]), float(x.reshape(len(d), -1)[r].max())) for j, (x, d) in enumerate(zip(errs, near))
             for r in range(len(d)) if x.reshape(len(d), -1)[r].max() > 1e-5 and d[r] > A8_TIE]
    assert not clear, f"row-steps off by > 1e-5 of the range with no input near a rounding boundary " \
                      f"(step, row, distance, error): {clear}"


def _compare(path, spec, steps: int = 12, march: str | None = None, **kw) -> None:
    ours, twin = _prefilled(path, spec, **kw), _prefilled(path, spec, native=False)
    if march is not None:
        ours.native = cpu.CpuStep(ours, march=march)
    assert ours.native is not None and twin.native is None
    logits, cache, near = zip(*[_step_pair(ours, twin, j) for j in range(steps)])
    fmt = "fp32" if "fp32" in path.name else "int8"
    _check(list(logits), fmt, list(near))
    _check(list(cache), fmt)


@pytest.mark.parametrize("key", KEYS)
def test_compiled_step_matches_its_twin(models, key):
    _compare(*models[key])


def _host_runs(march: str) -> bool:
    """Whether this host can build and run `march`'s code: an x86-64 CPU, with AVX2, FMA and F16C for x86-64-v3."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    flags = set(cpu._cpu_flags().split())
    return march == "x86-64" or {"avx2", "fma", "f16c"} <= flags


@pytest.mark.parametrize("march", ["x86-64-v3", "x86-64"])
def test_every_isa_path_matches_the_twin(models, march):
    """The AVX2 (int16-widened products, no VNNI) and scalar code paths, where this host runs them."""
    if not _host_runs(march):
        pytest.skip(f"this host does not run {march} code")
    assert cpu.isa(cpu.load(march=march)) == {"x86-64-v3": "avx2", "x86-64": "scalar"}[march]
    for key in (("int8", True, 4), ("fp32", False, 8), ("int8", True, 2, 64), ("fp32", True, 2, 32, 64)):
        _compare(*models[key], march=march)


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_counts_agree(models, threads):
    """Attention splits each row's positions over the threads and merges the partials: any count, same logits."""
    path, spec = models[("int8", True, 4)]
    eng = _prefilled(path, spec)
    eng.native = cpu.CpuStep(eng, threads=threads)
    assert eng.native.threads == threads
    ref, errs = _prefilled(path, spec), []
    for j in range(6):
        for e in (eng, ref):
            e.active.ids[:, 0] = _ids(j, len(PROMPTS))
            e.active.seqlens[...] += 1
        ref.active.cache[...] = eng.active.cache
        got, want = np.array(eng.step(None)[0]), np.array(ref.step(None)[0])
        errs.append(_errors(got, want))
    _check(errs, "int8")


def test_quantize_a8_is_blockwise_round_to_nearest():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 64)).astype(np.float32)
    x[1, :32] = 0                                                    # an all-zero block stays zero
    got = R.quantize_a8(x).reshape(3, 2, 32)
    s = np.abs(x).reshape(3, 2, 32).max(-1, keepdims=True) / 127
    q = got / np.where(s > 0, s, 1)
    np.testing.assert_allclose(q, np.rint(q), atol=1e-3)             # integers times the block's scale
    assert np.abs(q).max() <= 127 + 1e-3 and not got[1, 0].any()
    assert np.abs(got - x.reshape(3, 2, 32)).max() <= s.max() / 2 + 1e-7


def test_fp32_step_matches_the_fused_graph(models):
    """Our prompt pass by onnxruntime (the CPU default with the compiled step), our steps after it: the fused
    graph's logits, teacher-forced."""
    path, spec = models[("fp32", True, 4)]
    eng = KernelEngine(path, spec, device="cpu", max_length=48)
    assert eng.prefill_by == "onnxruntime fused graph" and eng.native is not None
    ort = FusedDecoder(path, spec, SessionOptions(device="cpu"), max_length=48)
    got, want = (_teacher_forced(dec, PROMPTS, 8) for dec in (eng, ort))
    assert np.abs(got - want).max() <= 1e-4 * np.ptp(want)


def test_what_the_compiled_step_refuses(models, monkeypatch):
    path, spec = models[("int4", False, 4)]
    with pytest.raises(BadInputError, match="is q4 .*onnxruntime fused decoder"):
        KernelEngine(path, spec, device="cpu", native=True)
    assert KernelEngine(path, spec, device="cpu").native is None                  # auto: the twins, saying why
    assert isinstance(open_decoder(path, spec, device="cpu"), FusedDecoder)        # users: the fused graph
    path, spec = models[("int8", True, 4)]
    eng = KernelEngine(path, spec, device="cpu", native=False)
    sz = eng.w.layers[1].down.sz                        # a float zero point (MatMulNBits allows them): it reads bytes
    sz[0, 0] = (sz[0, 0] & 0xFFFF) | (int(np.float16(3.5).view(np.uint16)) << 16)
    with pytest.raises(BadInputError, match="layers.1.down has zero points that are not whole numbers"):
        cpu.check_fits(eng)
    eng = _prefilled(path, spec)
    eng.active.ids[0, 0] = spec["vocab_size"]
    with pytest.raises(BadInputError, match="token ids must be in"):
        eng.step(None)
    cpu.load.cache_clear()
    blocked = path.parent / "not-a-folder"
    blocked.write_text("")                                 # the cache folder cannot be made: an error, then fallback
    monkeypatch.setenv("PADDLE2ORT_CACHE", str(blocked))
    try:
        with pytest.raises(DeviceError, match="PADDLE2ORT_CACHE"):
            cpu.load()
        assert not cpu.available()
    finally:
        cpu.load.cache_clear()
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("PADDLE2ORT_CACHE", str(path.parent / "empty-cache"))
    try:
        with pytest.raises(DeviceError, match="fails|does not run"):
            cpu.load()
        assert isinstance(open_decoder(path, spec, device="cpu"), FusedDecoder)    # no compiler: the fused graph
    finally:
        cpu.load.cache_clear()


@pytest.mark.parametrize("key", [("fp32", True, 4), ("int8", False, 8)])
def test_step_bytes_count_what_the_step_reads(models, key):
    """The benchmark's roofline: a step reads its products' weights as the C gets them (int8: the blocks, a float16
    scale and a uint8 zero point each), and each row's keys and values up to its position."""
    path, spec = models[key]
    eng = KernelEngine(path, spec, device="cpu", native=True)
    step, w = eng.native, eng.w
    prods = [p for l in w.layers for p in (l.qkv, l.o, l.gate_up, l.down)] + [w.head]
    want = sum(p.w.nbytes + (p.sz.size * 3 if p.sz is not None else 0) for p in prods)
    small = sum(l.ln1.nbytes + l.ln2.nbytes + (l.bias.nbytes if l.bias is not None else 0) for l in w.layers)
    kv_per_position = eng.num_layers * 2 * eng.kv_heads * eng.head_dim * 4
    assert step.step_bytes([0]) == want + small + 2 * eng.hidden * 4 + kv_per_position
    assert step.step_bytes([9, 3]) - step.step_bytes([0, 0]) == 12 * kv_per_position
    assert cpu.read_bandwidth(1, mib=16, repeats=2) > 0.1                  # GB/s: a pass over 16 MiB took < 0.2 s


def test_batch_size_picks_the_step(models):
    """cpu_step="auto": the compiled step up to NATIVE_ROWS rows, beyond them onnxruntime's fused step bound to the
    engine's own buffers (the prompt pass's graph): then exactly the fused graph's logits."""
    from paddle2ort.runtime.kernels.engine import NATIVE_ROWS
    path, spec = models[("int8", True, 4)]
    prompts = PROMPTS[:NATIVE_ROWS + 1]
    ort = FusedDecoder(path, spec, SessionOptions(device="cpu"), max_length=48)
    for rows, how, chosen in ((1, "auto", "native"), (len(prompts), "auto", "onnxruntime"),
                              (len(prompts), "native", "native"), (1, "onnxruntime", "onnxruntime")):
        eng = KernelEngine(path, spec, device="cpu", max_length=48, cpu_step=how)
        out = [_teacher_forced(dec, prompts[:rows], 4)[1:] for dec in (eng, ort)]     # the steps' logits
        assert eng.active.cpu_step == chosen, (rows, how)
        if chosen == "onnxruntime":
            np.testing.assert_array_equal(out[0], out[1])
        else:                                       # int8 inputs quantized: near, not equal (the twin tests)
            assert np.abs(out[0] - out[1]).max() <= 2e-2 * np.ptp(out[1])
    with pytest.raises(BadInputError, match="cpu_step must be one of"):
        KernelEngine(path, spec, device="cpu", cpu_step="fast")


def test_a_remade_state_is_bound_afresh(models):
    """release() drops a batch size's buffers; the next state of that size has new ones, which the step must
    write (not the freed ones)."""
    path, spec = models[("fp32", True, 4)]
    eng = _prefilled(path, spec)
    first = eng.active
    eng.release()
    eng2 = _prefilled(path, spec)                   # reference: a fresh engine, same prompts
    eng.start(len(PROMPTS))
    eng.append(PROMPTS, np.zeros(len(PROMPTS), np.int64), 20)
    assert eng.active is not first
    for e in (eng, eng2):
        e.active.ids[:, 0] = _ids(0, len(PROMPTS))
        e.active.seqlens[...] += 1
    np.testing.assert_allclose(np.array(eng.step(None)[0]), np.array(eng2.step(None)[0]), rtol=1e-5, atol=1e-5)


def test_the_default_graph_is_the_step_only_for_decoders_it_reads(models):
    """runtime.llm.default_graph reads the manifest's fused options before any weights are loaded: an int4 (or
    float16-compute) fused default stays onnxruntime's graph; a float32 / int8 one runs as "kernels"."""
    from paddle2ort.runtime.llm import default_graph
    llm = {"default_graph": {"cpu": {"fp32": "fused", "int8": "fused", "int4": "fused"}}}
    wo = {"bits": 8, "block_size": 32, "head_bits": 8}
    fused = {"fp32": {"options": {"compute_dtype": "float32"}},
             "int8": {"options": {"compute_dtype": "float32", "weight_only": wo}},
             "int4": {"options": {"compute_dtype": "float32", "weight_only": {**wo, "bits": 4}}}}
    cpu_so = SessionOptions(device="cpu")
    assert [default_graph(llm, p, cpu_so, fused=fused) for p in ("fp32", "int8", "int4")] == \
        ["kernels", "kernels", "fused"]
    assert default_graph(llm, "int8", cpu_so, compiled_step=False, fused=fused) == "fused"
    f16 = {"fp32": {"options": {"compute_dtype": "float16"}}}
    assert default_graph(llm, "fp32", cpu_so, fused=f16) == "fused"
    assert not cpu.reads({"compute_dtype": "float32", "weight_only": {**wo, "block_size": 96}})
