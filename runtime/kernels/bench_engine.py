"""Kernel bench of decode.cu, llm.c dev/cuda style, in three steps (benchmarks/device/engine_gpu.sh runs them in this
order, one device call):

    python -m paddle2ort.runtime.kernels.bench_engine compile  [--jobs N]      # every module, in parallel processes
    python -m paddle2ort.runtime.kernels.bench_engine validate [--json OUT]    # every kernel config vs its twin
    python -m paddle2ort.runtime.kernels.bench_engine time     [--json OUT]    # the engine's plans, timed
    python -m paddle2ort.runtime.kernels.bench_engine attention [--json OUT]   # flash-decoding split size sweep
    python -m paddle2ort.runtime.kernels.bench_engine validate-step [--json OUT]  # the persistent step vs the
                                                                                 # kernel-a-phase step
    python -m paddle2ort.runtime.kernels.bench_engine barrier [--json OUT]     # a grid barrier vs a kernel boundary

`validate` launches every GEMV entry (v1, v2 in each (rows a warp, K-split warps, batch rows a block) shape, v3 in
each K split) at the real models' shapes and the attention kernel, compares each with its NumPy twin
(engine_reference.py; v3's: the a16 twins, integer and float zero points), prints
one line a failure and which GEMV versions passed; exit 1 when anything failed (the JSON says what). `time` times the
plans the engine picks (engine.gemv_plan) of each version inside a CUDA graph; GB/s counts the bytes a kernel must
read (weights, or the K/V of the context) beside the device's measured copy bandwidth.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time

import numpy as np

from . import engine_reference as R
from .bench import copy_bandwidth

log = logging.getLogger(__name__)

GEOMETRY = {  # hidden, heads, kv heads, head size, FFN, vocab (benchmarks/gpu/common.py CONFIGS)
    "qwen2.5-0.5b": (896, 14, 2, 64, 4864, 151936),
    "smollm2-135m": (576, 9, 3, 64, 1536, 49152),
}
TOL, TOL_CACHE = 2e-3, 5e-3      # max |kernel - twin| / max |twin|: float32 outputs; the float16 K/V cache
# geometries the GPU tests compile (tests/test_engine_gpu.py): (head size, group, chunk, formats)
LAYERS, HEADS = ("f16", "q8", "q4"), ("f32", "q8")   # what the bundles hold (fp16: float32 head; int4: int8 head)
TEST_MODULES = [(64, 7, 128, None), (64, 3, 64, ()), (128, 4, 128, ())]


def _packed(fmt: str, n: int, k: int, rng, mixed: bool = True):
    from .engine import Packed, _pair
    if fmt in ("f16", "f32"):
        return Packed(fmt, (rng.standard_normal((n, k), np.float32) * 0.05).astype(
            np.float16 if fmt == "f16" else np.float32), None, n, k)
    kb = k // 32
    scale = rng.uniform(0.002, 0.01, (n, kb)).astype(np.float16)
    w = rng.integers(0, 256, (n, k if fmt == "q8" else k // 2), dtype=np.uint8)
    mid = 128 if fmt == "q8" else 8
    zp = rng.uniform(mid - 2, mid + 2, (n, kb))     # integer zero points (MatMulNBits' uint8) in the 1st and 3rd
    whole = (np.arange(n) * 4 // n) % 2 == 0        # quarters of the rows, float ones in the others (v3: both
    whole |= not mixed                              # decode paths, whole warp tasks of each); timing: integer ones
    zp = np.where(whole[:, None], np.rint(zp), zp).astype(np.float16)
    return Packed(fmt, w, _pair(scale, zp, n, kb, 8 if fmt == "q8" else 4), n, k, 32)


def time_graph(cp, fn, launches: int = 20, reps: int = 20) -> float:
    """Microseconds of GPU time per launch: `launches` launches captured in one CUDA graph, replayed `reps` times
    (Python's launch cost, larger than these kernels, is out of the figure, as in the engine's captured step)."""
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        fn()
        stream.begin_capture()
        for _ in range(launches):
            fn()
        graph = stream.end_capture()
        graph.launch(stream)
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record(stream)
        for _ in range(reps):
            graph.launch(stream)
        end.record(stream)
        end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) / (launches * reps) * 1e3


def rel_err(got, want) -> float:
    """Largest |got - want| over the largest |want| (float32): how validations judge a kernel against its twin."""
    return float(np.abs(np.asarray(got, np.float32) - np.asarray(want, np.float32)).max()
                 / max(float(np.abs(np.asarray(want, np.float32)).max()), 1e-6))


# ----------------------------------------------------------------------------- compile
def module_list(configs) -> list[tuple[str, ...]]:
    """Every decode.cu module the validation, the timing, the GPU tests and the engine on these configs compile."""
    from .engine import attention_chunk, module_options
    mods = []
    for cfg in configs:
        h, nh, kvh, hd, inter, vocab = GEOMETRY[cfg]
        mods += module_options(hd, nh // kvh, attention_chunk({"num_heads": nh, "kv_heads": kvh, "head_dim": hd}))
    for hd, g, chunk, fmts in TEST_MODULES:
        mods += module_options(hd, g, chunk, *([] if fmts is None else [fmts]))
    return list(dict.fromkeys(mods))


def _compile_one(opts: tuple[str, ...]) -> tuple[tuple[str, ...], float, str | None]:
    from .engine import compiled
    t = time.perf_counter()
    try:
        compiled(opts)
        return opts, time.perf_counter() - t, None
    except Exception as e:  # noqa: BLE001 - reported with the module's options
        return opts, time.perf_counter() - t, f"{type(e).__name__}: {e}"[-3000:]


def compile_all(configs, jobs: int) -> int:
    """NVRTC is single-threaded: one process a module fills CuPy's disk cache, which every later step reads."""
    import multiprocessing as mp
    mods = module_list(configs)
    t = time.perf_counter()
    with mp.get_context("spawn").Pool(min(jobs, len(mods))) as pool:
        results = pool.map(_compile_one, mods)
    bad = 0
    for opts, secs, err in results:
        print(f"{'FAILED' if err else 'ok':6s} {secs:6.1f} s  decode.cu {' '.join(opts)}" + (f"\n{err}" if err else ""))
        bad += err is not None
    print(f"{len(mods)} modules in {time.perf_counter() - t:.1f} s, {bad} failed")
    return 1 if bad else 0


# ----------------------------------------------------------------------------- validate
def _cases(cfg: str, rng, mixed: bool = True):
    """(mode, label, Packed, gamma?) of one config's products; each format."""
    h, nh, kvh, hd, inter, vocab = GEOMETRY[cfg]
    for fmt in ("f16", "f32", "q8", "q4"):
        yield fmt, "qkv", "norm+qkv+rope", _packed(fmt, (nh + 2 * kvh) * hd, h, rng, mixed)
        yield fmt, "resid", "o+residual", _packed(fmt, h, nh * hd, rng, mixed)
        yield fmt, "swiglu", "norm+gate|up+swiglu", _packed(fmt, 2 * inter, h, rng, mixed)
        yield fmt, "resid", "down+residual", _packed(fmt, h, inter, rng, mixed)
        yield fmt, "logits", "norm+lm_head", _packed(fmt, vocab, h, rng, mixed)


def _all_plans(p, mode: str, hd: int):
    from .engine import V2_SHAPES, V3_SPLITS, V3S_MODES, V3S_SLICES, V3S_SPLITS, Plan, v3_fits
    plans = [Plan(f"gemv_{mode}_{p.fmt}", 2)]
    if p.n % 4 == 0:
        plans.append(Plan(f"gemv_{mode}_{p.fmt}_r4", 4))
    for r, ks, nb in V2_SHAPES:
        if p.n % r == 0 and (mode != "qkv" or (hd // 2) % (r // 2) == 0):
            plans.append(Plan(f"gemv2_{mode}_{p.fmt}_r{r}_k{ks}_b{nb}", r, ks, nb))
    if v3_fits(p, mode, hd):
        plans += [Plan(f"gemv3_{mode}_{p.fmt}_k{ks}", 16, ks, 8) for ks in V3_SPLITS]
        if mode in V3S_MODES:
            plans += [Plan(f"gemv3s_{mode}_{p.fmt}_k{ks}", 16, ks, 8, ksl) for ks in V3S_SPLITS
                      for ksl in (*V3S_SLICES, 3)]          # 3: slices of unequal length
    return plans


def _dense(p) -> dict:
    """The twins' weights: float32 (v1, v2) and float16-rounded (v3: a16 twins)."""
    return {False: p.dense(), True: p.dense(np, np.float16).astype(np.float32)}


def _runner(cp, kern, mode: str, p, pd, dense: dict, x, gamma, b: int, cfg: str, rng):
    """-> (launch(plan), device outputs(), {a16: twin outputs} (a16: the v3 twins), tolerances, reset())."""
    from .engine import Plan, split_scratch
    from .engine import launch_gemv as _launch
    h, nh, kvh, hd, inter, vocab = GEOMETRY[cfg]
    xd, gd = cp.asarray(x), cp.asarray(gamma)
    scratch = split_scratch(cp, [(p, Plan("any", 16, 1, 8, 4))], b)     # room for 16-row tasks in 4 slices
    launch_gemv = functools.partial(_launch, scratch=scratch)
    if mode == "qkv":
        cap = 64
        ang = rng.uniform(0, 6, (cap, hd // 2)).astype(np.float32)
        pos = rng.integers(0, cap, b).astype(np.int32)
        bias = (rng.standard_normal(p.n) * 0.1).astype(np.float16)
        want = {}
        for a16, dw in dense.items():
            q, kc, vc = np.zeros((b, nh * hd), np.float32), *np.zeros((2, b, kvh, cap, hd), np.float16)
            R.gemv_qkv(dw, x, gamma, 1e-6, bias, q, kc, vc, np.cos(ang), np.sin(ang), pos, nh, kvh, a16)
            want[a16] = [q, kc, vc]
        qd, kcd, vcd = cp.zeros(q.shape, cp.float32), cp.zeros(kc.shape, cp.float16), cp.zeros(vc.shape, cp.float16)
        args = dict(bias=cp.asarray(bias), kc=kcd, vc=vcd, cos=cp.asarray(np.cos(ang)), sin=cp.asarray(np.sin(ang)),
                    seqlens=cp.asarray(pos), nh=nh, kvh=kvh, cap=cap)

        def launch(plan):
            launch_gemv(kern, "qkv", pd, xd, gd, 1e-6, b, qd, plan=plan, **args)
        return launch, lambda: [qd.get(), kcd.get(), vcd.get()], want, [TOL, TOL_CACHE, TOL_CACHE], \
            lambda: (qd.fill(0), kcd.fill(0), vcd.fill(0))
    if mode == "resid":
        base = rng.standard_normal((b, p.n)).astype(np.float32)
        want = {a16: base.copy() for a16 in dense}
        for a16, dw in dense.items():
            R.gemv_resid(dw, x, want[a16], a16)
        od = cp.zeros(base.shape, cp.float32)             # reset() copies base in before each launch
        return (lambda plan: launch_gemv(kern, "resid", pd, xd, None, 1e-6, b, od, ldo=p.n, plan=plan),
                lambda: [od.get()], {a: [w] for a, w in want.items()}, [TOL], lambda: od.set(base))
    if mode == "swiglu":
        od = cp.zeros((b, p.n // 2), cp.float32)
        return (lambda plan: launch_gemv(kern, "swiglu", pd, xd, gd, 1e-6, b, od, inter=p.n // 2, plan=plan),
                lambda: [od.get()], {a: [R.gemv_swiglu(dw, x, gamma, 1e-6, p.n // 2, a)] for a, dw in dense.items()},
                [TOL], lambda: od.fill(0))
    od = cp.zeros((b, p.n), cp.float32)
    return (lambda plan: launch_gemv(kern, "logits", pd, xd, gd, 1e-6, b, od, ldo=p.n, plan=plan),
            lambda: [od.get()], {a: [R.gemv_logits(dw, x, gamma, 1e-6, a)] for a, dw in dense.items()}, [TOL],
            lambda: od.fill(0))


def validate(configs, batches, versions=("v3", "v2", "v1")) -> dict:
    """Every GEMV entry of these versions (every shape) and the attention kernel against their twins. Run one
    version a process (engine_gpu.sh does): a kernel that faults leaves CUDA's context unusable for what follows."""
    import cupy as cp

    from .engine import (ATTENTION_KERNEL, ATTENTION_VERSIONS, GEMV_VERSIONS, attention_chunk, attention_twin,
                         attention_versions, kernels, launch_attention)
    rng = np.random.default_rng(0)
    checks, failures = 0, []
    for cfg in configs:
        h, nh, kvh, hd, inter, vocab = GEOMETRY[cfg]
        chunk = attention_chunk({"num_heads": nh, "kv_heads": kvh, "head_dim": hd})
        kern = kernels(hd, nh // kvh, chunk)
        for fmt, mode, label, p in _cases(cfg, rng):
            pd, dense = p.to(cp), _dense(p)
            for b in batches:
                x = rng.standard_normal((b, p.k)).astype(np.float32)
                gamma = rng.uniform(0.5, 1.5, p.k).astype(np.float16)
                launch, got, want, tols, reset = _runner(cp, kern, mode, p, pd, dense, x, gamma, b, cfg, rng)
                for plan in _all_plans(p, mode, hd):
                    if plan.version not in versions:
                        continue
                    reset()
                    checks += 1
                    try:
                        launch(plan)
                        errs = [rel_err(g, w) for g, w in zip(got(), want[plan.version == "v3"])]
                    except Exception as e:  # noqa: BLE001 - a launch error is a failure of that kernel
                        errs = [float("inf")]
                        log.error("%s %s b%d %s: %s", cfg, label, b, plan.name, e)
                    if any(not (e <= t) for e, t in zip(errs, tols)):
                        failures.append({"config": cfg, "kernel": label, "batch": b, "entry": plan.name,
                                         "version": plan.version,
                                         "max_rel_err": errs})
                        print(f"FAILED {cfg} {label} {fmt} b{b} {plan.name}: max rel err {errs}")
            del pd, dense
        for b in batches:                                   # split-K flash-decoding, short and long contexts
            for ctx in (1, 129, 2304):
                cap = 2304
                nsplit = -(-cap // chunk)
                q = rng.standard_normal((b, nh * hd), np.float32)
                kc, vc = rng.standard_normal((2, b, kvh, cap, hd), np.float32).astype(np.float16)
                seq = np.minimum(np.arange(b) * 97 + ctx - 1, cap - 1).astype(np.int32)
                want = R.attn_combine(*R.attn_split(q, kc, vc, seq, hd ** -0.5, chunk, nsplit), seq, chunk)
                for av in attention_versions(nh // kvh, hd, chunk):
                    od, cnt = cp.zeros((b, nh * hd), cp.float32), cp.zeros((b, nh), cp.int32)
                    checks += 1
                    launch_attention(kern, cp.asarray(q), cp.asarray(kc), cp.asarray(vc), cp.asarray(seq),
                                     cp.zeros((b, nh, nsplit, hd), cp.float32),
                                     cp.zeros((b, nh, nsplit, 2), cp.float32), od, hd ** -0.5, cnt, av)
                    got = od.get()
                    err = max(rel_err(got, want), rel_err(got, R.attn_combine(*attention_twin(av, hd)(
                        q, kc, vc, seq, hd ** -0.5, chunk, nsplit), seq, chunk)) if ctx < 200 else 0.0)
                    if not err <= 1e-3 or cnt.any():
                        failures.append({"config": cfg, "kernel": f"attention ctx {ctx}", "batch": b,
                                         "entry": ATTENTION_KERNEL[av], "version": f"attention {av}",
                                         "max_rel_err": [err]})
                        print(f"FAILED {cfg} attention {av} ctx {ctx} b{b}: max rel err {err:.2e}, counter left "
                              f"{cnt.any()}")
    bad = {f["version"] for f in failures}
    passed = [v for v in GEMV_VERSIONS if v in versions and v not in bad]
    att = [v for v in ATTENTION_VERSIONS if f"attention {v}" not in bad]
    print(f"validated {checks} kernel configs: {len(failures)} failed; GEMV versions that pass everywhere: "
          f"{' '.join(passed) or 'none'}; attention versions: {' '.join(att) or 'none'}")
    return {"checks": checks, "failures": failures, "versions": list(versions), "passed_versions": passed,
            "passed_attention": att, "tolerance": TOL}


def random_weights(cfg: str, fmt: str, layers: int, rng, vocab: int = 1024, max_positions: int = 4096):
    """(spec, host Weights) of a decoder at a real geometry's layer shapes (`layers` layers, a small vocabulary:
    the LM head is the same kernel in both steps), every product in `fmt` with integer and float zero points."""
    from .engine import Layer, Weights
    h, nh, kvh, hd, inter, _ = GEOMETRY[cfg]
    f16 = lambda *shape: rng.uniform(0.5, 1.5, shape).astype(np.float16)  # noqa: E731
    ls = [Layer(ln1=f16(h), ln2=f16(h), qkv=_packed(fmt, (nh + 2 * kvh) * hd, h, rng),
                bias=(rng.standard_normal((nh + 2 * kvh) * hd) * 0.1).astype(np.float16),
                o=_packed(fmt, h, nh * hd, rng), gate_up=_packed(fmt, 2 * inter, h, rng),
                down=_packed(fmt, h, inter, rng)) for _ in range(layers)]
    ang = np.arange(max_positions)[:, None] * 1e4 ** (-np.arange(hd // 2) / (hd // 2))
    w = Weights(embed=(rng.standard_normal((vocab, h)) * 0.5).astype(np.float16), cos=np.cos(ang).astype(np.float32),
                sin=np.sin(ang).astype(np.float32), layers=ls, norm=f16(h), head=_packed("f16", vocab, h, rng))
    spec = {"num_layers": layers, "num_heads": nh, "kv_heads": kvh, "head_dim": hd, "hidden_size": h,
            "intermediate_size": inter, "vocab_size": vocab, "norm_eps": 1e-6, "max_positions": max_positions}
    return spec, w


def validate_step(configs, batches, fmts=("f16", "q8", "q4"), layers: int = 3, steps: int = 4) -> dict:
    """The persistent step (one kernel, grid barriers) against the kernel-a-phase step with the same v3 GEMVs, from
    the same prompt pass: the logits and the K/V cache of a few teacher-forced steps, batch 1/3/8, contexts that
    take one and several attention splits; plus the persistent step replayed twice gives the same bits (its
    split-K sums have a fixed order)."""
    from ..generation import advance
    from .engine import KernelEngine
    rng = np.random.default_rng(1)
    checks, failures, splits = 0, [], {}
    for cfg in configs:
        for fmt in fmts:
            spec, w = random_weights(cfg, fmt, layers, rng)
            for b in batches:
                lens = [300, 5, 140, 77, 1, 260, 33, 129][:b]
                prompts = [list(rng.integers(0, spec["vocab_size"], n)) for n in lens]
                ids = rng.integers(0, spec["vocab_size"], (steps, b))          # teacher-forced, the same for all
                outs = {}
                for name, kw in (("persistent", {"step": "persistent"}), ("kernels", {"step": "kernels"}),
                                 ("again", {"step": "persistent"})):
                    label = f"{cfg} {fmt} b{b} {name}"
                    checks += 1
                    try:
                        dec = KernelEngine("-", spec, device="gpu", max_length=512, weights=w, prefill="kernels",
                                           gemv="v3", **kw)
                        dec.start(b)
                        dec.append(prompts, np.zeros(b, np.int64), steps + 1)
                        got = []
                        for j in range(steps):
                            advance(dec, ids[j])       # on the engine's stream (advance's own)
                            got.append(dec.host(dec.step(None)[0]).copy())
                        st = dec.states[b]
                        if name != "kernels" and st.step is None:
                            raise RuntimeError("the engine did not run the persistent step")
                        if st.step is not None:
                            splits[f"{cfg} {fmt} b{b}"] = st.step.splits
                        outs[name] = (np.stack(got), dec.host(st.cache).astype(np.float32))
                        dec.release()
                    except Exception as e:  # noqa: BLE001 - a launch error is a failure of the persistent step
                        log.error("%s: %s", label, e)
                        failures.append({"case": label, "error": f"{type(e).__name__}: {e}"})
                        print(f"FAILED {label}: {type(e).__name__}: {e}")
                        break
                else:
                    (lp, cp_), (lk, ck), (la, ca) = outs["persistent"], outs["kernels"], outs["again"]
                    errs = {"logits": rel_err(lp, lk), "cache": rel_err(cp_, ck)}
                    same = bool(np.array_equal(lp, la) and np.array_equal(cp_, ca))
                    if not (errs["logits"] <= TOL and errs["cache"] <= TOL_CACHE and same):
                        failures.append({"case": f"{cfg} {fmt} b{b}", "max_rel_err": errs, "deterministic": same})
                        print(f"FAILED {cfg} {fmt} b{b}: persistent vs kernels {errs}, deterministic {same}")
    print(f"validated the persistent step in {checks} runs: {len(failures)} failed")
    return {"checks": checks, "failures": failures, "passed": not failures, "tolerance": TOL,
            "tolerance_cache": TOL_CACHE, "splits": splits}


def barrier_bench(phases: int = 120, sizes_mb=(0.0, 0.8, 4.0)) -> dict:
    """What a phase boundary costs: `phases` rounds of a phase's least work (decode.cu probe_round: every thread
    reads its share of a weight of `mb` MB) in one persistent kernel with the persistent step's grid_sync
    (barrier_probe, one block an SM) against the same round as a kernel launched `phases` times back to back in a
    CUDA graph (phase_probe; plain and with programmatic dependent launch, the kernel-a-phase step's launches).
    -> microseconds a round of each."""
    import cupy as cp

    from . import pdl as P
    from .engine import compiled
    from .persistent import WARPS, options
    mod = compiled(options(64, 7, 128, "f16", {"qkv": 8, "o": 8, "gate_up": 2, "down": 8}))
    blocks = int(cp.cuda.Device().attributes["MultiProcessorCount"])
    probe = P.PdlKernel(mod.get_function("barrier_probe"), cp, pdl=False, cooperative=True)
    phase = mod.get_function("phase_probe")
    chained = P.PdlKernel(phase, cp) if P.supported(cp) else None
    x, bar, i32 = cp.zeros(2048, cp.float32), cp.zeros(1, cp.uint32), np.int32
    rows = []
    for mb in sizes_mb:
        n = max(1, int(mb * 2 ** 20 / 4))
        w = cp.ones(n, cp.float32)
        grid, block = (blocks,), (WARPS * 32,)
        row = {"weight_mb": mb, "phases": phases, "blocks": blocks,
               "grid_barrier_us": time_graph(cp, lambda: probe(grid, block, (x, w, i32(n), bar, i32(phases))), 2,
                                             10) / phases,
               "kernel_us": time_graph(cp, lambda: [phase(grid, block, (x, w, i32(n))) for _ in range(phases)], 2,
                                       10) / phases}
        if chained is not None:
            row["kernel_pdl_us"] = time_graph(cp, lambda: [chained(grid, block, (x, w, i32(n))) for _ in
                                                           range(phases)], 2, 10) / phases
        rows.append(row)
        print(f"{mb:4.1f} MB a round: grid barrier {row['grid_barrier_us']:.2f} us, kernel {row['kernel_us']:.2f} us"
              + (f", kernel with PDL {row['kernel_pdl_us']:.2f} us" if "kernel_pdl_us" in row else ""))
    return {"device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "rows": rows}


# ----------------------------------------------------------------------------- time
def run(configs=("qwen2.5-0.5b", "smollm2-135m"), batches=(1, 8), versions=("v3", "v2", "v1")) -> dict:
    import cupy as cp

    from .engine import (ATTENTION_KERNEL, attention_chunk, attention_versions, auto_plans, gemv_plan, kernels,
                         launch_attention, pick_fastest)
    bw = copy_bandwidth(cp)
    name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    rows = []
    print(f"{name}: device copy bandwidth {bw / 1e9:.0f} GB/s (read + write)")
    print(f"{'config':13s} {'kernel':24s} {'B':>2s} {'ver':3s} {'us':>7s} {'GB/s':>6s} {'% copy':>6s}  "
          f"{'rel err':7s}  entry")
    rng = np.random.default_rng(0)
    for cfg in configs:
        h, nh, kvh, hd, inter, vocab = GEOMETRY[cfg]
        chunk = attention_chunk({"num_heads": nh, "kv_heads": kvh, "head_dim": hd})
        kern = kernels(hd, nh // kvh, chunk)

        def record(kernel, b, version, entry, nbytes, fn, err):
            us = time_graph(cp, fn)
            gbs = nbytes / (us / 1e6) / 1e9
            print(f"{cfg:13s} {kernel:24s} {b:2d} {version:3s} {us:7.1f} {gbs:6.0f} {100 * gbs * 1e9 / bw:5.1f}%  "
                  f"{err:.1e}  {entry}")
            rows.append({"config": cfg, "kernel": kernel, "batch": b, "version": version, "entry": entry, "us": us,
                         "bytes": nbytes, "gb_per_s": gbs, "pct_copy_bw": 100 * gbs * 1e9 / bw,
                         "max_rel_err_vs_twin": err})

        for fmt, mode, label, p in _cases(cfg, rng, mixed=False):
            if fmt not in (HEADS if mode == "logits" else LAYERS):
                continue          # the bundles' products: f16 / q8 / q4 layers; f32 (fp16 bundle) / q8 (int4) head
            pd, dense = p.to(cp), _dense(p)
            for b in batches:
                x = rng.standard_normal((b, p.k)).astype(np.float32)
                gamma = rng.uniform(0.5, 1.5, p.k).astype(np.float16)
                launch, got, want, tols, reset = _runner(cp, kern, mode, p, pd, dense, x, gamma, b, cfg, rng)
                for v in versions:
                    plan = gemv_plan(p, mode, b, v, hd, 4 if b >= 4 else 2)
                    reset()
                    launch(plan)
                    err = rel_err(got()[0], want[plan.version == "v3"][0])
                    record(f"{label} {fmt}", b, v, plan.name, p.nbytes, lambda: launch(plan), err)
                if "v3" in versions and "v2" in versions:     # what gemv="auto" picks (KernelEngine._tune)
                    cands = auto_plans(p, mode, b, hd, 4 if b >= 4 else 2)
                    errs = {}
                    for plan in cands:                       # each candidate validated before any is timed
                        reset()
                        launch(plan)
                        errs[plan] = rel_err(got()[0], want[plan.version == "v3"][0])
                    ok = [c for c in cands if errs[c] <= TOL]
                    best = pick_fastest({0: ok}, lambda _, plan: time_graph(cp, lambda: launch(plan)))[0] if ok \
                        else cands[0]
                    record(f"{label} {fmt}", b, "auto", best.name + (f" x{best.ksl}" if best.ksl > 1 else ""),
                           p.nbytes, lambda: launch(best), errs[best])
            del pd, dense
        for b in batches:
            for ctx in (256, 2304):                        # split-K flash-decoding over the context
                nsplit = -(-ctx // chunk)
                q = rng.standard_normal((b, nh * hd), np.float32)
                kc, vc = rng.standard_normal((2, b, kvh, ctx, hd), np.float32).astype(np.float16)
                seq = np.full(b, ctx - 1, np.int32)
                po, pml = cp.zeros((b, nh, nsplit, hd), cp.float32), cp.zeros((b, nh, nsplit, 2), cp.float32)
                od = cp.zeros((b, nh * hd), cp.float32)
                dq, dk, dv, ds = cp.asarray(q), cp.asarray(kc), cp.asarray(vc), cp.asarray(seq)
                cnt = cp.zeros((b, nh), cp.int32)
                want = R.attn_combine(*R.attn_split(q, kc, vc, seq, hd ** -0.5, chunk, nsplit), seq, chunk)
                for av in attention_versions(nh // kvh, hd, chunk):
                    fn = functools.partial(launch_attention, kern, dq, dk, dv, ds, po, pml, od, hd ** -0.5, cnt, av)
                    od.fill(0)
                    fn()
                    record(f"attention ctx {ctx}", b, f"a{av[1:]}", ATTENTION_KERNEL[av], kc.nbytes + vc.nbytes, fn,
                           rel_err(od.get(), want))
    return {"device": name, "copy_bandwidth_gb_s": bw / 1e9, "rows": rows, "step_us": step_estimate(rows)}


def attention_sweep(configs=("qwen2.5-0.5b", "smollm2-135m"), batches=(1, 8), chunks=(16, 32, 64, 128),
                    contexts=(128, 256, 1024, 2304), capacity: int = 4096) -> dict:
    """The flash-decoding split size, measured: each attention kernel (attn_online, attn_split) at each chunk
    (positions a block) against its twin, then timed in a CUDA graph, with the engine's grid (capacity / chunk
    splits, those past the context exit at once)."""
    import cupy as cp

    from .engine import attention_fits, attention_versions, kernels, launch_attention
    name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    rows, rng = [], np.random.default_rng(0)
    print(f"{name}: attention split sweep, capacity {capacity}")
    for cfg in configs:
        h, nh, kvh, hd, inter, vocab = GEOMETRY[cfg]
        g = nh // kvh
        for chunk in chunks:
            if not attention_fits(g, hd, chunk):
                continue
            kern = kernels(hd, g, chunk, fmts=())
            nsplit = -(-capacity // chunk)
            for b in batches:
                for ctx in contexts:
                    q = rng.standard_normal((b, nh * hd), np.float32)
                    kc, vc = rng.standard_normal((2, b, kvh, capacity, hd), np.float32).astype(np.float16)
                    seq = np.full(b, ctx - 1, np.int32)
                    args = [cp.asarray(q), cp.asarray(kc), cp.asarray(vc), cp.asarray(seq),
                            cp.zeros((b, nh, nsplit, hd), cp.float32), cp.zeros((b, nh, nsplit, 2), cp.float32),
                            cp.zeros((b, nh * hd), cp.float32)]
                    cnt = cp.zeros((b, nh), cp.int32)
                    want = R.attn_combine(*R.attn_split(q, kc, vc, seq, hd ** -0.5, chunk, nsplit), seq, chunk)
                    for av in attention_versions(g, hd, chunk):
                        fn = functools.partial(launch_attention, kern, *args, hd ** -0.5, cnt, av)
                        args[-1].fill(0)
                        fn()
                        err = rel_err(args[-1].get(), want)
                        us = time_graph(cp, fn) if err <= 1e-3 and not cnt.any() else float("nan")
                        nbytes = 2 * b * kvh * ctx * hd * 2
                        print(f"{cfg:13s} attention {av} chunk {chunk:3d} b{b} ctx {ctx:5d}: {us:7.2f} us  "
                              f"{nbytes / us / 1e3:7.0f} GB/s  err {err:.1e}")
                        rows.append({"config": cfg, "attention": av, "chunk": chunk, "batch": b, "ctx": ctx,
                                     "us": us, "bytes": nbytes, "max_rel_err_vs_twin": err})
    best = {}
    for r in rows:
        key = f"{r['config']} b{r['batch']} ctx {r['ctx']}"
        if r["us"] == r["us"] and (key not in best or r["us"] < best[key]["us"]):
            best[key] = {"attention": r["attention"], "chunk": r["chunk"], "us": r["us"]}
    return {"device": name, "capacity": capacity, "rows": rows, "best": best}


def step_estimate(rows) -> dict:
    """Per config, batch, GEMV version ("auto": the plan KernelEngine._tune would pick) and bundle (fp16: f16
    layers + float32 head; int4: int4 layers + int8 head): the timed kernels of one decode step summed (layers x
    (q|k|v, attention over 256 positions, o, gate|up, down) + head) -> microseconds, what a step takes with no gaps
    between kernels. Attention: the fastest version timed (a2, a1; "-" in files from before attention v2)."""
    layers = {"qwen2.5-0.5b": 24, "smollm2-135m": 30}
    us = {(r["config"], r["kernel"], r["batch"], r["version"]): r["us"] for r in rows}
    attn = {}
    for (cfg, kernel, b, v), t in us.items():
        if kernel == "attention ctx 256":
            attn[(cfg, b)] = min(t, attn.get((cfg, b), t))
    out = {}
    for cfg, b, v in sorted({(r["config"], r["batch"], r["version"]) for r in rows
                             if r["version"] in ("v1", "v2", "v3", "auto")}):
        for bundle, fmt, head in (("fp16", "f16", "f32"), ("int4", "q4", "q8")):
            try:
                per_layer = attn[(cfg, b)] + sum(
                    us[(cfg, f"{k} {fmt}", b, v)] for k in ("norm+qkv+rope", "o+residual", "norm+gate|up+swiglu",
                                                             "down+residual"))
                out[f"{cfg} {bundle} b{b} {v}"] = layers[cfg] * per_layer + us[(cfg, f"norm+lm_head {head}", b, v)]
            except KeyError:
                continue
    return out


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(prog="python -m paddle2ort.runtime.kernels.bench_engine", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", nargs="?", default="time",
                    choices=("compile", "validate", "validate-step", "time", "attention", "barrier"))
    ap.add_argument("--config", nargs="+", default=list(GEOMETRY), choices=sorted(GEOMETRY))
    ap.add_argument("--batch", type=int, nargs="+", help="default: 1 3 8 (validate), 1 8 (time)")
    ap.add_argument("--versions", nargs="+", default=["v3", "v2", "v1"], choices=["v3", "v2", "v1"],
                    help="GEMV versions")
    ap.add_argument("--jobs", type=int, default=8, help="compile: processes")
    ap.add_argument("--chunks", type=int, nargs="+", default=[16, 32, 64, 128, 256],
                    help="attention: positions a split to sweep (those whose shared memory fits)")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    if a.step == "compile":
        return compile_all(a.config, a.jobs)
    if a.step == "validate":
        res = validate(a.config, a.batch or [1, 3, 8], a.versions)
    elif a.step == "validate-step":
        res = validate_step(a.config, a.batch or [1, 3, 8])
    elif a.step == "barrier":
        res = barrier_bench()
    elif a.step == "attention":
        res = attention_sweep(a.config, a.batch or [1, 8], tuple(a.chunks))
    else:
        res = run(a.config, a.batch or [1, 8], a.versions)
    if a.json:
        from ..files import atomic_write
        atomic_write(a.json, json.dumps(res, indent=2))
    if a.step in ("validate", "validate-step"):
        return 1 if res["failures"] else 0
    if a.step == "barrier":
        return 0
    return 0 if all(r["max_rel_err_vs_twin"] <= 1e-2 for r in res["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
