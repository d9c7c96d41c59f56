"""The fast decoder graph: LLaMA-family (and GPT-2) decoders written directly in onnxruntime's fused operators.

Beside the generic paddle2onnx export (convert.llm.api), this builds the decoder from the model's weights with
GroupQueryAttention (rotary inside, a preallocated KV buffer shared between past and present),
SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization and, for weight-only int8/int4, MatMulNBits —
the operators onnxruntime's CUDA kernels are fastest on. Written by hand because no library builds these graphs
from Paddle weights (onnxruntime-genai's builder reads HF checkpoints through torch).

Contract (runtime.fused drives it):
  input_ids               int64  [B, S]
  seqlens_k               int32  [B]          tokens in the cache after this call, minus one (per row)
  total_sequence_length   int32  []           S for the prompt call; any upper bound (the capacity) for steps
  past_key_values.{i}.key/value  T [B, KVH, C, D]   C = capacity; bound to the same buffer as present.{i}.*
  -> logits T [B, S, V], present.{i}.key/value T [B, KVH, C, D]
Prompts are right-padded: row b's tokens are 0..len_b-1, its next token is written at position len_b.

Weights come as a PaddleNLP state dict (numpy, Linear weights [in, out]): LlamaForCausalLM (optional q/k/v biases
for Qwen2-style models) or GPTForCausalLM (GPT-2: LayerNorm, learned positions, GELU; positions are computed in the
graph from the cache state); the Paddle side (worker) or a GGUF/HF reader produces it.
"""
from __future__ import annotations

import itertools
import logging
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from paddle2ort.runtime.errors import BadInputError


log = logging.getLogger(__name__)

OPSET = 17
FUSED_PRECISIONS = ("fp32", "fp16", "int8", "int4")   # int8/int4: weight-only MatMulNBits over fp16 (or fp32)
INPUT_NAMES = ("input_ids", "seqlens_k", "total_sequence_length")
RMS, LN = "SkipSimplifiedLayerNormalization", "SkipLayerNormalization"


@dataclass(frozen=True)
class DecoderSpec:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    kv_heads: int
    head_dim: int
    intermediate_size: int
    norm_eps: float
    rope_theta: float
    max_positions: int
    qkv_bias: bool = False
    family: str = "llama"            # "llama" (RMSNorm, rotary, SwiGLU) | "gpt" (LayerNorm, learned positions, GELU)

    @classmethod
    def from_config(cls, cfg: dict, qkv_bias: bool = False, family: str = "llama") -> "DecoderSpec":
        """From a PaddleNLP / HF config.json dict (LLaMA / Qwen2 style, or PaddleNLP GPT with family="gpt")."""
        from .families import FUSED_FORM
        if family not in ("llama", "gpt"):            # an export family (qwen2, mistral, ...) -> its fused form
            if FUSED_FORM.get(family) is None:
                raise BadInputError(f"the fused decoder does not cover the {family!r} family (fused forms: "
                                    f"{', '.join(k for k, v in FUSED_FORM.items() if v)})")
            family, bias = FUSED_FORM[family]
            qkv_bias = qkv_bias or bias
        if family == "gpt" and not cfg.get("normalize_before", True):
            raise BadInputError("the fused GPT decoder is pre-LayerNorm (GPT-2); this config is post-norm")
        for key in ("rope_scaling", "rope_scaling_type", "rope_freq_factors"):
            if cfg.get(key):
                raise BadInputError(f"config has {key}={cfg[key]!r}: scaled rotary is not supported by the fused "
                                    "decoder; use the generic export (paddle2ort convert-llm)")
        if cfg.get("fuse_attention_qkv") or cfg.get("fuse_attention_ffn"):
            raise BadInputError("config has fused q/k/v or gate/up weights (fuse_attention_qkv/ffn); save the "
                                "model unfused for the fused decoder")
        heads = int(cfg["num_attention_heads"])
        head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
        if head_dim % 16:
            raise BadInputError(f"head size {head_dim} is not a multiple of 16, which onnxruntime's "
                                "GroupQueryAttention requires; use the generic export for this model")
        return cls(vocab_size=int(cfg["vocab_size"]), hidden_size=int(cfg["hidden_size"]),
                   num_layers=int(cfg["num_hidden_layers"]), num_heads=heads,
                   kv_heads=int(cfg.get("num_key_value_heads") or heads),
                   head_dim=head_dim,
                   intermediate_size=int(cfg["intermediate_size"]),
                   norm_eps=float(cfg.get("layer_norm_eps", 1e-5) if family == "gpt" else
                                  cfg.get("rms_norm_eps", 1e-6)),
                   rope_theta=float(cfg.get("rope_theta", 10000.0)),
                   max_positions=int(cfg.get("max_position_embeddings", 2048)),
                   qkv_bias=qkv_bias or family == "gpt", family=family)

    def to_json(self) -> dict:
        return asdict(self)

    def weight_bytes(self, bytes_per_param: float = 2.0) -> int:
        """Bytes of weights one decode step reads (embedding row gathers excluded, LM head included)."""
        h, kv = self.hidden_size, self.kv_heads * self.head_dim
        per_layer = h * (h + 2 * kv) + h * h + 3 * h * self.intermediate_size
        return int((self.num_layers * per_layer + h * self.vocab_size) * bytes_per_param)


def _rotary_cache(spec: DecoderSpec, dtype) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [max_positions, D/2] for non-interleaved (rotate-half) rotary, as PaddleNLP's LLaMA computes it."""
    inv = 1.0 / (spec.rope_theta ** (np.arange(0, spec.head_dim, 2, dtype=np.float32) / spec.head_dim))
    freqs = np.outer(np.arange(spec.max_positions, dtype=np.float32), inv)
    return np.cos(freqs).astype(dtype), np.sin(freqs).astype(dtype)


EMBED = {"llama": "llama.embed_tokens.weight", "gpt": "gpt.embeddings.word_embeddings.weight"}


def expected_weights(spec: DecoderSpec) -> dict[str, tuple[int, ...]]:
    """PaddleNLP state-dict name -> shape, for every weight the graph reads."""
    h, kv, i_sz, qd = spec.hidden_size, spec.kv_heads * spec.head_dim, spec.intermediate_size, \
        spec.num_heads * spec.head_dim
    if spec.family == "gpt":
        want = {EMBED["gpt"]: (spec.vocab_size, h),
                "gpt.embeddings.position_embeddings.weight": (spec.max_positions, h),
                "gpt.decoder.norm.weight": (h,), "gpt.decoder.norm.bias": (h,)}
        for i in range(spec.num_layers):
            p = f"gpt.decoder.layers.{i}."
            for n in ("norm1", "norm2"):
                want.update({p + n + ".weight": (h,), p + n + ".bias": (h,)})
            for n, shape in (("q", qd), ("k", kv), ("v", kv)):
                want.update({p + f"self_attn.{n}_proj.weight": (h, shape), p + f"self_attn.{n}_proj.bias": (shape,)})
            want.update({p + "self_attn.out_proj.weight": (qd, h), p + "self_attn.out_proj.bias": (h,),
                         p + "linear1.weight": (h, i_sz), p + "linear1.bias": (i_sz,),
                         p + "linear2.weight": (i_sz, h), p + "linear2.bias": (h,)})
        return want
    want = {EMBED["llama"]: (spec.vocab_size, h), "llama.norm.weight": (h,)}
    for i in range(spec.num_layers):
        p = f"llama.layers.{i}."
        want.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                     p + "self_attn.q_proj.weight": (h, qd), p + "self_attn.k_proj.weight": (h, kv),
                     p + "self_attn.v_proj.weight": (h, kv), p + "self_attn.o_proj.weight": (qd, h),
                     p + "mlp.gate_proj.weight": (h, i_sz), p + "mlp.up_proj.weight": (h, i_sz),
                     p + "mlp.down_proj.weight": (i_sz, h)})
        if spec.qkv_bias:
            want.update({p + "self_attn.q_proj.bias": (qd,), p + "self_attn.k_proj.bias": (kv,),
                         p + "self_attn.v_proj.bias": (kv,)})
    return want


def random_state(spec: DecoderSpec, seed: int = 0, std: float = 0.05) -> dict[str, np.ndarray]:
    """Seeded random weights of the spec's shapes (norm gains around 1): speed runs and device parity checks."""
    rng = np.random.default_rng(seed)
    return {k: ((1.0 if len(s) == 1 and k.endswith(".weight") else 0.0) + rng.normal(0, std, s)).astype(np.float32)
            for k, s in expected_weights(spec).items()}


def check_state(spec: DecoderSpec, state: dict[str, np.ndarray]) -> None:
    """Every weight the graph needs, with the shape the spec implies; one error listing what is wrong."""
    bad = [f"{k}: missing" if k not in state else f"{k}: shape {tuple(state[k].shape)} != {s}"
           for k, s in expected_weights(spec).items() if k not in state or tuple(state[k].shape) != s]
    if bad:
        raise BadInputError("weights do not match the decoder config: " + "; ".join(bad[:6])
                            + (f" (+{len(bad) - 6} more)" if len(bad) > 6 else ""))


def lm_head(spec: DecoderSpec, state: dict[str, np.ndarray]) -> np.ndarray:
    """[H, V]; tied models (no lm_head.weight, or one shaped like the embedding) use the embedding transposed."""
    w = state.get("lm_head.weight")
    if w is None or tuple(w.shape) == (spec.vocab_size, spec.hidden_size) != (spec.hidden_size, spec.vocab_size):
        w = (state[EMBED[spec.family]] if w is None else w).T
    if tuple(w.shape) != (spec.hidden_size, spec.vocab_size):
        raise BadInputError(f"lm_head.weight has shape {tuple(w.shape)}, expected "
                            f"{(spec.hidden_size, spec.vocab_size)}")
    return w


def build_decoder(spec: DecoderSpec, state: dict[str, np.ndarray], dtype: str = "float16",
                  head_dtype: str | None = None):
    """-> onnx.ModelProto of the fused decoder with float weights in `dtype` (float16 or float32).
    head_dtype="float32" on a float16 graph computes the LM head and the logits in float32: float16 logits of
    magnitude 16-32 are 1/64 apart, so near-ties become exact ties (SmolLM2: CPU 19/20 -> 20/20 golden rows,
    H100 16/20 -> 20/20)."""
    return attach(*decoder_graph(spec, state, dtype, head_dtype))


def tensor_header(t, name: str, arr: np.ndarray):
    """Fill TensorProto `t` (added in place: `initializer.extend` would copy it) with `arr`'s name, shape and type,
    as numpy_helper.from_array does, but not its data; -> t."""
    from onnx.helper import np_dtype_to_tensor_dtype
    t.dims.extend(arr.shape)
    t.name = name
    t.data_type = np_dtype_to_tensor_dtype(arr.dtype)
    return t


def decoder_graph(spec: DecoderSpec, state: dict[str, np.ndarray], dtype: str = "float16",
                  head_dtype: str | None = None) -> tuple:
    """-> (onnx.ModelProto of the fused decoder without initializers, [(name, array)]: its initializers in graph
    order, C-contiguous little-endian arrays not yet copied into protobuf). build_decoder attaches them;
    build_variant streams the large ones straight to the external data file."""
    from onnx import TensorProto, helper

    if dtype not in ("float16", "float32"):
        raise BadInputError(f"fused decoder dtype must be float16 or float32, got {dtype!r}")
    check_state(spec, state)
    np_t = np.dtype(dtype)
    elem = TensorProto.FLOAT16 if dtype == "float16" else TensorProto.FLOAT
    inits, nodes = [], []

    def w(name: str, arr: np.ndarray, dtype=None) -> str:
        inits.append((name, np.ascontiguousarray(arr, dtype=np.dtype(dtype or np_t).newbyteorder("<"))))
        return name
    w.raw = lambda name, arr: inits.append((name, arr))     # a small non-float initializer, as is

    def node(op, ins, outs, name, domain="", **attrs):
        nodes.append(helper.make_node(op, ins, outs, name=name, domain=domain, **attrs))
        return outs[0]

    def linear(x: str, name: str, weight: np.ndarray, out: str | None = None, as_dtype=None) -> str:
        """x @ weight ([in, out]); the weight initializer and the node are both called `name` (the quantizer
        finds the LM head by it)."""
        return node("MatMul", [x, w(name, weight, as_dtype)], [out or name + ".out"], name)

    x = (_gpt_layers if spec.family == "gpt" else _llama_layers)(spec, state, w, node, np_t, linear)
    head_w = lm_head(spec, state)
    if head_dtype and head_dtype != dtype:
        if head_dtype != "float32":
            raise BadInputError(f"head_dtype must be float32 (or the graph dtype), got {head_dtype!r}")
        x = node("Cast", [x], ["final_norm.f32"], "final_norm.cast", to=TensorProto.FLOAT)
        linear(x, "lm_head", head_w, "logits", np.float32)
    else:
        linear(x, "lm_head", head_w, "logits")
    logits_elem = TensorProto.FLOAT if head_dtype == "float32" else elem

    kv_shape = ["batch", spec.kv_heads, "max_length", spec.head_dim]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [])]
    outputs = [helper.make_tensor_value_info("logits", logits_elem, ["batch", "sequence", spec.vocab_size])]
    for i in range(spec.num_layers):
        for kv in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kv}", elem, kv_shape))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kv}", elem, kv_shape))
    graph = helper.make_graph(nodes, "paddle2ort_fused_decoder", inputs, outputs)
    model = helper.make_model(graph, producer_name="paddle2ort.fused",
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model, inits


def _llama_layers(spec: DecoderSpec, state, w, node, np_t, linear) -> str:
    """RMSNorm -> packed QKV -> GQA (rotary inside) -> o -> SkipRMSNorm -> gate|up -> SwiGLU -> down, per layer."""
    cos, sin = _rotary_cache(spec, np_t)
    w("cos_cache", cos)
    w("sin_cache", sin)
    hidden = node("Gather", [w("embed_tokens", state["llama.embed_tokens.weight"]), "input_ids"], ["embeds"],
                  "embed")
    x = node("SimplifiedLayerNormalization", [hidden, w("layers.0.input_layernorm", state[
        "llama.layers.0.input_layernorm.weight"])], ["layers.0.ln1"], "layers.0.ln1", axis=-1,
             epsilon=spec.norm_eps, stash_type=1)
    residual = hidden
    for i in range(spec.num_layers):
        p, q = f"llama.layers.{i}.", f"layers.{i}."
        qkv_w = np.concatenate([state[p + f"self_attn.{n}_proj.weight"] for n in "qkv"], axis=1)   # [H, (N+2KVH)D]
        qkv = linear(x, q + "qkv_proj", qkv_w)
        if spec.qkv_bias:
            qkv_b = np.concatenate([state[p + f"self_attn.{n}_proj.bias"] for n in "qkv"])
            qkv = node("Add", [qkv, w(q + "qkv_bias", qkv_b)], [q + "qkv_b"], q + "qkv_bias")
        attn = node("GroupQueryAttention",
                    [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", "seqlens_k",
                     "total_sequence_length", "cos_cache", "sin_cache"],
                    [q + "attn", f"present.{i}.key", f"present.{i}.value"], q + "gqa", domain="com.microsoft",
                    num_heads=spec.num_heads, kv_num_heads=spec.kv_heads, do_rotary=1, rotary_interleaved=0,
                    scale=float(1.0 / np.sqrt(spec.head_dim)), local_window_size=-1)
        o = linear(attn, q + "o_proj", state[p + "self_attn.o_proj.weight"])
        x, residual = skip_norm(node, RMS, o, residual, [w(q + "post_attention_layernorm",
                                state[p + "post_attention_layernorm.weight"])], q + "ln2", spec.norm_eps)
        gu_w = np.concatenate([state[p + "mlp.gate_proj.weight"], state[p + "mlp.up_proj.weight"]], axis=1)
        gu = linear(x, q + "gate_up_proj", gu_w)
        if i == 0:
            w.raw("split_sizes", np.array([spec.intermediate_size] * 2, "<i8"))
        node("Split", [gu, "split_sizes"], [q + "gate", q + "up"], q + "split", axis=-1)
        sig = node("Sigmoid", [q + "gate"], [q + "sig"], q + "sigmoid")
        silu = node("Mul", [q + "gate", sig], [q + "silu"], q + "silu")
        act = node("Mul", [silu, q + "up"], [q + "act"], q + "swiglu")
        down = linear(act, q + "down_proj", state[p + "mlp.down_proj.weight"])
        if i + 1 < spec.num_layers:
            gamma = w(f"layers.{i + 1}.input_layernorm", state[f"llama.layers.{i + 1}.input_layernorm.weight"])
            x, residual = skip_norm(node, RMS, down, residual, [gamma], f"layers.{i + 1}.ln1", spec.norm_eps)
        else:
            x, _ = skip_norm(node, RMS, down, residual, [w("norm", state["llama.norm.weight"])], "final_norm",
                             spec.norm_eps)
    return x


def _gpt_layers(spec: DecoderSpec, state, w, node, np_t, linear) -> str:
    """GPT-2: token + learned position embeddings, pre-LayerNorm, QKV with bias -> GQA (no rotary, as many K/V heads
    as heads) -> out_proj -> SkipLayerNorm (bias folded) -> linear1 -> FastGelu (tanh, bias folded) -> linear2.
    Positions come from the cache state: 0..S-1 for a prompt call, seqlens_k (the past length) for a step, computed
    on the device without shape operators."""
    w.raw("one", np.array(1, "<i8"))
    w.raw("zero", np.array(0, "<i8"))
    w.raw("axis1", np.array([1], "<i8"))
    # no Shape/Range (onnxruntime places shape arithmetic on the CPU, which rules out CUDA-graph capture):
    # ones [B, S] -> CumSum - 1 = 0..S-1, ReduceSum = S per row
    ones = node("Add", [node("Mul", ["input_ids", "zero"], ["pos.zeros"], "pos.zeros"), "one"], ["pos.ones"],
                "pos.ones")
    rng = node("Sub", [node("CumSum", [ones, "one"], ["pos.cumsum"], "pos.cumsum"), "one"], ["pos.range"],
               "pos.range")
    s_len = node("ReduceSum", [ones, "axis1"], ["pos.seq_len"], "pos.seq_len", keepdims=1)            # [B, 1]
    step = node("Equal", [s_len, "one"], ["is_step"], "pos.is_step")
    past = node("Cast", ["seqlens_k"], ["pos.past"], "pos.past", to=7)                      # int64
    past = node("Unsqueeze", [past, "axis1"], ["pos.past2"], "pos.past2")
    pos = node("Where", [step, past, rng], ["position_ids"], "pos.where")                    # [B, S]
    tok = node("Gather", [w("wte", state[EMBED["gpt"]]), "input_ids"], ["tok_embeds"], "embed")
    pe = node("Gather", [w("wpe", state["gpt.embeddings.position_embeddings.weight"]), pos], ["pos_embeds"],
              "pos_embed")
    residual = node("Add", [tok, pe], ["embeds"], "embeds")
    g = lambda n: state[n]  # noqa: E731
    x = node("LayerNormalization", [residual, w("layers.0.ln1.w", g("gpt.decoder.layers.0.norm1.weight")),
                                    w("layers.0.ln1.b", g("gpt.decoder.layers.0.norm1.bias"))],
             ["layers.0.ln1"], "layers.0.ln1", axis=-1, epsilon=spec.norm_eps)
    for i in range(spec.num_layers):
        p, q = f"gpt.decoder.layers.{i}.", f"layers.{i}."
        qkv_w = np.concatenate([g(p + f"self_attn.{n}_proj.weight") for n in "qkv"], axis=1)
        qkv_b = np.concatenate([g(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
        qkv = linear(x, q + "qkv_proj", qkv_w)
        qkv = node("Add", [qkv, w(q + "qkv_bias", qkv_b)], [q + "qkv_b"], q + "qkv_bias")
        attn = node("GroupQueryAttention",
                    [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", "seqlens_k",
                     "total_sequence_length"],
                    [q + "attn", f"present.{i}.key", f"present.{i}.value"], q + "gqa", domain="com.microsoft",
                    num_heads=spec.num_heads, kv_num_heads=spec.kv_heads, do_rotary=0,
                    scale=float(1.0 / np.sqrt(spec.head_dim)), local_window_size=-1)
        o = linear(attn, q + "out_proj", g(p + "self_attn.out_proj.weight"))
        x, residual = skip_norm(node, LN, o, residual, [w(q + "ln2.w", g(p + "norm2.weight")),
                                w(q + "ln2.b", g(p + "norm2.bias")),
                                w(q + "out_proj.b", g(p + "self_attn.out_proj.bias"))],
                                q + "ln2", spec.norm_eps)
        h1 = linear(x, q + "linear1", g(p + "linear1.weight"))
        act = node("FastGelu", [h1, w(q + "linear1.b", g(p + "linear1.bias"))], [q + "gelu"], q + "gelu",
                   domain="com.microsoft")
        down = linear(act, q + "linear2", g(p + "linear2.weight"))
        b2 = w(q + "linear2.b", g(p + "linear2.bias"))
        if i + 1 < spec.num_layers:
            n1 = f"gpt.decoder.layers.{i + 1}.norm1."
            x, residual = skip_norm(node, LN, down, residual, [w(f"layers.{i + 1}.ln1.w", g(n1 + "weight")),
                                    w(f"layers.{i + 1}.ln1.b", g(n1 + "bias")), b2], f"layers.{i + 1}.ln1",
                                    spec.norm_eps)
        else:
            x, _ = skip_norm(node, LN, down, residual, [w("final_norm.w", g("gpt.decoder.norm.weight")),
                             w("final_norm.b", g("gpt.decoder.norm.bias")), b2], "final_norm", spec.norm_eps)
    return x


def skip_norm(node, op: str, x: str, residual: str, params: list[str], name: str, eps: float) -> tuple[str, str]:
    """SkipSimplifiedLayerNormalization (params [gamma]) or SkipLayerNormalization (params [gamma, beta, bias]):
    -> (norm(x + bias + residual), x + bias + residual)."""
    outs = [name, name + ".mean", name + ".inv_std", name + ".sum"]
    node(op, [x, residual, *params], outs, name, domain="com.microsoft", epsilon=eps)
    return outs[0], outs[3]


EXTERNAL_DATA_BYTES = 1_800_000_000   # protobuf refuses to serialize a message over 2 GiB; keep a margin for the graph
# onnx.save(save_as_external_data=True, size_threshold=1024) moves a tensor out when sys.getsizeof(raw_data) >= 1024,
# the bytes object's header included: 991 bytes of data and up. Kept, so the data file has onnx.save's layout.
EXTERNAL_MIN_BYTES = 1024 - sys.getsizeof(b"")


def initializer_bytes(model) -> int:
    """Bytes of the model's initializer data, counted from their shapes and types: neither serializing the proto
    (`ByteSize()` serializes it, which is what fails on a proto over 2 GiB) nor reading raw_data (protobuf hands out
    a fresh copy of the bytes on every read)."""
    return sum(_data_bytes(t) for t in model.graph.initializer)


def _data_bytes(t) -> int:
    from onnx import TensorProto
    from onnx.helper import tensor_dtype_to_np_dtype
    n = math.prod(t.dims)
    if t.data_type in (TensorProto.INT4, TensorProto.UINT4, getattr(TensorProto, "FLOAT4E2M1", -1)):
        return (n + 1) // 2                     # two 4-bit values a byte
    return n * tensor_dtype_to_np_dtype(t.data_type).itemsize


def save_model(model, path: Path, threshold: int | None = None) -> None:
    """Atomic save; weights go to one external data file beside the model (`NAME.onnx.data`) when they pass
    `threshold` bytes (decided from the initializers' sizes: the proto itself cannot be measured past 2 GiB).
    Written that way, the model's initializers are left pointing at the data file, as onnx.save leaves them."""
    save_graph(model, [], path, threshold)


def save_graph(model, weights: list, path: Path, threshold: int | None = None) -> None:
    """save_model for a model with initializers still to attach: `weights` [(name, C-contiguous little-endian
    array)], appended after model.graph.initializer (decoder_graph's output). Past the threshold each array is
    written from its own memory into the data file, never copied into the proto; below it they are attached and the
    model saved in one file."""
    import onnx
    from paddle2ort.runtime.files import atomic_path
    path = Path(path)
    limit = EXTERNAL_DATA_BYTES if threshold is None else threshold
    if initializer_bytes(model) + sum(arr.nbytes for _, arr in weights) <= limit:
        with atomic_path(path) as tmp:
            onnx.save(attach(model, weights), str(tmp))
        return
    external = [t.name for t in _initializers(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise BadInputError(f"cannot save {path.name}: initializer {external[0]!r} is already external data "
                            "(load the model with its external data to save it again)")
    _save_with_data(model, path, itertools.chain(_raw_blobs(model.graph), _array_blobs(model.graph, weights)))


def attach(model, weights: list):
    """Append `weights` [(name, array)] to the model's initializers, each built in place (one copy of its bytes
    into the proto); -> model."""
    for name, arr in weights:
        tensor_header(model.graph.initializer.add(), name, arr).raw_data = arr.tobytes()
    return model


def _initializers(graph):
    """The graph's initializers and its subgraphs', in the order onnx.save visits them."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            for sub in [a.g] if a.type == a.GRAPH else a.graphs if a.type == a.GRAPHS else []:
                yield from _initializers(sub)


def _raw_blobs(graph):
    """(tensor, its raw_data) for each initializer that onnx.save would move out (raw_data of EXTERNAL_MIN_BYTES or
    more); raw_data is read once (each read is a copy) and dropped before the next tensor's."""
    for t in _initializers(graph):
        if t.HasField("raw_data"):
            raw = t.raw_data
            if len(raw) >= EXTERNAL_MIN_BYTES:
                yield t, raw


def _array_blobs(graph, weights: list):
    """Append `weights` to the graph's initializers as _raw_blobs sees them: large arrays as (tensor without data,
    the array's own memory), small ones attached inline."""
    for name, arr in weights:
        t = tensor_header(graph.initializer.add(), name, arr)
        if arr.nbytes >= EXTERNAL_MIN_BYTES:
            yield t, memoryview(arr)
        else:
            t.raw_data = arr.tobytes()


def _save_with_data(model, path: Path, blobs) -> None:
    """Write `blobs` [(tensor, bytes-like)] back to back into NAME.onnx.data beside `path` (onnx.save's layout: in
    order, no padding), point each tensor at its bytes (location, offset, length) and write the graph. Both files
    are written to temp files and renamed when both are complete, the data file first; on failure neither appears."""
    import onnx
    from paddle2ort.runtime.files import atomic_path
    location = path.name + ".data"
    placed = []
    with atomic_path(path) as tmp, atomic_path(path.with_name(location)) as tmp_data:
        with open(tmp_data, "wb") as f:
            for t, blob in blobs:
                offset = f.tell()
                f.write(blob)
                placed.append((t, offset, f.tell() - offset))
        for t, offset, length in placed:
            t.ClearField("raw_data")
            _point_at(t, location, offset, length)
        onnx.save(model, str(tmp))
    log.info("wrote %s with %d tensors (%d bytes) in %s", path, len(placed), sum(n for *_, n in placed), location)


def _point_at(t, location: str, offset: int, length: int) -> None:
    """What onnx.external_data_helper.set_external_data records (it insists on raw_data being present)."""
    from onnx import TensorProto
    del t.external_data[:]
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = t.external_data.add()
        entry.key, entry.value = key, str(value)


def build_variant(spec: DecoderSpec, state: dict[str, np.ndarray], precision: str, dst: Path,
                  block_size: int = 32, accuracy_level: int | None = 4, head_bits: int = 8,
                  compute_dtype: str | None = None, head_dtype: str | None = None) -> dict:
    """Write the fused decoder at one precision; returns the options recorded in the manifest.
    fp32 (CPU) / fp16 (GPU) are float graphs; int8 / int4 quantize every MatMul weight with MatMulNBits
    (the LM head keeps `head_bits`) over an fp16 graph unless compute_dtype says float32 (CPU)."""
    if precision not in FUSED_PRECISIONS:
        raise BadInputError(f"fused precision must be one of {FUSED_PRECISIONS}, got {precision!r}")
    dtype = compute_dtype or ("float32" if precision == "fp32" else "float16")
    model, weights = decoder_graph(spec, state, dtype, head_dtype)
    opts = {"graph": "fused", "compute_dtype": dtype, "head_dtype": head_dtype or dtype, "spec": spec.to_json()}
    if precision in ("int8", "int4"):
        model, q = quantize_weights(attach(model, weights), 8 if precision == "int8" else 4, block_size,
                                    accuracy_level, head_bits)
        opts["weight_only"], weights = q, []
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_graph(model, weights, dst)
    return opts


def quantize_weights(model, bits: int, block_size: int, accuracy_level: int | None, head_bits: int):
    from ..precision import quantize_matmuls
    model, n = quantize_matmuls(model, bits, block_size, accuracy_level=accuracy_level, head="lm_head",
                                head_bits=head_bits)
    return model, {"method": "MatMulNBits (RTN, asymmetric)", "bits": bits, "block_size": block_size,
                   "zero_points": "float" if bits == 4 else "uint8",
                   "accuracy_level": accuracy_level, "quantized_nodes": n, "head_bits": head_bits}


def load_steps(samples_npz: Path) -> list[dict[str, np.ndarray]]:
    """The recorded validation scenario (prefill + greedy steps, left-padded) with Paddle's logits per call."""
    data = dict(np.load(samples_npz, allow_pickle=False))
    idx = sorted({int(k.split("/", 1)[0]) for k in data})
    return [{k.split("/", 1)[1]: v for k, v in data.items() if k.startswith(f"{i}/")} for i in idx]


def replay(decoder, steps: list[dict[str, np.ndarray]], pad_id: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Drive a runtime.fused.FusedDecoder through the recorded steps (right-padded, its own cache);
    -> per call (Paddle logits, fused logits) over the valid positions only: [tokens, V]."""
    first = steps[0]
    mask = first["attention_mask"]
    prompts = [row[m > 0].tolist() for row, m in zip(first["input_ids"], mask)]
    st = decoder.state(len(prompts))
    got = decoder.prompt_logits(st, prompts, pad_id)
    ref = first["ref_logits"]
    pairs = [(np.concatenate([ref[b, ref.shape[1] - len(p):] for b, p in enumerate(prompts)]), np.concatenate(got))]
    for step in steps[1:]:
        st.seqlens += 1
        st.ids[...] = step["input_ids"]
        out = decoder.decode_one_token(st)
        pairs.append((step["ref_logits"][:, -1], np.asarray(out)[:, -1].astype(np.float32)))
    decoder.release()
    return pairs


def gate(precision: str, model_path: Path, spec: DecoderSpec, steps: list[dict], pad_id: int, thr,
         device: str = "cpu") -> dict:
    """The fused decoder's logits against Paddle's on the recorded scenario (on the CPU, or onnxruntime's CUDA
    provider: device "gpu"); ValidationError on failure."""
    from paddle2ort.runtime.fused import FusedDecoder
    from paddle2ort.runtime.session import SessionOptions

    from ..validate import compare_pooled, judge
    longest = int(steps[0]["attention_mask"].sum(-1).max())
    dec = FusedDecoder(model_path, spec.to_json(), SessionOptions(device=device), max_length=longest + len(steps))
    pairs = replay(dec, steps, pad_id)
    # pooled over the prefill and every decode step: never one step of a few rows judged alone
    m = compare_pooled([r for r, _ in pairs], [g for _, g in pairs], class_axis=True, tie_margin=thr.tie_margin)
    return judge(f"fused-{precision}", [{"output": "logits", "shape": list(pairs[0][0].shape), "metrics": m}], thr,
                 len(pairs), graph="fused")
