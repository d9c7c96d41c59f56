"""Fusion pass for the transformer encoders paddle2onnx writes (BERT / ERNIE / MiniLM families).

`fuse_encoder(model) -> (model, counts)`: onnxruntime's own BERT fusions (ort_optimizer.py) first, then the
attention pattern none of them matches (attention.py). `counts` names each fused operator and how many were made,
e.g. {"Attention": 6, "SkipLayerNormalization": 13, "BiasGelu": 6}; empty when the model is not such an encoder.
"""
from __future__ import annotations

import collections
import copy
import logging
from dataclasses import dataclass

from .attention import MASK_FORMATS, fuse_attention, to_key_lengths
from .first_row import prune_to_first_row
from .ort_optimizer import OrtFusionOptions, ort_fusions

log = logging.getLogger(__name__)

FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu",
             "FastGelu", "Gelu", "LayerNormalization")

__all__ = ["FUSED_OPS", "KEY_LENGTHS", "NO_SKIP", "BundleGraphs", "FusionConfig", "OrtFusionOptions", "bundle_graphs",
           "MASK_FORMATS", "fuse_attention", "fuse_encoder", "ort_fusions", "prune_to_first_row", "quantizable_attention",
           "to_key_lengths"]


def _census(model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node if n.op_type in FUSED_OPS)


def fuse_encoder(model, opts: OrtFusionOptions = OrtFusionOptions()):
    """Return (fused copy of `model`, {fused op: count}); the input model is left as it was."""
    before = _census(model)
    fused = ort_fusions(copy.deepcopy(model), opts)
    n_attention = fuse_attention(fused, mask_format=opts.attention_mask)
    after = _census(fused)
    counts = {op: after[op] - before[op] for op in FUSED_OPS if after[op] > before[op]}
    if n_attention:
        counts["Attention"] = n_attention
    log.debug("fusions: %s", ", ".join(f"{k} {v}" for k, v in counts.items()) or "none")
    return fused, counts


def quantizable_attention(model) -> bool:
    """QAttention (INT8) takes a mask_index but no attention_bias: quantize Attention only when none has one."""
    return all(len([i for i in n.input[5:] if i]) == 0 for n in model.graph.node if n.op_type == "Attention")


NO_SKIP = OrtFusionOptions(skip_layer_norm=False)
KEY_LENGTHS = OrtFusionOptions(attention_mask="key_lengths")    # the whole pass, the mask as 1-D key lengths


@dataclass(frozen=True)
class FusionConfig:
    """Per precision, the fusions its graph gets (None: the graph as paddle2onnx wrote it). The defaults follow
    the measurements in benchmarks/results/encoder/ (README there): on the GPU (FP16) the whole pass with a CUDA
    graph is 1.4-2x the unfused graph, and the mask as 1-D key lengths (right padding, as our tokenizers and
    buckets pad) another 1.3-1.5x at batch 32 (a fused attention kernel instead of GEMM + softmax); on a 2-core CPU
    FP32 is fastest with Attention + BiasGelu but not the offline SkipLayerNormalization (onnxruntime fuses that
    itself at load), and INT8 fastest unfused. first_row: the precisions whose last encoder layer runs at row 0
    where the outputs read only that row (a [CLS]-pooled classifier; first_row.py): the CPU ones, where it measured
    1.11-1.18x (benchmarks/results/encoder/first-row/); FP16 (the GPU's) keeps the whole layer until measured there
    (the row-0 layer is a dozen small unfused kernels in place of the fused ones)."""
    fp32: OrtFusionOptions | None = NO_SKIP
    fp16: OrtFusionOptions | None = KEY_LENGTHS
    int8: OrtFusionOptions | None = None
    int4: OrtFusionOptions | None = None
    first_row: tuple[str, ...] = ("fp32", "int8", "int4")


@dataclass
class BundleGraphs:
    graphs: dict            # precision -> the FP32 graph that precision is made from
    fusions: dict           # precision -> {fused op: count} (fused precisions only)
    int8: object            # the INT8 options to use (Attention added when the INT8 graph has quantizable ones)
    first_row: tuple = ()    # the precisions whose last encoder layer runs at row 0 (first_row.py)


def bundle_graphs(model, precisions, int8, cfg: FusionConfig = FusionConfig(),
                  samples: list[dict] | None = None) -> BundleGraphs:
    """The conversion's fusion step. Fused graphs are kept only for transformer encoders (an attention block
    fused); any other model is bundled as paddle2onnx wrote it. samples: the conversion's own, for the first-row
    pass's self-check."""
    from dataclasses import replace
    graphs, fusions, cache = {}, {}, {}
    wanted = [p for p in dict.fromkeys(precisions) if p in cfg.first_row]
    pruned, done = prune_to_first_row(model, samples) if wanted else (model, False)
    for prec in precisions:
        src = pruned if done and prec in wanted else model
        opts = getattr(cfg, prec)
        if opts is None:
            graphs[prec] = src
            continue
        key = (opts, src is pruned)
        if key not in cache:
            try:
                cache[key] = fuse_encoder(src, opts)
            except Exception as e:  # noqa: BLE001  (an optimisation: the unfused graph is correct and gets bundled)
                log.info("%s: graph fusion not applied (%s: %s); the bundle keeps the unfused graph", prec,
                         type(e).__name__, str(e)[:200])
                cache[key] = (src, {})
        fused, counts = cache[key]
        if counts.get("Attention"):
            graphs[prec], fusions[prec] = fused, counts
            log.info("%s fusions: %s", prec, ", ".join(f"{k} {v}" for k, v in counts.items()))
        else:
            graphs[prec] = src
    if not fusions and any(getattr(cfg, p) is not None for p in precisions):
        log.info("fusions: none (no transformer-encoder attention block matched): the graphs are bundled unfused")
    if "int8" in fusions and not int8.weight_only and "Attention" not in int8.op_types \
            and quantizable_attention(graphs["int8"]):
        int8 = replace(int8, op_types=(*int8.op_types, "Attention"))
    return BundleGraphs(graphs, fusions, int8, tuple(wanted) if done else ())
