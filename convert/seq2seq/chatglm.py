"""ChatGLM v1 (PaddleNLP ChatGLMForCausalLM, GLM-6B), exported as a prefix LM: bidirectional over the prompt up to
its start token (<sop>, bos_token_id), causal after it — UNIMO-text's attention pattern — with GLM's 2-D rotary
positions: the first half of each head rotates by the position (source tokens 0.., every target token at the
[gMASK] position), the second half by the block position (0 over the source, 1, 2, ... over the target). The step
graph (unimo.py's contract, the second id input carrying block positions instead of token types):

    input_ids, block_position_ids, position_ids int64 [B, S]; attention_mask fp32 [B, 1, S, P+S] (additive, the
    runtime's prefix-LM mask); past_key_values fp32 [P, L, 2, B, H, D]
    -> logits fp32 [B, S, V], present_key_values fp32 [S, L, 2, B, H, D] (the S new positions only)

One block from its sublayers in [B, S, H] layout (PaddleNLP's is [S, B, H]); its `attention_scale_coeff`
(q / (sqrt(d) * (i+1)), scores * (i+1)) is the identity in exact arithmetic and is folded away."""
from __future__ import annotations

from .unimo import OUTPUTS, make_wrapper as _make_wrapper
from .wrapper import attend, layer_past, stack_present

INPUTS = ("input_ids", "block_position_ids", "position_ids", "attention_mask", "past_key_values")
__all__ = ["INPUTS", "OUTPUTS", "geometry", "step", "make_wrapper", "input_specs", "paddle_generate"]


def geometry(c) -> dict:
    heads = c.num_attention_heads
    return {"num_layers": c.num_hidden_layers, "heads": heads, "head_dim": c.hidden_size // heads,
            "vocab_size": c.vocab_size, "max_positions": c.max_sequence_length, "pad_id": c.pad_token_id,
            "bos_id": c.bos_token_id, "eos_id": c.eos_token_id, "positions": "glm",
            # the targets sit at the first [gMASK] of the source, else its first [MASK] (prepare_inputs_for_generation)
            "mask_ids": [c.gmask_token_id, c.mask_token_id], "source_end_id": c.gmask_token_id}


def _rope(x, cos, sin):
    import paddle
    x1, x2 = paddle.chunk(x, 2, axis=-1)
    return x * cos + paddle.concat([-x2, x1], axis=-1) * sin


def _angles(pos, inv_freq):
    """int64 [B, S] -> (cos, sin) [B, S, 1, d] as RotaryEmbeddings builds them (freqs twice, concatenated)."""
    import paddle
    f = pos.astype("float32").unsqueeze(-1) * inv_freq
    e = paddle.concat([f, f], axis=-1).unsqueeze(2)
    return paddle.cos(e), paddle.sin(e)


def _gelu_tanh(x):
    """F.gelu(x, approximate=True) spelled out: paddle2onnx 2.1.0 exports the approximate gelu as the exact (erf)
    one, 4e-3 off on these logits (the gate caught it)."""
    import paddle
    return 0.5 * x * (1.0 + paddle.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


def step(model, input_ids, block_position_ids, position_ids, attention_mask, past):
    import paddle
    t = model.chatglm.transformer
    layers = list(t.layers)
    heads, hd = layers[0].attention.num_attention_heads, layers[0].attention.attention_head_size
    rot = hd // 2                                   # each half of a head has its own rotary (position_encoding_2d)
    inv_freq = 1.0 / (10000.0 ** (paddle.arange(0, rot, 2).astype("float32") / rot))
    pc, ps = _angles(position_ids, inv_freq)
    bc, bs = _angles(block_position_ids, inv_freq)

    def rotate(x):                                  # [B, S, H, D]
        a, b = paddle.chunk(x, 2, axis=-1)
        return paddle.concat([_rope(a, pc, ps), _rope(b, bc, bs)], axis=-1)

    alpha = (2 * len(layers)) ** 0.5
    h, news = t.word_embeddings(input_ids), []
    for i, layer in enumerate(layers):
        att = layer.attention
        x = layer.input_layernorm(h)
        q, k, v = paddle.split(paddle.reshape(att.query_key_value(x), [0, 0, heads, 3 * hd]), 3, axis=-1)
        q, k, v = (paddle.transpose(a, [0, 2, 1, 3]) for a in (rotate(q), rotate(k), v))
        news.append((k, v))
        pk, pv = layer_past(past, i)
        scale = hd ** -0.5 if att.attention_scale else float(i + 1)
        a = att.dense(attend(q, paddle.concat([pk, k], 2), paddle.concat([pv, v], 2), attention_mask, scale))
        y = layer.post_attention_layernorm(alpha * x + a)
        h = y * alpha + layer.mlp.dense_4h_to_h(_gelu_tanh(layer.mlp.dense_h_to_4h(y)))
    return model.lm_head(t.final_layernorm(h)), stack_present(news)


def make_wrapper(model):
    return _make_wrapper(model, step)


def input_specs(geo: dict):
    import paddle
    from paddle.static import InputSpec
    ids = [InputSpec([None, None], "int64", n) for n in INPUTS[:3]]
    return ids + [InputSpec([None, 1, None, None], paddle.float32, "attention_mask"),
                  InputSpec([None, geo["num_layers"], 2, None, geo["heads"], geo["head_dim"]], paddle.float32,
                            "past_key_values")]


def paddle_generate(model, sources: list[list[int]], geo: dict, **kw) -> list[list[int]]:
    """PaddleNLP's own ChatGLMForCausalLM.generate() fed what ChatGLMTokenizer._pad gives it for these sources
    (left padding, the 0/1 mask [B, 1, T, T], position ids [B, 2, T]): the parity reference."""
    import numpy as np
    import paddle
    from paddle2ort.runtime.seq2seq import glm_positions, prefix_lm_inputs
    ids, _, _, mask, _ = prefix_lm_inputs(sources, geo["bos_id"], geo["pad_id"])
    pos, block = glm_positions(sources, ids.shape[1], geo["mask_ids"])
    eos = geo["eos_id"]
    with paddle.no_grad():
        out, _ = model.generate(input_ids=paddle.to_tensor(ids),
                                position_ids=paddle.to_tensor(np.stack([pos, block], 1)),
                                attention_mask=paddle.to_tensor((mask == 0).astype(np.int64)), eos_token_id=eos,
                                pad_token_id=geo["pad_id"], use_fast=False, **kw)
    return [r[:r.index(eos)] if eos in r else r for r in out.numpy().tolist()]
