"""Fusion pass for the transformer encoders paddle2onnx writes (BERT / ERNIE / MiniLM families).

`fuse_encoder(model) -> (model, counts)`: onnxruntime's own BERT fusions (ort_optimizer.py) first, then the
attention pattern none of them matches (attention.py). `counts` names each fused operator and how many were made,
e.g. {"Attention": 6, "SkipLayerNormalization": 13, "BiasGelu": 6}; empty when the model is not such an encoder.
"""
from __future__ import annotations

import collections
import copy
import logging

from .attention import fuse_attention
from .ort_optimizer import OrtFusionOptions, ort_fusions

log = logging.getLogger(__name__)

FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu",
             "FastGelu", "Gelu", "LayerNormalization")

__all__ = ["FUSED_OPS", "OrtFusionOptions", "fuse_encoder", "fuse_for_bundle", "fuse_attention", "ort_fusions"]


def _census(model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node if n.op_type in FUSED_OPS)


def fuse_encoder(model, opts: OrtFusionOptions = OrtFusionOptions()):
    """Return (fused copy of `model`, {fused op: count}); the input model is left as it was."""
    before = _census(model)
    fused = ort_fusions(copy.deepcopy(model), opts)
    n_attention = fuse_attention(fused)
    after = _census(fused)
    counts = {op: after[op] - before[op] for op in FUSED_OPS if after[op] > before[op]}
    if n_attention:
        counts["Attention"] = n_attention
    log.info("fusions: %s", ", ".join(f"{k} {v}" for k, v in counts.items()) or "none")
    return fused, counts


def quantizable_attention(model) -> bool:
    """QAttention (INT8) takes a mask_index but no attention_bias: quantize Attention only when none has one."""
    return all(len([i for i in n.input[5:] if i]) == 0 for n in model.graph.node if n.op_type == "Attention")


def fuse_for_bundle(model, int8, opts: OrtFusionOptions = OrtFusionOptions()):
    """The conversion's fusion step: (model to bundle, fusion counts for the manifest, INT8 options to use).

    The fused graph is kept for transformer encoders (at least one attention block fused); any other model is
    bundled as paddle2onnx wrote it. INT8 then quantizes the fused attention's packed QKV GEMM too (QAttention)."""
    from dataclasses import replace
    try:
        fused, counts = fuse_encoder(model, opts)
    except Exception as e:  # noqa: BLE001  (an optimisation: the unfused graph is correct and gets bundled)
        log.warning("graph fusion skipped (%s: %s); the bundle keeps the unfused graph", type(e).__name__, e)
        return model, {}, int8
    if not counts.get("Attention"):
        return model, {}, int8
    if not int8.weight_only and "Attention" not in int8.op_types and quantizable_attention(fused):
        int8 = replace(int8, op_types=(*int8.op_types, "Attention"))
    return fused, counts, int8
