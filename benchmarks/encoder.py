"""Encoder fusion on the CPU (issue 17.4): the real MiniLM classifier bundle fused and unfused, FP32 and INT8, and
Paddle Inference CPU, on the labelled dev split in one run.

Method: the split is tokenized once into the classifier's length-sorted batches (batch 32); every configuration runs
exactly these batches. The four onnxruntime configurations are timed interleaved — pass r of each configuration
runs before pass r+1 of any — so load from other processes on the host falls on all of them alike; ms/sample is the
median over passes of (pass time / samples). Paddle Inference runs the same batches in its worker process right
after (same thread count). Accuracy is on the whole split for every row.

`python -m paddle2ort.benchmarks.encoder --zoo ZOO_DIR --work DIR --out benchmarks/results/encoder/cpu.json`
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from paddle2ort.runtime.files import atomic_open
from paddle2ort.runtime.pipelines import TextClassifier
from paddle2ort.runtime.session import SessionOptions
from paddle2ort.runtime.timing import warmup_order

from .classifier import make_batches
from .dataset import LabelledSplit, load_split
from .env import environment, usable_cores

log = logging.getLogger(__name__)

VARIANTS = ("fused", "fused-noskip", "unfused")
PRECISIONS = ("fp32", "int8")


def build_bundles(zoo_dir: Path, work: Path) -> dict[str, Path]:
    """The demo's classifier conversion (FP32 + INT8, gated on dev tweets) with and without the fusion pass."""
    from paddle2ort.convert import ConvertConfig, convert
    from paddle2ort.convert.api import tokenizer_files
    from paddle2ort.convert.fusion import OrtFusionOptions
    from paddle2ort.convert.precision import Int8Options
    from paddle2ort.convert.validate import thresholds_with_overrides

    from .demo import INT8_GROSS_BOUNDS, dev_samples

    meta = json.loads((zoo_dir / "zoo.json").read_text())
    tokenizer, extra_files = tokenizer_files(zoo_dir / "tokenizer", meta["max_seq_length"])
    samples = dev_samples(zoo_dir, work / "samples.npz")
    out = {}
    for variant in VARIANTS:
        dest = work / variant
        if not (dest / "manifest.json").is_file():
            convert(ConvertConfig(source=zoo_dir / "model", output=dest, precisions=PRECISIONS, overwrite=True,
                                  name=f"minilm-sentiment-{variant}", task="text-classification",
                                  labels=tuple(meta["labels"]), output_names=tuple(meta["output_names"]),
                                  tokenizer=tokenizer, extra_files=extra_files, inputs_npz=samples,
                                  thresholds=thresholds_with_overrides(INT8_GROSS_BOUNDS),
                                  int8=Int8Options(per_channel=True), fuse=variant != "unfused",
                                  fusion=OrtFusionOptions(skip_layer_norm=variant != "fused-noskip")))
        out[variant] = dest
    return out


def interleaved_passes(runs: dict, feeds: list, warmup: int, repeats: int) -> tuple[dict, dict]:
    """Per configuration: pass times (s) and the outputs of its last pass; passes interleaved across configs."""
    for run in runs.values():
        for b in warmup_order(len(feeds), warmup):
            run(feeds[b])
    times = {k: [] for k in runs}
    outs = {k: [None] * len(feeds) for k in runs}
    for _ in range(repeats):
        for k, run in runs.items():
            t0 = time.perf_counter()
            for b, f in enumerate(feeds):
                outs[k][b] = run(f)
            times[k].append(time.perf_counter() - t0)
    return times, outs


def _accuracy(data: LabelledSplit, idx: list, outs: list) -> tuple[float, np.ndarray]:
    pred = np.zeros(len(data.texts), np.int64)
    for i, o in zip(idx, outs):
        pred[i] = np.asarray(o).argmax(-1)
    return float((pred == np.asarray(data.labels)).mean()), pred


def run(zoo_dir: Path, work: Path, warmup: int = 8, repeats: int = 5, threads: int = 0,
        limit: int | None = None, peer: bool = True) -> dict:
    bundles = build_bundles(zoo_dir, work)
    threads = threads or usable_cores()
    data = load_split(zoo_dir / "dataset", "dev")
    if limit:
        data = LabelledSplit(data.name, data.texts[:limit], data.labels[:limit], data.label_names)
    opts = SessionOptions(device="cpu", intra_op_threads=threads)
    clfs = {(v, p): TextClassifier(bundles[v], precision=p, batch_size=32, session=opts)
            for v in VARIANTS for p in PRECISIONS}
    idx, feeds = make_batches(next(iter(clfs.values())), data)
    runs = {k: (lambda f, c=c: c.logits(f)) for k, c in clfs.items()}
    log.info("%d dev examples in %d batches; %d configurations interleaved, %d passes, %d threads",
             len(data.texts), len(feeds), len(runs), repeats, threads)
    times, outs = interleaved_passes(runs, feeds, warmup, repeats)
    rows, preds = [], {}
    for (v, p), t in times.items():
        acc, preds[(v, p)] = _accuracy(data, idx, outs[(v, p)])
        rows.append({"name": f"{p.upper()}-CPU {v}", "system": "onnxruntime", "variant": v, "precision": p,
                     "accuracy": acc, "ms_per_sample": float(np.median(t)) / len(data.texts) * 1e3,
                     "pass_times_s": t, "fusions": clfs[(v, p)].bundle.manifest.extra.get("fusions", {})})
    ref = preds[("unfused", "fp32")]
    for r in rows:
        r["argmax_agreement_vs_unfused_fp32"] = float((preds[(r["variant"], r["precision"])] == ref).mean())
    versions = {}
    if peer:
        from paddle2ort.convert.peer import paddle_inference_bench
        from paddle2ort.convert.source import locate
        info, pouts = paddle_inference_bench(locate(zoo_dir / "model"), feeds, warmup, repeats, threads)
        acc, _ = _accuracy(data, idx, pouts)
        passes = [sum(rep) for rep in info["times"]]
        rows.append({"name": "Paddle-Inference-CPU", "system": "paddle-inference", "variant": "-", "precision": "fp32",
                     "accuracy": acc, "ms_per_sample": float(np.median(passes)) / len(data.texts) * 1e3,
                     "pass_times_s": passes, "notes": {k: info[k] for k in ("onednn", "ir_optim", "threads")}})
        versions["paddlepaddle"] = info["paddle_version"]
    env = environment()
    env["versions"].update(versions)
    return {"benchmark": "encoder-cpu",
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "method": __doc__.split("Method: ")[1].split("\n\n")[0].replace("\n", " "),
            "dataset": {"split": "dev", "samples": len(data.texts)},
            "config": {"warmup": warmup, "repeats": repeats, "threads": threads, "batch_size": 32},
            "environment": env, "rows": rows}


def markdown(res: dict) -> str:
    lines = [f"# Encoder fusion on the CPU ({res['config']['threads']} threads, {res['environment']['cpu']})",
             "", f"{res['dataset']['samples']} dev examples, batch 32, median of {res['config']['repeats']} passes, "
             "configurations interleaved (the host was shared with other jobs: compare rows, not absolute figures).",
             "", "| configuration | accuracy | ms/sample | passes (s) |", "|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['name']} | {100 * r['accuracy']:.2f}% | {r['ms_per_sample']:.3f} | "
                     f"{', '.join(f'{t:.2f}' for t in r['pass_times_s'])} |")
    fus = next((r["fusions"] for r in res["rows"] if r.get("variant") == "fused"), {})
    lines += ["", "Fused: " + ", ".join(f"{k} {v}" for k, v in fus.items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, required=True, help="`paddle2ort zoo build minilm-sentiment` output")
    ap.add_argument("--work", type=Path, required=True, help="where the two bundles are built (reused)")
    ap.add_argument("--out", type=Path, required=True, help="results JSON (a .md is written beside it)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--no-peer", action="store_true")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    a.work.mkdir(parents=True, exist_ok=True)
    res = run(a.zoo, a.work, a.warmup, a.repeats, limit=a.limit, peer=not a.no_peer)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(a.out) as f:
        f.write(json.dumps(res, indent=1))
    with atomic_open(a.out.with_suffix(".md")) as f:
        f.write(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
