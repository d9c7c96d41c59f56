"""Accuracy/latency perf run of a text-classification bundle, with Paddle Inference CPU as a peer in the same run.

Method (the seed's definition, made explicit):
- The split is tokenized once into length-sorted batches of `batch_size` (the order TextClassifier uses); every
  system runs exactly these batches, so model time excludes tokenization, which is timed separately.
- `warmup` batches spread over the length range run first (so every shape range is warm), then `repeats` timed
  passes over the whole split. ms/sample = median over passes of (sum of batch times) / samples;
  p50/p90 are over all timed batches; throughput = samples / median pass time.
"""
from __future__ import annotations

import datetime as _dt
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.manifest import load_bundle
from paddle2ort.runtime.pipelines import TextClassifier
from paddle2ort.runtime.session import SessionOptions
from paddle2ort.runtime.timing import time_passes

from .dataset import LabelledSplit, load_split
from .env import cpu_info, environment, usable_cores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    bundle: Path
    dataset_dir: Path
    split: str = "dev"
    device: str = "cpu"
    device_id: int = 0
    precisions: tuple[str, ...] | None = None   # None: every model in the bundle (GPU: all but int8)
    batch_size: int = 32
    warmup: int = 8                             # batches, spread over the length range
    repeats: int = 3                            # timed passes over the split
    threads: int = 0                            # 0: all usable cores (the same for onnxruntime and Paddle)
    paddle_model: Path | None = None            # the Paddle source: adds the Paddle-Inference-CPU peer row
    limit: int | None = None                    # N examples spread evenly over the split (quick runs)
    tokenizer_backend: str = "hf"

    def __post_init__(self):
        if self.batch_size < 1 or self.repeats < 1 or self.warmup < 0:
            raise BadInputError("batch_size and repeats must be >= 1, warmup >= 0")
        if self.limit is not None and self.limit < 1:
            raise BadInputError(f"limit must be >= 1, got {self.limit}")


@dataclass
class Row:
    name: str                     # e.g. FP32-CPU, Paddle-Inference-CPU
    system: str
    precision: str
    device: str
    samples: int
    accuracy: float
    ms_per_sample: float          # model time only, at the batch size
    tokenize_ms_per_sample: float
    e2e_ms_per_sample: float      # tokenization + model
    p50_batch_ms: float
    p90_batch_ms: float
    throughput: float             # samples / s (model)
    pass_times_s: list[float]
    argmax_agreement_vs_fp32: float | None = None
    notes: dict = field(default_factory=dict)


def timed_predictions(clf, texts: int, idx: list[np.ndarray], feeds: list[dict]) -> tuple[np.ndarray, list[float]]:
    """clf.logits over make_batches' feeds: 8 warm-up batches, then 3 timed passes -> (the argmax of each of the
    `texts` examples, seconds per pass)."""
    times, outs = time_passes(clf.logits, feeds, 8, 3)
    pred = np.zeros(texts, np.int64)
    for i, o in zip(idx, outs):
        pred[i] = np.asarray(o).argmax(-1)
    return pred, [sum(t) for t in times]


def make_batches(clf: TextClassifier, data: LabelledSplit) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]]]:
    idx, feeds = [], []
    for i, chunk in clf.batches(data.texts):
        idx.append(np.asarray(i))
        feeds.append(clf.encode(chunk))
    return idx, feeds


def _row(name, system, precision, device, data, idx, outs, times, tok_ms, n_labels) -> Row:
    logits = np.zeros((len(data.texts), n_labels), np.float32)
    for i, o in zip(idx, outs):
        logits[i] = o
    pred = logits.argmax(-1)
    passes = [sum(t) for t in times]
    total = float(np.median(passes))
    flat = np.array([t for rep in times for t in rep]) * 1e3
    ms = total / len(data.texts) * 1e3
    row = Row(name, system, precision, device, len(data.texts), float((pred == np.array(data.labels)).mean()),
              ms, tok_ms, ms + tok_ms, float(np.percentile(flat, 50)), float(np.percentile(flat, 90)),
              len(data.texts) / total, passes)
    row.notes["_pred"] = pred
    return row


def spread_subset(total: int, n: int) -> list[int]:
    """`n` of `total` row indices spread evenly, in order (every total/n-th): a split sorted by label (as many are)
    is still sampled across its classes, where its first n rows would be one class."""
    n = min(n, total)
    return [i * total // n for i in range(n)]


def run_bench(cfg: BenchConfig) -> dict:
    """Run every configuration; returns the results dict (also what `write_results` stores)."""
    from tqdm.auto import tqdm

    bundle = load_bundle(cfg.bundle)
    m = bundle.manifest
    if m.task != "text-classification" or not m.labels:       # before the dataset is read and blamed
        raise BadInputError(f"bundle {cfg.bundle} is not a text classifier (task={m.task!r}, labels={m.labels}): "
                            "bench measures text-classification bundles (bench-llm: text-generation ones)")
    data = load_split(cfg.dataset_dir, cfg.split)
    if list(m.labels or []) != data.label_names:
        raise BadInputError(f"label.txt {data.label_names} does not match the bundle's labels {list(m.labels or [])}"
                            " (same names, same order)")
    if cfg.limit and cfg.limit < len(data.texts):
        keep = spread_subset(len(data.texts), cfg.limit)
        data = LabelledSplit(data.name, [data.texts[i] for i in keep], [data.labels[i] for i in keep],
                             data.label_names)
    precisions = cfg.precisions or tuple(p for p in m.models if not (cfg.device == "gpu" and p == "int8"))
    if not precisions:                  # an int8-only bundle on the GPU
        raise BadInputError(f"bundle {cfg.bundle} has only {', '.join(m.models)} models, which --device gpu leaves "
                            "out (onnxruntime runs dynamic INT8 on the CPU): pass --device cpu, or --precision int8 "
                            "to time them on the GPU anyway")
    from .llm import check_precisions
    check_precisions(cfg.bundle, precisions, m.models)
    peer_src = None
    if cfg.paddle_model is not None:        # checked (exists, is the bundle's source) before anything is timed
        from paddle2ort.convert.peer import matching_source
        peer_src = matching_source(cfg.paddle_model, m)
    threads = cfg.threads or usable_cores()
    suffix = cfg.device.upper()
    rows: list[Row] = []
    idx = feeds = None
    tok_ms = 0.0
    for prec in tqdm(precisions, desc="configurations", disable=None):
        clf = TextClassifier(bundle.path, precision=prec, batch_size=cfg.batch_size,
                             tokenizer_backend=cfg.tokenizer_backend,
                             session=SessionOptions(device=cfg.device, device_id=cfg.device_id,
                                                    intra_op_threads=threads if cfg.device == "cpu" else 0))
        if feeds is None:
            idx, feeds = make_batches(clf, data)
            tok = []
            for _ in range(cfg.repeats):
                t0 = time.perf_counter()
                for _i, chunk in clf.batches(data.texts):
                    clf.encode(chunk)
                tok.append(time.perf_counter() - t0)
            tok_ms = float(np.median(tok)) / len(data.texts) * 1e3
            log.info("%d %s examples in %d batches of <= %d; tokenization %.3f ms/sample (%s)", len(data.texts),
                     cfg.split, len(feeds), cfg.batch_size, tok_ms, clf.tokenizer.backend)
        times, outs = time_passes(lambda f: clf.logits(f), feeds, cfg.warmup, cfg.repeats)
        row = _row(f"{prec.upper()}-{suffix}", "onnxruntime", prec, cfg.device, data, idx, outs, times, tok_ms,
                   len(data.label_names))
        row.notes["provider"] = clf.provider
        rows.append(row)
        log.info("%s: accuracy %.4f, %.3f ms/sample", row.name, row.accuracy, row.ms_per_sample)
    peer_info = None
    if peer_src is not None:
        from paddle2ort.convert.peer import paddle_inference_bench
        src = peer_src
        log.info("Paddle Inference CPU peer (%d threads) on the same batches", threads)
        peer_info, outs = paddle_inference_bench(src, feeds, cfg.warmup, cfg.repeats, threads)
        row = _row("Paddle-Inference-CPU", "paddle-inference", "fp32", "cpu", data, idx, outs, peer_info["times"],
                   tok_ms, len(data.label_names))
        row.notes.update({k: peer_info[k] for k in ("paddle_version", "onednn", "ir_optim", "threads")})
        rows.append(row)
        log.info("%s: accuracy %.4f, %.3f ms/sample", row.name, row.accuracy, row.ms_per_sample)
    ref = next((r for r in rows if r.precision == "fp32" and r.system == "onnxruntime"), None)
    for r in rows:
        if ref is not None:
            r.argmax_agreement_vs_fp32 = float((r.notes["_pred"] == ref.notes["_pred"]).mean())
    for r in rows:
        r.notes.pop("_pred")
    env = environment()
    env["cpu_simd_flags"] = cpu_info(threads)["isa"]
    if peer_info:
        env["versions"]["paddlepaddle"] = peer_info["paddle_version"]
    return {
        "benchmark": "text-classification",
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "bundle": {"name": m.name, "path": str(bundle.path), "opset": m.opset,
                   "sha256": {p: mf.sha256 for p, mf in m.models.items()}},
        "dataset": {"dir": str(cfg.dataset_dir), "split": cfg.split, "samples": len(data.texts)},
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                   "threads": threads, "precisions": list(precisions)},
        "environment": env,
        "rows": [asdict(r) for r in rows],
        "targets": evaluate_targets([asdict(r) for r in rows]),
    }


def evaluate_targets(rows: list[dict]) -> list[dict]:
    """The issue's benchmark targets, checked on whatever rows this run (or merged runs) have."""
    by = {r["name"]: r for r in rows}
    out = []

    def add(name, ok, measured, target):
        out.append({"target": name, "met": bool(ok), "measured": measured, "target_value": target})

    f32, i8, pd = by.get("FP32-CPU"), by.get("INT8-CPU"), by.get("Paddle-Inference-CPU")
    if f32 and i8:
        sp = f32["ms_per_sample"] / i8["ms_per_sample"]
        add("INT8-CPU speed-up over FP32-CPU", sp >= 1.5, f"{sp:.2f}x", ">= 1.5x")
        drop = (f32["accuracy"] - i8["accuracy"]) * 100
        add("INT8-CPU accuracy drop vs FP32-CPU", drop <= 1.0, f"{drop:+.2f} pt", "<= 1.0 pt")
    g32, g16 = by.get("FP32-GPU"), by.get("FP16-GPU")
    if g16 and (g32 or f32):
        base = g32 or f32
        d = abs(base["accuracy"] - g16["accuracy"]) * 100
        add(f"FP16-GPU accuracy vs {base['name']}", d <= 0.2, f"{d:.2f} pt", "<= 0.2 pt")
    if f32 and pd:
        ratio = pd["ms_per_sample"] / f32["ms_per_sample"]
        add("FP32-CPU vs Paddle-Inference-CPU speed", ratio >= 1.0, f"{ratio:.2f}x", ">= 1.0x (no slower)")
    return out
