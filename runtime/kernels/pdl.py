"""Programmatic dependent launch (PDL, compute capability 9.0+) for the kernel engine's decode step.

A kernel launched with CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION may be scheduled while the previous
kernel of its stream is still running, once every block of that kernel has executed `griddepcontrol
.launch_dependents` (decode.cu PDL_LAUNCH); it prefetches what does not depend on that kernel (its weights, into L2)
and then waits in `griddepcontrol.wait` (PDL_WAIT) until the previous kernel has completed and its writes are
visible. The math is unchanged; what goes is the launch gap between two dependent kernels (~1.4 µs a kernel, 122
kernels a 0.5B step: llm-gpu/run11-h200). Inside stream capture the attribute becomes a programmatic edge of the
CUDA graph. Every decode.cu kernel waits before its first dependent read or any write, so launching one with the
attribute is always safe; kernels launched without it (the sampler) keep full stream order.

Written by hand over the driver library through ctypes: CuPy's kernel call takes no launch attributes, and
cuda-python (whose cuLaunchKernelEx binding would do) is not a dependency of the runtime.
"""
from __future__ import annotations

import ctypes
import functools
import logging
from typing import Any, Sequence

import numpy as np

from ..errors import DeviceError

log = logging.getLogger(__name__)

PROGRAMMATIC_STREAM_SERIALIZATION = 6      # cuda.h CUlaunchAttributeID
COOPERATIVE = 2                            # every block resident at once, or the launch fails (grid barriers)


class LaunchAttribute(ctypes.Structure):
    """cuda.h CUlaunchAttribute: the id, padding to 8 bytes, a 64-byte value union (first member used here:
    int programmaticStreamSerializationAllowed)."""
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int),
                ("value_rest", ctypes.c_char * 60)]


class LaunchConfig(ctypes.Structure):
    """cuda.h CUlaunchConfig."""
    _fields_ = [("gridDimX", ctypes.c_uint), ("gridDimY", ctypes.c_uint), ("gridDimZ", ctypes.c_uint),
                ("blockDimX", ctypes.c_uint), ("blockDimY", ctypes.c_uint), ("blockDimZ", ctypes.c_uint),
                ("sharedMemBytes", ctypes.c_uint), ("hStream", ctypes.c_void_p),
                ("attrs", ctypes.POINTER(LaunchAttribute)), ("numAttrs", ctypes.c_uint)]


def kernel_arg(a: Any):
    """One kernel argument as the ctypes value the driver copies: NumPy scalars by their type, device arrays by
    their address (what CuPy's own call passes)."""
    if isinstance(a, np.generic):
        kinds = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
                 np.dtype(np.uint64): ctypes.c_uint64, np.dtype(np.float32): ctypes.c_float}
        if a.dtype not in kinds:
            raise DeviceError(f"PDL launch: no kernel-argument type for a {a.dtype} scalar")
        return kinds[a.dtype](a.item())
    ptr = getattr(getattr(a, "data", None), "ptr", None)
    if ptr is None:
        raise DeviceError(f"PDL launch: a kernel argument must be a NumPy scalar or a device array, got {type(a)}")
    return ctypes.c_void_p(ptr)


def pad3(dims: Sequence[int]) -> tuple[int, int, int]:
    d = tuple(int(v) for v in dims)
    if not 1 <= len(d) <= 3:
        raise DeviceError(f"PDL launch: 1 to 3 grid/block dimensions, got {dims}")
    return d + (1,) * (3 - len(d))


@functools.lru_cache(maxsize=1)
def _driver():
    lib = ctypes.CDLL("libcuda.so.1")
    fn = lib.cuLaunchKernelEx
    fn.argtypes = [ctypes.POINTER(LaunchConfig), ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
                   ctypes.POINTER(ctypes.c_void_p)]
    fn.restype = ctypes.c_int
    return fn


def supported(cp) -> bool:
    """PDL on the current CuPy device: compute capability 9.0+ and a driver with cuLaunchKernelEx."""
    try:
        major = int(cp.cuda.Device().compute_capability) // 10
        _driver()
    except (OSError, AttributeError, ValueError) as e:
        log.info("programmatic dependent launch unavailable (%s)", e)
        return False
    return major >= 9


class PdlKernel:
    """A CuPy kernel (RawKernel, or the cupy.cuda.function.Function under it) called like one — kern(grid, block,
    args) on CuPy's current stream — but launched with programmatic stream serialization (pdl) and/or as a
    cooperative launch (every block resident at once: the persistent step's grid barriers)."""

    def __init__(self, fn, cp, pdl: bool = True, cooperative: bool = False):
        self.fn, self.cp = getattr(fn, "kernel", fn), cp       # RawKernel.kernel: the loaded CUfunction
        ids = [PROGRAMMATIC_STREAM_SERIALIZATION] * pdl + [COOPERATIVE] * cooperative
        self._attr = (LaunchAttribute * max(len(ids), 1))(*[LaunchAttribute(id=i, value=1) for i in ids])
        self._nattr = len(ids)

    def __call__(self, grid, block, args, shared_mem: int = 0) -> None:
        vals = [kernel_arg(a) for a in args]
        params = (ctypes.c_void_p * len(vals))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in vals])
        cfg = LaunchConfig(*pad3(grid), *pad3(block), int(shared_mem),
                           ctypes.c_void_p(self.cp.cuda.get_current_stream().ptr),
                           ctypes.cast(self._attr, ctypes.POINTER(LaunchAttribute)), self._nattr)
        rc = _driver()(ctypes.byref(cfg), ctypes.c_void_p(self.fn.ptr), params, None)
        if rc:
            raise DeviceError(f"cuLaunchKernelEx (attributes {[a.id for a in self._attr[:self._nattr]]}) failed "
                              f"(CUresult {rc}); run the kernel engine with pdl=False / step='kernels'")
