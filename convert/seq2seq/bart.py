"""BART and mBART (PaddleNLP BartForConditionalGeneration / MBartForConditionalGeneration): paddle.nn.Transformer
layers (BART post-norm; mBART pre-norm with final LayerNorms), learned positions offset by 2, layernorm_embedding,
lm_head_weight + final_logits_bias. Attention recomputed from each layer's
MultiHeadAttention projections (its Cache/StaticCache objects do not cross jit.save as tensors)."""
from __future__ import annotations

from .wrapper import attend, causal_bias, encoder_bias, layer_past, split_heads, stack_cross, stack_present


def geometry(c) -> dict:
    return {"num_layers": c.decoder_layers, "heads": c.decoder_attention_heads,
            "head_dim": c.d_model // c.decoder_attention_heads, "vocab_size": c.vocab_size, "d_model": c.d_model,
            "decoder_start_id": c.decoder_start_token_id, "eos_id": c.eos_token_id, "pad_id": c.pad_token_id,
            "max_source": c.max_position_embeddings, "max_target": c.max_position_embeddings}


def _proj(attn, x):
    return split_heads(x, attn.num_heads, attn.head_dim)


def encode(model, input_ids, attention_mask):
    enc = model.get_encoder()(input_ids, attention_mask)
    enc = enc if not isinstance(enc, (tuple, list)) else enc[0]
    enc = getattr(enc, "last_hidden_state", enc)
    return stack_cross([(_proj(l.cross_attn, l.cross_attn.k_proj(enc)), _proj(l.cross_attn, l.cross_attn.v_proj(enc)))
                        for l in model.get_decoder().decoder.layers])


def _block(norm, fn, x, before: bool):
    """Residual block of paddle.nn.Transformer*Layer: pre- or post-norm."""
    return x + fn(norm(x)) if before else norm(x + fn(x))


def decode(model, ids, encoder_mask, past, cross):
    import paddle
    dec = model.get_decoder()
    p, s = paddle.shape(past)[0], paddle.shape(ids)[1]
    pos = paddle.arange(s, dtype="int64") + p.astype("int64") + dec.decoder_embed_positions.offset
    h = dec.embed_tokens(ids) * dec.embed_scale + \
        paddle.nn.functional.embedding(pos, dec.decoder_embed_positions.weight)
    h = dec.decoder_layernorm_embedding(h)
    self_bias, cross_bias = causal_bias(p, s), encoder_bias(encoder_mask)
    news = []
    for i, layer in enumerate(dec.decoder.layers):
        sa, ca, before = layer.self_attn, layer.cross_attn, layer.normalize_before
        pk, pv = layer_past(past, i)

        def self_attn(x, sa=sa, pk=pk, pv=pv):
            k, v = _proj(sa, sa.k_proj(x)), _proj(sa, sa.v_proj(x))
            news.append((k, v))
            o = attend(_proj(sa, sa.q_proj(x)), paddle.concat([pk, k], 2), paddle.concat([pv, v], 2), self_bias,
                       sa.head_dim ** -0.5)
            return sa.out_proj(o)

        def cross_attn(x, ca=ca, i=i):
            return ca.out_proj(attend(_proj(ca, ca.q_proj(x)), cross[i, 0], cross[i, 1], cross_bias,
                                      ca.head_dim ** -0.5))

        def ffn(x, layer=layer):
            return layer.linear2(layer.activation(layer.linear1(x)))

        h = _block(layer.norm1, self_attn, h, before)
        h = _block(layer.norm2, cross_attn, h, before)
        h = _block(layer.norm3, ffn, h, before)
    if dec.decoder.norm is not None:
        h = dec.decoder.norm(h)
    logits = paddle.matmul(h, model.lm_head_weight, transpose_y=True) + model.final_logits_bias
    return logits, stack_present(news)
