"""kernels/pdl.py without a GPU: the ctypes mirrors of cuda.h's launch structures have the driver's layout, and
kernel arguments marshal as CuPy's own call passes them (the launch itself: tests/test_engine_gpu.py)."""
import ctypes

import numpy as np
import pytest

from paddle2ort.runtime.errors import DeviceError
from paddle2ort.runtime.kernels import pdl

pytestmark = pytest.mark.unit


def test_launch_structures_have_the_cuda_h_layout():
    # CUlaunchAttribute: int id, 4 bytes padding, a 64-byte union; CUlaunchConfig: 7 unsigned ints, then (8-aligned)
    # the stream, the attribute pointer and their count
    assert ctypes.sizeof(pdl.LaunchAttribute) == 72 and pdl.LaunchAttribute.value.offset == 8
    assert ctypes.sizeof(pdl.LaunchConfig) == 56
    assert (pdl.LaunchConfig.sharedMemBytes.offset, pdl.LaunchConfig.hStream.offset,
            pdl.LaunchConfig.attrs.offset, pdl.LaunchConfig.numAttrs.offset) == (24, 32, 40, 48)
    a = pdl.LaunchAttribute(id=pdl.PROGRAMMATIC_STREAM_SERIALIZATION, value=1)
    raw = bytes(a)
    assert raw[:4] == (6).to_bytes(4, "little") and raw[8:12] == (1).to_bytes(4, "little")


def test_kernel_arguments_marshal_by_type():
    class Dev:                                   # what a CuPy array exposes: .data.ptr
        class data:
            ptr = 0xDEAD000
    vals = [pdl.kernel_arg(a) for a in (np.int32(-3), np.float32(0.5), np.uint64(0), np.int64(1 << 40), Dev())]
    assert [type(v) for v in vals] == [ctypes.c_int32, ctypes.c_float, ctypes.c_uint64, ctypes.c_int64,
                                       ctypes.c_void_p]
    assert [v.value for v in vals] == [-3, 0.5, 0, 1 << 40, 0xDEAD000]
    with pytest.raises(DeviceError, match="float64"):
        pdl.kernel_arg(np.float64(1.0))
    with pytest.raises(DeviceError, match="device array"):
        pdl.kernel_arg([1, 2])
    assert pdl.pad3((5,)) == (5, 1, 1) and pdl.pad3((2, 3, 4)) == (2, 3, 4)
    with pytest.raises(DeviceError):
        pdl.pad3(())


def test_auto_mode_falls_back_to_plain_launches_when_the_driver_refuses():
    """KernelEngine(pdl=None) probes one real launch; a refusal (DeviceError from cuLaunchKernelEx) -> False."""
    from types import SimpleNamespace

    from paddle2ort.runtime.kernels.engine import KernelEngine

    class Stream:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def synchronize(self):
            pass

    calls = []

    def refused(grid, block, args):
        calls.append(args)
        raise DeviceError("cuLaunchKernelEx with programmatic stream serialization failed (CUresult 1)")

    eng = SimpleNamespace(xp=np, stream=Stream(), hidden=8, w=SimpleNamespace(embed=np.zeros((4, 8), np.float16)),
                          k={"embed_rows": refused})
    assert KernelEngine._pdl_launches(eng) is False and len(calls) == 1
    eng.k = {"embed_rows": lambda grid, block, args: calls.append(args)}
    assert KernelEngine._pdl_launches(eng) is True
    table, ids, scratch, h = calls[-1]
    assert ids.dtype == np.int64 and scratch.shape == (1, 8) and scratch.dtype == np.float32 and h == 8
