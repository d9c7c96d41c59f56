"""LtMatmul (runtime/kernels/cublaslt.py) on the GPU against its NumPy twin: every epilogue, a residual added in
place, and a CUDA-graph replay giving the same bits as the eager call. Skipped without CuPy and a CUDA device."""
import numpy as np
import pytest

from paddle2ort.runtime.kernels.cublaslt import LtMatmul, matmul_reference
from paddle2ort.runtime.kernels.bench_engine import rel_err
from cuda_device import cupy_and_device

cp, pytestmark = cupy_and_device()


def _close(got, want):
    return rel_err(cp.asnumpy(got), want)


@pytest.mark.parametrize("t, n, k", [(256, 384, 128), (100, 96, 72), (4096, 3072, 768)])
@pytest.mark.parametrize("epilogue, residual", [("none", False), ("bias", False), ("bias", True),
                                                ("gelu_bias", False)])
def test_epilogue_gemm_matches_its_twin(t, n, k, epilogue, residual):
    rng = np.random.default_rng(t + n)
    x, w = (rng.normal(size=(t, k)) * 0.5).astype(np.float16), (rng.normal(size=(k, n)) * 0.05).astype(np.float16)
    b, r = rng.normal(size=n).astype(np.float16), rng.normal(size=(t, n)).astype(np.float16)
    lt = LtMatmul()
    out = cp.empty((t, n), np.float16)
    lt(cp.asarray(x), cp.asarray(w), out, bias=cp.asarray(b), residual=cp.asarray(r) if residual else None,
       epilogue=epilogue)
    want = matmul_reference(x, w, b, r if residual else None, epilogue)
    assert _close(out, want) < 1e-2


def test_residual_in_place_and_graph_replay_give_the_eager_bits():
    rng = np.random.default_rng(3)
    t, n, k = 512, 768, 768
    x, w = cp.asarray((rng.normal(size=(t, k)) * 0.5).astype(np.float16)), \
        cp.asarray((rng.normal(size=(k, n)) * 0.05).astype(np.float16))
    b, r0 = cp.asarray(rng.normal(size=n).astype(np.float16)), rng.normal(size=(t, n)).astype(np.float16)
    lt = LtMatmul()
    h = cp.asarray(r0)
    lt(x, w, h, bias=b, residual=h, epilogue="bias")                  # h += x @ w + b
    eager = cp.asnumpy(h)
    assert _close(h, matmul_reference(cp.asnumpy(x), cp.asnumpy(w), cp.asnumpy(b), r0, "bias")) < 1e-2
    s = cp.cuda.Stream(non_blocking=True)
    g_out = cp.asarray(r0)
    with s:
        lt(x, w, g_out, bias=b, residual=g_out, epilogue="bias", stream=s)   # plan made outside the capture
        g_out[...] = cp.asarray(r0)
        s.begin_capture()
        lt(x, w, g_out, bias=b, residual=g_out, epilogue="bias", stream=s)
        graph = s.end_capture()
        graph.launch(s)
    s.synchronize()
    assert np.array_equal(cp.asnumpy(g_out), eager)
