"""PTuning v2 prefixes (PaddleNLP's prefix tuning, its predictor's pre_caches.npy): KV-cache rows that every row of
a generation starts with. The prefix rows are attended to (mask 1) and take no positions: real tokens are numbered
from 0, as PaddleNLP's PrefixModelForCausalLM runs LLaMA (the prefix keys carry no rotary)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import BundleError

PRE_CACHES_LAYOUT = "[layer, k|v, kv_head, prefix_token, head_dim]"


def to_cache_rows(pre_caches: np.ndarray) -> np.ndarray:
    """pre_caches [L, 2, KVH, P, D] -> the decoder's time-major cache rows [P, L, 2, 1, KVH, D] (batch axis 1)."""
    return np.ascontiguousarray(np.transpose(pre_caches, (3, 0, 1, 2, 4))[:, :, :, None])


def load_prefix(path: Path, llm: dict) -> np.ndarray:
    """A bundle's pre_caches file as cache rows, checked against the decoder's geometry."""
    try:
        pre = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise BundleError(f"{path} is not a NumPy array file ({e}); re-convert the model") from e
    want = (llm["num_layers"], 2, llm["kv_heads"], llm["head_dim"])
    if pre.ndim != 5 or (pre.shape[0], pre.shape[1], pre.shape[2], pre.shape[4]) != want or pre.shape[3] < 1:
        raise BundleError(f"{path} is {list(pre.shape)}, not a prefix cache {PRE_CACHES_LAYOUT} for "
                          f"{want[0]} layers x {want[2]} K/V heads x {want[3]}; re-convert the model")
    return to_cache_rows(pre.astype(np.float32))
