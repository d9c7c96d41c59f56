"""Regenerate tests/golden/smollm2_greedy.json: Paddle's greedy continuations (32 new tokens) of prompts.txt, and
the reference's top-2 logit margin at every generated step (the near-tie rule of the golden tests).

python tests/make_golden.py ZOO_DIR      (ZOO_DIR from `paddle2ort zoo build smollm2-135m -o ZOO_DIR`): tokens + margins
python tests/make_golden.py --margins    margins only, for the tokens already in the file (no Paddle needed)

Margins come from the FP32 fused ONNX decoder built straight from the GGUF weights (the graph whose FP32 gate
matches Paddle's logits to max_rel_diff <= 1e-4), run teacher-forced on prompt + golden tokens: margin[k] is
top1 - top2 of the logits that chose golden token k.
"""
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
GOLDEN = HERE / "golden" / "smollm2_greedy.json"
NEW_TOKENS = 32


def teacher_forced_logits(decoder, rows: list[dict], pad_id: int, chunk: int = 5) -> list[np.ndarray]:
    """Per row, [len(ids), V] float32 logits of the positions that predict each golden token."""
    out = []
    for i in range(0, len(rows), chunk):
        part = rows[i:i + chunk]
        seqs = [r["prompt_ids"] + r["ids"][:-1] for r in part]
        got = decoder.prompt_logits(decoder.state(len(seqs)), seqs, pad_id)
        decoder.release()
        out += [g[len(r["prompt_ids"]) - 1:] for g, r in zip(got, part)]
    return out


def fp32_fused_decoder(workdir: Path, max_length: int = 128):
    """The FP32 fused decoder of SmolLM2-135M built from the GGUF (no Paddle)."""
    from paddle2ort.convert.llm.fused import DecoderSpec, build_variant
    from paddle2ort.convert.zoo.smollm2 import gguf_path, read_gguf, to_paddlenlp
    from paddle2ort.runtime.fused import FusedDecoder
    cfg, tensors, _ = read_gguf(gguf_path())
    spec = DecoderSpec.from_config(cfg)
    build_variant(spec, to_paddlenlp(cfg, tensors), "fp32", workdir / "d.onnx")
    return FusedDecoder(workdir / "d.onnx", spec.to_json(), max_length=max_length)


def add_margins(golden: dict) -> dict:
    from paddle2ort.convert.metrics import top2_margin
    with tempfile.TemporaryDirectory() as tmp:
        dec = fp32_fused_decoder(Path(tmp))
        logits = teacher_forced_logits(dec, golden["rows"], pad_id=2)
    for r, lg in zip(golden["rows"], logits):
        r["margins"] = [round(float(m), 4) for m in top2_margin(lg.astype(np.float64))]
        r["reference_top1_agrees"] = int(np.sum(lg.argmax(-1) == np.asarray(r["ids"])))
    golden["margins"] = ("top1 - top2 logit of the FP32 fused ONNX decoder (GGUF weights, gated against Paddle at "
                         "max_rel_diff <= 1e-4), teacher-forced on prompt + golden tokens; one per generated token")
    return golden


def main(zoo: Path) -> None:
    from paddle2ort.convert.llm.reference import paddle_greedy
    from paddle2ort.tokenization.bpe import BPETokenizer

    tok = BPETokenizer.load(zoo / "tokenizer")
    prompts = [p for p in (HERE / "golden" / "prompts.txt").read_text(encoding="utf-8").splitlines() if p]
    ids = [tok.encode(p) for p in prompts]
    gen = paddle_greedy(zoo / "model", ids, NEW_TOKENS)
    rows = [{"prompt": p, "prompt_ids": i, "ids": g, "text": tok.decode(g)} for p, i, g in zip(prompts, ids, gen)]
    out = {"model": "smollm2-135m (zoo build, float32)", "reference": "Paddle dygraph greedy, full recompute",
           "max_new_tokens": NEW_TOKENS, "rows": rows}
    write(add_margins(out))


def write(golden: dict) -> None:
    GOLDEN.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:] == ["--margins"]:
        write(add_margins(json.loads(GOLDEN.read_text(encoding="utf-8"))))
    else:
        main(Path(sys.argv[1]))
