"""Kernel bench of decode.cu, llm.c dev/cuda style: each kernel at a real model's shapes is first validated against
its NumPy twin (engine_reference.py), then timed; GB/s counts the bytes it must read (weights, or the K/V of the
context) beside the device's measured copy bandwidth. Times are GPU time per launch inside a CUDA graph.

    python -m paddle2ort.runtime.kernels.bench_engine [--config qwen2.5-0.5b smollm2-135m] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from . import engine_reference as R
from .bench import copy_bandwidth

GEOMETRY = {  # hidden, heads, kv heads, head size, FFN, vocab (benchmarks/gpu/common.py CONFIGS)
    "qwen2.5-0.5b": (896, 14, 2, 64, 4864, 151936),
    "smollm2-135m": (576, 9, 3, 64, 1536, 49152),
}


def _packed(fmt: str, n: int, k: int, rng):
    from .engine import Packed, _pair
    if fmt in ("f16", "f32"):
        return Packed(fmt, (rng.standard_normal((n, k), np.float32) * 0.05).astype(
            np.float16 if fmt == "f16" else np.float32), None, n, k)
    kb = k // 32
    scale = rng.uniform(0.002, 0.01, (n, kb)).astype(np.float16)
    if fmt == "q8":
        w, zp = rng.integers(0, 256, (n, k), dtype=np.uint8), rng.integers(120, 136, (n, kb)).astype(np.uint8)
    else:
        w, zp = rng.integers(0, 256, (n, k // 2), dtype=np.uint8), rng.uniform(6, 9, (n, kb)).astype(np.float16)
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


def _err(got, want) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-6))


def run(configs=("qwen2.5-0.5b", "smollm2-135m"), batches=(1, 8)) -> dict:
    import cupy as cp

    from .engine import attention_chunk, kernels, launch_attention, launch_gemv
    bw = copy_bandwidth(cp)
    name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    rows = []
    print(f"{name}: device copy bandwidth {bw / 1e9:.0f} GB/s (read + write)")
    print(f"{'config':13s} {'kernel':24s} {'B':>2s} {'us':>8s} {'GB/s':>7s} {'% copy':>6s}  max rel err vs twin")
    rng = np.random.default_rng(0)
    for cfg in configs:
        h, nh, kvh, hd, inter, vocab = GEOMETRY[cfg]
        spec = {"num_heads": nh, "kv_heads": kvh, "head_dim": hd}
        chunk = attention_chunk(spec)
        kern = kernels(hd, nh // kvh, chunk)

        def record(kernel, b, nbytes, fn, err):
            us = time_graph(cp, fn)
            gbs = nbytes / (us / 1e6) / 1e9
            print(f"{cfg:13s} {kernel:24s} {b:2d} {us:8.1f} {gbs:7.0f} {100 * gbs * 1e9 / bw:5.1f}%  {err:.1e}")
            rows.append({"config": cfg, "kernel": kernel, "batch": b, "us": us, "bytes": nbytes, "gb_per_s": gbs,
                         "pct_copy_bw": 100 * gbs * 1e9 / bw, "max_rel_err_vs_twin": err})

        for b in batches:
            rpw = 4 if b >= 4 else 2                       # as the engine picks
            x = rng.standard_normal((b, max(h, inter)), np.float32)
            gamma = rng.uniform(0.5, 1.5, h).astype(np.float16)
            xh, xi = cp.asarray(x[:, :h]), cp.asarray(x[:, :inter])
            gd = cp.asarray(gamma)
            for fmt in ("f16", "q8", "q4"):
                # RMSNorm + q|k|v + bias + rotary + KV append
                p = _packed(fmt, (nh + 2 * kvh) * hd, h, rng)
                pd, cap = p.to(cp), 64
                ang = rng.uniform(0, 6, (cap, hd // 2)).astype(np.float32)
                pos = rng.integers(0, cap, b).astype(np.int32)
                q, kc, vc = np.zeros((b, nh * hd), np.float32), *np.zeros((2, b, kvh, cap, hd), np.float16)
                qd, kcd, vcd = cp.asarray(q), cp.asarray(kc), cp.asarray(vc)
                args = dict(bias=None, kc=kcd, vc=vcd, cos=cp.asarray(np.cos(ang)), sin=cp.asarray(np.sin(ang)),
                            seqlens=cp.asarray(pos), nh=nh, kvh=kvh, cap=cap)
                fn = lambda: launch_gemv(kern, "qkv", pd, xh, gd, 1e-6, b, qd, rows_per_warp=rpw, **args)  # noqa: E731
                fn()
                R.gemv_qkv(p.dense(), x[:, :h], gamma, 1e-6, None, q, kc, vc, np.cos(ang), np.sin(ang), pos, nh, kvh)
                record(f"norm+qkv+rope {fmt}", b, p.nbytes, fn, _err(qd.get(), q))
                # RMSNorm + gate|up + SwiGLU
                p = _packed(fmt, 2 * inter, h, rng)
                pd, od = p.to(cp), cp.zeros((b, inter), cp.float32)
                fn = lambda: launch_gemv(kern, "swiglu", pd, xh, gd, 1e-6, b, od, inter=inter,  # noqa: E731
                                         rows_per_warp=rpw)
                fn()
                record(f"norm+gate|up+swiglu {fmt}", b, p.nbytes, fn,
                       _err(od.get(), R.gemv_swiglu(p.dense(), x[:, :h], gamma, 1e-6, inter)))
                # down + residual (validated once: the timing loop keeps adding)
                p = _packed(fmt, h, inter, rng)
                pd, od = p.to(cp), cp.zeros((b, h), cp.float32)
                launch_gemv(kern, "resid", pd, xi, None, 1e-6, b, od, ldo=h, rows_per_warp=rpw)
                err = _err(od.get(), x[:, :inter] @ p.dense().T)
                record(f"down+residual {fmt}", b, p.nbytes,
                       lambda: launch_gemv(kern, "resid", pd, xi, None, 1e-6, b, od, ldo=h, rows_per_warp=rpw), err)
            for fmt in ("f32", "q8"):                      # the LM head: float32 (fp16 bundle) / int8 (int4 bundle)
                p = _packed(fmt, vocab, h, rng)
                pd, od = p.to(cp), cp.zeros((b, vocab), cp.float32)
                fn = lambda: launch_gemv(kern, "logits", pd, xh, gd, 1e-6, b, od, ldo=vocab,  # noqa: E731
                                         rows_per_warp=rpw)
                fn()
                record(f"norm+lm_head {fmt}", b, p.nbytes, fn,
                       _err(od.get(), R.gemv_logits(p.dense(), x[:, :h], gamma, 1e-6)))
            for ctx in (256, 2304):                        # split-K flash-decoding over the context
                nsplit = -(-ctx // chunk)
                q = rng.standard_normal((b, nh * hd), np.float32)
                kc, vc = rng.standard_normal((2, b, kvh, ctx, hd), np.float32).astype(np.float16)
                seq = np.full(b, ctx - 1, np.int32)
                po, pml = cp.zeros((b, nh, nsplit, hd), cp.float32), cp.zeros((b, nh, nsplit, 2), cp.float32)
                od = cp.zeros((b, nh * hd), cp.float32)
                dq, dk, dv, ds = cp.asarray(q), cp.asarray(kc), cp.asarray(vc), cp.asarray(seq)
                cnt = cp.zeros((b, kvh), cp.int32)
                fn = lambda: launch_attention(kern, dq, dk, dv, ds, po, pml, od, hd ** -0.5, cnt)  # noqa: E731
                fn()
                want = R.attn_combine(*R.attn_split(q, kc, vc, seq, hd ** -0.5, chunk, nsplit), seq, chunk)
                record(f"attention ctx {ctx}", b, kc.nbytes + vc.nbytes, fn, _err(od.get(), want))
    return {"device": name, "copy_bandwidth_gb_s": bw / 1e9, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", nargs="+", default=list(GEOMETRY), choices=sorted(GEOMETRY))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    res = run(a.config, a.batch)
    if a.json:
        from ..files import atomic_write
        atomic_write(a.json, json.dumps(res, indent=2))
    return 0 if all(r["max_rel_err_vs_twin"] <= 1e-2 for r in res["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
