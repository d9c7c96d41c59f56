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

import functools
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paddle2ort.runtime.errors import BadInputError

from .source_checks import check_attention_geometry

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


def _int(reader, key: str, default: int | None = None, minimum: int = 1) -> int:
    """An integer metadata field (>= minimum): a string, float, array or 0 where a count belongs is a damaged
    file, named with the field, never a ValueError traceback or a model with zero layers."""
    v = _required(reader, key) if default is None else _field(reader, key, default)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise BadInputError(f"the GGUF's {key} is {v!r}; it must be an integer >= {minimum}. The file is damaged: "
                            "download or convert it again")
    return int(v)


def _float(reader, key: str, default: float | None = None) -> float:
    """A positive finite float metadata field (epsilons, rope base, scaling factor)."""
    v = _required(reader, key) if default is None else _field(reader, key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not np.isfinite(v) or v <= 0:
        raise BadInputError(f"the GGUF's {key} is {v!r}; it must be a finite number > 0. The file is damaged: "
                            "download or convert it again")
    return float(v)


def gguf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("gguf")
    except PackageNotFoundError:                 # a source checkout of gguf-py
        return "(unknown version)"


READER_VERSIONS = (2, 3)       # GGUF versions gguf.GGUFReader reads


def open_gguf(path: Path):
    """A gguf.GGUFReader, or one BadInputError saying what the file is: not a GGUF at all (wrong magic), a GGUF
    version gguf cannot read, a tensor type it does not know, or a truncated/damaged file (and the fix for each)."""
    import gguf
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path} is not a file; pass a .gguf model file")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        size = path.stat().st_size
    except OSError as e:
        raise BadInputError(f"{path} cannot be read ({e.strerror}); check its permissions") from e
    if head[:4] != b"GGUF":
        what = "is empty" if not head else f"starts with {head[:4]!r}, not the GGUF magic b'GGUF'"
        raise BadInputError(f"{path} is not a readable GGUF file: it {what}, so it is no GGUF at all. Pass a "
                            "llama.cpp .gguf model file (llama.cpp's convert_hf_to_gguf.py makes one of a Hugging "
                            "Face checkpoint)")
    if len(head) == 8:
        version = min(int.from_bytes(head[4:], "little"), int.from_bytes(head[4:], "big"))  # either byte order
        if version not in READER_VERSIONS:
            raise BadInputError(f"{path} is a GGUF version {version} file; gguf {gguf_version()} reads versions "
                                f"{', '.join(map(str, READER_VERSIONS))}: convert the model again with a current "
                                "llama.cpp (convert_hf_to_gguf.py)")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - gguf raises ValueError/struct.error/... on a damaged file
        unknown = re.search(r"(\d+)\)? is not a valid GGMLQuantizationType", str(e))
        if unknown:
            raise BadInputError(f"{path} holds a tensor of type id {unknown.group(1)}, which gguf {gguf_version()} "
                                "does not know: upgrade gguf (pip install -U gguf), or re-quantize the file with "
                                "llama.cpp's llama-quantize to a common type (Q8_0, Q4_K_M, F16)") from e
        raise BadInputError(f"{path} is not a readable GGUF file: it is truncated or damaged ({size} bytes; gguf "
                            f"says {type(e).__name__}: {e}); an interrupted download or copy leaves such a file: "
                            "download or convert it again") from e


def tokenizer_fields(reader) -> dict:
    return {k[len("tokenizer."):]: _field(reader, k) for k in reader.fields if k.startswith("tokenizer.")}


def _shape(t) -> tuple[int, ...]:
    """A reader tensor's shape in llama.cpp's [out, in] order (GGUF lists dims innermost first)."""
    return tuple(int(x) for x in reversed(t.shape.tolist()))


def dequantized(reader) -> dict[str, np.ndarray]:
    """Every tensor as float32 in llama.cpp's [out, in] layout (GGUF lists dims innermost first)."""
    import gguf
    out = {}
    for t in reader.tensors:
        shape = _shape(t)
        try:
            a = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise BadInputError(f"tensor {t.name} has type {t.tensor_type.name}, which gguf {gguf_version()} "
                                f"cannot dequantize; {REQUANTIZE}") from e
        out[t.name] = np.asarray(a, dtype=np.float32).reshape(shape)
    return out


REQUANTIZE = ("re-quantize the file with llama.cpp's llama-quantize to a type it reads (F16, BF16, Q8_0, Q4_K_M, ...), "
              "or upgrade gguf (pip install -U gguf)")


@functools.lru_cache(maxsize=None)
def dequantizable(qtype) -> bool:
    """Whether the installed gguf dequantizes tensors of this type (tried on one zero block: cheap)."""
    import gguf
    block, size = gguf.GGML_QUANT_SIZES.get(qtype, (0, 0))
    if not block:
        return False
    try:
        gguf.quants.dequantize(np.zeros(size, np.uint8), qtype)
    except Exception:  # noqa: BLE001 - NotImplementedError for I8..I64/F64, anything else: not usable either
        return False
    return True


def check_tensor_types(path: Path, reader) -> None:
    """Every tensor's type must be one gguf dequantizes (before any tensor is: a 7B model takes minutes)."""
    bad = [t for t in reader.tensors if not dequantizable(t.tensor_type)]
    if bad:
        shown = ", ".join(f"{t.name} ({t.tensor_type.name})" for t in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise BadInputError(f"{path}: gguf {gguf_version()} cannot dequantize tensor {shown}{more}; {REQUANTIZE}")


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


def _geometry(r, arch: str) -> dict:
    """The model's sizes from its metadata, each a checked integer, and the consistency PaddleNLP's class needs."""
    p = arch + "."
    heads = _int(r, p + "attention.head_count")
    hidden = _int(r, p + "embedding_length")
    kv_key = p + "attention.head_count_kv"
    kv = _int(r, kv_key, heads) if arch != "gpt2" and _field(r, kv_key) else heads
    g = {"hidden": hidden, "heads": heads, "inter": _int(r, p + "feed_forward_length"),
         "layers": _int(r, p + "block_count"), "kv": kv}
    g["head_dim"] = check_attention_geometry((p + "embedding_length", hidden), (p + "attention.head_count", heads),
                                             (kv_key, kv), where="the GGUF's metadata",
                                             fix="the file is damaged: download or convert it again")
    if arch == "gpt2":
        return g
    key_len = _field(r, p + "attention.key_length")
    if key_len is not None and _int(r, p + "attention.key_length") != g["head_dim"]:
        raise BadInputError(f"head size {key_len} != hidden {hidden} / {heads} heads: PaddleNLP 2.8.1's LLaMA "
                            "cannot hold this model")
    if g["head_dim"] % 2:
        raise BadInputError(f"the GGUF's head size {g['head_dim']} ({hidden} / {heads} heads) is odd; rotary "
                            "embeddings need an even one: the file is damaged")
    return g


def expected_tensors(r, arch: str, vocab: int) -> tuple[dict, dict]:
    """(required, optional) tensors of a GGUF of this architecture: name -> shape in [out, in] order (None: any)."""
    g = _geometry(r, arch)
    h, inter, kvd = g["hidden"], g["inter"], g["kv"] * g["head_dim"]
    req = {"token_embd.weight": (vocab, h), "output_norm.weight": (h,)}
    opt = {"output.weight": (vocab, h)}
    if arch == "gpt2":
        ctx = next((_shape(t)[0] for t in r.tensors if t.name == "position_embd.weight"), 1)
        req.update({"position_embd.weight": (ctx, h), "output_norm.bias": (h,)})
        for i in range(g["layers"]):
            b = f"blk.{i}."
            for name, shape in (("attn_norm", (h,)), ("ffn_norm", (h,)), ("attn_qkv", (3 * h, h)),
                                ("attn_output", (h, h)), ("ffn_up", (inter, h)), ("ffn_down", (h, inter))):
                req[b + name + ".weight"], req[b + name + ".bias"] = shape, shape[:1]
        return req, opt
    opt["rope_freqs.weight"] = (g["head_dim"] // 2,)
    for i in range(g["layers"]):
        b = f"blk.{i}."
        req.update({b + "attn_norm.weight": (h,), b + "ffn_norm.weight": (h,), b + "attn_q.weight": (h, h),
                    b + "attn_k.weight": (kvd, h), b + "attn_v.weight": (kvd, h), b + "attn_output.weight": (h, h),
                    b + "ffn_gate.weight": (inter, h), b + "ffn_up.weight": (inter, h),
                    b + "ffn_down.weight": (h, inter)})
        opt[b + "attn_rot_embd"] = opt[b + "attn_rot_embd.weight"] = None   # older files; unused by llama.cpp too
        if arch == "qwen2":
            req.update({b + "attn_q.bias": (h,), b + "attn_k.bias": (kvd,), b + "attn_v.bias": (kvd,)})
    return req, opt


def check_tensors(path: Path, reader, arch: str) -> None:
    """Before any tensor is dequantized: every tensor the architecture needs is there at the shape its metadata
    gives, none is one import-gguf would leave out (a layer past block_count, a mixture-of-experts or extra norm
    tensor: dropping it gives a wrong model without a word), and every type is one gguf dequantizes."""
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")      # check_vocab: it is there
    req, opt = expected_tensors(reader, arch, _shape(emb)[0])
    have = {t.name: _shape(t) for t in reader.tensors}
    missing = [n for n in req if n not in have]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise BadInputError(f"{path} has no tensor {', '.join(missing[:5])}{more}: it is not a complete {arch} model "
                            f"({arch}.block_count {_int(reader, arch + '.block_count')}); download or convert it again")
    biases = [n for n in have if arch != "qwen2" and re.fullmatch(r"blk\.\d+\.attn_[qkv]\.bias", n)]
    if biases:
        raise BadInputError(f"the {arch} GGUF has q/k/v biases ({biases[0]}), which the "
                            f"{'gpt' if arch == 'gpt2' else arch} family has no place for")
    extra = [n for n in have if n not in req and n not in opt]
    if extra:
        more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
        raise BadInputError(f"{path} holds tensors a {arch} model has no place for: {', '.join(extra[:5])}{more}. "
                            "Leaving them out would change the model (a layer past its "
                            f"{arch}.block_count {_int(reader, arch + '.block_count')}, or the experts or extra norms "
                            f"of another architecture); import-gguf reads plain {', '.join(ARCHS)} GGUFs: download "
                            "or convert the model again")
    for name, want in {**req, **opt}.items():
        if name in have and want is not None and have[name] != want:
            raise BadInputError(f"{path}: tensor {name} has shape {list(have[name])}, but the file's metadata "
                                f"({arch}.embedding_length, feed_forward_length, head counts) gives {list(want)}; "
                                "the file is damaged: download or convert it again")
    check_tensor_types(path, reader)


SPECIAL_IDS = ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id")


def check_tokenizer(path: Path, tok: dict) -> dict:
    """The tokenizer fields with their special-token ids checked against the vocabulary (an id past it was an
    IndexError traceback, a negative one named the wrong token): bos/eos/unknown must be in it; a padding id
    outside it is dropped with a warning (llama.cpp ignores it too; padding then uses eos). -> the fields to use."""
    tokens = tok["ggml.tokens"]
    for key in ("ggml.tokens", "ggml.merges"):
        v = tok.get(key)
        if v is not None and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            raise BadInputError(f"{path}: tokenizer.{key} is not a list of strings; the file is damaged: download "
                                "or convert it again")
    n, tok = len(tokens), dict(tok)
    for key in ("ggml.token_type", "ggml.scores"):
        if tok.get(key) is not None and (not isinstance(tok[key], list) or len(tok[key]) != n):
            got = len(tok[key]) if isinstance(tok[key], list) else repr(tok[key])
            raise BadInputError(f"{path}: tokenizer.{key} has {got} entries for {n} tokens; the file is damaged: "
                                "download or convert it again")
    for key in SPECIAL_IDS:
        v = tok.get("ggml." + key)
        if v is None or (isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v < n):
            continue
        if key == "padding_token_id":
            log.warning("%s: tokenizer.ggml.padding_token_id %r is not a token id (0..%d); padding uses the eos "
                        "token", path.name, v, n - 1)
            del tok["ggml." + key]
            continue
        raise BadInputError(f"{path}: tokenizer.ggml.{key} is {v!r}, but the vocabulary's ids are 0..{n - 1}; "
                            "the file is damaged or mixes two tokenizers: download or convert it again")
    return tok


def _llama_like(r, arch: str, t: dict, tok: dict) -> tuple[str, dict, dict]:
    p = arch + "."
    g = _geometry(r, arch)
    heads, kv, hidden = g["heads"], g["kv"], g["hidden"]
    window = _field(r, p + "attention.sliding_window")
    family = "mistral" if window else (arch if arch in ("qwen2", "gemma") else "llama")
    cfg = {"architectures": [HF_ARCHITECTURE[family]], "model_type": "llama",
           "vocab_size": int(_take(t, "token_embd.weight").shape[0]), "hidden_size": hidden,
           "intermediate_size": g["inter"], "num_hidden_layers": g["layers"], "num_attention_heads": heads,
           "num_key_value_heads": kv, "rms_norm_eps": _float(r, p + "attention.layer_norm_rms_epsilon"),
           "rope_theta": _float(r, p + "rope.freq_base", 10000.0),
           "max_position_embeddings": _int(r, p + "context_length", 2048),
           "tie_word_embeddings": "output.weight" not in t and arch != "gemma", **_special_ids(tok),
           "use_flash_attention": False, "use_fused_rms_norm": False, "use_fused_rope": False, "dtype": "float32"}
    scaling = _field(r, p + "rope.scaling.type")
    if scaling and scaling != "none":
        if scaling != "linear":
            raise BadInputError(f"rope scaling {scaling!r} is not computed by PaddleNLP 2.8.1's LLaMA (linear is)")
        cfg.update(rope_scaling_type="linear", rope_scaling_factor=_float(r, p + "rope.scaling.factor"))
    if window:
        cfg["sliding_window"] = _int(r, p + "attention.sliding_window")
    if "rope_freqs.weight" in t:             # Llama-3.1-style rope scaling: per-frequency divisors
        cfg["rope_freq_factors"] = [float(x) for x in t["rope_freqs.weight"].reshape(-1)]
    permute = arch == "llama"                 # llama.cpp permutes q/k of LLaMA-converted models only
    q = (lambda w: unpermute_rotary(w, heads)) if permute else (lambda w: w)
    k = (lambda w: unpermute_rotary(w, kv)) if permute else (lambda w: w)
    sd = {"llama.embed_tokens.weight": _take(t, "token_embd.weight"),
          "llama.norm.weight": _take(t, "output_norm.weight"),
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
    g = _geometry(r, "gpt2")
    hidden = g["hidden"]
    cfg = {"architectures": ["GPTForCausalLM"], "model_type": "gpt",
           "vocab_size": int(_take(t, "token_embd.weight").shape[0]), "hidden_size": hidden,
           "intermediate_size": g["inter"], "num_hidden_layers": g["layers"], "num_attention_heads": g["heads"],
           "max_position_embeddings": int(_take(t, "position_embd.weight").shape[0]),
           "layer_norm_epsilon": _float(r, "gpt2.attention.layer_norm_epsilon", 1e-5),
           "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "normalize_before": True,
           **_special_ids(tok), "dtype": "float32"}
    if "output.weight" in t and not np.array_equal(t["output.weight"], t["token_embd.weight"]):
        raise BadInputError("the gpt2 GGUF has an LM head apart from its token embedding; PaddleNLP's "
                            "GPTForCausalLM ties them")
    sd = {"gpt.embeddings.word_embeddings.weight": t["token_embd.weight"],
          "gpt.embeddings.position_embeddings.weight": t["position_embd.weight"],
          "gpt.decoder.norm.weight": _take(t, "output_norm.weight"),
          "gpt.decoder.norm.bias": _take(t, "output_norm.bias")}
    for i in range(cfg["num_hidden_layers"]):
        g, n = f"blk.{i}.", f"gpt.decoder.layers.{i}."
        qkv_w, qkv_b = _take(t, g + "attn_qkv.weight"), _take(t, g + "attn_qkv.bias")
        for j, x in enumerate("qkv"):
            sd[n + f"self_attn.{x}_proj.weight"] = qkv_w[j * hidden:(j + 1) * hidden].T.copy()
            sd[n + f"self_attn.{x}_proj.bias"] = qkv_b[j * hidden:(j + 1) * hidden].copy()
        sd[n + "self_attn.out_proj.weight"] = _take(t, g + "attn_output.weight").T.copy()
        sd[n + "self_attn.out_proj.bias"] = _take(t, g + "attn_output.bias")
        for ours, theirs in (("norm1", "attn_norm"), ("norm2", "ffn_norm")):
            sd[n + ours + ".weight"] = _take(t, g + theirs + ".weight")
            sd[n + ours + ".bias"] = _take(t, g + theirs + ".bias")
        for ours, theirs in (("linear1", "ffn_up"), ("linear2", "ffn_down")):
            sd[n + ours + ".weight"] = _take(t, g + theirs + ".weight").T.copy()
            sd[n + ours + ".bias"] = _take(t, g + theirs + ".bias")
    return "gpt", cfg, sd


def read_gguf(path: Path, reader=None) -> GGUFModel:
    """The GGUF's architecture, config, PaddleNLP state dict (dequantized float32) and tokenizer fields; the file is
    checked whole (metadata, tokenizer ids, tensor names, shapes and types) before any tensor is dequantized."""
    r = open_gguf(path) if reader is None else reader
    arch, tok = check_gguf(path, r)
    t = dequantized(r)
    family, cfg, sd = _gpt2(r, t, tok) if arch == "gpt2" else _llama_like(r, arch, t, tok)
    return GGUFModel(arch, family, cfg, sd, tok)


def check_gguf(path: Path, reader) -> tuple[str, dict]:
    """Everything knowable without dequantizing: -> (architecture, checked tokenizer fields)."""
    split = _field(reader, "split.count")
    if isinstance(split, (int, np.integer)) and split > 1:
        no = _field(reader, "split.no")
        part = f"part {int(no) + 1} of {int(split)}" if isinstance(no, (int, np.integer)) else f"one of {split} parts"
        raise BadInputError(f"{path} is {part} of a split GGUF (llama.cpp's gguf-split); import-gguf reads one "
                            f"whole file: merge the parts first with llama-gguf-split --merge {path} merged.gguf, "
                            "then import merged.gguf")
    arch = check_arch(path, reader)
    tok = tokenizer_fields(reader)
    check_vocab(path, tok, reader)
    tok = check_tokenizer(path, tok)
    check_tensors(path, reader, arch)
    return arch, tok


def check_arch(path: Path, reader) -> str:
    arch = _field(reader, "general.architecture")
    if arch is None:
        raise BadInputError(f"{path} has no general.architecture field, so its tensors cannot be read as any "
                            f"model; import-gguf reads {', '.join(ARCHS)} GGUFs: convert the model again with "
                            "llama.cpp's convert_hf_to_gguf.py")
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


IMPORT_FILES = {"gguf.json", "model/config.json", "model/model.safetensors", "tokenizer/tokenizer.json",
                "tokenizer/tokenizer_config.json"}


def import_entries(dest: Path) -> list[str] | None:
    """None when dest is not an import-gguf output (no gguf.json that import-gguf wrote); else every file in it,
    at any depth, that an import does not write (a note in DIR/model/ would go with the folder on --overwrite)."""
    dest = Path(dest)
    if dest.is_dir() and not any(dest.iterdir()):
        return []
    try:
        meta = json.loads((dest / "gguf.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not (isinstance(meta, dict) and {"source", "architecture", "family", "tensor_types"} <= set(meta)):
        return None                                      # someone else's gguf.json
    found = [p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_symlink() or not p.is_dir()]
    return sorted(f for f in found if f not in IMPORT_FILES)


def check_output_parent(path: Path, out: Path) -> None:
    """-o under a file (the .gguf itself, say): named as such (it was 'cannot write the bundle ... not a writable
    directory')."""
    probe = out.parent
    while str(probe) not in ("", ".") and not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "the input file" if probe.resolve() == path.resolve() else "the file"
        raise BadInputError(f"-o {out} is inside {what} {probe}, and a file holds no folder; give a folder path "
                            f"for the import, e.g. -o {probe.parent / (probe.stem + '-import')}")


def import_gguf(path: Path, out: Path, overwrite: bool = False) -> GGUFModel:
    """FILE.gguf -> OUT/model (config.json + model.safetensors), OUT/tokenizer (tokenizer.json +
    tokenizer_config.json with the chat template), OUT/gguf.json (what was read). `convert-llm OUT/model
    --tokenizer OUT/tokenizer` exports it. Everything is checked and built aside, then renamed into place."""
    from paddle2ort.tokenization.bpe import tokenizer_from_gguf_fields

    from ..bundle import check_destination, staged_bundle
    path, out = Path(path), Path(out)
    check_output_parent(path, out)
    check_destination(out, overwrite, (path,), owned=import_entries, kind="GGUF import")
    r = open_gguf(path)
    _, fields = check_gguf(path, r)
    tokenizer = tokenizer_from_gguf_fields(fields)      # unsupported tokenizers fail before anything is dequantized
    types = sorted({t.tensor_type.name for t in r.tensors})
    model = read_gguf(path, r)
    del r
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
