"""Kernel bench, llm.c dev/cuda style: validate each kernel against its NumPy twin, then time it and print
microseconds and GB/s beside the device's copy bandwidth (the roofline a logits pass can reach).

    python -m paddle2ort.runtime.kernels.bench [--vocab 49152 151936] [--batch 1 8 32] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

import numpy as np

from . import reference as R
from .reference import SamplerParams

log = logging.getLogger(__name__)


def copy_bandwidth(cp, nbytes: int = 1 << 30, reps: int = 10) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted): the achievable HBM roofline."""
    a = cp.empty(nbytes, cp.uint8)
    b = cp.empty_like(a)
    b[...] = a
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(reps):
        b[...] = a
    end.record()
    end.synchronize()
    return 2 * nbytes * reps / (cp.cuda.get_elapsed_time(start, end) / 1e3)


def time_kernel(cp, fn, reps: int = 50) -> float:
    fn()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) / reps * 1e3           # microseconds


def run(vocabs=(49152, 151936), batches=(1, 8, 32)) -> dict:
    import cupy as cp

    from . import cuda as K
    bw = copy_bandwidth(cp)
    name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    rows = []
    print(f"{name}: device copy bandwidth {bw / 1e9:.0f} GB/s (read + write)")
    print(f"{'kernel':28s} {'B':>3s} {'V':>7s} {'us':>9s} {'GB/s':>8s} {'% copy bw':>9s}  valid")
    for v in vocabs:
        for b in batches:
            for dtype in (np.float16, np.float32):
                logits_h = (np.random.default_rng(b).normal(size=(b, v)) * 3).astype(dtype)
                logits = cp.asarray(logits_h)
                for mode, p in (("greedy", SamplerParams()),
                                ("top-k 50 / top-p 0.9", SamplerParams(do_sample=True, temperature=0.8, top_k=50,
                                                                       top_p=0.9, seed=1))):
                    ids_d = cp.zeros((b, 1), cp.int64)
                    ids_h = np.zeros((b, 1), np.int64)
                    K.sample_rows(logits, None, p, ids_d)
                    R.sample_rows(logits_h, None, p, ids_h)
                    valid = float(np.mean(ids_d.get() == ids_h))
                    us = time_kernel(cp, lambda: K.sample_rows(logits, None, p, ids_d))
                    gbs = logits.nbytes / (us / 1e6) / 1e9                  # one pass over the logits
                    tag = f"{mode} {np.dtype(dtype).name}"
                    print(f"{tag:28s} {b:3d} {v:7d} {us:9.1f} {gbs:8.1f} {100 * gbs * 1e9 / bw:8.1f}%  "
                          f"{valid:.3f}")
                    rows.append({"kernel": "sample_rows", "mode": mode, "dtype": np.dtype(dtype).name, "batch": b,
                                 "vocab": v, "us": us, "gb_per_s": gbs, "pct_copy_bw": 100 * gbs * 1e9 / bw,
                                 "agreement_with_twin": valid})
                rows.append(_beam_row(cp, K, bw, b, v, dtype))
    return {"device": name, "copy_bandwidth_gb_s": bw / 1e9, "rows": rows}


def _beam_row(cp, K, bw: float, groups: int, vocab: int, dtype, beams: int = 4) -> dict:
    """beam_topk over `groups` prompts x 4 beams: validated against the twin (same top-2K indices), then timed;
    GB/s counts the three passes over the logits (max, sum, select + collect read them again from L2)."""
    logits_h = (np.random.default_rng(groups).normal(size=(groups * beams, vocab)) * 3).astype(dtype)
    scores_h = np.random.default_rng(1).normal(size=groups * beams).astype(np.float32) - 1
    logits, scores = cp.asarray(logits_h), cp.asarray(scores_h)
    _, want = R.beam_topk(logits_h, None, scores_h, beams)
    _, got = K.beam_topk(logits, None, scores, beams)
    valid = float(np.mean(got.get() == want))
    us = time_kernel(cp, lambda: K.beam_topk(logits, None, scores, beams))
    gbs = logits.nbytes / (us / 1e6) / 1e9
    tag = f"beam top-8 of 4x{np.dtype(dtype).name}"
    print(f"{tag:28s} {groups:3d} {vocab:7d} {us:9.1f} {gbs:8.1f} {100 * gbs * 1e9 / bw:8.1f}%  {valid:.3f}")
    return {"kernel": "beam_topk", "mode": f"{beams} beams", "dtype": np.dtype(dtype).name, "batch": groups,
            "vocab": vocab, "us": us, "gb_per_s": gbs, "pct_copy_bw": 100 * gbs * 1e9 / bw,
            "agreement_with_twin": valid}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, nargs="+", default=[49152, 151936])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    res = run(a.vocab, a.batch)
    if a.json:
        from ..files import atomic_write
        atomic_write(a.json, json.dumps(res, indent=2))
    return 0 if all(r["agreement_with_twin"] >= 0.99 for r in res["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
