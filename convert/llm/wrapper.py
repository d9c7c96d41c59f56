"""The exported decoder: one graph for prefill (empty cache) and single-token steps (Paddle side: worker only).

Inputs
  input_ids        int64 [B, S]
  attention_mask   int64 [B, P+S]      1 = real token, 0 = (left) padding, for the cached and the new positions
  position_ids     int64 [B, S]
  past_key_values  fp32  [P, L, 2, B, KVH, D]   time-major: a cache buffer's first P rows are one contiguous view
Outputs
  logits              fp32 [B, S, V]
  present_key_values  fp32 [S, L, 2, B, KVH, D]  K/V of this call's S tokens only: the caller writes them into its
                                                 preallocated cache at rows P..P+S (no re-concatenation per step)
"""
from __future__ import annotations

INPUT_NAMES = ("input_ids", "attention_mask", "position_ids", "past_key_values")
OUTPUT_NAMES = ("logits", "present_key_values")
MASK_VALUE = -1e4        # additive mask: exp(-1e4) is 0 in fp32 and fp16, and fully masked rows stay finite


def make_wrapper(model, family):
    import paddle

    class CausalLMWithCache(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, past_key_values):
            embed, layers, norm, head = family.parts(self.model)
            past = paddle.shape(past_key_values)[0]
            s = paddle.shape(input_ids)[1]
            t = paddle.shape(attention_mask)[1]
            q_pos = paddle.arange(s, dtype="int64") + past.astype("int64")           # [S] absolute positions
            k_pos = paddle.arange(t, dtype="int64")                                   # [T]
            causal = (k_pos.unsqueeze(0) <= q_pos.unsqueeze(1)).unsqueeze(0)          # [1, S, T]
            allowed = paddle.logical_and(causal, (attention_mask > 0).unsqueeze(1))   # [B, S, T]
            mask = ((1.0 - allowed.astype("float32")) * MASK_VALUE).unsqueeze(1)      # [B, 1, S, T]
            h = embed(input_ids, position_ids)                                        # [B, S, H]
            news = []
            for i, layer in enumerate(layers):
                pk = paddle.transpose(past_key_values[:, i, 0], [1, 0, 2, 3])         # [B, P, KVH, D]
                pv = paddle.transpose(past_key_values[:, i, 1], [1, 0, 2, 3])
                h, k, v = family.layer_step(layer, h, position_ids, mask, pk, pv)     # k, v: [B, P+S, KVH, D]
                news.append(paddle.stack([k[:, past:], v[:, past:]]))                 # [2, B, S, KVH, D]
            logits = head(norm(h))                                                    # [B, S, V]
            present = paddle.transpose(paddle.stack(news), [3, 0, 1, 2, 4, 5])        # [S, L, 2, B, KVH, D]
            return logits, present

    return CausalLMWithCache()


def input_specs(num_layers: int, kv_heads: int, head_dim: int):
    import paddle
    from paddle.static import InputSpec
    return [InputSpec([None, None], "int64", "input_ids"), InputSpec([None, None], "int64", "attention_mask"),
            InputSpec([None, None], "int64", "position_ids"),
            InputSpec([None, num_layers, 2, None, kv_heads, head_dim], paddle.float32, "past_key_values")]
