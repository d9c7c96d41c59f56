"""Reference byte-level BPE for parity tests: PaddleNLP's pure-Python GPTTokenizer (its own regex, byte map and
BPE merge loop, independent of HF `tokenizers`) fed the GGUF vocabulary and merges, with llama.cpp's "smollm"
pre-split (every \\p{N} digit alone) and special tokens split out first, as llama.cpp does with parse_special."""
import json
from pathlib import Path

import regex


def reference_encoder(tokenizer_dir: Path, workdir: Path):
    from paddlenlp.transformers import GPTTokenizer

    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    (workdir / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (workdir / "merges.txt").write_text("#version: gguf\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = GPTTokenizer(str(workdir / "vocab.json"), str(workdir / "merges.txt"))
    specials = sorted((t["content"] for t in spec["added_tokens"] if t.get("special")), key=len, reverse=True)
    special_re = regex.compile("(" + "|".join(regex.escape(s) for s in specials) + ")")

    def encode(text: str) -> list[int]:
        ids = []
        for piece in special_re.split(text):
            if piece in vocab and piece in specials:
                ids.append(vocab[piece])
                continue
            for run in regex.split(r"(\p{N})", piece):
                if run:
                    ids.extend(vocab[t] for t in tok._tokenize(run))
        return ids

    return encode
