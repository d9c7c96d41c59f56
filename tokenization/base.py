"""One `Tokenizer` interface over several WordPiece backends; the bundle stores the files and a backend-free config."""
from __future__ import annotations

import json
import logging
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import BadInputError, BundleError

log = logging.getLogger(__name__)

BACKENDS = ("hf", "fast", "paddlenlp")


# what batch_encode gives a text classifier: a model's inputs must be among these (int64, [batch, sequence])
FEEDS = ("input_ids", "token_type_ids", "attention_mask")


@dataclass(frozen=True)
class TokenizerConfig:
    """What any backend needs to reproduce the ids: stored in the manifest's `tokenizer` section."""

    kind: str = "wordpiece"
    do_lower_case: bool = True
    max_seq_length: int = 128
    vocab_file: str = "tokenizer/vocab.txt"          # bundle-relative
    tokenizer_file: str = "tokenizer/tokenizer.json"
    pad_token: str = "[PAD]"
    cls_token: str = "[CLS]"
    sep_token: str = "[SEP]"
    unk_token: str = "[UNK]"

    def to_json(self) -> dict:
        return asdict(self)


def tokenizer_config(tokenizer_dir: Path, max_seq_length: int, prefix: str = "tokenizer") -> TokenizerConfig:
    """Read do_lower_case and special tokens from tokenizer_config.json / special_tokens_map.json if present."""
    tc = {}
    p = tokenizer_dir / "tokenizer_config.json"
    if p.is_file():
        tc = json.loads(p.read_text(encoding="utf-8"))
    def token(name: str, default: str) -> str:      # "[PAD]", or {"content": "[PAD]", ...} as newer files write
        v = tc.get(name, default)
        return v.get("content", default) if isinstance(v, dict) else v if isinstance(v, str) else default

    return TokenizerConfig(do_lower_case=bool(tc.get("do_lower_case", True)), max_seq_length=max_seq_length,
                           vocab_file=f"{prefix}/vocab.txt", tokenizer_file=f"{prefix}/tokenizer.json",
                           pad_token=token("pad_token", "[PAD]"), cls_token=token("cls_token", "[CLS]"),
                           sep_token=token("sep_token", "[SEP]"), unk_token=token("unk_token", "[UNK]"))


class Tokenizer:
    """encode / batch_encode with truncation and padding; returns int64 numpy arrays."""

    backend = "base"

    def __init__(self, cfg: TokenizerConfig, root: Path):
        self.cfg, self.root = cfg, root
        self.pad_id = self._token_id(cfg.pad_token)

    def _token_id(self, token: str) -> int:
        raise NotImplementedError

    def _encode_batch(self, texts: list[str], max_length: int) -> list[list[int]]:
        """Ids with [CLS]/[SEP], truncated to max_length, no padding."""
        raise NotImplementedError

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        return self._encode_batch([self._check(text)], max_length or self.cfg.max_seq_length)[0]

    def batch_encode(self, texts: list[str], max_length: int | None = None, padding: str = "longest",
                     return_numpy: bool = True) -> dict:
        """padding: "longest" (to the longest in the batch) or "max_length"."""
        if padding not in ("longest", "max_length"):
            raise BadInputError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        max_length = max_length or self.cfg.max_seq_length
        if max_length < 2:
            raise BadInputError(f"max_length must be >= 2 (room for [CLS] and [SEP]), got {max_length}")
        ids = self._encode_batch([self._check(t) for t in texts], max_length)
        if not return_numpy:
            return {"input_ids": ids}
        width = max_length if padding == "max_length" else max((len(x) for x in ids), default=2)
        out = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, x in enumerate(ids):
            out[i, :len(x)] = x
            mask[i, :len(x)] = 1
        return {"input_ids": out, "token_type_ids": np.zeros_like(out), "attention_mask": mask}   # = FEEDS

    def _check(self, text) -> str:
        if not isinstance(text, str):
            raise BadInputError(f"texts must be str, got {type(text).__name__}")
        return bert_clean(text) if self.cfg.kind == "wordpiece" else text


def _split_special(cp: int, cat: str) -> bool:
    """PaddleNLP's reference splits these into tokens of their own (its tokenize_special_chars): kana,
    Greek/Coptic/Cyrillic, IPA, every Unicode symbol ("S*": emoji, currency, math) and a few code points."""
    return (0x3040 <= cp <= 0x30FF or 0x0370 <= cp <= 0x04FF or 0x0250 <= cp <= 0x02AF or cat.startswith("S")
            or cp in (0x00AD, 0x00B2, 0x00BA, 0x3007, 0x00B5, 0x00D8, 0x014B, 0x01B1))


def bert_clean(text: str) -> str:
    """Text normalisation shared by every WordPiece backend, as the reference (PaddleNLP) does it:
    drop U+FFFD and "C*" chars (control, format, unassigned) except whitespace, and put spaces around the
    characters it splits off. HF `tokenizers` does neither by itself (it keeps unassigned code points as [UNK]
    and keeps emoji inside words), so doing it once here, before any backend, makes all backends agree."""
    if text.isascii() and text.isprintable():
        return text          # ASCII symbols are split as punctuation by every backend already
    out = []
    for ch in text:
        if ch in "\t\n\r":
            out.append(ch)
            continue
        cat = unicodedata.category(ch)
        if ch == "\ufffd" or cat.startswith("C"):
            continue
        out.append(f" {ch} " if _split_special(ord(ch), cat) else ch)
    return "".join(out)


class HFTokenizer(Tokenizer):
    backend = "hf"

    def __init__(self, cfg: TokenizerConfig, root: Path, json_text: str | None = None):
        """`json_text`: the tokenizer.json's content where it is not a file yet (a conversion's made one)."""
        from tokenizers import Tokenizer as _T
        path = root / cfg.tokenizer_file
        if json_text is not None:
            self._tok = _T.from_str(json_text)
        elif not path.is_file():
            raise BundleError(f"tokenizer file {path} is missing; the bundle must carry its tokenizer "
                              "(convert with the tokenizer directory)")
        else:
            try:
                self._tok = _T.from_file(str(path))
            except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on a bad file
                raise BundleError(f"tokenizer file {path} cannot be loaded ({e}); re-convert with the original "
                                  "tokenizer files") from e
        self._tok.no_padding()
        self._tok.no_truncation()
        super().__init__(cfg, root)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def _token_id(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise BundleError(f"special token {token!r} is not in the tokenizer's vocabulary")
        return i

    def _encode_batch(self, texts, max_length):
        self._tok.enable_truncation(max_length=max_length)
        return [e.ids for e in self._tok.encode_batch(texts)]


class FastTokenizer(Tokenizer):
    """PaddleNLP FastTokenizer (C++): `fast-tokenizer-python`, which exists for Python <= 3.10 only."""

    backend = "fast"

    def __init__(self, cfg: TokenizerConfig, root: Path):
        try:
            from fast_tokenizer import ErnieFastTokenizer
        except ImportError as e:
            raise BadInputError("backend 'fast' needs fast-tokenizer-python (wheels exist for Python <= 3.10); "
                                "use backend 'hf', which gives identical ids") from e
        with open(root / cfg.vocab_file, encoding="utf-8") as f:
            self._vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
        self._tok = ErnieFastTokenizer(self._vocab, unk_token=cfg.unk_token, sep_token=cfg.sep_token,
                                       cls_token=cfg.cls_token, pad_token=cfg.pad_token,
                                       lowercase=cfg.do_lower_case, strip_accents=cfg.do_lower_case)
        super().__init__(cfg, root)

    def _token_id(self, token):
        return self._vocab[token]

    def _encode_batch(self, texts, max_length):
        self._tok.enable_truncation(max_length)
        self._tok.disable_padding()
        return [list(e.ids) for e in self._tok.encode_batch(texts)]


class PaddleNLPTokenizer(Tokenizer):
    """PaddleNLP's pure-Python BertTokenizer: slow, the reference the others are checked against."""

    backend = "paddlenlp"

    def __init__(self, cfg: TokenizerConfig, root: Path):
        from paddlenlp.transformers import BertTokenizer
        self._tok = BertTokenizer(str(root / cfg.vocab_file), do_lower_case=cfg.do_lower_case,
                                  unk_token=cfg.unk_token, sep_token=cfg.sep_token, pad_token=cfg.pad_token,
                                  cls_token=cfg.cls_token)
        super().__init__(cfg, root)

    def _token_id(self, token):
        return self._tok.convert_tokens_to_ids(token)

    def _encode_batch(self, texts, max_length):
        return [self._tok(t, max_length=max_length, truncation=True)["input_ids"] for t in texts]


_CLASSES = {"hf": HFTokenizer, "fast": FastTokenizer, "paddlenlp": PaddleNLPTokenizer}


def load_tokenizer(path: str | Path, backend: str = "hf", cfg: TokenizerConfig | None = None) -> Tokenizer:
    """`path`: a bundle (its manifest names the config) or a tokenizer directory (tokenizer.json + vocab.txt)."""
    path = Path(path)
    if backend not in _CLASSES:
        raise BadInputError(f"unknown tokenizer backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if cfg is None:
        manifest = path / "manifest.json"
        if manifest.is_file():
            section = json.loads(manifest.read_text(encoding="utf-8")).get("tokenizer")
            if not section:
                raise BundleError(f"bundle {path} has no tokenizer; convert with the tokenizer files "
                                  "(e.g. from `paddle2ort zoo build`)")
            cfg = TokenizerConfig(**section)
        else:
            cfg = tokenizer_config(path, max_seq_length=128, prefix=".")
    return _CLASSES[backend](cfg, path)
