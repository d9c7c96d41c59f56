"""The `paddle2ort` command: one module per command group, each a thin layer over a library call.

Each module `paddle2ort.cli.<group>` defines `register(subparsers)`, which adds its subcommand(s) with
`set_defaults(func=...)`, func(args) -> exit code. Modules import their part lazily inside func, so runtime-only
commands never import Paddle and `--help` is fast.
Exit codes: 0 ok, 2 bad input or usage, 3 validation failed, 4 conversion failed, 1 unexpected error.
"""
from __future__ import annotations

import argparse
import faulthandler
import importlib
import logging
import sys

from paddle2ort.runtime.errors import BadInputError, Paddle2OrtError
from paddle2ort.runtime.logs import console, setup_logging

from .common import EXIT_CODES, HelpFormatter, global_options, short_usage

log = logging.getLogger("paddle2ort")

# In help order. "release" is helper-owned (paddle2ort.cli.release); tolerated as absent until it lands.
COMMAND_MODULES = ("convert", "convert_llm", "convert_seq2seq", "import_gguf", "zoo", "classify", "recognize", "ocr",
                   "detect", "segment", "run", "generate", "bench", "bench_llm", "perplexity", "release", "serve")
OPTIONAL_MODULES = {"release"}


def command_modules() -> list:
    mods = []
    for name in COMMAND_MODULES:
        try:
            mods.append(importlib.import_module(f"{__package__}.{name}"))
        except ModuleNotFoundError as e:
            if name in OPTIONAL_MODULES and e.name == f"{__package__}.{name}":
                continue
            raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="paddle2ort", description="Paddle models -> validated ONNX -> ONNX Runtime",
        epilog="example:\n  paddle2ort convert inference/ -o bundle/ --precision fp32,fp16,int8\n"
               "  paddle2ort COMMAND --help     (every command's options, an example, its exit codes)\n\n"
               + EXIT_CODES, formatter_class=HelpFormatter)
    global_options(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for mod in command_modules():
        mod.register(sub)
    for name, cp in sub.choices.items():
        short_usage(cp)
        for sub_action in cp._actions:              # zoo build
            if isinstance(sub_action, argparse._SubParsersAction):
                for ccp in sub_action.choices.values():
                    short_usage(ccp)
    return p


def verbosity(args: argparse.Namespace) -> int:
    if args.verbose and args.quiet:
        raise BadInputError("give -v (debug) or -q (quiet), not both")
    return 1 if args.verbose else -1 if args.quiet else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:             # argparse: usage errors exit 2, --help exits 0
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    from paddle2ort.runtime.signals import Terminated, sigterm_as_interrupt
    enable_crash_traceback()
    try:
        setup_logging(verbosity(args))
        # SIGTERM (CI timeouts, process managers) unwinds like Ctrl-C: staging/temp dirs and partial files go
        with sigterm_as_interrupt(), console():     # log lines go above progress bars, never through them
            return int(args.func(args) or 0)
    except Paddle2OrtError as e:
        log.error("%s", e)
        return e.exit_code
    except KeyboardInterrupt as e:
        log.error("terminated" if isinstance(e, Terminated) else "interrupted")
        return 143 if isinstance(e, Terminated) else 130
    except (OSError, UnicodeError) as e:
        log.error("%s", BadInputError(os_error_message(e)))
        return 2


def enable_crash_traceback() -> None:
    """A native crash (onnxruntime, CUDA) still prints the Python call it died in, instead of an exit 139 alone."""
    if faulthandler.is_enabled() or sys.stderr is None:     # no stderr at all (a daemon, pythonw, 2>&-)
        return
    try:
        faulthandler.enable(all_threads=False)
    except (AttributeError, OSError, ValueError, RuntimeError):   # stderr without a file descriptor
        pass


def os_error_message(e: BaseException) -> str:
    """An OSError as a user can act on it: which path, and for a full disk which folders the run writes."""
    import errno
    import tempfile
    if not isinstance(e, OSError) or e.errno not in (errno.ENOSPC, errno.EDQUOT):
        return str(e)                   # an OSError's text names its path where it has one
    where = e.filename if e.filename is not None else "a folder this run writes"
    return (f"no space left on the disk holding {where} ({e.strerror}): free some, or write to another disk "
            f"(-o / --output for results, TMPDIR for the temporary files, now {tempfile.gettempdir()})")


if __name__ == "__main__":
    sys.exit(main())
