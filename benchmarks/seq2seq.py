"""Seq2seq perf run in the seed's shape (PaddleNLP's UNIMO-text question generation: a dev set decoded with beam
search and a length penalty, reported as total time, samples/s and ms per sample), with Paddle's own generate()
as the peer row of the same run: same sources, same batches, same thread count, same decoding options.

    python -m paddle2ort.benchmarks.seq2seq [--family t5,bart,mbart,unimo] [--work DIR] [--output DIR]
    (--family also takes unified_transformer)

The dataset is committed (benchmarks/results/seq2seq/dataset.jsonl: 32 question-generation pairs, src -> tgt);
the models are tiny random-weight T5 / BART / mBART / UNIMO-text built from it (convert.seq2seq.tiny), so output
quality is not the point: the figures are the loop's and the graphs' speed, and the rows' token agreement with
Paddle. Every pass decodes the whole set; the median of --repeats passes is reported (one warm-up batch first).
Writes results.json (environment, options, rows) and results.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .env import environment, usable_cores

log = logging.getLogger(__name__)

RESULTS = Path(__file__).parent / "results" / "seq2seq"
DATASET = RESULTS / "dataset.jsonl"
# (name, our GenerationConfig options, PaddleNLP generate() options)
DECODES = (
    ("greedy", {}, {"decode_strategy": "greedy_search"}),
    ("beam4-lp1.0", {"num_beams": 4, "length_penalty": 1.0, "beam_rules": "paddlenlp", "early_stopping": False},
     {"decode_strategy": "beam_search", "num_beams": 4, "length_penalty": 1.0}),
)


@dataclass(frozen=True)
class Seq2SeqBenchConfig:
    families: tuple[str, ...] = ("t5", "bart", "mbart", "unimo")
    dataset: Path = DATASET
    work: Path = Path("out/bench-seq2seq")
    output: Path = RESULTS
    precisions: tuple[str, ...] = ("fp32", "int8")
    batch_size: int = 8
    max_new_tokens: int = 16
    repeats: int = 3
    threads: int = field(default_factory=usable_cores)


def read_dataset(path: Path) -> list[dict]:
    from paddle2ort.runtime.errors import BadInputError
    rows = []
    for no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInputError(f"{path}:{no} is not valid JSON ({e.msg})") from e
        if not isinstance(r, dict) or not isinstance(r.get("src"), str) or not isinstance(r.get("tgt"), str):
            raise BadInputError(f'{path}:{no} needs string fields "src" and "tgt"')
        rows.append(r)
    if not rows:
        raise BadInputError(f"{path} holds no pairs")
    return rows


def model_and_bundle(cfg: Seq2SeqBenchConfig, family: str, texts: list[str]) -> tuple[Path, Path]:
    """The tiny model and its bundle under cfg.work (built and converted once, reused while present)."""
    from paddle2ort.convert.seq2seq.api import Seq2SeqConvertConfig, convert_seq2seq
    from paddle2ort.convert.seq2seq.tiny import build_tiny
    src, bundle = cfg.work / family / "src", cfg.work / family / "bundle"
    if not (src / "model" / "config.json").is_file():
        build_tiny(family, src, texts)
    if not (bundle / "manifest.json").is_file():
        convert_seq2seq(Seq2SeqConvertConfig(source=src / "model", tokenizer=src / "tokenizer", output=bundle,
                                             precisions=cfg.precisions))
    return src, bundle


def _timed_passes(run, batches: list, repeats: int) -> tuple[list[float], list]:
    run(batches[0])                                                          # warm-up
    passes, outs = [], []
    for _ in range(repeats):
        t0, outs = time.perf_counter(), [run(b) for b in batches]
        passes.append(time.perf_counter() - t0)
    return passes, outs


def _row(system: str, family: str, precision: str, decode: str, passes: list[float], n: int, outs, ref) -> dict:
    total = statistics.median(passes)
    flat = [r for b in outs for r in b]
    same = sum(a == b for a, b in zip(flat, ref)) if ref is not None else None
    return {"system": system, "family": family, "precision": precision, "decode": decode, "samples": n,
            "total_s": total, "samples_per_s": n / total, "ms_per_sample": 1e3 * total / n, "passes_s": passes,
            "rows_equal_paddle": same, "mean_new_tokens": sum(map(len, flat)) / max(len(flat), 1)}


def run_family(cfg: Seq2SeqBenchConfig, family: str, data: list[dict]) -> list[dict]:
    from paddle2ort.convert.paddle_proc import run_worker, workdir
    from paddle2ort.runtime.generation import GenerationConfig
    from paddle2ort.runtime.seq2seq import Text2TextGenerator
    from paddle2ort.runtime.session import SessionOptions

    src, bundle = model_and_bundle(cfg, family, [r["src"] for r in data] + [r["tgt"] for r in data])
    gens = {p: Text2TextGenerator(bundle, p, SessionOptions(intra_op_threads=cfg.threads)) for p in cfg.precisions}
    ids = [gens[cfg.precisions[0]].prompt_ids(r["src"]) for r in data]
    batches = [ids[i:i + cfg.batch_size] for i in range(0, len(ids), cfg.batch_size)]
    rows = []
    for name, ours, theirs in DECODES:
        opts = {**theirs, "max_new_tokens": cfg.max_new_tokens}
        with workdir("bench") as w:
            peer = run_worker("bench_seq2seq", {"model_dir": str(src / "model"), "batches": batches, "options": opts,
                                                "repeats": cfg.repeats, "threads": cfg.threads}, Path(w))
        ref = [r for b in peer["generated"] for r in b]
        base = _row("paddle-dygraph", family, "fp32", name, peer["pass_seconds"], len(ids), peer["generated"], ref)
        rows.append({**base, "paddle_version": peer["paddle_version"]})
        gcfg = GenerationConfig(max_new_tokens=cfg.max_new_tokens, **ours)
        for prec, gen in gens.items():
            passes, outs = _timed_passes(lambda b, gen=gen: gen.generate_token_ids(b, gcfg), batches, cfg.repeats)
            rows.append(_row("onnxruntime", family, prec, name, passes, len(ids), outs, ref))
            log.info("%s %s %s: %.2f ms/sample (Paddle %.2f)", family, name, prec, rows[-1]["ms_per_sample"],
                     base["ms_per_sample"])
    return rows


def markdown(res: dict) -> str:
    lines = [f"# Seq2seq generation: {res['samples']} samples of `{res['dataset']}`, batch {res['batch_size']}, "
             f"<= {res['max_new_tokens']} new tokens",
             "",
             f"Host: {res['environment'].get('cpu', '?')}, {res['threads']} threads, 1-minute load average "
             f"{res['load_average_1m'][0]:.1f} at start / {res['load_average_1m'][1]:.1f} at end (a shared box: "
             f"timings are noisy); commit {res['commit']}; {res['date']}. Tiny random-weight models (quality is not "
             f"the point). Median of {res['repeats']} passes over the whole set. `rows = Paddle`: outputs "
             "token-identical to Paddle's generate() on the same batches (int8 is weight-only: on random weights "
             "its near-flat logits pick other tokens, as the LLM results' int4-margin measurement shows; the gate "
             "holds its logits to cosine >= 0.99).",
             "",
             "| family | decode | system | precision | total s | samples/s | ms/sample | vs Paddle | rows = Paddle "
             "| new tokens/row |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        peer = next(p for p in res["rows"] if p["system"] == "paddle-dygraph" and p["family"] == r["family"]
                    and p["decode"] == r["decode"])
        same = "-" if r["system"] == "paddle-dygraph" else f"{r['rows_equal_paddle']}/{r['samples']}"
        lines.append(f"| {r['family']} | {r['decode']} | {r['system']} | {r['precision']} | {r['total_s']:.3f} | "
                     f"{r['samples_per_s']:.1f} | {r['ms_per_sample']:.2f} | "
                     f"{peer['total_s'] / r['total_s']:.2f}x | {same} | {r['mean_new_tokens']:.1f} |")
    lines += ["", "Regenerate: `python -m paddle2ort.benchmarks.seq2seq` (builds and converts the tiny models "
              "under out/bench-seq2seq on first use)."]
    return "\n".join(lines) + "\n"


def run_bench(cfg: Seq2SeqBenchConfig) -> dict:
    from .env import git_commit
    import os
    data = read_dataset(cfg.dataset)
    load = os.getloadavg()[0]                       # a shared box's load is part of what the timings mean
    rows = [r for f in cfg.families for r in run_family(cfg, f, data)]
    res = {"benchmark": "seq2seq", "dataset": str(cfg.dataset.name), "samples": len(data), **{
        k: v for k, v in asdict(cfg).items() if k in ("batch_size", "max_new_tokens", "repeats", "threads")},
        "precisions": list(cfg.precisions), "decodes": [{"name": n, "ours": o, "paddle": p} for n, o, p in DECODES],
        "environment": environment(), "commit": git_commit(), "load_average_1m": [load, os.getloadavg()[0]],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "rows": rows}
    cfg.output.mkdir(parents=True, exist_ok=True)
    (cfg.output / "results.json").write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    (cfg.output / "results.md").write_text(markdown(res), encoding="utf-8")
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="t5,bart,mbart,unimo",
                   help="comma list of t5, bart, mbart, unimo, unified_transformer")
    p.add_argument("--work", type=Path, default=Path("out/bench-seq2seq"), help="models and bundles (cached)")
    p.add_argument("--output", type=Path, default=RESULTS, help="where results.json / results.md go")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=usable_cores())
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    res = run_bench(Seq2SeqBenchConfig(families=tuple(a.family.split(",")), work=a.work, output=a.output,
                                       repeats=a.repeats, threads=a.threads))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
