"""What a benchmark ran on: versions, CPU and GPU names, thread counts — recorded in every results JSON."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata

from paddle2ort.runtime.host import ISA, cpu_flags, cpu_isa, cpu_name  # noqa: F401 - re-exported


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def gpu_names() -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [ln.strip() for ln in out.splitlines() if ln.strip()]


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              check=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    ort_dist = next((d for d in ("onnxruntime-gpu", "onnxruntime") if _version(d)), "onnxruntime")
    try:
        import onnxruntime as ort
        providers = ort.get_available_providers()
    except ImportError:
        providers = []
    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "cpu": cpu_name(), "usable_cores": usable_cores(), "gpus": gpu_names(),
        "versions": {d: _version(d) for d in (ort_dist, "numpy", "tokenizers", "paddlepaddle", "paddle2onnx",
                                               "onnx", "paddlenlp", "cupy-cuda13x", "torch") if _version(d)},
        "onnxruntime_providers": providers, "git_commit": git_commit(),
    }


def cpu_info(threads: int) -> dict:
    """The CPU the rows ran on: model name (as lscpu prints it), the ISA flags that pick onnxruntime's and
    llama.cpp's kernels, threads used."""
    return {"model": cpu_name(), "isa": cpu_isa(), "threads": threads}
