"""SkipLayerNormalization, BiasGelu (FastGelu only when asked), EmbedLayerNormalization and LayerNormalization through
onnxruntime's own transformers optimizer (its BERT fusions match what paddle2onnx writes for these families).

Its attention fusion stays on (it costs nothing when it does not match) but never matches paddle2onnx graphs:
attention.py handles those.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrtFusionOptions:
    skip_layer_norm: bool = True
    bias_gelu: bool = True
    embed_layer_norm: bool = True
    gelu_approximation: bool = False   # FastGelu (tanh approximation): changes numerics, off unless asked
    # how attention.py feeds a 0/1 mask to Attention: "mask_index_2d" (exact for any mask) or "key_lengths"
    # (1-D, right padding only; what onnxruntime's CUDA fused attention kernels take)
    attention_mask: str = "mask_index_2d"


def ort_fusions(model, opts: OrtFusionOptions = OrtFusionOptions()):
    """Apply onnxruntime's BERT fusions (Python graph rewrites only: no session, no device-specific folding)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.onnx_model_bert import BertOnnxModel

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = options.enable_bias_skip_layer_norm = opts.skip_layer_norm
    options.enable_bias_gelu = opts.bias_gelu
    options.enable_embed_layer_norm = opts.embed_layer_norm
    options.enable_gelu_approximation = opts.gelu_approximation
    options.enable_shape_inference = False      # symbolic shape inference fails on paddle2onnx graphs
    bert = BertOnnxModel(model, num_heads=0, hidden_size=0)      # 0: read from the graph where needed
    logging.getLogger("onnxruntime.transformers").setLevel(logging.WARNING)
    # its modules also log under their bare names; this one warns that the shape inference we turned off is off
    logging.getLogger("fusion_skiplayernorm").setLevel(logging.ERROR)
    bert.optimize(options)
    bert.topological_sort()
    return bert.model
