"""Tiny random-weight encoder-decoder models with a small byte-level BPE tokenizer trained on given texts: the
tests' and the seq2seq benchmark's models (quality is not the point; the graphs, the loop and parity are).
The tokenizer is trained with HF `tokenizers` (its BpeTrainer); the model is built in a Paddle worker."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")           # ids 0..3: bos, pad, eos, unk (BART's order)


def train_tokenizer(texts: Sequence[str], vocab_size: int = 320):
    """-> BPETokenizer (byte-level BPE, SPECIALS first)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from paddle2ort.tokenization.bpe import BPETokenizer
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf.train_from_iterator(list(texts), trainer)
    return BPETokenizer(hf, {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "add_bos_token": False})


def build_tiny(family: str, out: Path, texts: Sequence[str], seed: int = 0, std: float = 0.5,
               eos_scale: float = 3.0, role_type_size: int | None = None) -> Path:
    """out/model (PaddleNLP save_pretrained) + out/tokenizer. -> out."""
    return build_tiny_many((family,), Path(out), texts, seed, std, eos_scale, nested=False,
                           role_type_size=role_type_size)[family]


def build_tiny_many(families: Sequence[str], root: Path, texts: Sequence[str], seed: int = 0, std: float = 0.5,
                    eos_scale: float = 3.0, nested: bool = True, role_type_size: int | None = None) -> dict[str, Path]:
    """Several families in one Paddle worker, one tokenizer: root/FAMILY/{model,tokenizer} (nested=False: root
    itself, one family). role_type_size: UnifiedTransformer's role embeddings (None: none). -> family -> its
    directory."""
    from ..paddle_proc import run_worker, workdir
    root = Path(root)
    dirs = {f: root / f if nested else root for f in families}
    tok = train_tokenizer(texts)
    for d in dirs.values():
        tok.save(d / "tokenizer")
    special = {"bos": tok.bos_token_id, "pad": tok.pad_token_id, "eos": tok.eos_token_id,
               "unk": tok.hf.token_to_id("<unk>")}
    with workdir("tiny") as work:
        run_worker("build_tiny_seq2seq", {
            "families": list(families), "outs": [str(d / "model") for d in dirs.values()],
            "vocab_size": tok.vocab_size, "special": special, "seed": seed, "std": std, "eos_scale": eos_scale,
            "role_type_size": role_type_size},
            Path(work))
    return dirs
