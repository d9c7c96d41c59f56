"""Regenerate tests/golden/smollm2_greedy.json: Paddle's greedy continuations (32 new tokens) of prompts.txt.

python tests/make_golden.py ZOO_DIR      (ZOO_DIR from `paddle2ort zoo build smollm2-135m -o ZOO_DIR`)
"""
import json
import sys
from pathlib import Path

from paddle2ort.convert.llm.reference import paddle_greedy
from paddle2ort.tokenization.bpe import BPETokenizer

HERE = Path(__file__).parent
NEW_TOKENS = 32


def main(zoo: Path) -> None:
    tok = BPETokenizer.load(zoo / "tokenizer")
    prompts = [p for p in (HERE / "golden" / "prompts.txt").read_text(encoding="utf-8").splitlines() if p]
    ids = [tok.encode(p) for p in prompts]
    gen = paddle_greedy(zoo / "model", ids, NEW_TOKENS)
    rows = [{"prompt": p, "prompt_ids": i, "ids": g, "text": tok.decode(g)} for p, i, g in zip(prompts, ids, gen)]
    out = {"model": "smollm2-135m (zoo build, float32)", "reference": "Paddle dygraph greedy, full recompute",
           "max_new_tokens": NEW_TOKENS, "rows": rows}
    (HERE / "golden" / "smollm2_greedy.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
