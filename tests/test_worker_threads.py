"""A Paddle worker on a host out of threads: refused up front, its math pools capped, and a hang stopped in seconds.

Paddle 3.3 hangs rather than fails when pthread_create refuses one of its executor's threads (EAGAIN: RLIMIT_NPROC,
a pids cgroup): every thread then sleeps on a futex and the parent waited out the worker's 3,600 s time-out. Now
the parent watches the worker's CPU time and disk reads and stops one in which nothing moved for
PADDLE2ORT_WORKER_STALL_S seconds (lowered to 2 here), with a message naming the likely cause and the fix; a busy
task of any length goes on. The real hang is reproduced by making pthread_create fail (an LD_PRELOAD shim, where a C
compiler is at hand)."""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from paddle2ort.convert import forkserver, paddle_proc
from paddle2ort.convert import paddle_worker_limits as limits
from paddle2ort.convert.errors import BadInputError, ConversionError

STALL = "2"


def gone(pid: int) -> bool:
    """Dead (a zombie waiting for its reaper counts: the fork server's child is reaped by init once it is killed)."""
    end = time.monotonic() + 5
    while time.monotonic() < end:
        stat = Path(f"/proc/{pid}/stat")
        try:
            if stat.read_text().rpartition(")")[2].split()[0] in "ZX":
                return True
        except (OSError, IndexError):
            return True
        time.sleep(0.1)
    return False


def hung_script(tmp_path: Path) -> Path:
    """A worker that hangs as Paddle does: its threads all asleep on a lock that nobody will release."""
    path = tmp_path / "hung_worker.py"
    path.write_text(textwrap.dedent("""
        import sys, threading
        print("worker started", flush=True)
        threading.Thread(target=threading.Event().wait, daemon=True).start()
        threading.Event().wait()
    """))
    return path


@pytest.mark.unit
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the liveness watch reads /proc")
def test_a_hung_worker_is_stopped_in_seconds_not_an_hour(tmp_path, monkeypatch):
    monkeypatch.setenv(limits.ENV_STALL, STALL)
    monkeypatch.setenv(forkserver.ENV_MODE, "spawn")              # unit tier: no warm Paddle process
    monkeypatch.setattr(paddle_proc, "WORKER_MODULE", str(hung_script(tmp_path)))
    t0 = time.monotonic()
    with pytest.raises(ConversionError) as e:
        paddle_proc.run_worker("inspect", {}, tmp_path / "work")
    took = time.monotonic() - t0
    msg = str(e.value)
    assert took < 30, f"took {took:.0f} s"
    assert "'inspect' hung: no CPU time" in msg and "ulimit -u" in msg and limits.ENV_STALL in msg, msg
    assert "worker started" in msg                                # the log's tail comes with it
    stalled = e.value.__cause__
    assert isinstance(stalled, forkserver.TaskStalled) and stalled.threads == 2
    assert gone(stalled.pid), "the hung worker was left running"


def test_a_hung_task_of_the_warm_process_is_stopped_too(tmp_path, monkeypatch):
    """The fork server's child: killed, the server replaced, the next task runs."""
    if not forkserver.enabled():
        pytest.skip("fork mode is Linux only")
    monkeypatch.setenv(limits.ENV_STALL, STALL)
    log = tmp_path / "log"
    t0 = time.monotonic()
    with pytest.raises(forkserver.TaskStalled) as e:
        forkserver.run_module([str(hung_script(tmp_path))], log, 600)
    assert time.monotonic() - t0 < 60
    assert gone(e.value.pid)
    assert forkserver.run_module(["-c", "print('next')"], log, 600) == 0


@pytest.mark.unit
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the liveness watch reads /proc")
def test_a_long_busy_task_is_not_stopped(tmp_path, monkeypatch):
    """A long export uses CPU the whole time: two and a half stall windows of work, no silence, end normally."""
    monkeypatch.setenv(limits.ENV_STALL, STALL)
    monkeypatch.setenv(forkserver.ENV_MODE, "spawn")
    busy = "import time\nt = time.time()\nwhile time.time() - t < 5:\n    sum(range(1000))\n"
    assert forkserver.run_module(["-c", busy], tmp_path / "log", 600) == 0


@pytest.mark.unit
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the liveness watch reads /proc")
def test_the_watch_tells_a_hang_from_a_stopped_or_waiting_process():
    """Asleep with no child: stalled. Stopped (SIGSTOP, Ctrl-Z) or waiting on a child of its own: not judged."""
    def watch_until(proc, seconds):
        w = limits.Progress(proc.pid, 1.0)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            w.check()
            time.sleep(0.2)

    asleep = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; "
                               "subprocess.run([sys.executable, '-c', 'import time; time.sleep(60)'])"])
    try:
        with pytest.raises(limits.Stalled):
            watch_until(asleep, 8)
        os.kill(asleep.pid, signal.SIGSTOP)
        watch_until(asleep, 1.6)
        watch_until(parent, 1.6)
        off = limits.Progress(asleep.pid, None)                   # PADDLE2ORT_WORKER_STALL_S=0: never judged
        off.since -= 3600
        off.check()
    finally:
        for p in (asleep, parent):
            p.kill()
            p.wait()


@pytest.mark.unit
def test_a_worker_refused_a_thread_says_so(tmp_path, monkeypatch):
    """Where Paddle raises instead of hanging ("RuntimeError: Resource temporarily unavailable" from its executor)
    the message was "export failed: RuntimeError: Resource temporarily unavailable"; now it names the cause."""
    script = tmp_path / "eagain_worker.py"
    script.write_text("import json, sys\nopen(sys.argv[3], 'w').write(json.dumps({'ok': False, 'kind': 'error', "
                      "'message': 'RuntimeError: Resource temporarily unavailable'}))\nsys.exit(1)\n")
    monkeypatch.setenv(forkserver.ENV_MODE, "spawn")
    monkeypatch.setattr(paddle_proc, "WORKER_MODULE", str(script))
    with pytest.raises(ConversionError, match="the export task ran out of threads or memory .*ulimit -u"):
        paddle_proc.run_worker("export", {}, tmp_path / "work")


@pytest.mark.unit
def test_stall_window_comes_from_the_environment(monkeypatch):
    for raw, want in (("", limits.DEFAULT_STALL_S), ("30", 30.0), ("0", None), ("-1", None), ("soon", 120.0)):
        monkeypatch.setenv(limits.ENV_STALL, raw)
        assert limits.stall_s() == want


def tight_nproc(monkeypatch, room: int) -> None:
    """RLIMIT_NPROC as a user without CAP_SYS_RESOURCE meets it: `room` threads above those of this uid now."""
    used = limits._user_threads(os.getuid())
    real = resource.getrlimit
    monkeypatch.setattr(limits, "_nproc_exempt", lambda: False)
    monkeypatch.setattr(limits.resource, "getrlimit",
                        lambda which: (used + room, used + room) if which == resource.RLIMIT_NPROC else real(which))


@pytest.mark.unit
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="threads are counted in /proc")
def test_a_host_without_room_for_the_workers_threads_is_refused_before_it_starts(tmp_path, monkeypatch):
    tight_nproc(monkeypatch, 5)

    def started(*a, **k):
        raise AssertionError("a Paddle worker started on a host with no room for its threads")
    monkeypatch.setattr(forkserver, "run_module", started)
    with pytest.raises(BadInputError) as e:
        paddle_proc.run_worker("export_llm", {}, tmp_path / "work")
    msg = str(e.value)
    assert "out of threads: RLIMIT_NPROC (ulimit -u)" in msg and "room for 5 more" in msg, msg
    assert "the Paddle worker (export_llm)" in msg and "raise the limit" in msg
    assert not (tmp_path / "work").exists()


@pytest.mark.unit
def test_math_thread_pools_are_capped_at_the_cores_and_the_room(monkeypatch):
    cores = limits.usable_cores()
    env = limits.math_thread_env({}, limits.ThreadRoom(None, "no thread limit found"))
    assert {env[v] for v in limits.MATH_THREAD_VARS} == {str(cores)}
    tight = limits.ThreadRoom(limits.WORKER_THREADS + 1, "RLIMIT_NPROC (ulimit -u) 64, 39 threads of uid 7 running")
    env = limits.math_thread_env({"OMP_NUM_THREADS": "64", "MKL_NUM_THREADS": "1"}, tight)
    assert env == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    for room in (limits.ThreadRoom(None, ""), limits.ThreadRoom(10_000, "kernel.threads-max")):
        kept = limits.math_thread_env({"OMP_NUM_THREADS": "64", "OPENBLAS_NUM_THREADS": "4,2"}, room)
        assert kept["OMP_NUM_THREADS"] == "64" and kept["OPENBLAS_NUM_THREADS"] == "4,2"   # room: the user's choice
    for var in limits.MATH_THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    env = forkserver._task_env()                                 # what every worker (and the warm process) gets
    assert all(1 <= int(env[v]) <= cores for v in limits.MATH_THREAD_VARS)


SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
static int made = 0;
int pthread_create(pthread_t *t, const pthread_attr_t *a, void *(*f)(void *), void *arg) {
    static int (*real)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
    if (!real) real = dlsym(RTLD_NEXT, "pthread_create");
    const char *limit = getenv("P2O_TEST_THREADS");
    if (limit && __atomic_add_fetch(&made, 1, __ATOMIC_SEQ_CST) > atoi(limit)) return EAGAIN;
    return real(t, a, f, arg);
}
"""

PADDLE_STATIC_RUN = """
import numpy as np, paddle
paddle.enable_static()
main, startup = paddle.static.Program(), paddle.static.Program()
with paddle.static.program_guard(main, startup):
    x = paddle.static.data("x", [4, 8], "float32")
    y = paddle.static.nn.fc(x, 3)
exe = paddle.static.Executor(paddle.CPUPlace())
exe.run(startup)
exe.run(main, feed={"x": np.ones((4, 8), "float32")}, fetch_list=[y])
"""


@pytest.mark.skipif(shutil.which("cc") is None or not sys.platform.startswith("linux"), reason="needs a C compiler")
@pytest.mark.parametrize("threads", [4, 5, 6])
def test_paddle_refused_a_thread_ends_in_seconds(threads, tmp_path, monkeypatch):
    """The real thing: pthread_create fails (EAGAIN) from the Nth thread on, as under RLIMIT_NPROC. Paddle's
    executor then raises, aborts or hangs, depending on which thread it was refused; each ends in seconds now."""
    pytest.importorskip("paddle")
    shim = tmp_path / "nothreads.so"
    (tmp_path / "shim.c").write_text(SHIM)
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(shim), str(tmp_path / "shim.c"), "-ldl"], check=True)
    monkeypatch.setenv(limits.ENV_STALL, STALL)
    monkeypatch.setenv(forkserver.ENV_MODE, "spawn")                # the shim in this task's process only
    monkeypatch.setenv("LD_PRELOAD", str(shim))
    monkeypatch.setenv("P2O_TEST_THREADS", str(threads))
    t0 = time.monotonic()
    try:
        code = forkserver.run_module(["-c", PADDLE_STATIC_RUN], tmp_path / "log", 600)
        outcome = f"exit {code}"
    except forkserver.TaskStalled as e:
        outcome = "stalled"
        assert gone(e.pid)
    took = time.monotonic() - t0
    assert outcome != "exit 0", "pthread_create was refused and Paddle went on: the shim did not take"
    assert took < 60, f"{outcome} after {took:.0f} s"
