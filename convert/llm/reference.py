"""Paddle-side references for LLM parity: greedy generation and token log-likelihoods (run in the worker)."""
from __future__ import annotations

from pathlib import Path

from ..paddle_proc import run_worker, workdir


def paddle_greedy(model_dir: Path, prompts: list[list[int]], max_new_tokens: int,
                  stop_ids: list[int] | None = None) -> list[list[int]]:
    """Paddle dygraph greedy continuation of each prompt (full recompute, no cache)."""
    with workdir("ref") as work:
        res = run_worker("generate_llm", {"model_dir": str(model_dir), "prompts": prompts,
                                          "max_new_tokens": max_new_tokens, "stop_ids": stop_ids or []}, Path(work))
    return res["generated"]


def paddle_nll(model_dir: Path, windows: list[list[int]]) -> tuple[float, int]:
    """(sum of negative log-likelihoods, number of predicted tokens) of each window's next tokens."""
    with workdir("ref") as work:
        res = run_worker("logprobs_llm", {"model_dir": str(model_dir), "windows": windows}, Path(work))
    return res["nll"], res["tokens"]
