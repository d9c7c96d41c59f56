"""The two exported graphs of an encoder-decoder model (Paddle side: worker only), over a family adapter.

encoder:  input_ids int64 [B, T], attention_mask int64 [B, T] (1 = real, right padding)
          -> cross_key_values fp32 [L, 2, B, H, T, D]   every decoder layer's cross-attention K/V, computed once
decoder:  decoder_input_ids int64 [B, S], encoder_attention_mask int64 [B, T],
          past_key_values fp32 [P, L, 2, B, H, D] (self-attention, time-major), cross_key_values (as above)
          -> logits fp32 [B, S, V], present_key_values fp32 [S, L, 2, B, H, D] (the S new positions only)
Decoder rows share one target length (no decoder padding): positions are P .. P+S-1 for every row.
"""
from __future__ import annotations

ENCODER_INPUTS = ("input_ids", "attention_mask")
ENCODER_OUTPUTS = ("cross_key_values",)
DECODER_INPUTS = ("decoder_input_ids", "encoder_attention_mask", "past_key_values", "cross_key_values")
DECODER_OUTPUTS = ("logits", "present_key_values")
MASK_VALUE = -1e4         # additive mask, as PaddleNLP's T5/BART use


def split_heads(x, heads: int, head_dim: int):
    """[B, S, H*D] -> [B, H, S, D]"""
    import paddle
    return paddle.transpose(paddle.reshape(x, [0, 0, heads, head_dim]), [0, 2, 1, 3])


def attend(q, k, v, bias, scale: float):
    """softmax(q k^T * scale + bias) v: q [B, H, S, D], k/v [B, H, T, D], bias broadcast to [B, H, S, T]
    -> [B, S, H*D]."""
    import paddle
    import paddle.nn.functional as F
    scores = paddle.matmul(q * scale if scale != 1.0 else q, k, transpose_y=True) + bias
    out = paddle.matmul(F.softmax(scores, axis=-1), v)
    return paddle.reshape(paddle.transpose(out, [0, 2, 1, 3]), [0, 0, -1])


def encoder_bias(encoder_mask):
    """[B, T] int -> additive [B, 1, 1, T]"""
    return ((1.0 - encoder_mask.astype("float32")) * MASK_VALUE).unsqueeze([1, 2])


def causal_bias(past, s):
    """Queries at P..P+S-1 may see keys 0..P+q: additive [1, 1, S, P+S]."""
    import paddle
    q_pos = paddle.arange(s, dtype="int64") + past.astype("int64")
    k_pos = paddle.arange(s + past, dtype="int64")
    allowed = (k_pos.unsqueeze(0) <= q_pos.unsqueeze(1)).astype("float32")
    return ((1.0 - allowed) * MASK_VALUE).unsqueeze([0, 1])


def layer_past(past, i):
    """past [P, L, 2, B, H, D] -> (k, v) of layer i as [B, H, P, D]"""
    import paddle
    return (paddle.transpose(past[:, i, 0], [1, 2, 0, 3]), paddle.transpose(past[:, i, 1], [1, 2, 0, 3]))


def stack_present(news):
    """[(k, v) [B, H, S, D] a layer] -> [S, L, 2, B, H, D]"""
    import paddle
    return paddle.transpose(paddle.stack([paddle.stack([k, v]) for k, v in news]), [4, 0, 1, 2, 3, 5])


def stack_cross(kvs):
    """[(k, v) [B, H, T, D] a layer] -> [L, 2, B, H, T, D]"""
    import paddle
    return paddle.stack([paddle.stack([k, v]) for k, v in kvs])


def forced_ids(c) -> dict:
    """The model config's forced BOS/EOS ids (PaddleNLP's generate() reads them from it: BartConfig forces eos=2
    at max length by default, mBART's configs force a language id first), recorded with the geometry."""
    out = {}
    for name in ("forced_bos_token_id", "forced_eos_token_id"):
        v = getattr(c, name, None)
        if isinstance(v, (list, tuple)):
            if len(v) != 1:
                raise ValueError(f"config {name}={v!r}: several forced ids are not supported; set one id")
            v = v[0]
        out[name] = None if v is None else int(v)
    return out


def make_wrappers(model, fam):
    """(encoder Layer, decoder Layer) over the family adapter `fam` (a module of this package)."""
    import paddle

    class Encoder(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return fam.encode(self.model, input_ids, attention_mask)

    class Decoder(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, decoder_input_ids, encoder_attention_mask, past_key_values, cross_key_values):
            return fam.decode(self.model, decoder_input_ids, encoder_attention_mask, past_key_values,
                              cross_key_values)

    return Encoder(), Decoder()


def input_specs(geo: dict):
    import paddle
    from paddle.static import InputSpec
    L, H, D = geo["num_layers"], geo["heads"], geo["head_dim"]
    enc = [InputSpec([None, None], "int64", "input_ids"), InputSpec([None, None], "int64", "attention_mask")]
    dec = [InputSpec([None, None], "int64", "decoder_input_ids"),
           InputSpec([None, None], "int64", "encoder_attention_mask"),
           InputSpec([None, L, 2, None, H, D], paddle.float32, "past_key_values"),
           InputSpec([L, 2, None, H, None, D], paddle.float32, "cross_key_values")]
    return enc, dec
