"""Logging set-up for every front end (the CLI, the demo): our messages on the console, written through tqdm while
a progress bar runs (tqdm's logging redirect) so bars stay intact; optionally everything third-party (Paddle,
setuptools, onnxruntime warnings, child-process output) to a log file instead of the terminal."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Iterator

OURS = "paddle2ort"
FORMAT = "%(levelname)s %(name)s: %(message)s"


def level_for(verbosity: int) -> int:
    """-1 (quiet): warnings and errors; 0: info; >= 1 (verbose): debug."""
    return logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO


def is_ours(record: logging.LogRecord) -> bool:
    return record.name == OURS or record.name.startswith(OURS + ".")


def setup_logging(verbosity: int = 0, log_file: str | Path | None = None) -> None:
    """Our loggers (`paddle2ort.*`) at the verbosity's level, on the console (through the root logger's handler,
    so anything listening on the root, like pytest's caplog, sees them too). Other libraries' loggers
    (onnxruntime.quantization logs on the root logger): on the console at WARNING (DEBUG when verbose), or, with
    `log_file`, only in that file, together with Python warnings and every byte that C/C++ code or child processes
    write to the stderr file descriptor (Paddle's glog, paddle2onnx); our messages are copied to the file too."""
    ours, root = logging.getLogger(OURS), logging.getLogger()
    for lg in (ours, root):
        for h in list(lg.handlers):
            lg.removeHandler(h)
    ours.setLevel(level_for(verbosity))
    ours.propagate = True
    root.setLevel(logging.DEBUG if verbosity > 0 else logging.WARNING)
    if log_file is not None:
        log_file = Path(log_file)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_file, "a", encoding="utf-8", buffering=1)
        fileh = logging.StreamHandler(stream)
        fileh.setFormatter(logging.Formatter("%(asctime)s " + FORMAT))
        root.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
        root.addHandler(fileh)
        logging.captureWarnings(True)               # warnings.warn(...) -> logger "py.warnings" -> the file
        warnings.simplefilter("default")
        _stderr_fd_to(stream)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(FORMAT))
    if log_file is not None:
        console.addFilter(is_ours)                  # third-party records: the file only
    root.addHandler(console)


def _stderr_fd_to(stream) -> None:
    """Point file descriptor 2 at the log file and give Python's sys.stderr (our console handler, tqdm) a
    duplicate of the terminal."""
    try:
        sys.stderr.flush()
        term = os.dup(2)
        os.dup2(stream.fileno(), 2)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):   # no real fd 2 (a captured test run)
        return
    sys.stderr = os.fdopen(term, "w", buffering=1, encoding="utf-8", errors="replace")


@contextlib.contextmanager
def console() -> Iterator[None]:
    """While inside: console log lines are written with tqdm.write, above any running progress bar
    (tqdm's logging_redirect_tqdm, keeping the console handler's filter and level)."""
    from tqdm.contrib.logging import logging_redirect_tqdm
    root = logging.getLogger()
    consoles = [h for h in root.handlers if type(h) is logging.StreamHandler and h.stream is sys.stderr]
    with logging_redirect_tqdm(loggers=[root]):
        if consoles:
            for h in root.handlers:
                if type(h).__module__ == "tqdm.contrib.logging":                   # the tqdm handler
                    h.setLevel(consoles[0].level)
                    for f in consoles[0].filters:
                        h.addFilter(f)
        yield
