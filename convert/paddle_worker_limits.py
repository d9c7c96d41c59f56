"""The host's thread limits and the liveness of a Paddle worker process (Linux; elsewhere every check is a no-op).

Paddle 3.3 hangs instead of failing when a thread it needs cannot start: its executor's pool (10 threads for one
static-program run) and OpenBLAS wait forever on a thread that pthread_create refused (EAGAIN: RLIMIT_NPROC /
`ulimit -u`, a container's pids limit, kernel.threads-max). The task then sits with every thread asleep on a futex,
using no CPU, until the worker's one-hour time-out. Three things keep that from costing an hour:

- `check_thread_room` before a worker starts: a host with no room for a worker's threads is one message up front;
- `math_thread_env`: the worker's OpenMP / MKL / OpenBLAS pools capped at the cores this process may use and the
  room left (OpenBLAS sizes its pool from the whole machine in some builds);
- `Progress`: the parent watches the worker's CPU time, major page faults and disk reads (/proc/PID/stat, io), and a
  worker in which none moved for `stall_s()` seconds is stopped. A thread of the worker writing heartbeats would not
  do: Paddle releases the GIL in the hung call, so such a thread goes on beating while the task is dead; a long
  export, on the other hand, uses CPU the whole time.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

try:
    import resource
except ImportError:                  # Windows: no RLIMIT_NPROC
    resource = None

log = logging.getLogger(__name__)

ENV_STALL = "PADDLE2ORT_WORKER_STALL_S"     # seconds without progress before a worker is stopped; 0: never
DEFAULT_STALL_S = 120.0
# Threads a worker task needs besides its math threads: Paddle's executor pools (10 measured for one static run),
# the fork server and the interpreter's own; below this much room a task would hang, not fail.
WORKER_THREADS = 24
MATH_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# what Paddle, the C library or OpenBLAS say when the host has no thread or memory left (pthread_create's EAGAIN,
# ENOMEM, C++'s bad_alloc): a host out of resources, not a damaged model
RESOURCE_ERRORS = ("Resource temporarily unavailable", "Cannot allocate memory", "std::bad_alloc",
                   "pthread_create failed")
_CAP_SYS_ADMIN, _CAP_SYS_RESOURCE = 21, 24       # either exempts a process from RLIMIT_NPROC
PROC = Path("/proc")
CGROUP = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def _status(pid: str) -> dict[str, str]:
    text = _read(PROC / pid / "status") or ""
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _nproc_exempt() -> bool:
    caps = _status("self").get("CapEff", "").strip()
    try:
        eff = int(caps, 16)
    except ValueError:
        return False
    return bool(eff & (1 << _CAP_SYS_ADMIN | 1 << _CAP_SYS_RESOURCE))


def _user_threads(uid: int) -> int:
    """Threads of every process whose real uid is `uid` (what RLIMIT_NPROC counts, in this PID namespace)."""
    total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(PROC):
            if not entry.name.isdigit():
                continue
            st = _status(entry.name)
            uids = st.get("Uid", "").split()
            if uids and uids[0] == str(uid):
                total += _int(st.get("Threads")) or 1
    return total


def _cgroup_pids() -> tuple[int, int, str] | None:
    """(pids.max, pids.current, file) of this process's cgroup (v2, or v1's pids controller), None if unlimited."""
    for line in (_read(PROC / "self" / "cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            base = CGROUP
        elif "pids" in controllers.split(","):
            base = CGROUP / "pids"
        else:
            continue
        d = base / path.lstrip("/")
        while True:                                # a limit of any ancestor applies too; report the nearest
            limit = _read(d / "pids.max")
            if limit is not None and limit.strip() != "max":
                cur = _int(_read(d / "pids.current"))
                if _int(limit) is not None and cur is not None:
                    return int(limit), cur, str(d / "pids.max")
            if d == base or d == d.parent:
                break
            d = d.parent
    return None


@dataclass(frozen=True)
class ThreadRoom:
    room: int | None          # threads this user may still start (None: no limit found)
    limit: str                # which limit leaves the least, and its figures (for messages)


def thread_room() -> ThreadRoom:
    """How many more threads this process may start: the least of RLIMIT_NPROC (`ulimit -u`) minus the user's
    threads, the cgroup's pids.max minus pids.current, and kernel.threads-max minus the host's threads."""
    rooms: list[tuple[int, str]] = []
    soft = resource.getrlimit(resource.RLIMIT_NPROC)[0] if resource is not None else -1
    if soft not in (-1, getattr(resource, "RLIM_INFINITY", -1)) and not _nproc_exempt():
        used = _user_threads(os.getuid())
        rooms.append((soft - used, f"RLIMIT_NPROC (ulimit -u) {soft}, {used} threads of uid {os.getuid()} running"))
    pids = _cgroup_pids()
    if pids is not None:
        rooms.append((pids[0] - pids[1], f"the cgroup's pids limit {pids[0]} ({pids[2]}), {pids[1]} in use"))
    tmax = _int(_read(PROC / "sys" / "kernel" / "threads-max"))
    load = (_read(PROC / "loadavg") or "").split()
    running = _int(load[3].partition("/")[2]) if len(load) > 3 else None
    if tmax and running is not None:
        rooms.append((tmax - running, f"kernel.threads-max {tmax}, {running} threads on the host"))
    if not rooms:
        return ThreadRoom(None, "no thread limit found")
    room, limit = min(rooms)
    return ThreadRoom(max(room, 0), limit)


def check_thread_room(what: str, room: ThreadRoom | None = None) -> ThreadRoom:
    """Refuse (BadInputError, exit 2) before `what` starts when the host has no room for a worker's threads."""
    from .errors import BadInputError
    room = thread_room() if room is None else room
    if room.room is not None and room.room < WORKER_THREADS:
        raise BadInputError(f"the host is out of threads: {room.limit}, which leaves room for {room.room} more, and "
                            f"{what} needs about {WORKER_THREADS} (Paddle's thread pools hang, not fail, when one "
                            "cannot start). Stop other jobs of this user, or raise the limit (ulimit -u N, the "
                            "container's --pids-limit), then run again")
    return room


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity, capped at the cgroup's CPU quota (docker --cpus)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = None
    cpu_max = (_read(CGROUP / "cpu.max") or "").split()
    if len(cpu_max) == 2 and cpu_max[0] != "max":
        quota = (_int(cpu_max[0]), _int(cpu_max[1]))
    else:
        q, p = _int(_read(CGROUP / "cpu" / "cpu.cfs_quota_us")), _int(_read(CGROUP / "cpu" / "cpu.cfs_period_us"))
        if q is not None and q > 0 and p:
            quota = (q, p)
    if quota and quota[0] and quota[1]:
        cores = min(cores, max(1, math.ceil(quota[0] / quota[1])))
    return max(1, cores)


def math_thread_env(env: dict, room: ThreadRoom | None = None) -> dict:
    """`env` with OMP/MKL/OPENBLAS_NUM_THREADS set where unset, to the usable cores capped by the thread room
    (a value the user set is kept unless it exceeds that room)."""
    room = thread_room() if room is None else room
    room_cap = None if room.room is None else max(1, room.room - WORKER_THREADS)
    out = dict(env)
    for var in MATH_THREAD_VARS:
        given = _int(out[var].split(",")[0]) if out.get(var) else None
        if not out.get(var):
            out[var] = str(min(usable_cores(), room_cap or usable_cores()))
        elif given is not None and room_cap is not None and given > room_cap:
            log.warning("%s=%s lowered to %d for the Paddle worker: %s", var, out[var], room_cap, room.limit)
            out[var] = str(room_cap)
    return out


def math_threads() -> int:
    """In a worker: the math threads to use, OMP_NUM_THREADS as math_thread_env set it (else the usable cores)."""
    given = _int((os.environ.get("OMP_NUM_THREADS") or "").split(",")[0] or None)
    return given if given is not None and given >= 1 else usable_cores()


def stall_s() -> float | None:
    """Seconds without progress after which a worker is stopped (PADDLE2ORT_WORKER_STALL_S; 0 or less: never)."""
    raw = os.environ.get(ENV_STALL, "").strip()
    if not raw:
        return DEFAULT_STALL_S
    try:
        value = float(raw)
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %g", ENV_STALL, raw, DEFAULT_STALL_S)
        return DEFAULT_STALL_S
    return value if value > 0 and math.isfinite(value) else None


class Stalled(RuntimeError):
    """A worker process in which nothing moved (no CPU time, no page faults from disk, no disk reads)."""

    def __init__(self, pid: int, idle_s: float, threads: int | None):
        self.pid, self.idle_s, self.threads = pid, idle_s, threads
        super().__init__(f"process {pid} made no progress for {idle_s:.0f} s ({threads or '?'} threads, all "
                         "waiting)")


def _has_children(pid: int) -> bool:
    tasks = PROC / str(pid) / "task"
    with contextlib.suppress(OSError):
        listed = [_read(t / "children") for t in tasks.iterdir()]
        if all(c is not None for c in listed):
            return any(c.strip() for c in listed)
    with contextlib.suppress(OSError):                   # no /proc/PID/task/TID/children: scan the parents
        for entry in os.scandir(PROC):
            if entry.name.isdigit():
                stat = _read(PROC / entry.name / "stat") or ""
                fields = stat.rpartition(")")[2].split()
                if len(fields) > 1 and fields[1] == str(pid):
                    return True
    return False


class Progress:
    """Call `check()` every second or so while `pid` runs: raises Stalled once its CPU time, major page faults and
    disk reads have not moved for `stall_s` seconds (reset while it is stopped (T), in disk wait (D) or waits on a
    child of its own, and after a gap in the checks: this process was suspended, not the worker stuck)."""

    GAP_S = 10.0

    def __init__(self, pid: int, stall_s: float | None):
        self.pid, self.stall_s = pid, stall_s
        self.since = self.seen = time.monotonic()
        self.sig = self._signature()

    def _signature(self):
        stat = _read(PROC / str(self.pid) / "stat")
        if stat is None:
            return None
        f = stat.rpartition(")")[2].split()
        if len(f) < 18:
            return None
        io = dict(ln.split(":", 1) for ln in (_read(PROC / str(self.pid) / "io") or "").splitlines() if ":" in ln)
        # state; utime+stime+cutime+cstime; majflt; read_bytes; num_threads
        return f[0], sum(int(x) for x in f[11:15]), int(f[9]), _int(io.get("read_bytes")), int(f[17])

    def check(self) -> None:
        if self.stall_s is None:
            return
        now = time.monotonic()
        gap, self.seen = now - self.seen, now
        sig = self._signature()
        if sig is None:                       # gone (exiting) or no /proc: nothing to judge
            self.since = now
            return
        moved = self.sig is None or sig[1:4] != self.sig[1:4]
        self.sig = sig
        if moved or gap > self.GAP_S or sig[0] in "TtDRZX":
            self.since = now
            return
        if now - self.since >= self.stall_s:
            if _has_children(self.pid):
                self.since = now
                return
            raise Stalled(self.pid, now - self.since, sig[4])
