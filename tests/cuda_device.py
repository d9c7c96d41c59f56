"""The GPU tests' preamble: `cp, pytestmark = cupy_and_device()` at module level gives CuPy and a mark that skips
the module's tests without a CUDA device (and the import skips the module without CuPy)."""
import pytest


def cupy_and_device():
    cp = pytest.importorskip("cupy")
    try:
        have = cp.cuda.runtime.getDeviceCount() > 0
    except Exception:                                        # no driver
        have = False
    return cp, pytest.mark.skipif(not have, reason="needs a CUDA device")
