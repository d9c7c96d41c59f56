"""tokenizer.json for a BERT/ERNIE WordPiece vocabulary that comes without one.

PaddleNLP's `save_pretrained` writes vocab.txt + tokenizer_config.json (+ special_tokens_map.json) and no
tokenizer.json, which is what our runtime (HF `tokenizers`) loads. HF tokenizers' own BertWordPieceTokenizer builds
it from the vocabulary: BERT's normalizer (clean text, CJK characters split, lower case and accents stripped when
do_lower_case, as PaddleNLP's BasicTokenizer), BERT's pre-tokenizer, WordPiece with `##` continuations and at most
100 characters a word, and the [CLS] A [SEP] template. With `bert_clean` (base.py) in front, its ids equal
PaddleNLP's BertTokenizer's (tests/test_tokenization.py).
"""
from __future__ import annotations

from pathlib import Path

from .base import TokenizerConfig
from .errors import BadInputError


def read_vocab(vocab_file: Path) -> list[str]:
    """vocab.txt's tokens, one a line (the id is the line number); a file that cannot be one is refused."""
    try:
        tokens = Path(vocab_file).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"vocabulary {vocab_file} cannot be read as UTF-8 text ({e}); give the tokenizer's "
                            "vocab.txt (one token a line)") from e
    if tokens and tokens[-1] == "":
        tokens.pop()
    if not tokens:
        raise BadInputError(f"vocabulary {vocab_file} is empty; give the tokenizer's vocab.txt (one token a line)")
    return [t.rstrip("\r") for t in tokens]


def wordpiece_json(vocab_file: Path, cfg: TokenizerConfig) -> str:
    """The tokenizer.json of `vocab_file` under `cfg`'s casing and special tokens (each must be in the vocabulary:
    BertWordPieceTokenizer would otherwise leave it unmarked and the pad/[CLS]/[SEP] ids would be wrong)."""
    from tokenizers.implementations import BertWordPieceTokenizer

    tokens = read_vocab(vocab_file)
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)          # a repeated token keeps its first id, as PaddleNLP's vocabulary does
    missing = [t for t in (cfg.unk_token, cfg.cls_token, cfg.sep_token, cfg.pad_token) if t not in vocab]
    if missing:
        raise BadInputError(f"special token(s) {', '.join(map(repr, missing))} of the tokenizer config are not in "
                            f"{vocab_file}; give the vocabulary the model was trained with, or name its tokens in "
                            "tokenizer_config.json (unk_token, cls_token, sep_token, pad_token)")
    tok = BertWordPieceTokenizer(vocab, unk_token=cfg.unk_token, sep_token=cfg.sep_token, cls_token=cfg.cls_token,
                                 pad_token=cfg.pad_token, mask_token="[MASK]", clean_text=True,
                                 handle_chinese_chars=True, strip_accents=None, lowercase=cfg.do_lower_case,
                                 wordpieces_prefix="##")
    return tok.to_str()
