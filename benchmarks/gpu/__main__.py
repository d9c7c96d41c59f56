"""python -m paddle2ort.benchmarks.gpu check|bench ... (see the package docstring)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import __doc__ as DOC
from .common import CONFIGS, FUSED_VARIANTS


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m paddle2ort.benchmarks.gpu", description=DOC,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="acceptance checks on the GPU (golden rows, fused variants, beams, OOM, GPT-2)")
    c.add_argument("--bundle", help="generic FP32 SmolLM2 bundle (token identity on the GPU); omit to skip")
    c.add_argument("--gguf", required=True, help="the SmolLM2 GGUF the golden rows' Paddle model was built from")
    c.add_argument("--golden", required=True, help="tests/golden/smollm2_greedy.json")
    c.add_argument("--fused", type=lambda v: v.split(","), default=["fp16", "fp16-head32", "int4"],
                   help=f"fused variants, comma-separated, of {', '.join(FUSED_VARIANTS)} (default: %(default)s)")
    c.add_argument("--no-gpt2", dest="gpt2", action="store_false", help="skip the GPT-2 family check")
    c.add_argument("--work", default="/tmp/p2o-work", help="scratch directory (default: %(default)s)")
    c.add_argument("--out", type=Path, required=True, help="writes check.json and check.md here")
    b = sub.add_parser("bench", help="the peer benchmark of one model config (random weights)")
    b.add_argument("--config", choices=sorted(CONFIGS), required=True)
    b.add_argument("--tokenizer", required=True, help="dir with tokenizer.json (saved into the HF model dir)")
    b.add_argument("--ours", nargs="+", default=["fp16", "int4"], choices=sorted(FUSED_VARIANTS),
                   help="our fused variants (default: %(default)s)")
    b.add_argument("--systems", nargs="+", default=["genai", "hf-eager", "hf-compile"],
                   help="peers (default: %(default)s; 'engine': also our kernel engine on the same files; "
                        "'engine-plain-prompt': the engine with its prompt pass launched as it is (prompt_graphs=False); "
                        "'none': ours only)")
    b.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default: %(default)s)")
    b.add_argument("--prompt", type=int, default=128, help="prompt tokens (default: %(default)s)")
    b.add_argument("--new", type=int, default=128, help="new tokens (default: %(default)s)")
    b.add_argument("--reps", type=int, default=3, help="timed passes, median (default: %(default)s)")
    b.add_argument("--nograph", action="store_true", help="also time ours FP16 without CUDA graphs (profile)")
    b.add_argument("--budget-s", type=float, default=420,
                   help="skip torch.compile when past this many seconds (default: %(default)s)")
    b.add_argument("--work", default="/tmp/p2o-work", help="scratch directory (default: %(default)s)")
    b.add_argument("--out", type=Path, required=True, help="writes bench-CONFIG.json and .md here")
    return ap


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    a = parser().parse_args(argv)
    Path(a.work).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from .report import bench_markdown, check_markdown, write
    if a.cmd == "check":
        from .check import check
        r = check(a)
        write(a.out, "check", r, check_markdown(r))
    else:
        from .peer import bench
        r = bench(a)
        write(a.out, f"bench-{a.config}", r, bench_markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
