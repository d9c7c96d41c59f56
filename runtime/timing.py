"""The one timing loop of every benchmark (onnxruntime rows and the Paddle peers run in the converter's worker):
warm-up spread over the batches' length range, then timed passes; and decode-loop timing (TTFT, per-step time)."""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np


def warmup_order(n_batches: int, warmup: int) -> list[int]:
    """Indices of `warmup` batches spread evenly over `n_batches` (length-sorted: every shape range gets warm)."""
    if warmup <= 0 or n_batches == 0:
        return []
    return sorted({int(round(x)) for x in np.linspace(0, n_batches - 1, min(warmup, n_batches))})


def time_passes(run: Callable, feeds: Sequence, warmup: int, repeats: int) -> tuple[list[list[float]], list]:
    """`run(feed)` on warm-up batches, then `repeats` timed passes over every feed.
    Returns (seconds per batch per pass, the last pass's outputs)."""
    for b in warmup_order(len(feeds), warmup):
        run(feeds[b])
    times, outs = [], [None] * len(feeds)
    for _ in range(repeats):
        rep = []
        for b, f in enumerate(feeds):
            t0 = time.perf_counter()
            outs[b] = run(f)
            rep.append(time.perf_counter() - t0)
        times.append(rep)
    return times, outs


def median_ms(fn: Callable, warmup: int = 10, n: int = 50, sync: Callable | None = None) -> float:
    """Median milliseconds of `n` calls of `fn()` after `warmup` untimed ones; `sync()` (a device synchronize)
    closes each timed call."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def time_generation(model, prompts: list[list[int]], new_tokens: int, pad_id: int) -> dict:
    """Greedy generation of exactly `new_tokens` a row (no stop token) through the decode loop, timed:
    TTFT = prefill + first token choice; decode = the remaining steps (one token per row each)."""
    from .generation import GenerationConfig, Generator
    cfg = GenerationConfig(max_new_tokens=new_tokens)
    t0 = time.perf_counter()
    gen = Generator(model, cfg, pad_id)
    gen.append_tokens(prompts)                     # prefill
    gen.generate_next_token()                      # token 1 chosen
    ttft = time.perf_counter() - t0
    t1 = time.perf_counter()
    while not gen.is_done():
        gen.generate_next_token()                  # one decode step + one choice
    decode = time.perf_counter() - t1
    steps = new_tokens - 1
    b = len(prompts)
    return {"batch": b, "ttft_ms": ttft * 1e3, "decode_ms_per_step": decode / max(steps, 1) * 1e3,
            "tokens_per_s_per_sequence": steps / decode if decode else float("inf"),
            "tokens_per_s_total": b * new_tokens / (ttft + decode), "decode_tokens_per_s_total": b * steps / decode,
            "generated": [len(g) for g in gen.results()]}
