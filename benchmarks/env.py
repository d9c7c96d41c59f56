"""What a benchmark ran on: versions, CPU and GPU names, thread counts — recorded in every results JSON."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


ISA = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
       "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
       "asimd", "asimddp", "i8mm", "bf16", "sve", "sve2")          # aarch64 (its cpuinfo says "Features")


def cpu_flags(cpuinfo: str) -> set[str]:
    """The first flags line of a /proc/cpuinfo text: x86's "flags", aarch64's "Features"."""
    return next((set(ln.split(":", 1)[1].split()) for ln in cpuinfo.splitlines()
                 if ln.split(":", 1)[0].strip() in ("flags", "Features") and ":" in ln), set())


def cpu_info(threads: int) -> dict:
    """The CPU the rows ran on: model name (as lscpu prints it), the ISA flags that pick onnxruntime's and
    llama.cpp's kernels, threads used."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = cpu_flags(f.read())
    except OSError:
        flags = set()
    return {"model": cpu_name(), "isa": [x for x in ISA if x in flags], "threads": threads}
