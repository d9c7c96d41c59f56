"""What every command shares: the help layout (example, defaults, exit codes), option types that refuse bad values
while parsing (so nothing expensive starts on a bad option), and the checks run before any Paddle work."""
from __future__ import annotations

import argparse
import math
import os
import textwrap
from pathlib import Path
from typing import Callable

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.files import module_available

EXIT_CODES = ("exit codes:\n  0 ok\n  2 bad input or usage (a message names the problem and the fix)\n"
              "  3 validation failed (ONNX does not match Paddle, or a budget was missed)\n"
              "  4 conversion failed (unsupported operators, paddle2onnx crash or unusable output)\n"
              "  1 unexpected error (a bug)")
CONVERT_EXTRA = "pip install 'paddle2ort[convert]'"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions/epilogs as written; every option's default shown; metavars named after the option (never
    after an internal dest)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        d = action.default
        if (not action.option_strings or "default" in text.lower() or d is None or d is False
                or d is argparse.SUPPRESS or (isinstance(d, (list, tuple)) and not d)):
            return text
        shown = ",".join(map(str, d)) if isinstance(d, (list, tuple)) else str(d)
        return f"{text} (default: {shown.replace('%', '%%')})"

    def _get_default_metavar_for_optional(self, action: argparse.Action) -> str:
        longest = max(action.option_strings, key=len)
        return longest.lstrip("-").upper().replace("-", "_")


def verbosity_options(p: argparse.ArgumentParser, default) -> None:
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")
    p.add_argument("-q", "--quiet", action="store_true", default=default, help="warnings and errors only")


def global_options(p: argparse.ArgumentParser) -> None:
    """-v/-q on the top-level parser (default False); `command()` adds them to every subcommand too (default
    SUPPRESS, so leaving them out after the subcommand keeps what was given before it)."""
    verbosity_options(p, False)


def command(sub, name: str, help: str, example: str, description: str | None = None,
            exit_note: str = "") -> argparse.ArgumentParser:
    """A subcommand parser with the shared layout: description, options with defaults, an example, exit codes."""
    epilog = "example:\n" + "\n".join("  " + ln for ln in example.strip().splitlines()) + "\n\n" + EXIT_CODES
    if exit_note:
        epilog += "\n" + exit_note
    p = sub.add_parser(name, help=help, description=textwrap.fill(description or help, 100), epilog=epilog,
                       formatter_class=HelpFormatter)
    verbosity_options(p, argparse.SUPPRESS)
    return p


def short_usage(p: argparse.ArgumentParser) -> None:
    """`paddle2ort generate BUNDLE [options]` instead of every option in usage lines (and error messages)."""
    required = []
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            required.append(a.metavar or "COMMAND")
        elif not a.option_strings:
            required.append((a.metavar or a.dest).upper())
        elif a.required:
            required.append(f"{a.option_strings[0]} {a.metavar or HelpFormatter('x')._get_default_metavar_for_optional(a)}")
    p.usage = "%(prog)s " + " ".join(required) + " [options]"


# ----------------------------------------------------------------------------- option types
def _typed(name: str, convert: Callable, check: Callable[[float], bool], want: str) -> Callable[[str], object]:
    def parse(s: str):
        try:
            v = convert(s)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"want {want}, got {s!r}") from None
        if isinstance(v, float) and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"want {want}; NaN and infinity are not numbers here, got {s!r}")
        if not check(v):
            raise argparse.ArgumentTypeError(f"want {want}, got {s!r}")
        return v
    parse.__name__ = name
    return parse


positive_int = _typed("positive_int", int, lambda v: v >= 1, "an integer >= 1")
nonneg_int = _typed("nonneg_int", int, lambda v: v >= 0, "an integer >= 0")
seed_int = _typed("seed", int, lambda v: 0 <= v < 2 ** 63, "a seed in [0, 2**63)")
finite_float = _typed("finite_float", float, lambda v: True, "a finite number")
nonneg_float = _typed("nonneg_float", float, lambda v: v >= 0, "a finite number >= 0")
positive_float = _typed("positive_float", float, lambda v: v > 0, "a finite number > 0")
probability = _typed("probability", float, lambda v: 0 < v <= 1, "a number in (0, 1]")
fraction = _typed("fraction", float, lambda v: 0 <= v < 1, "a fraction in [0, 1), e.g. 0.05 for 5%")


def nonempty(s: str) -> str:
    if not s:
        raise argparse.ArgumentTypeError("an empty string is not allowed here")
    return s


def csv(s: str) -> tuple[str, ...]:
    items = tuple(x.strip() for x in s.split(",") if x.strip())
    if not items:
        raise argparse.ArgumentTypeError(f"want a comma list with at least one item, got {s!r}")
    return items


def csv_of(choices: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def parse(s: str) -> tuple[str, ...]:
        items = csv(s)
        bad = [x for x in items if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from {','.join(choices)}")
        if len(set(items)) != len(items):
            raise argparse.ArgumentTypeError(f"{s!r} names an item twice")
        return items
    parse.__name__ = "list"
    return parse


def csv_ints(s: str) -> tuple[int, ...]:
    return tuple(positive_int(x) for x in csv(s))


def threshold(s: str) -> tuple[str, float]:
    """PREC.METRIC=V: V finite and >= 0; cosine and agreement at most 1 (a bound that can never be met, or NaN
    that is never compared, would turn the gate into a coin or switch it off)."""
    from paddle2ort.convert.metrics import METRICS         # the gate's own list: the CLI takes every metric it judges
    key, sep, value = s.partition("=")
    prec, dot, metric = key.partition(".")
    if not sep or not dot or not prec or metric not in METRICS:
        raise argparse.ArgumentTypeError(f"want PRECISION.METRIC=NUMBER with METRIC one of "
                                         f"{', '.join(METRICS)}, got {s!r}")
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key} wants a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"{key} must be a finite number >= 0, got {value!r}")
    if metric.startswith("min_") and v > 1:
        raise argparse.ArgumentTypeError(f"{key} must be in [0, 1], got {value!r}")
    return key, v


def add_threshold(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", action="append", type=threshold, default=[], metavar="PREC.METRIC=V",
                   help="override a validation threshold, e.g. fp16.min_cosine=0.995 (metrics: max_rel_diff, "
                        "max_rel_rmse, min_cosine, min_argmax_agreement, tie_margin; finite, >= 0); repeatable")


# ----------------------------------------------------------------------------- checks before any expensive stage
def require_convert_extra(command_name: str, modules: tuple[str, ...] = ("paddle",)) -> None:
    """Paddle-side commands on a runtime-only install: one message naming the extra to install (exit 2)."""
    missing = [m for m in modules if not module_available(m)]
    if missing:
        raise BadInputError(f"`paddle2ort {command_name}` needs the converter side ({', '.join(missing)} "
                            f"{'is' if len(missing) == 1 else 'are'} not installed): {CONVERT_EXTRA}")


def check_unique(option: str, items, what: str = "an item") -> None:
    """A comma list that names something twice (bench, bench-llm and perplexity's --precision, --batch-sizes)."""
    if items and len(set(items)) != len(items):
        raise BadInputError(f"{option} {','.join(map(str, items))} names {what} twice; name each once")


def add_bundle_session_options(p) -> None:
    """--precision, --device, --device-id, --threads of the commands that run one bundle's model (classify,
    recognize); session_options(args) turns them into SessionOptions."""
    p.add_argument("--precision", help="which model of the bundle (fp32, fp16, int8); default: the one "
                   "`paddle2ort release` chose for --device, else fp32")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where onnxruntime runs")
    p.add_argument("--device-id", type=nonneg_int, default=0, help="CUDA device with --device gpu")
    p.add_argument("--threads", type=nonneg_int, default=0, help="intra-op threads (0: onnxruntime's choice)")


def session_options(args):
    from paddle2ort.runtime.session import SessionOptions
    return SessionOptions(device=args.device, device_id=args.device_id, intra_op_threads=args.threads)


def check_exists(path: Path | None, option: str, stdin: bool = False) -> None:
    """stdin: the option reads "-" as standard input (not a path to check)."""
    if stdin and path is not None and str(path) == "-":
        return
    if path is not None and not path.exists():
        raise BadInputError(f"{option} {path} does not exist")


def check_output_dir(path: Path, option: str, stem: str | None = None, bundle: Path | None = None) -> None:
    """A results directory we may create/write: not an existing file, its nearest existing ancestor writable, and
    (with `stem`) no STEM.json/.md/.png in it that an earlier run of ours did not write: those would be replaced;
    (with `bundle`) not the bundle measured nor a folder inside it: a file added to a bundle fails its check."""
    home = bundle.expanduser().resolve() if bundle is not None else None
    if home is not None and path.expanduser().resolve().is_relative_to(home):
        beside = Path(os.path.relpath(home.parent / f"{home.name}-results"))
        raise BadInputError(f"{option} {path} is inside the bundle {bundle}: files added to a bundle make it fail "
                            f"its integrity check; give a folder outside it, e.g. {option} {beside}")
    if path.exists() and not path.is_dir():
        raise BadInputError(f"{option} {path} is a file, not a directory; give a directory for the results")
    if stem is not None and path.is_dir():
        found = [path / f"{stem}.{ext}" for ext in ("json", "md", "png") if (path / f"{stem}.{ext}").exists()]
        if found and not _our_results(path / f"{stem}.json"):
            raise BadInputError(f"{option} {path} holds {', '.join(p.name for p in found)}, which this command "
                                f"writes, and {stem}.json is not a paddle2ort results file: they are not replaced. "
                                "Give another directory, or move those files")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise BadInputError(f"{option} {path}: {probe} is not a writable directory")


def _our_results(path: Path) -> bool:
    """Whether `path` is a results JSON paddle2ort wrote (every one records its environment's versions)."""
    import json
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(res, dict) and isinstance(res.get("environment"), dict) and "versions" in res["environment"]


def check_output_file(path: Path | None, option: str, inputs: tuple[Path | None, ...] = (),
                      ours: Callable[[Path], bool] | None = None, bundles: tuple[Path, ...] = ()) -> None:
    """A file we may write: its folder exists and is writable; it is none of `inputs`; it is not inside any of
    `bundles` (a file added to a bundle fails its integrity check: every later load of it is refused); and an
    existing one is replaced only where `ours(path)` says an earlier run wrote it."""
    if path is None:
        return
    for bundle in bundles:
        home = bundle.expanduser().resolve()
        if home.is_dir() and path.expanduser().resolve().is_relative_to(home):
            outside = path.name if path.expanduser().resolve() != home else f"{path.name}.json"
            raise BadInputError(f"{option} {path} is inside the bundle {bundle}: a file added to a bundle makes it "
                                "fail its integrity check (every later run refuses it); write it outside, e.g. "
                                f"{option} {Path(os.path.relpath(home.parent / outside))}")
    if path.is_dir():
        raise BadInputError(f"{option} {path} is a directory; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise BadInputError(f"{option} {path}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInputError(f"{option} {path}: directory {parent} is not writable")
    for src in inputs:
        if src is not None and (path.resolve() == src.resolve() or
                                (path.exists() and src.exists() and os.path.samefile(path, src))):
            raise BadInputError(f"{option} {path} is the input file {src}: writing it would destroy the input; "
                                "choose another path")
    if ours is not None and path.is_file() and path.stat().st_size and not ours(path):
        raise BadInputError(f"{option} {path} exists and is not an output of this command: it is not replaced. "
                            "Choose another path, or move the file")


def jsonl_with_keys(*keys: str) -> Callable[[Path], bool]:
    """`ours` for check_output_file: every non-blank line a JSON object holding `keys`."""
    import json

    def ours(path: Path) -> bool:
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        rec = json.loads(line)
                        if not (isinstance(rec, dict) and all(k in rec for k in keys)):
                            return False
        except (OSError, ValueError):
            return False
        return True
    return ours
