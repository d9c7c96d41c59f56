"""`paddle2ort zoo build`: over paddle2ort.convert.zoo.build (reproducible Paddle source models from assets)."""
from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path

from paddle2ort.runtime.errors import BadInputError

from .common import EXIT_CODES, HelpFormatter, command, require_convert_extra, verbosity_options

NAMES = "minilm-sentiment, smollm2-135m"


def check_name(name: str) -> None:
    """An unknown name is refused first (a runtime-only install was told to install Paddle before it learned that
    the name was wrong), with the closest zoo name where one is near."""
    from paddle2ort.convert.zoo import ZOO
    if name in ZOO:
        return
    near = difflib.get_close_matches(name.lower(), ZOO, n=1, cutoff=0.5)
    hint = f"; did you mean {near[0]}?" if near else ""
    raise BadInputError(f"unknown zoo model {name!r}; available: {', '.join(ZOO)}{hint}")


def check_rebuild(name: str, out: Path, force: bool) -> None:
    """A zoo build that is built again is replaced whole: every file in it, in its sub-folders too, must be one
    its zoo.json lists (the build's own check sees only the top level: a note in DIR/model/ went with it)."""
    from paddle2ort.convert.zoo import _build_key, is_current, zoo_entries
    out = Path(out)
    if not out.is_dir() or out.is_symlink() or zoo_entries(out) is None:
        return                                   # new, or not a zoo build: the build's own check refuses that
    if not force and is_current(out, _build_key(name)):
        return                                   # cached: nothing is replaced
    try:
        meta = json.loads((out / "zoo.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return
    other = str(meta.get("build_key", "")).split("/")[0]
    if other != name and not force:
        raise BadInputError(f"output {out} holds the {other} zoo build; building {name} there would replace it: "
                            f"choose another -o path (e.g. -o {out.parent / name}), or pass --force to replace it")
    files = meta.get("files")
    if not isinstance(files, dict):
        return                                   # an older build: its top level is all the build knows
    found = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_symlink() or not p.is_dir()]
    foreign = sorted(f for f in found if f != "zoo.json" and f not in files)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise BadInputError(f"output {out} is a zoo build that is built again and replaced whole, but it holds files "
                            f"the build did not write ({shown}): move them away first, or choose another -o path")


def run_build(args) -> int:
    check_name(args.name)
    require_convert_extra("zoo build", ("paddle", "paddlenlp"))
    check_rebuild(args.name, args.output, args.force)
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
    zb.add_argument("--force", action="store_true",
                    help="rebuild even if cached (and replace another zoo model's build at OUTPUT)")
    zb.set_defaults(func=run_build)
