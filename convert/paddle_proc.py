"""Parent side of the Paddle worker: run one task in a child process and turn its fate into a typed result."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from .errors import BadInputError, ConversionError

log = logging.getLogger(__name__)


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    keep = [ln for ln in text.splitlines() if ln.strip() and "Warning" not in ln and "warnings.warn" not in ln]
    return "\n".join(keep[-lines:])


def run_worker(task: str, args: dict, workdir: Path, timeout_s: float = 3600) -> dict:
    """Run `paddle2ort.convert._worker TASK` in a child process; its stdout/stderr go to WORKDIR/TASK.log."""
    workdir.mkdir(parents=True, exist_ok=True)
    in_path, out_path, log_path = workdir / f"{task}.in.json", workdir / f"{task}.out.json", workdir / f"{task}.log"
    in_path.write_text(json.dumps(args), encoding="utf-8")
    out_path.unlink(missing_ok=True)
    env = dict(os.environ, POLYGRAPHY_AUTOINSTALL_DEPS="0", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "paddle2ort.convert._worker", task, str(in_path), str(out_path)]
    log.debug("running %s", " ".join(cmd))
    with open(log_path, "w", encoding="utf-8") as logf:
        try:
            proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise ConversionError(f"paddle worker task {task!r} timed out after {timeout_s:.0f}s",
                                  log_tail(log_path)) from e
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        raise ConversionError(f"the Paddle/paddle2onnx process crashed ({sig}) during {task!r}", log_tail(log_path))
    if not out_path.is_file():
        raise ConversionError(f"paddle worker task {task!r} exited with code {proc.returncode} and no result",
                              log_tail(log_path))
    result = json.loads(out_path.read_text(encoding="utf-8"))
    if not result.get("ok"):
        if result.get("kind") == "bad_input":
            raise BadInputError(result["message"])
        raise ConversionError(f"{task} failed: {result.get('message')}", log_tail(log_path))
    result["log_path"] = str(log_path)
    return result
