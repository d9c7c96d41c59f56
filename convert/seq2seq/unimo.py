"""UNIMO-text (PaddleNLP UNIMOLMHeadModel), a prefix LM: one post-norm paddle.nn.TransformerEncoder stack over
word + position + token-type embeddings, bidirectional over the source, causal over the target; also
UnifiedTransformerLMHeadModel (PLATO dialogue models: pre-norm layers, the final LayerNorm in the encoder, no
embedding LayerNorm, other suppressed ids). The step graph:

    input_ids, token_type_ids, position_ids int64 [B, S]; attention_mask fp32 [B, 1, S, P+S] (additive: the caller
    writes the prefix-LM pattern); past_key_values fp32 [P, L, 2, B, H, D]
    [; role_ids int64 [B, S]: only where the model has role embeddings (role_type_size); -1 = no role term, what
    PaddleNLP's generate() without role_ids computes]
    -> logits fp32 [B, S, V], present_key_values fp32 [S, L, 2, B, H, D] (the S new positions only)

Attention recomputed from each layer's MultiHeadAttention projections (as bart.py)."""
from __future__ import annotations

from .wrapper import attend, layer_past, split_heads, stack_present

INPUTS = ("input_ids", "token_type_ids", "position_ids", "attention_mask", "past_key_values")
ROLE_INPUT = "role_ids"
OUTPUTS = ("logits", "present_key_values")


def inputs(geo: dict) -> tuple[str, ...]:
    """The step graph's inputs for this model (role_ids last where it has role embeddings)."""
    return INPUTS + ((ROLE_INPUT,) if geo.get("role_type_size") else ())


def geometry(c) -> dict:
    unified = getattr(c, "model_type", "") == "unified_transformer"
    return {"num_layers": c.num_hidden_layers, "heads": c.num_attention_heads,
            "head_dim": c.hidden_size // c.num_attention_heads, "vocab_size": c.vocab_size,
            "max_positions": c.max_position_embeddings, "pad_id": c.pad_token_id, "bos_id": c.bos_token_id,
            "eos_id": c.eos_token_id, "mask_id": c.mask_token_id,
            "role_type_size": (getattr(c, "role_type_size", None) or None) if unified else None,
            # adjust_logits_during_generation: these never come out of generate() (UNIMO: unk, pad, bos;
            # UnifiedTransformer: unk, bos, mask)
            "suppress_ids": sorted({c.unk_token_id, c.bos_token_id,
                                    c.mask_token_id if unified else c.pad_token_id})}


def _block(norm, fn, x, before: bool):
    return x + fn(norm(x)) if before else norm(x + fn(x))


def step(model, input_ids, token_type_ids, position_ids, attention_mask, past, role_ids=None):
    import paddle
    u = model.base_model                                   # .unimo or .unified_transformer
    h = u.embeddings(input_ids, token_type_ids, position_ids)
    if role_ids is not None:                               # role -1: no term (Paddle without role_ids)
        known = (role_ids >= 0).astype(h.dtype).unsqueeze(-1)
        h = h + u.embeddings.role_embeddings(paddle.clip(role_ids, min=0)) * known
    norm = getattr(u, "encoder_norm", None)                # UNIMO normalizes the embeddings (not in its encoder)
    if norm is not None:
        h = norm(h)
    news = []
    for i, layer in enumerate(u.encoder.layers):
        sa, before = layer.self_attn, layer.normalize_before
        pk, pv = layer_past(past, i)

        def self_attn(x, sa=sa, pk=pk, pv=pv):
            k = split_heads(sa.k_proj(x), sa.num_heads, sa.head_dim)
            v = split_heads(sa.v_proj(x), sa.num_heads, sa.head_dim)
            news.append((k, v))
            q = split_heads(sa.q_proj(x), sa.num_heads, sa.head_dim)
            return sa.out_proj(attend(q, paddle.concat([pk, k], 2), paddle.concat([pv, v], 2), attention_mask,
                                      sa.head_dim ** -0.5))

        def ffn(x, layer=layer):
            return layer.linear2(layer.activation(layer.linear1(x)))

        h = _block(layer.norm1, self_attn, h, before)
        h = _block(layer.norm2, ffn, h, before)
    if u.encoder.norm is not None:
        h = u.encoder.norm(h)
    return model.lm_head(h), stack_present(news)


def make_wrapper(model, step_fn=None):
    """The step graph's Layer over `step_fn(model, ids, second ids, positions, mask, past)` (default: UNIMO's step;
    chatglm.py passes its own, the second ids being block positions)."""
    import paddle
    fn = step_fn or step

    class PrefixLMStep(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, token_type_ids, position_ids, attention_mask, past_key_values, role_ids=None):
            extra = () if role_ids is None else (role_ids,)
            return fn(self.model, input_ids, token_type_ids, position_ids, attention_mask, past_key_values, *extra)

    return PrefixLMStep()


def input_specs(geo: dict):
    import paddle
    from paddle.static import InputSpec
    ids = [InputSpec([None, None], "int64", n) for n in INPUTS[:3]]
    return ids + [InputSpec([None, 1, None, None], paddle.float32, "attention_mask"),
                  InputSpec([None, geo["num_layers"], 2, None, geo["heads"], geo["head_dim"]], paddle.float32,
                            "past_key_values")] + (
        [InputSpec([None, None], "int64", ROLE_INPUT)] if geo.get("role_type_size") else [])
