"""Byte-level BPE tokenizers for causal LMs (GGUF vocabularies), on HF `tokenizers`, with chat templates.

A bundle's tokenizer/ holds tokenizer.json (HF tokenizers) and tokenizer_config.json (special tokens, chat template).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from .errors import BadInputError, BundleError

log = logging.getLogger(__name__)

# llama.cpp's pre-split regexes (llama-vocab.cpp), by the tokenizer.ggml.pre names that select them
LLAMA3_REGEX = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _split_then_bytes(regex: str):
    """llama.cpp's regex split, then bytes -> GPT-2 byte symbols without a second split (as HF's Llama-3 and
    Qwen2 tokenizer.json files do)."""
    def build(pt):
        from tokenizers import Regex
        return pt.Sequence([pt.Split(Regex(regex), behavior="isolated", invert=False),
                            pt.ByteLevel(add_prefix_space=False, use_regex=False)])
    return build


# llama.cpp pre-tokenizer names -> the HF pre-tokenizer sequence that splits text the same way.
# "smollm": every digit alone, then the GPT-2 byte-level regex (llama.cpp LLAMA_VOCAB_PRE_TYPE_SMOLLM).
PRE_TOKENIZERS = {
    "smollm": lambda pt: pt.Sequence([pt.Digits(individual_digits=True),
                                      pt.ByteLevel(add_prefix_space=False, use_regex=True)]),
    "gpt2": lambda pt: pt.ByteLevel(add_prefix_space=False, use_regex=True),
    "gpt-2": lambda pt: pt.ByteLevel(add_prefix_space=False, use_regex=True),
    "llama-bpe": _split_then_bytes(LLAMA3_REGEX),        # Llama 3 (also "smaug-bpe", "dbrx")
    "smaug-bpe": _split_then_bytes(LLAMA3_REGEX),
    "dbrx": _split_then_bytes(LLAMA3_REGEX),
    "qwen2": _split_then_bytes(QWEN2_REGEX),              # Qwen2 / Qwen2.5 (also "deepseek-r1-qwen")
    "deepseek-r1-qwen": _split_then_bytes(QWEN2_REGEX),
}
CONTROL = 3          # GGUF token_type of special (control) tokens


def tokenizer_from_gguf_fields(tok: dict) -> "BPETokenizer":
    """Build from a GGUF's tokenizer.* fields (keys without the 'tokenizer.' prefix): byte-level BPE ('gpt2')
    here, SentencePiece ('llama') in tokenization/spm.py."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if tok.get("ggml.model") == "llama":
        from .spm import spm_tokenizer_from_gguf_fields
        return spm_tokenizer_from_gguf_fields(tok)
    if tok.get("ggml.model") != "gpt2":
        raise BadInputError(f"GGUF tokenizer model {tok.get('ggml.model')!r} is not supported: byte-level BPE "
                            "('gpt2') and SentencePiece ('llama') are; pass the model's tokenizer.json instead")
    for key in ("ggml.tokens", "ggml.token_type", "ggml.merges"):
        if not tok.get(key):
            raise BadInputError(f"the GGUF has no tokenizer.{key} field; its BPE tokenizer cannot be rebuilt")
    pre = tok.get("ggml.pre", "gpt2")
    if pre not in PRE_TOKENIZERS:
        raise BadInputError(f"GGUF pre-tokenizer {pre!r} is not supported (known: {sorted(PRE_TOKENIZERS)})")
    tokens, types = list(tok["ggml.tokens"]), list(tok["ggml.token_type"])
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in tok["ggml.merges"]]
    try:
        hf = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on inconsistent merges
        raise BadInputError(f"the GGUF's BPE vocabulary and merges do not fit together ({e}); the file is "
                            "damaged or mixes two tokenizers") from e
    hf.pre_tokenizer = PRE_TOKENIZERS[pre](pre_tokenizers)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(tokens, types) if ty == CONTROL])
    name = lambda key, default: tokens[int(tok.get(key, default))]  # noqa: E731
    config = {"bos_token": name("ggml.bos_token_id", 1), "eos_token": name("ggml.eos_token_id", 2),
              "pad_token": name("ggml.padding_token_id", tok.get("ggml.eos_token_id", 2)),
              "add_bos_token": bool(tok.get("ggml.add_bos_token", False)),
              "chat_template": tok.get("chat_template"), "pre_tokenizer": pre, "source": "gguf"}
    return BPETokenizer(hf, config)


class BPETokenizer:
    backend = "hf"

    def __init__(self, hf, config: dict):
        self.hf, self.config = hf, config
        self.bos_token_id = self._id(config["bos_token"])
        self.eos_token_id = self._id(config["eos_token"])
        self.pad_token_id = self._id(config["pad_token"])
        self.special_ids = set(self.hf.get_added_tokens_decoder())

    def _id(self, token: str) -> int:
        i = self.hf.token_to_id(token)
        if i is None:
            raise BundleError(f"special token {token!r} is not in the vocabulary")
        return i

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        from tokenizers import Tokenizer
        path = Path(path)
        if not (path / "tokenizer.json").is_file() or not (path / "tokenizer_config.json").is_file():
            raise BundleError(f"{path} has no tokenizer.json + tokenizer_config.json; re-create the bundle")
        try:
            hf = Tokenizer.from_file(str(path / "tokenizer.json"))
            config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on a bad file
            raise BundleError(f"tokenizer in {path} cannot be loaded ({type(e).__name__}: {e}); "
                              "give the model's original tokenizer.json and tokenizer_config.json") from e
        if not isinstance(config, dict) or not all(isinstance(config.get(k), str)
                                                   for k in ("bos_token", "eos_token", "pad_token")):
            raise BundleError(f"{path / 'tokenizer_config.json'} must be a JSON object with bos_token, eos_token "
                              "and pad_token strings")
        return cls(hf, config)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(path / "tokenizer.json"))
        (path / "tokenizer_config.json").write_text(json.dumps(self.config, indent=2) + "\n", encoding="utf-8")

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        if not isinstance(text, str):
            raise BadInputError(f"text must be a str, got {type(text).__name__}")
        ids = self.hf.encode(text, add_special_tokens=False).ids
        if self.config.get("add_bos_token") if add_bos is None else add_bos:
            ids = [self.bos_token_id] + ids
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        bos = [self.bos_token_id] if self.config.get("add_bos_token") else []      # as encode() does
        return [bos + e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render the model's own chat template (Jinja, sandboxed) — instruct models expect exactly this format."""
        template = self.config.get("chat_template")
        if not template:
            raise BadInputError("this model's tokenizer has no chat template; generate without --chat")
        for m in messages:
            if not isinstance(m, dict) or not {"role", "content"} <= set(m):
                raise BadInputError(f"chat messages need 'role' and 'content', got {m!r}")
        from .chat_template import render_chat_template
        return render_chat_template(template, messages=messages, add_generation_prompt=add_generation_prompt,
                                    bos_token=self.config["bos_token"], eos_token=self.config["eos_token"])


class StreamDecoder:
    """Incremental detokenization: feed ids, get the new text; holds back an incomplete UTF-8 sequence."""

    def __init__(self, tokenizer: BPETokenizer):
        self.tok, self.ids, self.emitted = tokenizer, [], 0

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        delta, self.emitted = text[self.emitted:], len(text)
        return delta
