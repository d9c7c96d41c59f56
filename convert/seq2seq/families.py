"""The encoder-decoder families, one registry read from config.json before any Paddle work (no Paddle import
here). Each family's Paddle-side adapter (one module a family: t5.py, bart.py) implements

    geometry(config) -> dict        num_layers, heads, head_dim, vocab_size, d_model, decoder_start_id, eos_id,
                                    pad_id, max_source, max_target (None: unbounded, relative positions)
    encode(model, input_ids, attention_mask) -> cross_key_values [L, 2, B, H, T, D]
    decode(model, ids, encoder_mask, past, cross) -> (logits [B, S, V], present [S, L, 2, B, H, D])

(past [P, L, 2, B, H, D] time-major like the causal-LM export; present holds the S new positions only).
A prefix-LM family (kind "prefix-lm", UNIMO-text) has one step graph instead: see unimo.py."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Seq2SeqFamily:
    name: str
    model_class: str               # paddlenlp.transformers class
    module: str                    # adapter module in this package
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    kind: str = "encoder-decoder"  # or "prefix-lm": one step graph, bidirectional source (unimo.py's contract)
    source_end: str = "eos_token_id"   # the config.json id that ends each source (ChatGLM v1: its [gMASK])


FAMILIES = {f.name: f for f in (
    Seq2SeqFamily("t5", "T5ForConditionalGeneration", "t5", ("t5",), ("T5ForConditionalGeneration",)),
    Seq2SeqFamily("bart", "BartForConditionalGeneration", "bart", ("bart",), ("BartForConditionalGeneration",)),
    Seq2SeqFamily("mbart", "MBartForConditionalGeneration", "bart", ("mbart",), ("MBartForConditionalGeneration",)),
    Seq2SeqFamily("unimo", "UNIMOLMHeadModel", "unimo", ("unimo",), ("UNIMOLMHeadModel", "UNIMOForMaskedLM",
                                                                      "UNIMOForConditionalGeneration"), "prefix-lm"),
    # PLATO-style dialogue models: UNIMO's prefix-LM step (unimo.py), pre-norm, no embedding LayerNorm
    Seq2SeqFamily("unified_transformer", "UnifiedTransformerLMHeadModel", "unimo", ("unified_transformer",),
                  ("UnifiedTransformerLMHeadModel",), "prefix-lm"),
    # ChatGLM v1 (GLM): bidirectional up to <sop>, 2-D rotary positions (chatglm.py)
    Seq2SeqFamily("chatglm", "ChatGLMForCausalLM", "chatglm", ("chatglm",), ("ChatGLMForCausalLM",), "prefix-lm",
                  "gmask_token_id"),
)}

# configurations of a family that its adapter does not cover: (family, config key, the value it needs, why)
UNCOVERED = (("chatglm", "position_encoding_2d", True, "1-D GLM positions"),
             ("chatglm", "pre_seq_len", None, "P-tuning prefix encoders"),
             ("chatglm", "use_long_sequence_strategies", False, "scaled rotary"),
             ("chatglm", "activation", "gelu", "GeGLU MLP"))


class UnsupportedFamily(KeyError):
    def __str__(self):
        return str(self.args[0])


def family_name(cfg: dict) -> str:
    """The family of a PaddleNLP config.json (architectures first, then model_type)."""
    archs = cfg.get("architectures") or []
    for f in FAMILIES.values():
        if any(a in f.architectures for a in archs) or (not archs and cfg.get("model_type") in f.model_types):
            for _, key, want, what in (u for u in UNCOVERED if u[0] == f.name):
                if cfg.get(key, want) != want:
                    raise UnsupportedFamily(f"{f.model_class} with {key}={cfg[key]!r} ({what}) has no export "
                                            f"adapter; the {f.name} adapter needs {key}={want!r}")
            return f.name
    what = archs[0] if archs else cfg.get("model_type")
    raise UnsupportedFamily(f"{what!r} is not an encoder-decoder family paddle2ort exports; supported: "
                            + ", ".join(a for f in FAMILIES.values() for a in f.architectures))


def adapter(name: str):
    """The family's Paddle-side module (worker only)."""
    import importlib
    return importlib.import_module(f"{__package__}.{FAMILIES[name].module}")
