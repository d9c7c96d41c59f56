"""`paddle2ort import-gguf FILE -o DIR`: over paddle2ort.convert.llm.gguf_import (llama.cpp GGUF -> PaddleNLP)."""
from __future__ import annotations

import shlex
from pathlib import Path

from .common import check_exists, command


def run(args) -> int:
    check_exists(args.file, "FILE")
    from paddle2ort.convert.llm.gguf_import import import_gguf
    model = import_gguf(args.file, args.output, overwrite=args.overwrite)
    model_dir, tok_dir = args.output / "model", args.output / "tokenizer"
    print(f"{args.file.name}: {model.arch} -> the {model.family} family; Paddle model in {model_dir}, "
          f"tokenizer in {tok_dir}\nnext: paddle2ort convert-llm {shlex.quote(str(model_dir))} "
          f"--tokenizer {shlex.quote(str(tok_dir))} -o BUNDLE")
    return 0


def register(sub) -> None:
    p = command(sub, "import-gguf", "import a llama.cpp GGUF file as a PaddleNLP model + tokenizer",
                "paddle2ort import-gguf qwen2.5-0.5b-instruct-q8_0.gguf -o imported/qwen2.5\n"
                "paddle2ort convert-llm imported/qwen2.5/model --tokenizer imported/qwen2.5/tokenizer -o bundle",
                description="Read a GGUF (llama, qwen2, gemma, gpt2 architectures; Mistral files are llama with a "
                            "sliding window), dequantize every tensor with the gguf package (F32/F16/BF16, "
                            "Q4_0..Q8_0, K-quants, IQ types), map it onto PaddleNLP's class (DIR/model: config.json + "
                            "model.safetensors) and rebuild its tokenizer (byte-level BPE, or SentencePiece as in "
                            "Llama 2 / Mistral / Gemma GGUFs) with the chat template (DIR/tokenizer). Then export it "
                            "with convert-llm. No Paddle is needed for the import.")
    p.add_argument("file", type=Path, metavar="FILE", help="the .gguf model file")
    p.add_argument("-o", "--output", type=Path, required=True, help="directory to write (model/, tokenizer/)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier import-gguf output at DIR")
    p.set_defaults(func=run)
