"""GEMMs with a fused epilogue through cuBLASLt: out = act(x @ w + bias) [+ residual] in one kernel.

Written by hand (ctypes over libcublasLt, ~one page) because neither CuPy nor onnxruntime exposes cuBLASLt's
epilogues: CuPy wraps only cuBLAS, and onnxruntime's CUDA provider has no operator that runs a GEMM with a bias+GELU
epilogue (its `GemmFloat8` ignores its `activation` attribute), so a BERT layer pays a separate BiasGelu pass over
the FFN activations and a separate residual add in SkipLayerNorm (encoder profile, run28). Row-major float16
activations and weights, float32 accumulation and scale. `matmul_reference` is the NumPy twin.

cuBLASLt's GELU epilogue is the tanh approximation; Paddle's and BERT's `gelu` is the erf form. The two differ by at
most ~5e-4 in absolute value (`GELU_TANH_VS_ERF_MAX`), below float16's rounding of the activations it feeds; the
twin computes the tanh form, so a caller that swaps an erf GELU for this epilogue is judged by its own gate.
"""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import numpy as np

from ..errors import BadInputError, DeviceError

# cublasLt.h / cublas_api.h / library_types.h (CUDA 13) values
CUBLAS_COMPUTE_32F, CUDA_R_16F, CUDA_R_32F = 68, 2, 0
DESC_TRANSA, DESC_TRANSB, DESC_EPILOGUE, DESC_BIAS_POINTER = 3, 4, 7, 8
PREF_MAX_WORKSPACE_BYTES = 1
EPILOGUES = {"none": 1, "bias": 4, "gelu_bias": 32 | 4}      # CUBLASLT_EPILOGUE_DEFAULT / _BIAS / _GELU_BIAS
WORKSPACE_BYTES = 32 << 20                                    # what the heuristic may use (Hopper: up to 32 MiB)
GELU_TANH_VS_ERF_MAX = 5e-4


class _Algo(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64 * 8)]


class _Heuristic(ctypes.Structure):
    _fields_ = [("algo", _Algo), ("workspaceSize", ctypes.c_size_t), ("state", ctypes.c_int),
                ("wavesCount", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.float32(np.sqrt(2.0 / np.pi)) * (x + np.float32(0.044715) * x ** 3)))


def matmul_reference(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None,
                     residual: np.ndarray | None = None, epilogue: str = "none") -> np.ndarray:
    """The twin: float32 act(x @ w + bias) + residual, x [T, K], w [K, N], bias [N], residual [T, N]."""
    y = x.astype(np.float32) @ w.astype(np.float32)
    if epilogue != "none":
        y = y + bias.astype(np.float32)
    if epilogue == "gelu_bias":
        y = gelu_tanh(y)
    if residual is not None:
        y = y + residual.astype(np.float32)
    return y


@dataclass(frozen=True)
class Layout:
    """How a row-major product maps onto cuBLASLt's column-major one: D[N, T] = W[N, K] @ X[K, T] (the transposes
    of out[T, N] = x[T, K] @ w[K, N], with no data moved). (rows, cols, ld) per matrix."""
    a: tuple[int, int, int]
    b: tuple[int, int, int]
    d: tuple[int, int, int]

    @classmethod
    def of(cls, t: int, n: int, k: int) -> "Layout":
        return cls(a=(n, k, n), b=(k, t, k), d=(n, t, n))


def check_operands(x_shape, w_shape, bias_shape, residual_shape, out_shape, epilogue: str) -> tuple[int, int, int]:
    """-> (T, N, K), or BadInputError naming the operand whose shape disagrees."""
    if epilogue not in EPILOGUES:
        raise BadInputError(f"epilogue must be one of {', '.join(EPILOGUES)}, got {epilogue!r}")
    if len(x_shape) != 2 or len(w_shape) != 2 or x_shape[1] != w_shape[0]:
        raise BadInputError(f"x {tuple(x_shape)} @ w {tuple(w_shape)}: want x [T, K] and w [K, N]")
    t, k, n = x_shape[0], x_shape[1], w_shape[1]
    if tuple(out_shape) != (t, n):
        raise BadInputError(f"out is {tuple(out_shape)}, the product is ({t}, {n})")
    if epilogue != "none" and (bias_shape is None or tuple(bias_shape) != (n,)):
        raise BadInputError(f"epilogue {epilogue!r} needs a bias of shape ({n},), got {bias_shape}")
    if residual_shape is not None and tuple(residual_shape) != (t, n):
        raise BadInputError(f"residual is {tuple(residual_shape)}, the product is ({t}, {n})")
    return t, n, k


@functools.lru_cache(maxsize=None)
def _lib():
    from .cuda import cupy
    cp = cupy()
    cp.cuda.device.get_cublas_handle()              # loads libcublas, which loads libcublasLt by its soname
    errors = []
    for name in ("libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as e:
            errors.append(str(e))
    else:
        raise DeviceError(f"cuBLASLt could not be loaded ({'; '.join(errors)}): install the CUDA toolkit's cuBLAS "
                          "(nvidia-cublas) for this CUDA version")
    vp, P = ctypes.c_void_p, ctypes.POINTER
    lib.cublasLtCreate.argtypes = [P(vp)]
    lib.cublasLtMatmulDescCreate.argtypes = [P(vp), ctypes.c_int, ctypes.c_int]
    lib.cublasLtMatmulDescSetAttribute.argtypes = [vp, ctypes.c_int, vp, ctypes.c_size_t]
    lib.cublasLtMatrixLayoutCreate.argtypes = [P(vp), ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int64]
    lib.cublasLtMatmulPreferenceCreate.argtypes = [P(vp)]
    lib.cublasLtMatmulPreferenceSetAttribute.argtypes = [vp, ctypes.c_int, vp, ctypes.c_size_t]
    lib.cublasLtMatmulAlgoGetHeuristic.argtypes = [vp, vp, vp, vp, vp, vp, vp, ctypes.c_int, P(_Heuristic),
                                                   P(ctypes.c_int)]
    lib.cublasLtMatmul.argtypes = [vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, P(_Algo), vp, ctypes.c_size_t, vp]
    return lib


def _ok(status: int, what: str) -> None:
    if status != 0:
        raise DeviceError(f"cuBLASLt {what} failed with status {status}")


TUNE_CANDIDATES = 8       # tune=True: the heuristic's first 8 algorithms, each timed in a CUDA graph of 10 calls


class LtMatmul:
    """out = act(x @ w + bias) [+ residual] on the GPU, one cuBLASLt call; a plan (descriptors + an algorithm) per
    (T, N, K, epilogue, residual or not), made at first use: tune=True times the heuristic's first TUNE_CANDIDATES
    algorithms on the call's own buffers (not when the output is the residual: the timing would overwrite it) and
    keeps the fastest, else the heuristic's first. Make plans outside a graph capture (a first launched pass);
    afterwards the calls are capturable: the bias pointer is a descriptor attribute, so a plan is per bias buffer."""

    def __init__(self, tune: bool = True):
        self.tune = tune
        self.tuned: dict[tuple, dict] = {}                # plan key -> {"us": [per candidate], "chosen": i}
        from .cuda import cupy
        self.cp = cp = cupy()
        self.lib = _lib()
        self.handle = ctypes.c_void_p()
        _ok(self.lib.cublasLtCreate(ctypes.byref(self.handle)), "create")
        self.workspace = cp.empty(WORKSPACE_BYTES, np.uint8)
        self.plans: dict[tuple, tuple] = {}
        self._alpha, self._one, self._zero = ctypes.c_float(1.0), ctypes.c_float(1.0), ctypes.c_float(0.0)

    def _plan(self, t: int, n: int, k: int, epilogue: str, residual: bool, bias_ptr: int):
        """-> (descriptor, layouts, the heuristic's usable algorithms, best first)."""
        lib, vp = self.lib, ctypes.c_void_p
        desc = vp()
        _ok(lib.cublasLtMatmulDescCreate(ctypes.byref(desc), CUBLAS_COMPUTE_32F, CUDA_R_32F), "matmul desc")
        op_n = ctypes.c_int(0)
        for attr in (DESC_TRANSA, DESC_TRANSB):
            _ok(lib.cublasLtMatmulDescSetAttribute(desc, attr, ctypes.byref(op_n), 4), "transpose attribute")
        epi = ctypes.c_int(EPILOGUES[epilogue])
        _ok(lib.cublasLtMatmulDescSetAttribute(desc, DESC_EPILOGUE, ctypes.byref(epi), 4), "epilogue attribute")
        if epilogue != "none":
            ptr = ctypes.c_void_p(bias_ptr)
            _ok(lib.cublasLtMatmulDescSetAttribute(desc, DESC_BIAS_POINTER, ctypes.byref(ptr), 8), "bias pointer")
        lay = Layout.of(t, n, k)
        layouts = []
        for rows, cols, ld in (lay.a, lay.b, lay.d, lay.d):
            h = vp()
            _ok(lib.cublasLtMatrixLayoutCreate(ctypes.byref(h), CUDA_R_16F, rows, cols, ld), "matrix layout")
            layouts.append(h)
        pref = vp()
        _ok(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "preference")
        ws = ctypes.c_uint64(WORKSPACE_BYTES)
        _ok(lib.cublasLtMatmulPreferenceSetAttribute(pref, PREF_MAX_WORKSPACE_BYTES, ctypes.byref(ws), 8),
            "workspace preference")
        results, found = (_Heuristic * TUNE_CANDIDATES)(), ctypes.c_int(0)
        _ok(lib.cublasLtMatmulAlgoGetHeuristic(self.handle, desc, *layouts, pref, TUNE_CANDIDATES, results,
                                               ctypes.byref(found)), "heuristic")
        ok = [r for r in results[:found.value] if r.state == 0]
        if not ok:
            raise DeviceError(f"cuBLASLt has no algorithm for ({t} x {k}) @ ({k} x {n}) with epilogue {epilogue}")
        return desc, layouts, ok

    def _launch(self, desc, layouts, algo, x, w, out, c, beta, stream_ptr) -> None:
        la, lb, lc, ld = layouts
        _ok(self.lib.cublasLtMatmul(self.handle, desc, ctypes.byref(self._alpha), w.data.ptr, la, x.data.ptr, lb,
                                    ctypes.byref(beta), c.data.ptr, lc, out.data.ptr, ld, ctypes.byref(algo),
                                    self.workspace.data.ptr, WORKSPACE_BYTES, stream_ptr), "matmul")

    def _pick(self, key, desc, layouts, ok, x, w, out, c, beta) -> _Heuristic:
        """The fastest candidate on these buffers, each timed as 10 calls in a CUDA graph replayed 3 times
        (bench_engine.time_graph)."""
        from .bench_engine import time_graph
        us = []
        for cand in ok:
            try:
                us.append(time_graph(self.cp, lambda: self._launch(desc, layouts, cand.algo, x, w, out, c, beta,
                                                                   self.cp.cuda.get_current_stream().ptr), 10, 3))
            except Exception:  # noqa: BLE001 - a candidate that fails to run or capture is not chosen
                self.cp.cuda.Device().synchronize()
                us.append(float("inf"))
        best = int(np.argmin(us))
        self.tuned[key] = {"us": us, "chosen": best}
        return ok[best]

    def __call__(self, x, w, out, bias=None, residual=None, epilogue: str = "none", stream=None):
        """x [T, K], w [K, N], out [T, N] (float16, C-contiguous CuPy arrays); bias [N]; residual [T, N] (may be
        out itself)."""
        t, n, k = check_operands(x.shape, w.shape, None if bias is None else bias.shape,
                                 None if residual is None else residual.shape, out.shape, epilogue)
        for name, a in (("x", x), ("w", w), ("out", out), ("bias", bias), ("residual", residual)):
            if a is not None and (a.dtype != np.float16 or not a.flags.c_contiguous):
                raise BadInputError(f"{name} must be a C-contiguous float16 array, got {a.dtype}")
        key = (t, n, k, epilogue, residual is not None, 0 if bias is None else int(bias.data.ptr))
        c = residual if residual is not None else out
        beta = self._one if residual is not None else self._zero
        stream = stream or self.cp.cuda.get_current_stream()
        if key not in self.plans:
            desc, layouts, ok = self._plan(*key)
            chosen = ok[0]
            if self.tune and len(ok) > 1 and c.data.ptr != out.data.ptr:
                stream.synchronize()                        # the inputs are written before they are timed on
                chosen = self._pick(key, desc, layouts, ok, x, w, out, c, beta)
            self.plans[key] = (desc, layouts, chosen)
        desc, layouts, chosen = self.plans[key]
        self._launch(desc, layouts, chosen.algo, x, w, out, c, beta, stream.ptr)
        return out
