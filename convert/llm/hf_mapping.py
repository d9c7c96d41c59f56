"""HF transformers LLaMA / Qwen2 state dict -> PaddleNLP `LlamaForCausalLM` state dict (NumPy, no framework).

HF names its decoder `model.*` and stores `nn.Linear` weights as [out, in]; PaddleNLP names it `llama.*` and stores
`paddle.nn.Linear` weights as [in, out]. The embedding ([vocab, hidden]), the RMSNorm gains and the q/k/v biases
(Qwen2) keep their layout. No library maps between the two without importing both frameworks (PaddleNLP's own
converters need torch), hence this table.
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from paddle2ort.runtime.errors import BadInputError

# HF name (after `model.`) -> (PaddleNLP name after `llama.`, transpose)
_LAYER = re.compile(r"layers\.(\d+)\.(input_layernorm\.weight|post_attention_layernorm\.weight|"
                    r"self_attn\.[qkvo]_proj\.(?:weight|bias)|mlp\.(?:gate|up|down)_proj\.weight)$")
_TOP = {"embed_tokens.weight": False, "norm.weight": False}
_IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")        # a buffer some HF versions save; PaddleNLP recomputes it


def hf_name_to_paddlenlp(name: str) -> tuple[str, bool] | None:
    """(PaddleNLP name, transpose?) for one HF LLaMA/Qwen2 parameter name; None for buffers PaddleNLP recomputes.
    Raises BadInputError for a name of another architecture."""
    if _IGNORED.search(name):
        return None
    if name == "lm_head.weight":
        return name, True
    if name.startswith("model."):
        rest = name[len("model."):]
        if rest in _TOP:
            return "llama." + rest, _TOP[rest]
        m = _LAYER.match(rest)
        if m:
            return "llama." + rest, m.group(2).endswith("proj.weight")
    raise BadInputError(f"{name!r} is not a parameter of an HF LLaMA/Qwen2 causal LM (model.embed_tokens, "
                        "model.layers.N.{self_attn,mlp,...}, model.norm, lm_head); convert other architectures "
                        "with their own mapping")


def hf_to_paddlenlp(state: Mapping[str, np.ndarray], dtype=np.float32) -> dict[str, np.ndarray]:
    """HF LLaMA/Qwen2 state dict (NumPy arrays) -> PaddleNLP LlamaForCausalLM names, Linear weights [in, out].
    Every name is checked before anything is copied: one error lists all the names that do not map."""
    plan, bad = {}, []
    for k in state:
        try:
            target = hf_name_to_paddlenlp(k)
        except BadInputError:
            bad.append(k)
            continue
        if target is not None:
            plan[k] = target
    if bad:
        raise BadInputError(f"{len(bad)} state-dict name(s) are not HF LLaMA/Qwen2 parameters: "
                            + ", ".join(bad[:6]) + (f" (+{len(bad) - 6} more)" if len(bad) > 6 else ""))
    out = {}
    for k, (name, transpose) in plan.items():
        a = np.asarray(state[k], dtype=dtype)
        if transpose and a.ndim != 2:
            raise BadInputError(f"{k} has shape {a.shape}; a Linear weight is 2-D")
        out[name] = np.ascontiguousarray(a.T) if transpose else a
    return out
