"""SentencePiece-style GGUF tokenizers (tokenizer.ggml.model == "llama": Llama 2, Mistral, Gemma GGUFs) as HF
`tokenizers` BPE, the way llama.cpp's SPM tokenizer encodes.

llama.cpp (llm_tokenizer_spm) escapes spaces to "▁", prefixes one when tokenizer.ggml.add_space_prefix (default
true) at the text's start and after each special token, then merges adjacent symbols greedily by the score of the
merged piece (highest first, leftmost on ties) and spells characters outside the vocabulary as <0xXX> byte
tokens. A BPE whose merges are every (left, right) split of each piece, ranked by that piece's score, merges the
same pairs in the same order (transformers' SentencePieceExtractor builds Llama's tokenizer.json so); HF's
byte_fallback is the byte spelling. Written here because the merges come from GGUF fields, not a .model file.
"""
from __future__ import annotations

from .errors import BadInputError

SPACE = "\u2581"                     # "▁", SentencePiece's escaped space
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6      # GGUF token types (= SentencePiece's)


def spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Every split of each mergeable piece into two vocabulary pieces, ranked by the piece's score (highest
    first; within a piece by the ids of its halves, as SentencePieceExtractor orders them)."""
    vocab = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for i, (piece, ty) in enumerate(zip(tokens, types)):
        if ty in (CONTROL, BYTE, UNKNOWN, UNUSED) or len(piece) < 2:
            continue
        local = [(vocab[piece[:k]], vocab[piece[k:]], piece[:k], piece[k:]) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        ranked.extend((-float(scores[i]), i, a, b, left, right) for a, b, left, right in sorted(local))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def spm_tokenizer_from_gguf_fields(tok: dict):
    """A BPETokenizer (HF tokenizers inside) from a GGUF's tokenizer.* fields (keys without the prefix) of a
    SentencePiece vocabulary: tokens, scores, token types; bos/eos/unk/padding ids; add_bos_token (llama.cpp
    defaults it to true for this vocabulary), add_space_prefix (default true; Gemma's is false)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    from .bpe import BPETokenizer
    for key in ("ggml.tokens", "ggml.scores", "ggml.token_type"):
        if not tok.get(key):
            raise BadInputError(f"the GGUF has no tokenizer.{key} field; its SentencePiece tokenizer cannot be "
                                "rebuilt")
    tokens, scores, types = list(tok["ggml.tokens"]), list(tok["ggml.scores"]), list(tok["ggml.token_type"])
    if not len(tokens) == len(scores) == len(types):
        raise BadInputError(f"the GGUF's tokenizer has {len(tokens)} tokens, {len(scores)} scores and {len(types)} "
                            "token types; the file is damaged")
    unk_id = int(tok.get("ggml.unknown_token_id", types.index(UNKNOWN) if UNKNOWN in types else 0))
    hf = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=spm_merges(tokens, scores, types),
                              unk_token=tokens[unk_id], byte_fallback=True, fuse_unk=False))
    space_prefix = bool(tok.get("ggml.add_space_prefix", True))
    steps = [normalizers.Prepend(SPACE)] if space_prefix else []
    hf.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", SPACE)])
    dec = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    hf.decoder = decoders.Sequence(dec + ([decoders.Strip(" ", 1, 0)] if space_prefix else []))
    # control tokens are special (split out, skipped on decode); user-defined ones match as written, like llama.cpp
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(tokens, types) if ty == CONTROL])
    hf.add_tokens([AddedToken(t, special=False, normalized=False)
                   for t, ty in zip(tokens, types) if ty == USER_DEFINED])
    name = lambda key, default: tokens[int(tok.get(key, default))]  # noqa: E731
    config = {"bos_token": name("ggml.bos_token_id", 1), "eos_token": name("ggml.eos_token_id", 2),
              "pad_token": name("ggml.padding_token_id", tok.get("ggml.eos_token_id", 2)),
              "add_bos_token": bool(tok.get("ggml.add_bos_token", True)),
              "chat_template": tok.get("chat_template"), "pre_tokenizer": "spm", "source": "gguf"}
    return BPETokenizer(hf, config)
