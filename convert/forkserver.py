"""A warm Paddle process: `python -m MODULE ARGS` run in a fork of a process that has already imported Paddle.

Importing Paddle takes ~4 s on 2 cores and PaddleNLP ~9 s more, and one conversion runs several worker tasks
(inspect, an export per precision, the reference outputs; an LLM adds its state, references and perplexity), each
of which paid it again. The server imports them once and forks a fresh child per task, so every task still runs
in a process of its own: a SIGABRT in paddle2onnx kills only that child, and nothing one task does to Paddle's
global state reaches the next. The child dies with the server, the server with its client (PR_SET_PDEATHSIG).

Linux only (fork after import); elsewhere, or with PADDLE2ORT_WORKER=spawn, every task is a fresh `python -m`.
The standard library's multiprocessing forkserver preloads modules too, but runs Python callables, not a module
as `__main__` with its own stdout/stderr file and exit status, which is what the worker contract is.

Protocol (one JSON object a line): request {argv, log, stdout, cwd, env, preload} -> {"pid": N} when forked, then
{"returncode": R} (negative: killed by that signal, as subprocess reports it).
"""
from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .paddle_worker_limits import Progress, Stalled, math_thread_env, stall_s

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
ENV_MODE = "PADDLE2ORT_WORKER"          # "fork" (default on Linux) or "spawn"


def _die_with(parent_pid: int) -> None:
    """The calling process gets SIGKILL when its parent dies (Linux); if the parent is already gone, exit."""
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)


def _task_env() -> dict:
    """The environment of every task: the caller's, with paddle2onnx's run-time pip installs off and the math
    libraries' thread pools capped at the cores and the threads the host allows (paddle_worker_limits)."""
    return math_thread_env(dict(os.environ, POLYGRAPHY_AUTOINSTALL_DEPS="0", PYTHONUNBUFFERED="1"))


def enabled() -> bool:
    mode = os.environ.get(ENV_MODE, "fork").strip().lower()
    if mode not in ("fork", "spawn"):
        log.warning("%s=%r is not 'fork' or 'spawn'; using spawn", ENV_MODE, mode)
        return False
    return mode == "fork" and sys.platform.startswith("linux")


# ---------------------------------------------------------------- server side (python -m ...forkserver)

def _preload(modules) -> None:
    """Import in the server, so every later fork has them; a module that is missing is the child's to report."""
    for name in modules:
        if name not in sys.modules:
            try:
                importlib.import_module(name)
            except Exception as e:  # noqa: BLE001 - e.g. a runtime-only install without Paddle
                print(f"forkserver: preload {name} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)


def _child(req: dict, proto_fds: tuple[int, int], server_pid: int) -> None:
    """In the fork: become `python -m argv[0] argv[1:]` with stdout/stderr on the log file; never returns."""
    code = 1
    try:
        _die_with(server_pid)
        for fd in proto_fds:
            os.close(fd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for fd, path in ((1, req.get("stdout") or req["log"]), (2, req["log"])):
            opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(opened, fd)
            os.close(opened)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        import tempfile
        tempfile.tempdir = None                     # recomputed from this task's TMPDIR, not the server's
        import runpy
        target, args = req["argv"][0], req["argv"][1:]
        if target == "-c":                          # python -c CODE ARGS
            sys.argv = ["-c", *args[1:]]
            exec(compile(args[0], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        elif target.endswith(".py"):
            sys.argv = [target, *args]
            sys.path.insert(0, str(Path(target).parent))
            runpy.run_path(target, run_name="__main__")
        else:
            sys.argv = [target, *args]
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - reported like an uncaught exception in `python -m`
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve() -> int:
    """The server loop: requests on stdin, answers on stdout; everything else it prints goes to stderr."""
    proto_in, proto_out = os.dup(0), os.dup(1)
    os.dup2(2, 1)                                   # stray prints of imports must not corrupt the protocol
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the client decides; Ctrl-C reaches the task child
    me = os.getpid()
    import paddle2ort.convert._worker  # noqa: F401 - its environment set-up (glog level, no pip installs) first
    _preload(["paddle"])
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = os.read(proto_in, 65536)
            if not chunk:
                return 0                            # the client closed the pipe: done
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        req = json.loads(line)
        _preload(req.get("preload", ()))
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(req, (proto_in, proto_out), me)
        os.write(proto_out, json.dumps({"pid": pid}).encode() + b"\n")
        _, status = os.waitpid(pid, 0)
        os.write(proto_out, json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode() + b"\n")


# ---------------------------------------------------------------- client side

class ServerGone(RuntimeError):
    """The server process died (not the task): the caller may retry with a fresh process."""


class TaskTimeout(RuntimeError):
    pass


TaskStalled = Stalled      # a task (or the server preparing it) in which nothing moved for stall_s(): killed


class ForkServer:
    """One server process, used by one caller at a time (a lock); `run` is the fork counterpart of subprocess.run."""

    def __init__(self):
        parent = os.getpid()
        self.proc = subprocess.Popen([sys.executable, "-m", "paddle2ort.convert.forkserver"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=_task_env(), preexec_fn=lambda: _die_with(parent))
        self.owner = parent
        self.lock = threading.Lock()
        self._buf = b""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()
            self.proc.wait(timeout=10)
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(Exception):
                f.close()

    def _read(self, deadline: float, watch: Progress) -> dict:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TaskTimeout
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            watch.check()
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise ServerGone(f"the warm Paddle process exited ({self.proc.wait()})")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def run(self, argv: list[str], log_path: Path, timeout_s: float, preload=(), stdout_path=None,
            stall: float | None = None) -> int:
        """Run `python -m argv...` (or a .py script, or `-c CODE`) in a fresh fork; its output goes to log_path
        (stdout to stdout_path when given). Returns the exit status (negative: signal). Raises TaskTimeout after
        timeout_s, TaskStalled once the server (importing) or the task made no progress for `stall` seconds (the
        child is killed first)."""
        req = {"argv": [str(a) for a in argv], "log": str(log_path), "cwd": os.getcwd(),
               "stdout": str(stdout_path) if stdout_path else None,
               "env": _task_env(),
               "preload": list(preload)}
        deadline = time.monotonic() + timeout_s
        pid = None
        try:
            try:
                self.proc.stdin.write(json.dumps(req).encode() + b"\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError) as e:
                raise ServerGone(f"the warm Paddle process is gone: {e}") from e
            pid = self._read(deadline, Progress(self.proc.pid, stall))["pid"]
            return self._read(deadline, Progress(pid, stall))["returncode"]
        except BaseException:                      # time-out, Ctrl-C, SIGTERM, ServerGone: no task is left running,
            if pid is not None:                    # and the next task gets a clean server
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.close()
            raise


_SERVER: ForkServer | None = None
_SERVER_LOCK = threading.Lock()


def server() -> ForkServer | None:
    """This process's server (started on first use), or None when spawn mode is asked for."""
    global _SERVER
    if not enabled():
        return None
    with _SERVER_LOCK:
        if _SERVER is None or not _SERVER.alive() or _SERVER.owner != os.getpid():
            _SERVER = ForkServer()
        return _SERVER


def run_module(argv: list[str], log_path: Path, timeout_s: float, preload=(), stdout_path=None) -> int:
    """`python -m argv[0] argv[1:]` (or `python script.py ...`, or `python -c CODE ...`) with output to log_path
    (stdout to stdout_path when given), warm when possible. Returns the exit status (negative: killed by that
    signal); raises subprocess.TimeoutExpired after timeout_s, TaskStalled (killed) after stall_s() seconds in which
    the task used no CPU and read nothing: a hang (Paddle waiting on a thread that could not start), not work."""
    stall = stall_s()
    srv = server()
    if srv is not None and srv.lock.acquire(blocking=False):
        try:
            try:
                return srv.run(argv, log_path, timeout_s, preload, stdout_path, stall)
            except ServerGone as e:
                log.debug("%s; running this task in a fresh process", e)
            except TaskTimeout as e:
                raise subprocess.TimeoutExpired(argv, timeout_s) from e
        finally:
            srv.lock.release()
    first = str(argv[0])
    cmd = [sys.executable, *([] if first.endswith(".py") or first == "-c" else ["-m"]), *map(str, argv)]
    env = _task_env()
    parent = os.getpid()
    preexec = (lambda: _die_with(parent)) if sys.platform.startswith("linux") else None
    with open(log_path, "a", encoding="utf-8") as logf, \
            (open(stdout_path, "a", encoding="utf-8") if stdout_path else contextlib.nullcontext(logf)) as outf:
        proc = subprocess.Popen(cmd, stdout=outf, stderr=logf if stdout_path else subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, preexec_fn=preexec)
        try:
            watch, deadline = Progress(proc.pid, stall), time.monotonic() + timeout_s
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise subprocess.TimeoutExpired(cmd, timeout_s)
                try:
                    return proc.wait(timeout=min(left, 1.0))
                except subprocess.TimeoutExpired:
                    watch.check()
        except BaseException:          # time-out, stall, Ctrl-C, SIGTERM: no task is left running
            proc.kill()
            proc.wait()
            raise


if __name__ == "__main__":
    sys.exit(serve())
