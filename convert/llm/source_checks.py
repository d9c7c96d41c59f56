"""convert-llm's checks of the source model and tokenizer that need no Paddle, run before any worker starts.

config.json is read by PaddleNLP as it is: a geometry that does not divide (hidden size by heads, heads by K/V heads),
a NaN epsilon or a rope scaling the export does not compute either crashed the Paddle worker with a traceback (exit
4 or 1) or, worse, converted and passed the gate (the Paddle reference read the same wrong config). The weights are
read as names and shapes only (adapters.weight_shapes: no data kept): a damaged file, a broken shard index, a
safetensors file PaddleNLP 2.8.1 cannot open, or a checkpoint of another depth or vocabulary than config.json says
is one message (exit 2) here instead of a Paddle error in the worker or a silently dropped layer.
"""
from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

from paddle2ort.runtime.errors import BadInputError

# config.json names of the same quantity across the families (first one present wins)
LAYERS = ("num_hidden_layers", "n_layer", "num_layers")
HIDDEN = ("hidden_size", "n_embd")
HEADS = ("num_attention_heads", "n_head")
KV_HEADS = ("num_key_value_heads", "multi_query_group_num")
POSITIVE = ("vocab_size", "intermediate_size", "max_position_embeddings", "n_positions", "seq_length")
BOOLS = ("tie_word_embeddings", "alibi", "multi_query", "parallel_attn", "bias", "add_qkv_bias",
         "apply_residual_connection_post_layernorm")
EPSILONS = ("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", "layernorm_epsilon")
ROPE_BASES = ("rope_theta", "rotary_emb_base")
# families built on PaddleNLP's LLaMA class: the only ones whose rotary tables take rope_scaling_type (PaddleNLP's
# linear / ntk) or Llama-3 rope_scaling (families._llama_prepare)
LLAMA_CLASS = ("llama", "mistral", "qwen2", "gemma")
PADDLE_ROPE_TYPES = ("linear", "ntk")
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
# the embedding's [vocab, hidden] weight in each family's PaddleNLP names
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)\.")
SAFETENSORS_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                      "BOOL": 1}
INDEX_SUFFIX = ".index.json"


def _first(cfg: dict, keys: tuple[str, ...]) -> tuple[str, object] | None:
    for k in keys:
        if cfg.get(k) is not None:
            return k, cfg[k]
    return None


Size = tuple[str, int]           # (the field's name where the model states it, its value)


def check_attention_geometry(hidden: Size | None, heads: Size | None, kv: Size | None, where: str,
                             fix: str) -> int | None:
    """What attention needs of the model's sizes, wherever they are stated (config.json, a GGUF's metadata): the
    hidden size splits into equal heads, the query heads into equal groups per K/V head. A size not stated is
    None; `where` opens the message (the file), `fix` ends it. -> the head size (None without hidden and heads)."""
    if hidden and heads and hidden[1] % heads[1]:
        raise BadInputError(f"{where}: {hidden[0]} {hidden[1]} is not divisible by {heads[0]} {heads[1]}: "
                            f"attention splits the hidden size into equal heads; {fix}")
    if heads and kv and heads[1] % kv[1]:
        raise BadInputError(f"{where}: {heads[0]} {heads[1]} is not a multiple of {kv[0]} {kv[1]}: each K/V "
                            f"head serves an equal group of query heads; {fix}")
    return hidden[1] // heads[1] if hidden and heads else None


def check_config_fields(cfg: dict, cfg_path: Path, family: str) -> None:
    """The fields every export reads: positive integers that divide as attention needs, finite numbers, booleans
    that are booleans, and a rope scaling this family's export computes."""
    fix = "fix that field in config.json (or re-save the model with model.save_pretrained(DIR))"
    for key, value in cfg.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise BadInputError(f"{cfg_path}: {key} is {value}, not a finite number; {fix}")
    ints = {}
    for role in (LAYERS, HIDDEN, HEADS, KV_HEADS, *((k,) for k in POSITIVE)):
        found = _first(cfg, role)
        if found is None:
            continue
        key, value = found
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInputError(f"{cfg_path}: {key} is {value!r}; it must be an integer >= 1; {fix}")
        ints[role[0]] = (key, value)
    check_attention_geometry(*(ints.get(r[0]) for r in (HIDDEN, HEADS, KV_HEADS)), where=str(cfg_path), fix=fix)
    for key in BOOLS:
        if cfg.get(key) is not None and not isinstance(cfg[key], bool):
            raise BadInputError(f"{cfg_path}: {key} is {cfg[key]!r}, not true or false (a string such as \"false\" "
                                f"reads as true); {fix}")
    for key in EPSILONS:
        v = cfg.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise BadInputError(f"{cfg_path}: {key} is {v!r}; a normalization epsilon is a number >= 0; {fix}")
    for key in ROPE_BASES:
        v = cfg.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            raise BadInputError(f"{cfg_path}: {key} is {v!r}; the rotary base is a number > 0; {fix}")
    _check_rope_scaling(cfg, cfg_path, family, fix)


def _check_rope_scaling(cfg: dict, cfg_path: Path, family: str, fix: str) -> None:
    rs, kind = cfg.get("rope_scaling"), cfg.get("rope_scaling_type")
    if rs is not None and not isinstance(rs, dict):
        raise BadInputError(f"{cfg_path}: rope_scaling is {rs!r}; it must be an object such as {{\"rope_type\": "
                            f"\"llama3\", ...}} or null; {fix}")
    rs_type = (rs or {}).get("rope_type", (rs or {}).get("type"))
    if rs and rs_type not in (None, "default"):
        if rs_type != "llama3" or family not in LLAMA_CLASS:
            where = "for the " + family + " family" if rs_type == "llama3" else "here"
            raise BadInputError(f"{cfg_path}: rope_scaling of type {rs_type!r} is not computed by the export {where} "
                                "(it computes Llama-3 rope scaling on the LLaMA, Mistral, Qwen2 and Gemma families); "
                                "converting would ignore it and serve other positions than the model was trained "
                                "on. Remove rope_scaling only if the model does not use it")
        for k in LLAMA3_KEYS:
            v = rs.get(k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise BadInputError(f"{cfg_path}: Llama-3 rope_scaling needs {k} as a number > 0, got {v!r}; {fix}")
        if rs["low_freq_factor"] == rs["high_freq_factor"]:
            raise BadInputError(f"{cfg_path}: Llama-3 rope_scaling has low_freq_factor = high_freq_factor "
                                f"({rs['low_freq_factor']}): the smoothing between them divides by their difference; "
                                f"{fix}")
    if kind is not None:
        if family not in LLAMA_CLASS or kind not in PADDLE_ROPE_TYPES:
            why = ("dynamic NTK rescales the rotary tables with the sequence length, which the exported graph's "
                   "fixed tables cannot" if kind == "dynamic_ntk" else
                   f"the {family} family's PaddleNLP class ignores it" if family not in LLAMA_CLASS else
                   f"PaddleNLP knows {', '.join(PADDLE_ROPE_TYPES)} and dynamic_ntk")
            raise BadInputError(f"{cfg_path}: rope_scaling_type {kind!r} cannot be exported ({why}); set it to "
                                "null only if the model does not use it")


# ----------------------------------------------------------------------------------------------------- weights
def _safetensors_header(path: Path) -> dict:
    """The header of a safetensors file, checked against the file's size (a truncated file is refused)."""
    size = path.stat().st_size
    bad = f"weight file {path} is truncated or not a safetensors file"
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0] if size >= 8 else None
            if n is None or n > size - 8:
                raise BadInputError(f"{bad} (its header runs past the end of the file); re-save the model")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInputError(f"{bad} (header: {e}); re-save the model") from None
    if not isinstance(header, dict):
        raise BadInputError(f"{bad} (its header is not a JSON object); re-save the model")
    end = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(t, dict) and t.get("dtype") in SAFETENSORS_DTYPES and isinstance(t.get("shape"), list)
              and all(isinstance(d, int) and d >= 0 for d in t["shape"]) and isinstance(t.get("data_offsets"), list)
              and len(t["data_offsets"]) == 2)
        if not ok:
            raise BadInputError(f"{bad}: tensor {name!r} has no valid dtype/shape/data_offsets ({t!r:.120}); "
                                "re-save the model")
        b, e = t["data_offsets"]
        if e - b != math.prod(t["shape"]) * SAFETENSORS_DTYPES[t["dtype"]]:
            raise BadInputError(f"{bad}: tensor {name!r} ({t['dtype']} {t['shape']}) does not fit its data offsets")
        end = max(end, e)
    if 8 + n + end > size:
        raise BadInputError(f"weight file {path} is truncated: its tensors need {8 + n + end} bytes, the file has "
                            f"{size}; copy or re-save it again")
    return header


def _check_safetensors(path: Path) -> None:
    """What PaddleNLP 2.8.1's loader takes: metadata format "np" (without metadata it fails on its own set literal,
    "pt" it refuses) and no bfloat16 (its NumPy reader cannot type it)."""
    header = _safetensors_header(path)
    meta = header.get("__metadata__")
    fmt = meta.get("format") if isinstance(meta, dict) else None
    bf16 = [k for k, t in header.items() if k != "__metadata__" and t["dtype"] == "BF16"]
    if bf16:
        more = " and more" if len(bf16) > 1 else ""
        raise BadInputError(f"weight file {path} holds bfloat16 tensors ({bf16[0]}{more}), which PaddleNLP 2.8.1 "
                            "cannot read from safetensors: save the weights as float32 or float16 (e.g. "
                            "model.save_pretrained(DIR) after loading it with dtype=\"float32\")")
    if fmt != "np":
        shown = "no metadata format" if fmt is None else f"metadata format {fmt!r}"
        raise BadInputError(f"weight file {path} has safetensors {shown}; PaddleNLP 2.8.1 loads only "
                            "format \"np\" (as save_pretrained writes it): load the weights and save them with "
                            "safetensors.numpy.save_file(..., metadata={\"format\": \"np\"}), or save the model "
                            "with model.save_pretrained(DIR)")


def _check_indexes(path: Path) -> None:
    """Sharded checkpoints: each *.index.json a JSON object whose weight_map names shards that are there."""
    for index in sorted(path.glob(f"*{INDEX_SUFFIX}")):
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise BadInputError(f"shard index {index} is not JSON ({e}); copy it again from the checkpoint") from None
        wm = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(wm, dict) or not wm or not all(isinstance(v, str) for v in wm.values()):
            raise BadInputError(f"shard index {index} has no weight_map object (tensor name -> shard file); copy it "
                                "again from the checkpoint")
        missing = sorted({v for v in wm.values() if not (path / v).is_file()})
        if missing:
            raise BadInputError(f"shard index {index.name} names {len(missing)} shard(s) that {path} lacks: "
                                f"{', '.join(missing[:4])}; copy every shard of the checkpoint")


def check_weights(path: Path, cfg: dict) -> None:
    """The weight files: readable (names and shapes, no data kept), and of the depth and vocabulary config.json
    gives: a config that says fewer layers than the weights hold dropped the rest without a word."""
    from .adapters import weight_shapes
    _check_indexes(path)
    for st in sorted(path.glob("*.safetensors")):
        _check_safetensors(st)
    try:
        shapes = weight_shapes(path)
    except BadInputError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types on a damaged file
        raise BadInputError(f"the weights in {path} cannot be read ({type(e).__name__}: {e}); re-save the model") \
            from None
    cfg_path = path / "config.json"
    layers = {int(m.group(1)) for k in shapes for m in [LAYER_INDEX.search(k)] if m}
    want = _first(cfg, LAYERS)
    if layers and want is not None and layers != set(range(want[1])):
        held = f"layers 0..{max(layers)}" if layers == set(range(max(layers) + 1)) else \
            f"layers {sorted(layers)[:8]}{'...' if len(layers) > 8 else ''}"
        raise BadInputError(f"{cfg_path} says {want[0]} {want[1]} but the weights in {path} hold {held}: the "
                            "config and the weights are not the same model's; put the model's own config.json beside "
                            "its weights")
    vocab = cfg.get("vocab_size")
    for k, shape in shapes.items():
        if k.endswith(EMBEDDING_SUFFIXES) and len(shape) == 2 and isinstance(vocab, int) and shape[0] != vocab:
            raise BadInputError(f"{cfg_path} says vocab_size {vocab} but the embedding {k} in {path} has {shape[0]} "
                                "rows: the config and the weights are not the same model's; put the model's own "
                                "config.json beside its weights")


# --------------------------------------------------------------------------------------------------- tokenizer
def check_chat_template(tok, tok_dir: Path) -> None:
    """A chat template ships in the bundle for `generate --chat` / `serve`: one that does not render a one-message
    conversation would fail there, after a conversion that passed."""
    template = tok.config.get("chat_template")
    if not template:                    # none (or empty): `generate --chat` says the model has none
        return
    try:
        tok.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True)
    except BadInputError as e:
        raise BadInputError(f"{tok_dir / 'tokenizer_config.json'}: its chat_template does not render a one-message "
                            f"conversation ({e}); fix it, or remove the chat_template key (the bundle then "
                            "generates without --chat)") from None
