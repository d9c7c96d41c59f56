"""SIGTERM (what CI timeouts, `timeout`, systemd and container runtimes send) unwinds like Ctrl-C.

Python turns SIGINT into KeyboardInterrupt, so every `finally` and context manager cleans up; SIGTERM's default is
to die on the spot, leaving staging dirs, temp dirs and half-written files behind. Long-running library calls
(conversions, JSONL jobs) run under `sigterm_as_interrupt()`; the CLI installs the same handler process-wide.
"""
from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(KeyboardInterrupt):
    """Raised by SIGTERM: the same unwinding as Ctrl-C (the CLI exits 143 instead of 130)."""


def _raise_terminated(signum, frame):
    raise Terminated(f"terminated by {signal.Signals(signum).name}")


def install_sigterm_handler() -> bool:
    """Process-wide, from the main thread; a handler someone else installed is kept. True when installed."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _raise_terminated)
    return True


@contextlib.contextmanager
def sigterm_as_interrupt():
    """For the duration of a call: SIGTERM raises Terminated; the default comes back afterwards."""
    installed = install_sigterm_handler()
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
