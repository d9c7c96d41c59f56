"""GGUF (llama.cpp) file -> PaddleNLP model directory + tokenizer: `paddle2ort import-gguf FILE -o DIR`.

The `gguf` package reads the file and dequantizes every tensor type it knows (`gguf.quants.dequantize`: F32, F16,
BF16, Q4_0 ... Q8_0, the K-quants, the IQ types); this module maps llama.cpp's tensor names and layouts onto
PaddleNLP's classes (no library maps GGUF onto PaddleNLP), writes config.json + model.safetensors (no Paddle
needed) and rebuilds the tokenizer from the GGUF's vocabulary, merges, pre-tokenizer and chat template.

Architectures (general.architecture) -> export family (convert/llm/families.py):
  llama  -> llama (mistral when the file has a sliding window): undo llama.cpp's rotary permutation of q/k
  qwen2  -> qwen2 (LLaMA + q/k/v biases; llama.cpp does not permute Qwen2's q/k)
  gemma  -> gemma (LLaMA + tanh-GELU gate + sqrt(hidden) embedding scale; llama.cpp stores RMSNorm gains as 1 + w)
  gpt2   -> gpt   (PaddleNLP GPTForCausalLM: fused qkv split into q/k/v, tied LM head)
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paddle2ort.runtime.errors import BadInputError

log = logging.getLogger(__name__)

ARCHS = ("llama", "qwen2", "gemma", "gpt2")
HF_ARCHITECTURE = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                   "gemma": "GemmaForCausalLM", "gpt": "GPTForCausalLM"}


@dataclass
class GGUFModel:
    arch: str                          # general.architecture
    family: str                        # export family
    config: dict                       # config.json (PaddleNLP)
    state: dict[str, np.ndarray]       # PaddleNLP names, Linear weights [in, out], float32
    tokenizer: dict                    # tokenizer.* fields without the prefix


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _required(reader, key):
    v = _field(reader, key)
    if v is None:
        raise BadInputError(f"the GGUF has no {key!r} field; it is not a complete llama.cpp model file")
    return v


def open_gguf(path: Path):
    import gguf
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path} is not a file; pass a .gguf model file")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - gguf raises ValueError/struct.error/... on a damaged file
        raise BadInputError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e})") from e


def tokenizer_fields(reader) -> dict:
    return {k[len("tokenizer."):]: _field(reader, k) for k in reader.fields if k.startswith("tokenizer.")}


def dequantized(reader) -> dict[str, np.ndarray]:
    """Every tensor as float32 in llama.cpp's [out, in] layout (GGUF lists dims innermost first)."""
    import gguf
    out = {}
    for t in reader.tensors:
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        try:
            a = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise BadInputError(f"tensor {t.name} has type {t.tensor_type.name}, which gguf "
                                f"{getattr(gguf, '__version__', '')} cannot dequantize") from e
        out[t.name] = np.asarray(a, dtype=np.float32).reshape(shape)
    return out


def unpermute_rotary(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp convert_hf_to_gguf's `permute` on q/k weights ([out, in] or biases [out])."""
    out = w.shape[0]
    return w.reshape(n_head, out // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _take(t: dict, name: str) -> np.ndarray:
    if name not in t:
        raise BadInputError(f"the GGUF has no tensor {name!r}; it is not a complete model of its architecture")
    return t[name]


def _special_ids(tok: dict) -> dict:
    eos = int(tok.get("ggml.eos_token_id", 2))
    return {"bos_token_id": int(tok.get("ggml.bos_token_id", 1)), "eos_token_id": eos,
            "pad_token_id": int(tok.get("ggml.padding_token_id", eos))}


def _llama_like(r, arch: str, t: dict, tok: dict) -> tuple[str, dict, dict]:
    p = arch + "."
    heads, kv = int(_required(r, p + "attention.head_count")), int(_field(r, p + "attention.head_count_kv") or 0)
    kv = kv or heads
    hidden = int(_required(r, p + "embedding_length"))
    key_len = _field(r, p + "attention.key_length")
    if key_len is not None and int(key_len) != hidden // heads:
        raise BadInputError(f"head size {key_len} != hidden {hidden} / {heads} heads: PaddleNLP 2.8.1's LLaMA "
                            "cannot hold this model")
    window = _field(r, p + "attention.sliding_window")
    family = "mistral" if window else (arch if arch in ("qwen2", "gemma") else "llama")
    cfg = {"architectures": [HF_ARCHITECTURE[family]], "model_type": "llama",
           "vocab_size": int(_take(t, "token_embd.weight").shape[0]), "hidden_size": hidden,
           "intermediate_size": int(_required(r, p + "feed_forward_length")),
           "num_hidden_layers": int(_required(r, p + "block_count")), "num_attention_heads": heads,
           "num_key_value_heads": kv, "rms_norm_eps": float(_required(r, p + "attention.layer_norm_rms_epsilon")),
           "rope_theta": float(_field(r, p + "rope.freq_base", 10000.0)),
           "max_position_embeddings": int(_field(r, p + "context_length", 2048)),
           "tie_word_embeddings": "output.weight" not in t and arch != "gemma", **_special_ids(tok),
           "use_flash_attention": False, "use_fused_rms_norm": False, "use_fused_rope": False, "dtype": "float32"}
    scaling = _field(r, p + "rope.scaling.type")
    if scaling and scaling != "none":
        if scaling != "linear":
            raise BadInputError(f"rope scaling {scaling!r} is not computed by PaddleNLP 2.8.1's LLaMA (linear is)")
        cfg.update(rope_scaling_type="linear", rope_scaling_factor=float(_required(r, p + "rope.scaling.factor")))
    if window:
        cfg["sliding_window"] = int(window)
    if "rope_freqs.weight" in t:             # Llama-3.1-style rope scaling: per-frequency divisors
        cfg["rope_freq_factors"] = [float(x) for x in t["rope_freqs.weight"].reshape(-1)]
    permute = arch == "llama"                 # llama.cpp permutes q/k of LLaMA-converted models only
    q = (lambda w: unpermute_rotary(w, heads)) if permute else (lambda w: w)
    k = (lambda w: unpermute_rotary(w, kv)) if permute else (lambda w: w)
    sd = {"llama.embed_tokens.weight": _take(t, "token_embd.weight"), "llama.norm.weight": _take(t, "output_norm.weight"),
          "lm_head.weight": t.get("output.weight", t["token_embd.weight"]).T.copy()}
    for i in range(cfg["num_hidden_layers"]):
        g, n = f"blk.{i}.", f"llama.layers.{i}."
        sd[n + "input_layernorm.weight"] = _take(t, g + "attn_norm.weight")
        sd[n + "post_attention_layernorm.weight"] = _take(t, g + "ffn_norm.weight")
        sd[n + "self_attn.q_proj.weight"] = q(_take(t, g + "attn_q.weight")).T.copy()
        sd[n + "self_attn.k_proj.weight"] = k(_take(t, g + "attn_k.weight")).T.copy()
        sd[n + "self_attn.v_proj.weight"] = _take(t, g + "attn_v.weight").T.copy()
        sd[n + "self_attn.o_proj.weight"] = _take(t, g + "attn_output.weight").T.copy()
        sd[n + "mlp.gate_proj.weight"] = _take(t, g + "ffn_gate.weight").T.copy()
        sd[n + "mlp.up_proj.weight"] = _take(t, g + "ffn_up.weight").T.copy()
        sd[n + "mlp.down_proj.weight"] = _take(t, g + "ffn_down.weight").T.copy()
        if family == "qwen2":
            for x in "qkv":
                sd[n + f"self_attn.{x}_proj.bias"] = _take(t, g + f"attn_{x}.bias")
        elif g + "attn_q.bias" in t:
            raise BadInputError(f"the {arch} GGUF has q/k/v biases, which the {family} family has no place for")
    return family, cfg, sd


def _gpt2(r, t: dict, tok: dict) -> tuple[str, dict, dict]:
    hidden = int(_required(r, "gpt2.embedding_length"))
    cfg = {"architectures": ["GPTForCausalLM"], "model_type": "gpt",
           "vocab_size": int(_take(t, "token_embd.weight").shape[0]), "hidden_size": hidden,
           "intermediate_size": int(_required(r, "gpt2.feed_forward_length")),
           "num_hidden_layers": int(_required(r, "gpt2.block_count")),
           "num_attention_heads": int(_required(r, "gpt2.attention.head_count")),
           "max_position_embeddings": int(_take(t, "position_embd.weight").shape[0]),
           "layer_norm_epsilon": float(_field(r, "gpt2.attention.layer_norm_epsilon", 1e-5)),
           "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "normalize_before": True,
           **_special_ids(tok), "dtype": "float32"}
    if "output.weight" in t and not np.array_equal(t["output.weight"], t["token_embd.weight"]):
        raise BadInputError("the gpt2 GGUF has an LM head apart from its token embedding; PaddleNLP's "
                            "GPTForCausalLM ties them")
    sd = {"gpt.embeddings.word_embeddings.weight": t["token_embd.weight"],
          "gpt.embeddings.position_embeddings.weight": t["position_embd.weight"],
          "gpt.decoder.norm.weight": _take(t, "output_norm.weight"), "gpt.decoder.norm.bias": _take(t, "output_norm.bias")}
    for i in range(cfg["num_hidden_layers"]):
        g, n = f"blk.{i}.", f"gpt.decoder.layers.{i}."
        qkv_w, qkv_b = _take(t, g + "attn_qkv.weight"), _take(t, g + "attn_qkv.bias")
        for j, x in enumerate("qkv"):
            sd[n + f"self_attn.{x}_proj.weight"] = qkv_w[j * hidden:(j + 1) * hidden].T.copy()
            sd[n + f"self_attn.{x}_proj.bias"] = qkv_b[j * hidden:(j + 1) * hidden].copy()
        sd[n + "self_attn.out_proj.weight"] = _take(t, g + "attn_output.weight").T.copy()
        sd[n + "self_attn.out_proj.bias"] = _take(t, g + "attn_output.bias")
        for ours, theirs in (("norm1", "attn_norm"), ("norm2", "ffn_norm")):
            sd[n + ours + ".weight"], sd[n + ours + ".bias"] = _take(t, g + theirs + ".weight"), _take(t, g + theirs + ".bias")
        sd[n + "linear1.weight"], sd[n + "linear1.bias"] = _take(t, g + "ffn_up.weight").T.copy(), _take(t, g + "ffn_up.bias")
        sd[n + "linear2.weight"], sd[n + "linear2.bias"] = _take(t, g + "ffn_down.weight").T.copy(), _take(t, g + "ffn_down.bias")
    return "gpt", cfg, sd


def read_gguf(path: Path) -> GGUFModel:
    """The GGUF's architecture, config, PaddleNLP state dict (dequantized float32) and tokenizer fields."""
    r = open_gguf(path)
    arch = check_arch(path, r)
    tok = tokenizer_fields(r)
    check_vocab(path, tok, r)
    t = dequantized(r)
    family, cfg, sd = _gpt2(r, t, tok) if arch == "gpt2" else _llama_like(r, arch, t, tok)
    return GGUFModel(arch, family, cfg, sd, tok)


def check_arch(path: Path, reader) -> str:
    arch = _field(reader, "general.architecture")
    if arch not in ARCHS:
        raise BadInputError(f"{path} holds a {arch!r} model; import-gguf reads {', '.join(ARCHS)} "
                            "(LLaMA-architecture files include Mistral)")
    return arch


def check_vocab(path: Path, tok: dict, reader) -> None:
    """The tokenizer's size must equal the embedding's rows (checked before any tensor is dequantized)."""
    tokens = tok.get("ggml.tokens")
    if not tokens:
        raise BadInputError(f"{path} has no tokenizer (tokenizer.ggml.tokens); import-gguf needs the model's own")
    emb = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if emb is None:
        raise BadInputError(f"{path} has no token_embd.weight tensor")
    rows = int(emb.shape.tolist()[-1])
    if rows != len(tokens):
        raise BadInputError(f"{path}: the tokenizer has {len(tokens)} tokens but the model's embedding has {rows} "
                            "rows; the file mixes a tokenizer and a model that do not belong together")


def save_paddlenlp(model: GGUFModel, out: Path) -> None:
    """config.json + model.safetensors, loadable by PaddleNLP's from_pretrained (no Paddle needed to write)."""
    from safetensors.numpy import save_file
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(model.config, indent=2) + "\n", encoding="utf-8")
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in model.state.items()},
              str(out / "model.safetensors"), metadata={"format": "np"})


IMPORT_ENTRIES = {"model", "tokenizer", "gguf.json"}


def import_entries(dest: Path) -> list[str] | None:
    """None when dest is not an import-gguf output (no gguf.json); else what it holds that an import does not."""
    if dest.is_dir() and not any(dest.iterdir()):
        return []
    if not (dest / "gguf.json").is_file():
        return None
    return sorted(p.name for p in dest.iterdir() if p.name not in IMPORT_ENTRIES)


def import_gguf(path: Path, out: Path, overwrite: bool = False) -> GGUFModel:
    """FILE.gguf -> OUT/model (config.json + model.safetensors), OUT/tokenizer (tokenizer.json +
    tokenizer_config.json with the chat template), OUT/gguf.json (what was read). `convert-llm OUT/model
    --tokenizer OUT/tokenizer` exports it. Everything is checked and built aside, then renamed into place."""
    from paddle2ort.tokenization.bpe import tokenizer_from_gguf_fields

    from ..bundle import check_destination, staged_bundle
    path, out = Path(path), Path(out)
    check_destination(out, overwrite, (path,), owned=import_entries, kind="GGUF import")
    r = open_gguf(path)
    check_arch(path, r)
    fields = tokenizer_fields(r)
    check_vocab(path, fields, r)
    tokenizer = tokenizer_from_gguf_fields(fields)      # unsupported tokenizers fail before anything is dequantized
    del r
    model = read_gguf(path)
    types = sorted({t.tensor_type.name for t in open_gguf(path).tensors})
    log.info("%s: %s -> the %s family, %d layers, tensor types %s", path.name, model.arch, model.family,
             model.config["num_hidden_layers"], ", ".join(types))
    with staged_bundle(out, overwrite, (path,), owned=import_entries, kind="GGUF import") as stage:
        save_paddlenlp(model, stage / "model")
        tokenizer.save(stage / "tokenizer")
        meta = {"source": path.name, "architecture": model.arch, "family": model.family, "tensor_types": types,
                "pre_tokenizer": tokenizer.config.get("pre_tokenizer"),
                "chat_template": bool(tokenizer.config.get("chat_template"))}
        (stage / "gguf.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return model
