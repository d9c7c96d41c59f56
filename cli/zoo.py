"""`paddle2ort zoo build`: over paddle2ort.convert.zoo.build (reproducible Paddle source models from assets)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import EXIT_CODES, HelpFormatter, command, require_convert_extra, verbosity_options

NAMES = "minilm-sentiment, smollm2-135m"


def run_build(args) -> int:
    require_convert_extra("zoo build", ("paddle", "paddlenlp"))
    from paddle2ort.convert.zoo import build
    out = build(args.name, args.output, force=args.force)
    parts = [f"{what} in {out / sub}" for what, sub in (("Paddle model", "model"), ("tokenizer", "tokenizer"),
                                                        ("dataset", "dataset")) if (out / sub).is_dir()]
    print(f"{args.name}: " + ", ".join(parts))
    return 0


def register(sub) -> None:
    z = sub.add_parser("zoo", help="build reproducible Paddle source models from installed assets",
                       description="Build reproducible Paddle source models from pip-installed assets (cached).",
                       epilog="example:\n  paddle2ort zoo build minilm-sentiment -o zoo/minilm-sentiment\n\n"
                              + EXIT_CODES, formatter_class=HelpFormatter)
    verbosity_options(z, argparse.SUPPRESS)
    zsub = z.add_subparsers(dest="zoo_command", required=True, metavar="ZOO_COMMAND")
    zb = command(zsub, "build", "build a zoo model (cached: an up-to-date build is reused)",
                 "paddle2ort zoo build smollm2-135m -o zoo/smollm2",
                 description=f"Build a zoo model ({NAMES}) into a directory: the Paddle model, its tokenizer and, "
                             "for classifiers, the dataset. Cached. Needs pip install 'paddle2ort[convert]'.")
    zb.add_argument("name", help=f"zoo model: {NAMES}")
    zb.add_argument("-o", "--output", type=Path, required=True, help="directory to build into")
    zb.add_argument("--force", action="store_true", help="rebuild even if cached")
    zb.set_defaults(func=run_build)
