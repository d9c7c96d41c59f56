"""Load a model in a child process first: onnxruntime can crash the process that loads a valid model.

Measured: onnxruntime 1.32's CPU graph optimizer at level "all" (its NchwcTransformer) kills the loading process
with SIGSEGV on the FP16 model of a CRNN recognizer (conv net + bidirectional LSTM + linear head), which loads
and runs at "extended". In-process, the converter died with exit 139 and no message. So the gate loads every
model it wrote in a child first, highest optimization level down, and keeps the highest level that loads; a bundle
records it (`ModelFile.max_graph_optimization`) and every runtime loader caps its sessions there
(`Bundle.session_options`). Written here because onnxruntime offers no crash-safe load.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import Paddle2OrtError
from .session import OPT_LEVELS, SessionOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadResult:
    """One child load: at `level`, it loaded (ok), raised onnxruntime's `error` (type name, message), or the
    child died of `signal`."""
    level: str
    ok: bool = False
    error: tuple[str, str] | None = None
    signal: int | None = None

    @property
    def crashed(self) -> bool:
        return self.signal is not None

    def describe(self) -> str:
        if self.ok:
            return f"loads at {self.level!r}"
        if self.error is not None:
            return f"raises {self.error[0]} at {self.level!r}"
        try:
            name = signal.Signals(self.signal).name
        except ValueError:
            name = f"signal {self.signal}"
        return f"crashes ({name}) at {self.level!r}"


def _options_json(opts: SessionOptions) -> dict:
    if opts.user_compute_stream is not None:
        raise ValueError("a stream address does not cross processes: probe without user_compute_stream")
    return dataclasses.asdict(opts)


def _options_from_json(d: dict) -> SessionOptions:
    pairs = ("cuda_options", "free_dimensions")
    d = {k: (tuple(tuple(x) for x in v) if k in pairs else tuple(v) if isinstance(v, list) else v)
         for k, v in d.items()}
    return SessionOptions(**d)


def load_in_child(model: str | Path, opts: SessionOptions = SessionOptions()) -> LoadResult:
    """Create the session for `model` with `opts` in a child process; what happened there."""
    arg = json.dumps({"model": str(model), "options": _options_json(opts)})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}   # this process's packages
    proc = subprocess.run([sys.executable, "-m", __name__, arg], capture_output=True, text=True, check=False,
                          env=env)
    if proc.returncode < 0:
        return LoadResult(opts.graph_optimization, signal=-proc.returncode)
    line = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
    try:
        res = json.loads(line[0]) if line else None
    except json.JSONDecodeError:
        res = None
    if not isinstance(res, dict):        # the probe itself did not run (no crash seen): load as if it passed
        log.warning("the child-process load check of %s did not run (exit %d: %s); loading it here unchecked",
                    Path(model).name, proc.returncode, " ".join(proc.stderr.strip().splitlines()[-3:])[-400:])
        return LoadResult(opts.graph_optimization, ok=True)
    if res.get("ok"):
        return LoadResult(opts.graph_optimization, ok=True)
    return LoadResult(opts.graph_optimization, error=(str(res["error"][0]), str(res["error"][1])))


_LEVELS: dict[tuple, tuple[LoadResult, ...]] = {}


def probe_levels(model: str | Path, opts: SessionOptions = SessionOptions(device="cpu")) -> tuple[LoadResult, ...]:
    """Child loads from `opts.graph_optimization` down, until one does not crash (it loaded or raised an error the
    caller reports); every result, the last the one to use. Remembered for the file as it is now (path, size,
    modification time, and those of its external data NAME.onnx.*) and the options, so the gate's sessions of one
    file probe once."""
    path = Path(model).resolve()
    files = [path, *sorted(path.parent.glob(path.name + ".*"))]     # and its external data (NAME.onnx.data)
    key = (str(path), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()),
           dataclasses.astuple(opts))
    if key not in _LEVELS:
        if len(_LEVELS) >= 256:                 # a long-lived process (a release pipeline) keeps the newest
            _LEVELS.pop(next(iter(_LEVELS)))
        results = []
        top = OPT_LEVELS.index(opts.graph_optimization)
        for level in reversed(OPT_LEVELS[:top + 1]):
            results.append(load_in_child(path, dataclasses.replace(opts, graph_optimization=level)))
            if not results[-1].crashed:
                break
        _LEVELS[key] = tuple(results)
        if len(results) > 1:
            import onnxruntime as ort
            log.warning("onnxruntime %s %s loading %s; %s", ort.__version__, results[0].describe(), path.name,
                        "; ".join(r.describe() for r in results[1:]))
    return _LEVELS[key]


class LoadCrashError(Paddle2OrtError):
    """onnxruntime crashes loading the model at every graph optimization level (in a child process)."""

    exit_code = 4


def safe_options(model: str | Path, opts: SessionOptions = SessionOptions(device="cpu")) -> SessionOptions:
    """`opts` at the highest optimization level (up to its own) whose load of `model` does not crash a child;
    LoadCrashError where every level crashed (loading it here would kill this process)."""
    tried = probe_levels(model, opts)
    if tried[-1].crashed:
        import onnxruntime as ort
        raise LoadCrashError(f"onnxruntime {ort.__version__} cannot load {Path(model).name}: "
                             f"{'; '.join(r.describe() for r in tried)}")
    return dataclasses.replace(opts, graph_optimization=tried[-1].level)


def highest_loading_level(model: str | Path) -> str | None:
    """What a manifest records for `model`: the level its CPU load was capped at, None where "all" loads."""
    tried = probe_levels(model)
    return None if len(tried) == 1 else tried[-1].level


def _child(arg: str) -> None:
    req = json.loads(arg)
    from .session import create_session
    try:
        create_session(req["model"], _options_from_json(req["options"]))
    except Exception as e:  # noqa: BLE001 - the parent reports onnxruntime's own error types by name
        print(json.dumps({"error": [type(e).__name__, str(e)]}), flush=True)
        return
    print(json.dumps({"ok": True}), flush=True)


if __name__ == "__main__":
    _child(sys.argv[1])
