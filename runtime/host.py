"""The host a model runs on: CPU name and the ISA flags that pick onnxruntime's kernels (INT8 and FP16 round
differently with AVX2, AVX-512 VNNI and AMX), recorded where the conversion gate ran and where it is re-run."""
from __future__ import annotations

import platform

ISA = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
       "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16",
       "asimd", "asimddp", "i8mm", "bf16", "sve", "sve2")          # aarch64 (its cpuinfo says "Features")


def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def cpu_name(cpuinfo: str | None = None) -> str:
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str) -> set[str]:
    """The first flags line of a /proc/cpuinfo text: x86's "flags", aarch64's "Features"."""
    return next((set(ln.split(":", 1)[1].split()) for ln in cpuinfo.splitlines()
                 if ln.split(":", 1)[0].strip() in ("flags", "Features") and ":" in ln), set())


def cpu_isa() -> list[str]:
    flags = cpu_flags(_cpuinfo())
    return [x for x in ISA if x in flags]


def describe_host(device: str = "cpu") -> dict:
    """What a gate's figures depend on: the CPU (name, ISA), onnxruntime's version and the provider judged."""
    import onnxruntime as ort
    return {"cpu": cpu_name(), "isa": cpu_isa(), "onnxruntime": ort.__version__,
            "provider": "CUDAExecutionProvider" if device == "gpu" else "CPUExecutionProvider"}


def host_line(h: dict) -> str:
    isa = [x for x in h.get("isa", ()) if x in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8",
                                                 "avx512_fp16", "asimddp", "i8mm")]
    return (f"{h.get('cpu', '?')} ({' '.join(isa) or 'no AVX2'}), onnxruntime {h.get('onnxruntime', '?')}, "
            f"{h.get('provider', '?')}")
