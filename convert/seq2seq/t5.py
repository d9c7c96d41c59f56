"""T5 (PaddleNLP T5ForConditionalGeneration): pre-norm RMS layers, unscaled attention, relative position buckets
(the first decoder block's table, shared by all blocks, taken for query positions P..P+S-1), tied head rescaled by
d_model ** -0.5. The decoder step is recomputed from the blocks' sublayers."""
from __future__ import annotations

from .wrapper import attend, causal_bias, encoder_bias, layer_past, split_heads, stack_cross, stack_present


def geometry(c) -> dict:
    return {"num_layers": c.num_decoder_layers, "heads": c.num_heads, "head_dim": c.d_kv,
            "vocab_size": c.vocab_size, "d_model": c.d_model, "decoder_start_id": c.decoder_start_token_id,
            "eos_id": c.eos_token_id, "pad_id": c.pad_token_id, "max_source": None, "max_target": None}


def _proj(attn, x):
    return split_heads(x, attn.n_heads, attn.key_value_proj_dim)


def encode(model, input_ids, attention_mask):
    enc = model.t5.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]
    out = []
    for block in model.t5.decoder.block:
        a = block.layer[1].EncDecAttention
        out.append((_proj(a, a.k(enc)), _proj(a, a.v(enc))))
    return stack_cross(out)


def _position_bias(attn, past, s):
    """[1, H, S, P+S] relative-position bias of decoder queries P..P+S-1 (causal buckets)."""
    import paddle
    q_pos = (paddle.arange(s, dtype="int64") + past.astype("int64")).unsqueeze(-1)
    k_pos = paddle.arange(s + past, dtype="int64").unsqueeze(0)
    bucket = attn._relative_position_bucket(k_pos - q_pos, bidirectional=False,
                                            num_buckets=attn.relative_attention_num_buckets)
    return paddle.transpose(attn.relative_attention_bias(bucket), [2, 0, 1]).unsqueeze(0)


def decode(model, ids, encoder_mask, past, cross):
    import paddle
    t5, dec = model.t5, model.t5.decoder
    p, s = paddle.shape(past)[0], paddle.shape(ids)[1]
    h = dec.embed_tokens(ids)
    self_bias = _position_bias(dec.block[0].layer[0].SelfAttention, p, s) + causal_bias(p, s)
    cross_bias = encoder_bias(encoder_mask)
    news = []
    for i, block in enumerate(dec.block):
        sl, cl, ff = block.layer[0], block.layer[1], block.layer[-1]
        a = sl.SelfAttention
        x = sl.layer_norm(h)
        k, v = _proj(a, a.k(x)), _proj(a, a.v(x))
        pk, pv = layer_past(past, i)
        news.append((k, v))
        h = h + a.o(attend(_proj(a, a.q(x)), paddle.concat([pk, k], 2), paddle.concat([pv, v], 2), self_bias, 1.0))
        c = cl.EncDecAttention
        h = h + c.o(attend(_proj(c, c.q(cl.layer_norm(h))), cross[i, 0], cross[i, 1], cross_bias, 1.0))
        h = ff(h)
    h = dec.final_layer_norm(h)
    if t5.config["tie_word_embeddings"]:
        logits = paddle.matmul(h * (t5.config["d_model"] ** -0.5), t5.shared.weight, transpose_y=True)
    else:
        logits = model.lm_head(h)
    return logits, stack_present(news)
