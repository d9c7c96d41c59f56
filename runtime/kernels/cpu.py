"""The kernel engine's compiled CPU step (cpu_step.c): built once per host with the host's C compiler and OpenMP,
cached, loaded through ctypes, and bound to a KernelEngine's weights and one batch size's buffers.

The runtime does not require a compiler: without one (or without OpenMP) `load()` raises DeviceError naming the
missing piece, and the engine's "auto" choice falls back to the onnxruntime fused graph, saying why. The library is
compiled for this host's ISA (-march=native), so its cache key holds the source, the compiler's version and the
CPU's flags: a home directory shared between hosts never loads another host's build.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError, DeviceError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "cpu_step.c"
FLAGS = ("-O3", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC", "-std=c11")   # no errno: sqrtf, rintf inline
FMT = {"f32": 0, "q8": 1}


def cache_dir() -> Path:
    """$PADDLE2ORT_CACHE, else $XDG_CACHE_HOME/paddle2ort, else ~/.cache/paddle2ort."""
    root = os.environ.get("PADDLE2ORT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                       Path.home() / ".cache") / "paddle2ort"
    return Path(root) / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise DeviceError("the compiled CPU step needs a C compiler with OpenMP (cc or gcc on PATH, or $CC); "
                          "without one the onnxruntime fused graph runs the decoder")
    return cc


PHASES = ("embed", "qkv", "attention", "o-proj", "gate|up", "down", "head")      # cpu_step.c MARK(0..6)


def target_march(requested: str | None = None) -> str:
    """The ISA the step is compiled for: `requested`, else $PADDLE2ORT_CPU_MARCH, else native (this host's)."""
    return requested or os.environ.get("PADDLE2ORT_CPU_MARCH") or "native"


@functools.lru_cache(maxsize=None)
def load(profile: bool = False, march: str | None = None) -> ctypes.CDLL:
    """Build (at most once per host and source) and load the step library; profile: the build that adds each
    phase's seconds up (phase_seconds), for the benchmark's breakdown; march: the ISA compiled for (default
    $PADDLE2ORT_CPU_MARCH, else native: this host's; x86-64-v3 is AVX2 without VNNI, x86-64 the scalar code, which
    the tests build too, and a benchmark can run on an AVX-512 host)."""
    cc = compiler()
    flags = FLAGS + (f"-march={target_march(march)}",) + (("-DP2O_PROFILE",) if profile else ())
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise DeviceError(f"the C compiler {cc} does not run ({e})") from e
    key = hashlib.sha256("\0".join([SOURCE.read_text(), version, " ".join(flags), _cpu_flags()]).encode())
    lib = cache_dir() / f"cpu_step-{key.hexdigest()[:16]}.so"
    try:
        if not lib.exists():
            lib.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:  # built aside, renamed whole: no half file
                out = Path(tmp) / lib.name
                r = subprocess.run([cc, *flags, str(SOURCE), "-o", str(out), "-lm"], capture_output=True, text=True)
                if r.returncode:
                    raise DeviceError(f"building the compiled CPU step with {cc} failed (exit {r.returncode}): "
                                      f"{r.stderr.strip()[-600:]}")
                os.replace(out, lib)
            log.info("built the compiled CPU step: %s", lib)
        so = ctypes.CDLL(str(lib))
    except OSError as e:                  # an unwritable cache folder, a library the loader refuses
        raise DeviceError(f"the compiled CPU step could not be built or loaded at {lib} ({e}); set "
                          "PADDLE2ORT_CACHE to a writable folder") from e
    so.p2o_isa.restype = ctypes.c_char_p
    so.p2o_work_floats.restype = ctypes.c_int64
    so.p2o_work_floats.argtypes = [ctypes.c_int32] * 4
    so.p2o_step.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    so.p2o_step.restype = None
    so.p2o_read_seconds.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32]
    so.p2o_read_seconds.restype = ctypes.c_double
    return so


def read_bandwidth(threads: int | None = None, mib: int = 256, repeats: int = 5) -> float:
    """This host's read bandwidth in GB/s as `threads` threads see it (the best of `repeats` passes over a buffer of
    `mib` MiB, far larger than any cache): the roofline a memory-bound decode step is measured against."""
    so = load()
    buf = np.ones(mib << 20, np.uint8)               # written once: its pages are real before the timed passes
    secs = min(so.p2o_read_seconds(buf.ctypes.data, buf.nbytes, int(threads or physical_cores()))
               for _ in range(repeats))
    return buf.nbytes / secs / 1e9


def available() -> bool:
    """Whether the compiled step builds and loads on this host (built once; the reason logged where not)."""
    try:
        load()
        return True
    except DeviceError as e:
        log.info("the compiled CPU step is not available: %s", e)
        return False


def reads(options: dict) -> bool:
    """Whether a fused decoder the manifest describes (manifest.extra.fused[precision].options) is one the step
    reads, judged before its weights are loaded: the LLaMA/Qwen2 family at float32 compute, float32 or 8-bit
    weights in blocks of a power-of-two multiple of 32 (check_fits then checks the weights themselves)."""
    wo = options.get("weight_only") or {}
    block = int(wo.get("block_size", 32))
    return (options.get("spec", {}).get("family", "llama") == "llama" and options.get("compute_dtype") == "float32"
            and wo.get("bits", 8) == 8 and block % 32 == 0 and not (block // 32) & (block // 32 - 1)
            and wo.get("head_bits", 8) == 8)


def isa(so: ctypes.CDLL | None = None) -> str:
    return (so or load()).p2o_isa().decode()


def phase_seconds(so: ctypes.CDLL, reset: bool = True) -> dict[str, float]:
    """A profile build's seconds per phase since the last reset (thread 0's view, each phase's barrier included)."""
    arr = (ctypes.c_double * len(PHASES)).in_dll(so, "p2o_phase_seconds")
    out = dict(zip(PHASES, list(arr)))
    if reset:
        ctypes.memset(arr, 0, ctypes.sizeof(arr))
    return out


class Lin(ctypes.Structure):
    _fields_ = [("fmt", ctypes.c_int32), ("n", ctypes.c_int32), ("k", ctypes.c_int32), ("block", ctypes.c_int32),
                ("w", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("zero", ctypes.c_void_p),
                ("bias", ctypes.c_void_p)]


class LayerW(ctypes.Structure):
    _fields_ = [("ln1", ctypes.c_void_p), ("ln2", ctypes.c_void_p), ("qkv", Lin), ("o", Lin), ("gate_up", Lin),
                ("down", Lin)]


class Model(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in ("layers", "hidden", "inter", "nh", "kvh", "d", "vocab", "capacity",
                                                "max_k")] + \
               [("eps", ctypes.c_float), ("scale", ctypes.c_float)] + \
               [(n, ctypes.c_void_p) for n in ("embed", "cos", "sin", "norm")] + \
               [("head", Lin), ("layer", ctypes.POINTER(LayerW))]


class StateC(ctypes.Structure):
    _fields_ = [("batch", ctypes.c_int32), ("threads", ctypes.c_int32)] + \
               [(n, ctypes.c_void_p) for n in ("ids", "seqlens", "cache", "logits", "resid", "qkv", "act", "part",
                                               "work", "xq")]


def physical_cores() -> int:
    """Cores this process may run on, a hyperthread pair counted once (onnxruntime's default thread count; a
    memory-bound step gains nothing from a core's second thread and pays its barriers)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
    cores = set()
    for c in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(),
                       topo.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(c)))                       # no topology: every CPU a core
    return max(1, len(cores))


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32)


def _zero_points(sz) -> np.ndarray:
    """The float16 zero points of engine.Packed's uint32 {float16 scale, float16 zero point} pairs, as float32."""
    return (np.asarray(sz, np.uint32) >> 16).astype(np.uint16).view(np.float16).astype(np.float32)


def _split_pairs(sz) -> tuple[np.ndarray, np.ndarray]:
    """The pairs as float16 scale bits (uint16) and uint8 zero points (exact where _byte_zero_points holds)."""
    return (np.asarray(sz, np.uint32) & 0xFFFF).astype(np.uint16), _zero_points(sz).astype(np.uint8)


def _byte_zero_points(sz) -> bool:
    zero = _zero_points(sz)
    return bool(np.all((zero >= 0) & (zero <= 255) & (zero == np.round(zero))))


def check_fits(eng) -> None:
    """What cpu_step.c reads, checked once: one clear error naming the fallback."""
    w, bad = eng.w, []
    if eng.head_dim % 2 or eng.num_heads % eng.kv_heads:
        bad.append(f"head size {eng.head_dim} with {eng.num_heads} query heads over {eng.kv_heads} key/value heads "
                   "(it needs an even head size and whole GQA groups)")
    if np.dtype(w.embed.dtype) != np.float32:
        bad.append(f"a {np.dtype(w.embed.dtype).name} embedding (it reads float32)")
    for name, p in [("lm_head", w.head)] + [(f"layers.{i}.{n}", getattr(l, n)) for i, l in enumerate(w.layers)
                                             for n in ("qkv", "o", "gate_up", "down")]:
        if p.fmt not in FMT:
            bad.append(f"{name} is {p.fmt} (it reads float32 and 8-bit MatMulNBits weights)")
        elif p.fmt == "q8" and (p.k % 32 or p.block % 32 or (p.block // 32) & (p.block // 32 - 1)):
            bad.append(f"{name}: {p.k} inputs in blocks of {p.block} (it needs inputs a multiple of 32 and a "
                       "power-of-two multiple of 32 a block)")
        elif p.fmt == "q8" and not _byte_zero_points(p.sz):
            bad.append(f"{name} has zero points that are not whole numbers in 0..255 (float zero points; it reads "
                       "MatMulNBits' uint8 ones)")
        if bad:
            break
    if bad:
        raise BadInputError("the compiled CPU step cannot run this decoder: " + "; ".join(bad)
                            + "; use the onnxruntime fused decoder (engine='onnxruntime')")


class CpuStep:
    """cpu_step.c's p2o_step bound to an engine's host weights (kept alive here) for one batch size's State."""

    def __init__(self, eng, threads: int | None = None, profile: bool = False, march: str | None = None):
        w = eng.w
        check_fits(eng)
        self.so = load(profile, march)
        self.threads = int(threads or physical_cores())
        self._keep: list[Any] = []
        layers = (LayerW * len(w.layers))()
        for i, l in enumerate(w.layers):
            layers[i] = LayerW(self._ptr(_f32(l.ln1)), self._ptr(_f32(l.ln2)), self._lin(l.qkv, l.bias),
                               self._lin(l.o), self._lin(l.gate_up), self._lin(l.down))
        self._keep.append(layers)
        self.max_k = max(max(p.k for p in (l.qkv, l.o, l.gate_up, l.down)) for l in w.layers)
        self.max_k = max(self.max_k, w.head.k)
        self.model = Model(eng.num_layers, eng.hidden, eng.inter, eng.num_heads, eng.kv_heads, eng.head_dim,
                           eng.vocab_size, eng.capacity, self.max_k, eng.eps, eng.scale,
                           self._ptr(_f32(w.embed)), self._ptr(_f32(w.cos)), self._ptr(_f32(w.sin)),
                           self._ptr(_f32(w.norm)), self._lin(w.head), layers)
        self.eng = eng
        self.bound: dict[int, tuple] = {}

    def step_bytes(self, positions) -> int:
        """Bytes one step reads from memory with rows at `positions`: every product's weights as the C reads them
        (float32; or uint8 blocks with a float16 scale and a uint8 zero point each), the norms and biases, each
        row's embedding and its keys and values up to its position (float32)."""
        e, w = self.eng, self.eng.w

        def lin(p) -> int:
            return p.n * p.k * 4 if p.fmt == "f32" else p.n * p.kb * (p.block + 3)
        per = sum(lin(l.qkv) + lin(l.o) + lin(l.gate_up) + lin(l.down) + 2 * e.hidden * 4
                  + (l.bias.size * 4 if l.bias is not None else 0) for l in w.layers)
        kv = sum(e.num_layers * 2 * e.kv_heads * (int(p) + 1) * e.head_dim * 4 for p in positions)
        return int(per + lin(w.head) + e.hidden * 4 * (1 + len(positions)) + kv)

    def _ptr(self, a: np.ndarray) -> int:
        self._keep.append(a)
        return a.ctypes.data

    def _lin(self, p, bias=None) -> Lin:
        """A product as the C reads it; int8 blocks' {scale, zero point} pairs split into float16 scales and uint8
        zero points (a row's scales then load 8 at a time; check_fits saw that the zero points are whole bytes)."""
        w = np.ascontiguousarray(p.w)
        scale = zero = None
        if p.sz is not None:
            scale, zero = (self._ptr(a) for a in _split_pairs(p.sz))
        return Lin(FMT[p.fmt], p.n, p.k, p.block or 0, self._ptr(w), scale, zero,
                   None if bias is None else self._ptr(_f32(bias)))

    def _state(self, st) -> tuple:
        """st's buffers (and the step's scratch) as the C State; built once per state (a released and re-made
        state of the same batch size has new buffers)."""
        if st.batch not in self.bound or self.bound[st.batch][-1] is not st:
            e, b = self.eng, st.batch
            for name in ("cache", "logits", "resid", "act"):
                a = getattr(st, name)
                if a.dtype != np.float32 or not a.flags.c_contiguous:
                    raise BadInputError(f"the compiled CPU step needs a float32 C-contiguous {name} buffer")
            qkv = np.zeros((b, (e.num_heads + 2 * e.kv_heads) * e.head_dim), np.float32)
            part = np.zeros((self.threads, b, e.num_heads, e.head_dim + 2), np.float32)
            floats = self.so.p2o_work_floats(b, self.max_k, e.capacity, e.num_heads // e.kv_heads)
            work = np.zeros(self.threads * floats, np.float32)
            xq = np.zeros(self.threads * b * self.max_k, np.int8)
            ids = np.zeros(b, np.int64)
            c = StateC(b, self.threads, ids.ctypes.data, st.seqlens.ctypes.data, st.cache.ctypes.data,
                       st.logits.ctypes.data, st.resid.ctypes.data, qkv.ctypes.data, st.act.ctypes.data,
                       part.ctypes.data, work.ctypes.data, xq.ctypes.data)
            self.bound[b] = (c, ids, qkv, part, work, xq, st)
        return self.bound[st.batch]

    def __call__(self, st) -> None:
        c, ids, *_ = self._state(st)
        ids[:] = st.ids.reshape(-1)
        if int(ids.min()) < 0 or int(ids.max()) >= self.eng.vocab_size:        # the C indexes the embedding
            raise BadInputError(f"token ids must be in 0..{self.eng.vocab_size - 1}, got {ids.tolist()}")
        pos = st.seqlens
        if pos.dtype != np.int32 or int(pos.min()) < 0 or int(pos.max()) >= self.eng.capacity:
            raise BadInputError(f"positions must be int32 in 0..{self.eng.capacity - 1} (the cache capacity)")
        self.so.p2o_step(ctypes.byref(self.model), ctypes.byref(c))
