"""Roofline accounting of a decode step: bytes it must read, and the share of the copy bandwidth it reached.

Pure functions over the spec dict (`DecoderSpec.to_json()`) and the timings, so they are tested on the committed
results (`benchmarks/results/llm-gpu/run*/bench-*.json`) on a CPU; only `initializer_bytes` / `op_counts` read
ONNX files.
"""
from __future__ import annotations

from pathlib import Path


def spec_weight_bytes(spec: dict, bytes_per_param: float = 2.0) -> int:
    """Weights one decode step reads (embedding row gathers excluded, LM head included), from the spec's geometry."""
    h, kv = spec["hidden_size"], spec["kv_heads"] * spec["head_dim"]
    qd = spec["num_heads"] * spec["head_dim"]
    per_layer = h * (qd + 2 * kv) + qd * h + 3 * h * spec["intermediate_size"]
    return int((spec["num_layers"] * per_layer + h * spec["vocab_size"]) * bytes_per_param)


def step_bytes(weight_bytes: int, spec: dict, batch: int, ctx: float, kv_itemsize: int = 2) -> float:
    """Bytes one decode step must read: every weight once + the K/V of `ctx` positions per row."""
    kv = 2 * spec["num_layers"] * batch * spec["kv_heads"] * spec["head_dim"] * ctx * kv_itemsize
    return weight_bytes + kv


def mean_context(prompt_tokens: int, new_tokens: int) -> float:
    """The context length a decode step sees on average over the run."""
    return prompt_tokens + new_tokens / 2


def row_weight_bytes(system: str, precision: str, weights: dict, spec: dict) -> int:
    """Weights a system's step reads: ours from its ONNX file of that precision; the peers (FP16, their own
    graphs) as our FP16 file, or the spec's FP16 count when that file was not built in the run."""
    if system.startswith("ours"):
        return int(weights[precision])
    return int(weights.get("fp16", spec_weight_bytes(spec, 2)))


def decode_row(system: str, precision: str, batch: int, ttft_ms: float, decode_s: float, *, new_tokens: int,
               prompt_tokens: int, weight_bytes: int, spec: dict, bandwidth: float) -> dict:
    """One results row: decode_s covers the new_tokens - 1 steps after the first token; bandwidth in bytes/s."""
    step_s = decode_s / (new_tokens - 1)
    sb = step_bytes(weight_bytes, spec, batch, mean_context(prompt_tokens, new_tokens))
    return {"system": system, "precision": precision, "batch": batch, "ttft_ms": ttft_ms,
            "step_ms": 1e3 * step_s, "tok_s_per_seq": 1 / step_s, "tok_s_aggregate": batch / step_s,
            "bytes_per_step": sb, "pct_hbm_roofline": 100 * sb / step_s / bandwidth}


def initializer_bytes(path: Path, skip=("embed_tokens", "cos_cache", "sin_cache")) -> int:
    """Bytes of the weights a decode step reads (the embedding is gathered row by row, not read whole)."""
    import onnx
    m = onnx.load(str(path), load_external_data=True)
    total = 0
    for t in m.graph.initializer:
        if not any(s in t.name for s in skip):
            total += len(t.raw_data) if t.raw_data else onnx.numpy_helper.to_array(t).nbytes
    return total


def op_counts(path: Path) -> dict:
    """Nodes per decode step by operator: each launches at least one kernel."""
    import collections

    import onnx
    m = onnx.load(str(path), load_external_data=False)
    return dict(collections.Counter(n.op_type for n in m.graph.node).most_common())
