"""`paddle2ort bench`: over paddle2ort.benchmarks.classifier.run_bench (JSON + Markdown + PNG results)."""
from __future__ import annotations

import logging
from pathlib import Path

from .common import (check_exists, check_output_dir, check_unique, command, csv, nonneg_int, positive_int,
                     require_convert_extra)

log = logging.getLogger("paddle2ort.cli")


def run(args) -> int:
    check_unique("--precision", args.precision, "a precision")
    check_output_dir(args.output, "--output", stem="results", bundle=args.bundle)
    check_exists(args.dataset_dir, "--dataset-dir")
    if args.paddle_model is not None:
        check_exists(args.paddle_model, "--paddle-model")
        require_convert_extra("bench --paddle-model", ("paddle",))
    from paddle2ort.benchmarks.classifier import BenchConfig, run_bench
    from paddle2ort.benchmarks.report import markdown, write_results

    cfg = BenchConfig(bundle=args.bundle, dataset_dir=args.dataset_dir, split=args.split, device=args.device,
                      device_id=args.device_id, precisions=args.precision, batch_size=args.batch_size,
                      warmup=args.warmup, repeats=args.repeats, threads=args.threads,
                      paddle_model=args.paddle_model, limit=args.limit)
    res = run_bench(cfg)
    paths = write_results(res, args.output)
    print(markdown(res))
    log.info("results: %s", ", ".join(str(p) for p in paths.values()))
    return 0


def register(sub) -> None:
    b = command(sub, "bench", "accuracy/latency perf run of a classification bundle (JSON + Markdown + PNG)",
                "paddle2ort bench bundles/minilm --dataset-dir zoo/minilm-sentiment/dataset --precision fp32,int8 "
                "--paddle-model zoo/minilm-sentiment/model --output results/",
                description="Accuracy and latency of a text-classification bundle on a labelled split, every "
                            "precision on the same length-sorted batches; --paddle-model adds Paddle Inference "
                            "CPU as a row of the same run (needs pip install 'paddle2ort[convert]').")
    b.add_argument("bundle", type=Path, help="the bundle directory")
    b.add_argument("--dataset-dir", type=Path, required=True,
                   help="label.txt + dev.txt/test.txt (text<TAB>label a line)")
    b.add_argument("--split", default="dev", choices=["dev", "test"], help="which split to run")
    b.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where onnxruntime runs")
    b.add_argument("--device-id", type=nonneg_int, default=0, help="CUDA device with --device gpu")
    b.add_argument("--precision", type=csv, help="comma list (default: every model in the bundle; GPU: not int8)")
    b.add_argument("--batch-size", type=positive_int, default=32, help="texts a batch")
    b.add_argument("--warmup", type=nonneg_int, default=8, help="warm-up batches spread over the length range")
    b.add_argument("--repeats", type=positive_int, default=3, help="timed passes over the split; median reported")
    b.add_argument("--threads", type=nonneg_int, default=0,
                   help="CPU threads for every system (0: all usable cores)")
    b.add_argument("--paddle-model", type=Path, help="the bundle's Paddle source: adds the Paddle Inference CPU row")
    b.add_argument("--limit", type=positive_int, help="N examples spread evenly over the split (quick runs; default: all)")
    b.add_argument("--output", type=Path, default=Path("bench-results"), help="results directory")
    b.set_defaults(func=run)
