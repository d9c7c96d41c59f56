"""Parent side of the Paddle worker: run one task in a child process and turn its fate into a typed result.

Tasks run warm (forkserver.py: a fork of a process that has imported Paddle) or, with PADDLE2ORT_WORKER=spawn or
off Linux, as a fresh `python -m`. Also the process hygiene of a conversion: SIGTERM is handled like Ctrl-C (the same
cleanup runs), the worker dies with its parent (Linux PR_SET_PDEATHSIG), and work directories carry their owner's
pid (and a token of the host and PID namespace it means something in) so the next run sweeps those of runs that
were killed (SIGKILL leaves no chance to clean up), and never a live run's in another container. A worker does not
start on a host with no room for its threads, and one that hangs (Paddle waiting on a thread that never started) is
stopped within PADDLE2ORT_WORKER_STALL_S seconds, not at its time-out (paddle_worker_limits.py).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from paddle2ort.runtime.signals import Terminated, sigterm_as_interrupt  # noqa: F401 - re-exported for convert

from . import forkserver
from .errors import BadInputError, ConversionError, OperatorFormError
from .paddle_worker_limits import ENV_STALL, RESOURCE_ERRORS, check_thread_room, thread_room

log = logging.getLogger(__name__)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # exists, owned by someone else
        return True
    return True


@functools.lru_cache(maxsize=None)
def run_token() -> str:
    """8 hex digits naming this host's boot and PID namespace: a PID in a temp or staging name means something only
    where this token matches (two containers sharing a volume or /tmp see each other's PIDs as dead)."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


STALE_AFTER_S = 7 * 24 * 3600      # a run dir of another host or namespace untouched this long is a dead run's


def sweep_stale(parent: Path, pattern: re.Pattern) -> list[Path]:
    """Remove directories in `parent` whose name matches `pattern` (groups 'pid' and 'token') of dead runs: ours
    (this host and PID namespace: `run_token()`) whose pid is gone, or another's left untouched for STALE_AFTER_S."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = pattern.fullmatch(p.name)
        if not m or not p.is_dir() or p.is_symlink():
            continue
        pid = int(m.group("pid"))
        if m.group("token") == run_token():
            if pid == os.getpid() or pid_alive(pid):
                continue
        else:
            try:
                if time.time() - p.stat().st_mtime < STALE_AFTER_S:
                    continue
            except OSError:
                continue
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():
            removed.append(p)
            log.info("removed %s, left behind by a killed run (pid %d)", p, pid)
    return removed


WORKDIR_RE = re.compile(r"paddle2ort-(?:[a-z][a-z0-9]*-)?(?P<pid>\d+)-(?:(?P<token>[0-9a-f]{8})-)?[A-Za-z0-9_]{6,}")


def make_workdir(kind: str = "") -> Path:
    """A fresh temp dir `paddle2ort-[KIND-]PID-TOKEN-XXXXXX`; first sweeps those of dead runs."""
    sweep_stale(Path(tempfile.gettempdir()), WORKDIR_RE)
    prefix = f"paddle2ort-{kind + '-' if kind else ''}{os.getpid()}-{run_token()}-"
    return Path(tempfile.mkdtemp(prefix=prefix))


@contextlib.contextmanager
def workdir(kind: str = ""):
    """make_workdir as a context manager: removed on exit (also on Ctrl-C/SIGTERM); swept later after SIGKILL."""
    path = make_workdir(kind)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _refusals(log_path: Path):
    """paddle2onnx's refusals of an operator's form in the task's log (OperatorFormError), else None."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    try:
        p2o = version("paddle2onnx")
    except PackageNotFoundError:
        p2o = ""
    return OperatorFormError.from_log(text, p2o)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    keep = [ln for ln in text.splitlines() if ln.strip() and "Warning" not in ln and "warnings.warn" not in ln]
    return "\n".join(keep[-lines:])


# Worker tasks that need Paddle (and paddle2onnx) only; the others import PaddleNLP too. The warm process imports
# what a task needs before forking it, so the next task of the kind starts without the import.
PADDLE_ONLY_TASKS = frozenset({"inspect", "reference", "export", "bench", "resave_fluid", "parameters"})


def preload_for(task: str) -> tuple[str, ...]:
    return ("paddle2onnx",) if task in PADDLE_ONLY_TASKS else ("paddle2onnx", "paddlenlp.transformers")


WORKER_MODULE = "paddle2ort.convert._worker"      # `python -m` target of every task (a .py path works too)


def stalled_error(task: str, e: forkserver.TaskStalled, log_path: Path, timeout_s: float) -> ConversionError:
    room = thread_room()
    where = f"; now: {room.limit}, room for {room.room} more threads" if room.room is not None else ""
    threads = "its one thread" if e.threads == 1 else f"its {e.threads} threads all" if e.threads else "all"
    return ConversionError(
        f"the Paddle worker task {task!r} hung: no CPU time and no disk reads for {e.idle_s:.0f} s, {threads} "
        "waiting. Paddle hangs like this when a thread it needs cannot start (the host out of threads: ulimit -u, "
        f"the container's pids limit{where}); it was stopped instead of waiting out its {timeout_s:.0f} s "
        "time-out. Stop other jobs of this user or raise the limit, or lower OMP_NUM_THREADS, and run again "
        f"({ENV_STALL}=SECONDS waits longer for a silent task, 0 never stops one)", log_tail(log_path))


def run_worker(task: str, args: dict, workdir: Path, timeout_s: float = 3600) -> dict:
    """Run `paddle2ort.convert._worker TASK` in a child process; its stdout/stderr go to WORKDIR/TASK.log.
    Refused up front when the host has no room for the worker's threads; a worker that hangs (no CPU time for
    PADDLE2ORT_WORKER_STALL_S seconds: Paddle waiting on a thread that never started) is stopped and reported."""
    check_thread_room(f"the Paddle worker ({task})")
    workdir.mkdir(parents=True, exist_ok=True)
    in_path, out_path, log_path = workdir / f"{task}.in.json", workdir / f"{task}.out.json", workdir / f"{task}.log"
    in_path.write_text(json.dumps(args), encoding="utf-8")
    out_path.unlink(missing_ok=True)
    log.debug("running worker task %s (%s)", task, in_path)
    log_path.write_text("", encoding="utf-8")
    try:
        returncode = forkserver.run_module([WORKER_MODULE, task, str(in_path), str(out_path)],
                                           log_path, timeout_s, preload=preload_for(task))
    except subprocess.TimeoutExpired as e:
        raise ConversionError(f"paddle worker task {task!r} timed out after {timeout_s:.0f}s",
                              log_tail(log_path)) from e
    except forkserver.TaskStalled as e:
        raise stalled_error(task, e, log_path, timeout_s) from e
    refused = _refusals(log_path) if returncode != 0 or not out_path.is_file() else None
    if refused is not None:
        raise refused
    if returncode < 0:
        sig = signal.Signals(-returncode).name
        tail = log_tail(log_path, 12)
        if (task == "reference" and sig in ("SIGABRT", "SIGSEGV", "SIGFPE")     # Paddle itself, on the samples
                and not any(m in tail for m in RESOURCE_ERRORS)):                # (not a host out of memory)
            raise BadInputError(f"Paddle Inference crashed ({sig}) running the model on the gate's samples (the "
                                "generated ones, your --inputs, or a bundle's recorded ones under `validate`): the "
                                "model does not take inputs like them, e.g. lengths or sizes it cannot handle. Give "
                                "--inputs FILE.npz with inputs the model takes (arrays named after its inputs), or "
                                "--input-shape with sizes it takes. Paddle's log ends:\n" + tail)
        raise ConversionError(f"the Paddle/paddle2onnx process crashed ({sig}) during {task!r}", log_tail(log_path))
    if not out_path.is_file():
        tail = log_tail(log_path)
        if "No module named 'paddle" in tail:
            raise BadInputError("this command needs Paddle, which is not installed here (a runtime-only install); "
                                "install the converter side: pip install 'paddle2ort[convert]'")
        raise ConversionError(f"paddle worker task {task!r} exited with code {returncode} and no result", tail)
    result = json.loads(out_path.read_text(encoding="utf-8"))
    if not result.get("ok"):
        if result.get("kind") == "bad_input":
            raise BadInputError(result["message"])
        if "No module named 'paddle" in str(result.get("message")):
            raise BadInputError("this command needs Paddle, which is not installed here (a runtime-only install); "
                                "install the converter side: pip install 'paddle2ort[convert]'")
        if "No space left on device" in str(result.get("message")):
            raise BadInputError(f"the {task} task ran out of disk space ({result.get('message')}): free some, or "
                                f"point TMPDIR at a disk with room (its files go to {tempfile.gettempdir()})")
        if any(m in str(result.get("message")) for m in RESOURCE_ERRORS):
            room = thread_room()
            now = f" (now: {room.limit})" if room.room is not None else ""
            raise ConversionError(f"the {task} task ran out of threads or memory ({result.get('message')}){now}: "
                                  "stop other jobs, raise the limit (ulimit -u, the container's pids or memory "
                                  "limit) or lower OMP_NUM_THREADS, and run again", log_tail(log_path))
        raise ConversionError(f"{task} failed: {result.get('message')}", log_tail(log_path))
    result["log_path"] = str(log_path)
    return result
