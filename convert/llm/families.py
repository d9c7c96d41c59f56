"""Per-family adapters for exporting PaddleNLP causal LMs with an explicit KV cache (Paddle side: worker only).

A family names its PaddleNLP class, how to reach embedding / decoder layers / final norm / LM head, how one decoder
layer is called with a (key, value) past, and the patches its modeling code needs to trace into a static graph
with dynamic batch / sequence / past lengths. Patches swap module attributes inside a context manager and are
undone afterwards; the model code itself is never copied.

One registry (FAMILIES, with ARCHITECTURES / MODEL_TYPES naming them): the parent reads config.json's
`architectures` / `model_type` with `family_name` (no Paddle) before any worker starts. Families PaddleNLP 2.8.1
lacks are mapped onto a class of the same math: Mistral = LLaMA (exact within the sliding window), Qwen2 = LLaMA +
q/k/v biases, Gemma = LLaMA + tanh-GELU gate + scaled embedding (`prepare` hooks, applied at load time so the Paddle
reference has them too); Qwen v1 is exported as Qwen2 through a checked `remap`. Llama-3 rope scaling rebuilds
LLaMA's rotary tables.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Family:
    name: str
    model_class: str                         # paddlenlp.transformers class
    parts: Callable                          # model -> (embed(ids, position_ids), layers, final_norm, lm_head)
    layer_step: Callable                     # (layer, h, position_ids, mask4d, past_k, past_v) -> (h, k_all, v_all)
    patches: Callable[[object], contextlib.AbstractContextManager]   # model -> context manager
    kv_heads: Callable                       # config -> number of K/V heads
    head_dim: Callable                       # config -> per-head size
    prepare: Callable | None = None          # (model, model_dir) -> None: extra parameters / math the PaddleNLP
    #                                          class lacks, applied at load time (so the reference has them too)
    remap: Callable | None = None            # model -> (model of the same math in another family's class, that
    #                                          family's name): exported instead, its logits checked against these


@contextlib.contextmanager
def _swap(obj, **attrs):
    old = {k: getattr(obj, k) for k in attrs}
    for k, v in attrs.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(obj, k, v)


# ---------------------------------------------------------------- LLaMA (LlamaForCausalLM; also Qwen2-style GQA)
def _llama_patches(model):
    import paddle
    import paddle.nn.functional as F
    from paddlenlp.transformers.llama import modeling as M

    def sdpa(query_states, config, key_states, value_states, attention_mask, output_attentions, alibi=None,
             sequence_parallel=False, reshard_layer=None, npu_is_casual=False):
        # replaces M.scaled_dot_product_attention: its shape checks and 4-D reshape with several -1 dims cannot
        # trace with dynamic batch / sequence / past. Same math: softmax(q k^T / sqrt(d) + mask) v.
        head_dim = query_states.shape[-1]
        q = paddle.transpose(query_states, [0, 2, 1, 3])
        k = paddle.transpose(key_states, [0, 2, 1, 3])
        v = paddle.transpose(value_states, [0, 2, 1, 3])
        w = paddle.matmul(q / math.sqrt(head_dim), k, transpose_y=True) + attention_mask
        w = F.softmax(w.astype("float32"), axis=-1).astype(q.dtype)
        out = paddle.matmul(w, v).transpose([0, 2, 1, 3])
        return out.reshape([0, 0, -1])

    def repeat_kv(hidden_states, n_rep):
        # replaces M.repeat_kv (reshape with two -1 dims under dynamic shapes)
        if n_rep == 1:
            return hidden_states
        _, _, kvh, d = hidden_states.shape
        return hidden_states.unsqueeze(-2).tile([1, 1, 1, n_rep, 1]).reshape([0, 0, kvh * n_rep, d])

    def swiglu(x, y=None):
        # replaces the fused paddle.incubate swiglu (pd_op.swiglu has no paddle2onnx mapper)
        if y is None:
            x, y = paddle.chunk(x, chunks=2, axis=-1)
        return F.silu(x) * y

    def rotary_forward(self, x, seq_len=None):
        # the whole cos/sin table: positions are gathered by position_ids afterwards, and slicing it by a traced
        # length (-1 under dynamic shapes) would cut it wrongly
        return self.cos_cached.cast(x.dtype), self.sin_cached.cast(x.dtype)

    stack = contextlib.ExitStack()
    stack.enter_context(_swap(M, scaled_dot_product_attention=sdpa, repeat_kv=repeat_kv, swiglu=swiglu))
    stack.enter_context(_swap(M.LlamaRotaryEmbedding, forward=rotary_forward))
    return stack


def _llama_parts(model):
    body = model.llama
    return (lambda ids, pos: body.embed_tokens(ids)), body.layers, body.norm, model.lm_head


def _llama_step(layer, h, position_ids, mask, pk, pv):
    h, (k, v) = layer(h, position_ids=position_ids, attention_mask=mask, past_key_value=(pk, pv), use_cache=True)
    return h, k, v


# ---------------------------------------------------------------- Mixtral (MixtralForCausalLM: LLaMA attention + MoE)
def _dense_moe(self, hidden_states):
    """Mixtral's sparse MoE block computed densely: every expert runs, weighted by its renormalized top-k routing
    weight (0 for unselected experts) — the same sum. PaddleNLP 2.8.1's own forward gathers per-expert index lists
    (data-dependent shapes: no static trace) and fails eagerly as soon as an expert gets several tokens
    (`expert(x) * routing_weights[top_x, idx]` is [n, H] * [n]: a broadcast error)."""
    import paddle
    import paddle.nn.functional as F
    logits = self.gate(hidden_states)                                                 # [B, S, E]
    probs = F.softmax(logits.astype("float32"), axis=-1)
    top_w, top_i = paddle.topk(probs, self.top_k, axis=-1)                            # [B, S, K]
    top_w = top_w / top_w.sum(axis=-1, keepdim=True)
    experts = paddle.arange(self.num_experts, dtype=top_i.dtype)
    chosen = (top_i.unsqueeze(-1) == experts).astype(top_w.dtype)                     # [B, S, K, E]
    weight = (chosen * top_w.unsqueeze(-1)).sum(axis=-2).astype(hidden_states.dtype)  # [B, S, E]
    out = weight[:, :, 0:1] * self.experts[0](hidden_states)
    for e in range(1, self.num_experts):
        out = out + weight[:, :, e:e + 1] * self.experts[e](hidden_states)
    return out, logits


def _mixtral_prepare(model, model_dir):
    import types
    for layer in model.mixtral.layers:
        layer.block_sparse_moe.forward = types.MethodType(_dense_moe, layer.block_sparse_moe)


def _mixtral_patches(model):
    """LLaMA's tracing patches on Mixtral's copy of the attention code (the MoE is dense since load: prepare)."""
    import paddle
    import paddle.nn.functional as F
    from paddlenlp.transformers.mixtral import modeling as M

    def sdpa(query_states, config, key_states, value_states, attention_mask, *args, **kwargs):
        head_dim = query_states.shape[-1]
        q, k, v = (paddle.transpose(t, [0, 2, 1, 3]) for t in (query_states, key_states, value_states))
        w = paddle.matmul(q / math.sqrt(head_dim), k, transpose_y=True) + attention_mask
        w = F.softmax(w.astype("float32"), axis=-1).astype(q.dtype)
        return paddle.matmul(w, v).transpose([0, 2, 1, 3]).reshape([0, 0, -1])

    def repeat_kv(hidden_states, n_rep):
        if n_rep == 1:
            return hidden_states
        _, _, kvh, d = hidden_states.shape
        return hidden_states.unsqueeze(-2).tile([1, 1, 1, n_rep, 1]).reshape([0, 0, kvh * n_rep, d])

    def rotary_forward(self, x, seq_len=None):
        return self.cos_cached.cast(x.dtype), self.sin_cached.cast(x.dtype)

    stack = contextlib.ExitStack()
    stack.enter_context(_swap(M, scaled_dot_product_attention=sdpa, repeat_kv=repeat_kv))
    stack.enter_context(_swap(M.MixtralRotaryEmbedding, forward=rotary_forward))
    return stack


def _mixtral_parts(model):
    body = model.mixtral
    return (lambda ids, pos: body.embed_tokens(ids)), body.layers, body.norm, model.lm_head


# ---------------------------------------------------------------- OPT (OPTForCausalLM)
def _opt_patches(model):
    return contextlib.ExitStack()                 # OPT's attention reshapes with 0 dims and traces as it is


def _opt_parts(model):
    import paddle
    emb, dec = model.opt.embeddings, model.opt.decoder

    def embed(ids, pos):
        x = emb.word_embeddings(ids)
        if emb.project_in is not None:
            x = emb.project_in(x)
        # OPT's learned positions are offset by 2 (its own forward derives them from the mask the same way)
        return x + paddle.nn.functional.embedding(pos + emb.position_embeddings.offset,
                                                  emb.position_embeddings.weight)

    def norm(h):
        if dec.final_layer_norm is not None:
            h = dec.final_layer_norm(h)
        return dec.project_out(h) if dec.project_out is not None else h

    return embed, dec.layers, norm, model.lm_head


def _opt_step(layer, h, position_ids, mask, pk, pv):
    import paddle
    cache = layer.self_attn.Cache(paddle.transpose(pk, [0, 2, 1, 3]), paddle.transpose(pv, [0, 2, 1, 3]))
    out = layer(h, h, tgt_mask=mask, use_cache=True, cache=cache)
    h, new = out[0], out[-1]                      # (hidden, [attention weights,] cache [b, heads, P+S, d])
    return h, paddle.transpose(new.k, [0, 2, 1, 3]), paddle.transpose(new.v, [0, 2, 1, 3])


# ---------------------------------------------------------------- GPT-J (GPTJForCausalLM)
def _gptj_patches(model):
    return contextlib.ExitStack()                 # the block is computed by _gptj_step from its sublayers


def _gptj_prepare(model, model_dir):
    """PaddleNLP 2.8.1's GPT-J and CodeGen keep their causal mask buffer in float32 and use it as paddle.where's
    condition, which Paddle 3 refuses (their own forward fails): the buffer as bool, so the Paddle reference runs."""
    c = model.config                 # CodeGen's config has only the GPT-2 names (no attribute map)
    for name, alias in (("num_hidden_layers", "n_layer"), ("num_attention_heads", "n_head"), ("hidden_size", "n_embd"),
                        ("max_position_embeddings", "n_positions")):
        if not hasattr(c, name):
            setattr(c, name, getattr(c, alias))
    for block in model.transformer.h:
        name = "causal_mask" if hasattr(block.attn, "causal_mask") else "bias"
        setattr(block.attn, name, getattr(block.attn, name).astype("bool"))


def _gptj_parts(model):
    t = model.transformer
    return (lambda ids, pos: t.wte(ids)), t.h, t.ln_f, model.lm_head


def _interleaved_rotary(position_ids, r: int, base: float = 10000.0):
    """Rotary on the first r features of [B, S, H, D] tensors, pairs (x[2i], x[2i+1]) rotated by position_ids x
    base^(-2i/r) (GPT-J's rotate_every_two, ChatGLM v2's). -> rotate(t). rotate_every_two is a constant [r, r]
    matrix (out[2i] = -x[2i+1], out[2i+1] = x[2i]): strided slices break paddle2onnx 2.1.0's export."""
    import numpy as np
    import paddle
    inv = np.repeat(1.0 / base ** (np.arange(0, r, 2) / r), 2).astype("float32")    # each frequency twice
    swap = np.zeros((r, r), "float32")
    swap[np.arange(1, r, 2), np.arange(0, r, 2)] = -1.0
    swap[np.arange(0, r, 2), np.arange(1, r, 2)] = 1.0
    ang = position_ids.astype("float32").unsqueeze(-1) * paddle.to_tensor(inv)              # [B, S, r]
    sin, cos = paddle.sin(ang).unsqueeze(2), paddle.cos(ang).unsqueeze(2)                    # [B, S, 1, r]
    swap_t = paddle.to_tensor(swap)

    def rotate(t):
        rot, keep = t[:, :, :, :r], t[:, :, :, r:]
        return paddle.concat([rot * cos + paddle.matmul(rot, swap_t) * sin, keep], axis=-1)
    return rotate


def _gptj_step(layer, h, position_ids, mask, pk, pv):
    """One GPT-J block from its sublayers, with rotary angles gathered by position_ids (GPT-J's own attention
    offsets positions by the cache length, which left padding would shift): parallel attention + MLP on one
    LayerNorm; interleaved rotary (rotate_every_two) on the first rotary_dim features of q and k."""
    import paddle
    a = layer.attn
    x = layer.ln_1(h)
    heads, d = a.num_attention_heads, a.head_dim
    if hasattr(a, "qkv_proj"):        # CodeGen: one projection laid out as 4 blocks of (q, v, k), heads / 4 each
        qkv = a.qkv_proj(x).reshape([0, 0, 4, 3, heads // 4 * d])
        q, v, k = (qkv[:, :, :, j].reshape([0, 0, heads, d]) for j in range(3))
    else:
        q, k, v = (p(x).reshape([0, 0, heads, d]) for p in (a.q_proj, a.k_proj, a.v_proj))  # [B, S, H, D]
    rotate = _interleaved_rotary(position_ids, a.rotary_dim or d)
    k = paddle.concat([pk, rotate(k)], axis=1)                                                # [B, P+S, H, D]
    v = paddle.concat([pv, v], axis=1)
    qt, kt, vt = (paddle.transpose(t, [0, 2, 1, 3]) for t in (rotate(q), k, v))
    w = paddle.matmul(qt.astype("float32"), kt.astype("float32"), transpose_y=True) / a.scale_attn + mask
    w = paddle.nn.functional.softmax(w, axis=-1).astype(vt.dtype)
    o = a.out_proj(paddle.matmul(w, vt).transpose([0, 2, 1, 3]).reshape([0, 0, heads * d]))
    return h + o + layer.mlp(x), k, v


# ---------------------------------------------------------------- Falcon (RWForCausalLM, rotary variant)
def _rw_prepare(model, model_dir):
    if model.config.alibi:
        raise KeyError("RWForCausalLM with ALiBi (alibi=true) has no export adapter; the rotary variant exports")


def _rw_parts(model):
    t = model.transformer
    return (lambda ids, pos: t.word_embeddings(ids)), t.h, t.ln_f, model.lm_head


def _rw_step(layer, h, position_ids, mask, pk, pv):
    """One Falcon block from its sublayers: fused qkv (per head q|k|v, or multi-query: heads q, one k, one v),
    GPT-NeoX rotary by position_ids (PaddleNLP's own restarts positions at 0 for each cached call), parallel or
    sequential attention/MLP."""
    import paddle
    a = layer.self_attention
    x = layer.input_layernorm(h)
    heads, d = a.num_heads, a.head_dim
    qkv = a.query_key_value(x)
    if a.multi_query:
        qkv = qkv.reshape([0, 0, heads + 2, d])
        q, k, v = qkv[:, :, :heads], qkv[:, :, heads:heads + 1], qkv[:, :, heads + 1:]
    else:
        qkv = qkv.reshape([0, 0, heads, 3, d])
        q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    if layer.config.rotary:
        inv = 1.0 / (10000 ** (paddle.arange(0, d, 2, dtype="float32") / d))
        ang = position_ids.astype("float32").unsqueeze(-1) * inv                               # [B, S, d/2]
        emb = paddle.concat([ang, ang], axis=-1).unsqueeze(2)                                   # [B, S, 1, d]
        cos, sin = paddle.cos(emb), paddle.sin(emb)

        def rotate(t):
            return t * cos + paddle.concat([-t[:, :, :, d // 2:], t[:, :, :, :d // 2]], axis=-1) * sin
        q, k = rotate(q), rotate(k)
    k = paddle.concat([pk, k], axis=1)                                                          # [B, P+S, KV, D]
    v = paddle.concat([pv, v], axis=1)
    qt, kt, vt = (paddle.transpose(t, [0, 2, 1, 3]) for t in (q, k, v))
    w = paddle.matmul(qt, kt, transpose_y=True) * a.inv_norm_factor + mask                   # KV=1 broadcasts
    w = paddle.nn.functional.softmax(w.astype("float32"), axis=-1).astype(vt.dtype)
    out = a.dense(paddle.matmul(w, vt).transpose([0, 2, 1, 3]).reshape([0, 0, heads * d]))
    if layer.config.parallel_attn:
        return h + out + layer.mlp(x), k, v
    r = h + out
    return r + layer.mlp(layer.post_attention_layernorm(r)), k, v


# ---------------------------------------------------------------- Bloom (BloomForCausalLM: ALiBi)
def _bloom_parts(model):
    import paddle
    b = model.bloom

    def embed(ids, pos):
        # ALiBi needs no positions; the decoder contract's position_ids input stays in the graph as a zero term
        # (jit.save refuses an input that no output depends on)
        return b.word_embeddings_layernorm(b.word_embeddings(ids)) + 0.0 * pos.unsqueeze(-1).astype("float32")

    return embed, b.h, b.ln_f, (lambda h: paddle.matmul(h, b.word_embeddings.weight, transpose_y=True))  # tied


def _bloom_step(layer, h, position_ids, mask, pk, pv):
    """One Bloom block from its sublayers. ALiBi: each head adds slope x (key position) to its scores, key
    positions counted over the real (unpadded) keys as Bloom's build_alibi_tensor does; which keys are real is read
    from the additive mask's last query row (it sees every real key)."""
    import paddle
    from paddlenlp.transformers.bloom.modeling import build_alibi_tensor
    a = layer.self_attention
    heads, d = a.num_heads, a.head_dim
    x = layer.input_layernorm(h)
    residual = x if layer.apply_residual_connection_post_layernorm else h
    qkv = a.query_key_value(x).reshape([0, 0, heads, 3, d])
    q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    k = paddle.concat([pk, k], axis=1)                                                       # [B, P+S, H, D]
    v = paddle.concat([pv, v], axis=1)
    valid = (mask[:, 0, -1, :] > -1.0).astype("float32")                                    # [B, T]
    alibi = build_alibi_tensor(valid, heads, "float32").unsqueeze(2)                        # [B, H, 1, T]
    qt, kt, vt = (paddle.transpose(t, [0, 2, 1, 3]) for t in (q, k, v))
    w = paddle.matmul(qt, kt, transpose_y=True) * a.inv_norm_factor + alibi + mask
    w = paddle.nn.functional.softmax(w, axis=-1)
    attn = a.dense(paddle.matmul(w, vt).transpose([0, 2, 1, 3]).reshape([0, 0, heads * d])) + residual
    x = layer.post_attention_layernorm(attn)
    residual = x if layer.apply_residual_connection_post_layernorm else attn
    u = layer.mlp.dense_h_to_4h(x)
    u = u * 0.5 * (1.0 + paddle.tanh(0.79788456 * u * (1 + 0.044715 * u * u)))             # bloom_gelu_forward
    return layer.mlp.dense_4h_to_h(u) + residual, k, v


def _bloom_prepare(model, model_dir):
    c = model.config
    if getattr(c, "pretraining_tp", 1) > 1 and getattr(c, "slow_but_exact", False):
        raise KeyError("Bloom with pretraining_tp > 1 and slow_but_exact has no export adapter")
    for name, alias in (("num_hidden_layers", "n_layer"), ("num_attention_heads", "n_head")):
        if not hasattr(c, name):
            setattr(c, name, getattr(c, alias))


# ---------------------------------------------------------------- ChatGLM v2 (ChatGLMv2ForCausalLM)
def _glm2_prepare(model, model_dir):
    c = model.config
    if getattr(c, "use_long_sequence_strategies", False) or getattr(c, "rope_ratio", 1) != 1:
        raise KeyError("ChatGLMv2 with scaled rotary (use_long_sequence_strategies, rope_ratio) has no export "
                       "adapter; PaddleNLP 2.8.1 computes plain rotary for the reference, which exports")
    if not hasattr(c, "max_position_embeddings"):          # the bundle's max_context: ChatGLM's rotary table size
        c.max_position_embeddings = c.max_sequence_length


def _glm2_parts(model):
    m = model.chatglm_v2
    norm = m.encoder.final_layernorm if m.encoder.post_layer_norm else (lambda h: h)
    return (lambda ids, pos: m.embedding.word_embeddings(ids)), m.encoder.layers, norm, m.output_layer


def _glm2_step(layer, h, position_ids, mask, pk, pv):
    """One ChatGLM v2 block from its sublayers in [B, S, H] layout (PaddleNLP's is [S, B, H] with 4-D reshapes of
    traced sizes): fused qkv with multi-query groups (heads q, G k, G v), interleaved rotary on the first half of
    each head by position_ids (PaddleNLP gathers a fixed table), SwiGLU MLP (silu(first half) x second half)."""
    import paddle
    a = layer.self_attention
    heads, d, g = a.num_attention_heads_per_partition, a.hidden_size_per_attention_head, a.multi_query_group_num
    x = layer.input_layernorm(h)
    qkv = a.query_key_value(x)
    q = qkv[:, :, :heads * d].reshape([0, 0, heads, d])
    k = qkv[:, :, heads * d:(heads + g) * d].reshape([0, 0, g, d])
    v = qkv[:, :, (heads + g) * d:].reshape([0, 0, g, d])
    rotate = _interleaved_rotary(position_ids, d // 2)
    k = paddle.concat([pk, rotate(k)], axis=1)                                                # [B, P+S, G, D]
    v = paddle.concat([pv, v], axis=1)
    rep = heads // g                                     # group j serves heads j*rep .. (j+1)*rep - 1, as tile does

    def expand(t):
        return t.unsqueeze(-2).tile([1, 1, 1, rep, 1]).reshape([0, 0, heads, d]) if rep > 1 else t
    qt, kt, vt = (paddle.transpose(t, [0, 2, 1, 3]) for t in (rotate(q), expand(k), expand(v)))
    w = paddle.matmul(qt, kt, transpose_y=True) * (1.0 / math.sqrt(d)) + mask
    w = paddle.nn.functional.softmax(w.astype("float32"), axis=-1).astype(vt.dtype)
    out = a.dense(paddle.matmul(w, vt).transpose([0, 2, 1, 3]).reshape([0, 0, heads * d]))
    r = (x if layer.apply_residual_connection_post_layernorm else h) + out
    y = layer.post_attention_layernorm(r)
    u = layer.mlp.dense_h_to_4h(y)
    f = u.shape[-1] // 2
    u = paddle.nn.functional.silu(u[:, :, :f]) * u[:, :, f:]
    return (y if layer.apply_residual_connection_post_layernorm else r) + layer.mlp.dense_4h_to_h(u), k, v


# ---------------------------------------------------------------- GPT-2 style (GPTForCausalLM)
def _gpt_patches(model):
    import paddle

    def gelu_tanh(x, approximate=True):
        # paddle2onnx 2.1.0 exports gelu(approximate=True) as the exact erf form (max rel diff 1.5e-4 on a tiny
        # GPT, caught by the gate); spelled out, the tanh approximation exports exactly.
        if not approximate:
            return paddle.nn.functional.gelu(x)
        return 0.5 * x * (1.0 + paddle.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))

    stack = contextlib.ExitStack()
    for layer in model.gpt.decoder.layers:
        stack.enter_context(_swap(layer, activation=gelu_tanh))
    return stack


def _gpt_parts(model):
    gpt = model.gpt
    return ((lambda ids, pos: gpt.embeddings(input_ids=ids, position_ids=pos)), gpt.decoder.layers,
            gpt.decoder.norm, model.lm_head)


def _gpt_step(layer, h, position_ids, mask, pk, pv):
    # PaddleNLP 2.8 GPT caches are (k, v) in [b, seq, heads, d], like LLaMA's; a given mask is used as is
    h, (k, v) = layer(h, attention_mask=mask, use_cache=True, past_key_value=(pk, pv))
    return h, k, v


# ---------------------------------------------------------------- Llama-3 rope scaling (per-frequency factors)
def rope_freq_factors(cfg: dict, head_dim: int) -> list[float] | None:
    """Divisors of the rotary inverse frequencies: config `rope_freq_factors` (as a GGUF's rope_freqs.weight
    stores them) or HF's `rope_scaling` {"rope_type": "llama3", factor, low_freq_factor, high_freq_factor,
    original_max_position_embeddings} (transformers' _compute_llama3_parameters). None: plain rotary."""
    if cfg.get("rope_freq_factors"):
        return [float(x) for x in cfg["rope_freq_factors"]]
    rs = cfg.get("rope_scaling")
    if not isinstance(rs, dict) or rs.get("rope_type", rs.get("type")) != "llama3":
        return None
    import numpy as np
    theta = float(cfg.get("rope_theta", 10000.0))
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    factor, lo, hi = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
    old = float(rs["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old / lo, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    medium = (wavelen >= old / hi) & (wavelen <= old / lo)
    scaled = np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    return (inv / scaled).tolist()


def _llama_prepare(model, model_dir):
    """Llama-3-style rope scaling, which PaddleNLP 2.8.1's LLaMA does not compute: its rotary tables rebuilt from
    the scaled inverse frequencies (every layer's rotary embedding)."""
    import paddle
    c = model.config
    factors = rope_freq_factors(c.to_dict(), c.hidden_size // c.num_attention_heads)
    if factors is None:
        return
    for layer in model.llama.layers:
        rot = layer.self_attn.rotary_emb
        rot.inv_freq = rot.inv_freq / paddle.to_tensor(factors, dtype="float32")
        rot._set_cos_sin_cache(rot.max_position_embeddings)


# ---------------------------------------------------------------- Qwen2: LLaMA + q/k/v biases
def _qwen2_prepare(model, model_dir):
    """PaddleNLP 2.8.1's LLaMA attention has no biases: give q/k/v Linear layers biases (Qwen2's only difference
    from LLaMA's math) and load them from the saved weights (`from_pretrained` dropped them as unexpected keys)."""
    from .eager import raw_state
    _llama_prepare(model, model_dir)
    _add_qkv_biases(model, raw_state(model_dir))


def _llama_kv(c):
    return c.num_key_value_heads or c.num_attention_heads


def _llama_head(c):
    return c.hidden_size // c.num_attention_heads


# ---------------------------------------------------------------- Gemma: LLaMA + GeGLU + scaled embedding
def _gemma_prepare(model, model_dir):
    """Gemma on PaddleNLP's LLaMA (Gemma is not in PaddleNLP 2.8.1): the MLP gate through tanh-GELU instead of SiLU
    and the token embedding multiplied by sqrt(hidden) (folded into the embedding weight here; the LM head is a
    separate, unscaled weight). RMSNorm gains are stored as llama.cpp stores them (1 + w), so LLaMA's RMSNorm is
    Gemma's."""
    import types

    import paddle
    _llama_prepare(model, model_dir)

    def geglu_forward(self, x):
        g = self.gate_proj(x)
        # tanh-GELU spelled out: paddle2onnx 2.1.0 exports gelu(approximate=True) as the erf form
        g = 0.5 * g * (1.0 + paddle.tanh(0.7978845608028654 * (g + 0.044715 * g * g * g)))
        return self.down_proj(g * self.up_proj(x))

    for layer in model.llama.layers:
        layer.mlp.forward = types.MethodType(geglu_forward, layer.mlp)
    emb = model.llama.embed_tokens.weight
    if model.lm_head.weight is emb:
        raise KeyError("Gemma needs an untied LM head weight (llama.cpp's tied embedding is saved twice on import)")
    emb.set_value(emb * paddle.to_tensor(math.sqrt(model.config.hidden_size), dtype=emb.dtype))


# ---------------------------------------------------------------- Qwen (v1): exported as Qwen2 (LLaMA + biases)
def _add_qkv_biases(model, biases: dict) -> None:
    """q/k/v biases on PaddleNLP LLaMA's bias-free attention Linear layers (key: llama.layers.N.self_attn.X.bias)."""
    import paddle
    for i, layer in enumerate(model.llama.layers):
        for n in ("q_proj", "k_proj", "v_proj"):
            lin = getattr(layer.self_attn, n)
            key = f"llama.layers.{i}.self_attn.{n}.bias"
            if key not in biases:
                raise KeyError(f"Qwen2 weights need {key} (q/k/v biases); the state dict has none")
            lin.bias = lin.create_parameter([lin.weight.shape[1]], is_bias=True)
            lin.bias.set_value(paddle.to_tensor(biases[key], dtype=lin.weight.dtype))


def _qwen_remap(model):
    """QWenForCausalLM -> LlamaForCausalLM + q/k/v biases (the qwen2 family): the same math (RMSNorm, half-rotation
    rotary, SiLU-gated MLP with w2 as the gate) while the context stays within `seq_length`, beyond which Qwen
    switches on dynamic NTK and logn attention (the bundle's max_context is capped there)."""
    import paddle
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM
    c = model.config
    if getattr(c, "rotary_pct", 1.0) != 1.0 or not getattr(c, "no_bias", True):
        raise KeyError("this Qwen config (partial rotary or output biases) has no export adapter")
    h = c.hidden_size
    cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=h, intermediate_size=c.intermediate_size // 2,
                      num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                      num_key_value_heads=c.num_attention_heads, rms_norm_eps=c.layer_norm_epsilon,
                      rope_theta=float(c.rotary_emb_base), max_position_embeddings=int(c.seq_length),
                      tie_word_embeddings=False, use_flash_attention=False, use_fused_rms_norm=False,
                      use_fused_rope=False, dtype="float32")
    src = {k: v.numpy() for k, v in model.state_dict().items()}
    sd = {"llama.embed_tokens.weight": src["qwen.wte.weight"], "llama.norm.weight": src["qwen.ln_f.weight"],
          "lm_head.weight": src["lm_head.weight"]}
    for i in range(c.num_hidden_layers):
        q, n = f"qwen.h.{i}.", f"llama.layers.{i}."
        w, b = src[q + "attn.c_attn.weight"], src[q + "attn.c_attn.bias"]
        for j, x in enumerate("qkv"):
            sd[n + f"self_attn.{x}_proj.weight"] = w[:, j * h:(j + 1) * h]
            sd[n + f"self_attn.{x}_proj.bias"] = b[j * h:(j + 1) * h]
        sd.update({n + "self_attn.o_proj.weight": src[q + "attn.c_proj.weight"],
                   n + "input_layernorm.weight": src[q + "ln_1.weight"],
                   n + "post_attention_layernorm.weight": src[q + "ln_2.weight"],
                   n + "mlp.gate_proj.weight": src[q + "mlp.w2.weight"],
                   n + "mlp.up_proj.weight": src[q + "mlp.w1.weight"],
                   n + "mlp.down_proj.weight": src[q + "mlp.c_proj.weight"]})
    out = LlamaForCausalLM(cfg)
    _add_qkv_biases(out, sd)
    out.set_state_dict({k: paddle.to_tensor(v) for k, v in sd.items() if not k.endswith("_proj.bias")})
    out.eval()
    return out, "qwen2"


FAMILIES = {
    "llama": Family("llama", "LlamaForCausalLM", _llama_parts, _llama_step, _llama_patches,
                    kv_heads=_llama_kv, head_dim=_llama_head, prepare=_llama_prepare),
    # Mistral is LLaMA's math plus a sliding attention window: exact while the context fits the window (the
    # bundle's max_context is capped at it)
    "mistral": Family("mistral", "LlamaForCausalLM", _llama_parts, _llama_step, _llama_patches,
                      kv_heads=_llama_kv, head_dim=_llama_head, prepare=_llama_prepare),
    "qwen2": Family("qwen2", "LlamaForCausalLM", _llama_parts, _llama_step, _llama_patches,
                    kv_heads=_llama_kv, head_dim=_llama_head, prepare=_qwen2_prepare),
    "gemma": Family("gemma", "LlamaForCausalLM", _llama_parts, _llama_step, _llama_patches,
                    kv_heads=_llama_kv, head_dim=_llama_head, prepare=_gemma_prepare),
    "qwen": Family("qwen", "QWenForCausalLM", _llama_parts, _llama_step, _llama_patches,
                   kv_heads=lambda c: c.num_attention_heads, head_dim=_llama_head, remap=_qwen_remap),
    "mixtral": Family("mixtral", "MixtralForCausalLM", _mixtral_parts, _llama_step, _mixtral_patches,
                      kv_heads=_llama_kv, head_dim=_llama_head, prepare=_mixtral_prepare),
    "opt": Family("opt", "OPTForCausalLM", _opt_parts, _opt_step, _opt_patches,
                  kv_heads=lambda c: c.num_attention_heads, head_dim=_llama_head),
    "gptj": Family("gptj", "GPTJForCausalLM", _gptj_parts, _gptj_step, _gptj_patches,
                   kv_heads=lambda c: c.num_attention_heads, head_dim=_llama_head, prepare=_gptj_prepare),
    "codegen": Family("codegen", "CodeGenForCausalLM", _gptj_parts, _gptj_step, _gptj_patches,
                      kv_heads=lambda c: c.num_attention_heads, head_dim=_llama_head, prepare=_gptj_prepare),
    "falcon": Family("falcon", "RWForCausalLM", _rw_parts, _rw_step, _gptj_patches,
                     kv_heads=lambda c: 1 if c.multi_query else c.n_head, head_dim=lambda c: c.hidden_size // c.n_head,
                     prepare=_rw_prepare),
    "bloom": Family("bloom", "BloomForCausalLM", _bloom_parts, _bloom_step, _gptj_patches,
                    kv_heads=lambda c: c.n_head, head_dim=lambda c: c.hidden_size // c.n_head,
                    prepare=_bloom_prepare),
    "chatglm2": Family("chatglm2", "ChatGLMv2ForCausalLM", _glm2_parts, _glm2_step, _gptj_patches,
                       kv_heads=lambda c: c.multi_query_group_num,
                       head_dim=lambda c: c.hidden_size // c.num_attention_heads, prepare=_glm2_prepare),
    "gpt": Family("gpt", "GPTForCausalLM", _gpt_parts, _gpt_step, _gpt_patches,
                  kv_heads=lambda c: c.num_attention_heads, head_dim=lambda c: c.hidden_size // c.num_attention_heads),
}
# config.json "architectures" (HF and PaddleNLP names) and "model_type" -> family: read before any worker starts
ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
                 "QWenForCausalLM": "qwen", "QWenLMHeadModel": "qwen", "GemmaForCausalLM": "gemma",
                 "MixtralForCausalLM": "mixtral", "OPTForCausalLM": "opt",
                 "GPTJForCausalLM": "gptj", "CodeGenForCausalLM": "codegen",
                 "RWForCausalLM": "falcon", "BloomForCausalLM": "bloom", "ChatGLMv2ForCausalLM": "chatglm2",
                 "GPTForCausalLM": "gpt", "GPTLMHeadModel": "gpt", "GPT2LMHeadModel": "gpt"}
MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen": "qwen", "gemma": "gemma",
               "mixtral": "mixtral", "opt": "opt", "gptj": "gptj", "codegen": "codegen", "RefinedWeb": "falcon",
               "bloom": "bloom", "chatglm_v2": "chatglm2",
               "gpt": "gpt", "gpt2": "gpt"}
# the fused decoder's form of each family: (fused family, q/k/v biases); None = generic export only
FUSED_FORM = {"llama": ("llama", False), "mistral": ("llama", False), "qwen2": ("llama", True), "qwen": ("llama", True),
              "gpt": ("gpt", False), "gemma": None, "mixtral": None, "opt": None,
              "gptj": None, "codegen": None, "falcon": None, "bloom": None,
              # ChatGLM v2: rotary on half of each head, interleaved pairs (GroupQueryAttention rotates all of it)
              "chatglm2": None}
# causal LMs PaddleNLP ships whose math the KV-cache decoder contract cannot express: refused from config.json
REFUSED = {
    "ChatGLMForCausalLM": "ChatGLM v1 (GLM) attends bidirectionally over the prompt up to its [gMASK] token and "
                          "takes 2-D position ids (position, block position) that depend on where that token is; "
                          "the causal decoder export has one position id per token. Convert it with `paddle2ort "
                          "convert-seq2seq` instead (a prefix-LM text2text bundle: bidirectional prompt, 2-D "
                          "positions). ChatGLM v2 (ChatGLMv2ForCausalLM, model_type chatglm_v2) is causal and exports",
}
REFUSED_TYPES = {"chatglm": "ChatGLMForCausalLM"}


class UnsupportedFamily(KeyError):
    """config.json names an architecture no adapter exports (the CLI's exit 2)."""

    def __str__(self):
        return self.args[0]


def supported() -> str:
    return ", ".join(sorted(ARCHITECTURES))


def family_name(cfg: dict) -> str:
    """The family of a config.json dict, from `architectures` (first entry) or else `model_type`; no Paddle."""
    archs = cfg.get("architectures") or []
    arch = archs[0] if isinstance(archs, list) and archs else None
    refused = arch if arch in REFUSED else REFUSED_TYPES.get(cfg.get("model_type")) if arch is None else None
    if refused:
        raise UnsupportedFamily(f"{refused}: {REFUSED[refused]}")
    if arch in ARCHITECTURES:
        return ARCHITECTURES[arch]
    if arch is None and cfg.get("model_type") in MODEL_TYPES:
        return MODEL_TYPES[cfg["model_type"]]
    named = f"architecture {arch!r}" if arch else f"model_type {cfg.get('model_type')!r}"
    raise UnsupportedFamily(f"{named} has no export adapter (supported: {supported()})")
