"""The cuBLASLt epilogue GEMM's CPU side: its NumPy twin, the row-major -> column-major layout, the operand checks,
and the epilogue benchmark's report and projection arithmetic (the GPU side: tests/test_cublaslt_gpu.py)."""
import json
import tempfile
from math import erf
from pathlib import Path

import numpy as np
import pytest

from paddle2ort.benchmarks.encoder_epilogue import FORMS, products, projection, report
from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.kernels.cublaslt import (EPILOGUES, GELU_TANH_VS_ERF_MAX, Layout, check_operands, gelu_tanh,
                                                 matmul_reference)

pytestmark = pytest.mark.unit


def test_twin_is_the_epilogue_math():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(5, 7)).astype(np.float16), rng.normal(size=(7, 3)).astype(np.float16)
    b, r = rng.normal(size=3).astype(np.float16), rng.normal(size=(5, 3)).astype(np.float16)
    y = x.astype(np.float64) @ w.astype(np.float64)
    np.testing.assert_allclose(matmul_reference(x, w), y, rtol=1e-5)
    np.testing.assert_allclose(matmul_reference(x, w, b, r, "bias"), y + b + r, rtol=1e-5, atol=1e-5)
    g = matmul_reference(x, w, b, None, "gelu_bias")
    pre = y + b
    exact = np.array([[0.5 * v * (1 + erf(v / np.sqrt(2))) for v in row] for row in pre])
    assert np.abs(g - exact).max() <= GELU_TANH_VS_ERF_MAX          # tanh form vs the erf form BERT uses
    assert not np.allclose(g, pre)                                   # the activation was applied


def test_tanh_gelu_stays_within_the_stated_gap_of_erf():
    x = np.linspace(-8, 8, 20001)
    exact = np.array([0.5 * v * (1 + erf(v / np.sqrt(2))) for v in x])
    gap = np.abs(gelu_tanh(x) - exact).max()
    assert 1e-4 < gap <= GELU_TANH_VS_ERF_MAX


def test_layout_is_the_transposed_product():
    """out[T, N] = x[T, K] @ w[K, N] row-major is D[N, T] = W[N, K] @ X[K, T] column-major over the same bytes."""
    lay = Layout.of(t=4096, n=2304, k=768)
    assert lay.a == (2304, 768, 2304) and lay.b == (768, 4096, 768) and lay.d == (2304, 4096, 2304)
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(6, 4)), rng.normal(size=(4, 5))
    a = np.frombuffer(w.tobytes()).reshape(4, 5).T                   # column-major N x K view of row-major w
    b = np.frombuffer(x.tobytes()).reshape(6, 4).T                   # column-major K x T view of row-major x
    d = a @ b                                                        # N x T
    np.testing.assert_allclose(np.ascontiguousarray(d.T), x @ w)


@pytest.mark.parametrize("args, match", [
    (((4, 8), (8, 3), (3,), None, (4, 3), "relu"), "epilogue must be one of"),
    (((4, 8), (7, 3), (3,), None, (4, 3), "bias"), "want x"),
    (((4, 8), (8, 3), (3,), None, (3, 4), "bias"), "out is"),
    (((4, 8), (8, 3), None, None, (4, 3), "gelu_bias"), "needs a bias"),
    (((4, 8), (8, 3), (4,), None, (4, 3), "bias"), "needs a bias"),
    (((4, 8), (8, 3), (3,), (3, 4), (4, 3), "bias"), "residual is"),
])
def test_operand_checks_name_the_operand(args, match):
    with pytest.raises(BadInputError, match=match):
        check_operands(*args)
    assert check_operands((4, 8), (8, 3), (3,), (4, 3), (4, 3), "bias") == (4, 3, 8)
    assert set(EPILOGUES) == {"none", "bias", "gelu_bias"}


def _fake_result():
    rows = []
    for geom, layers, h, i in (("bert_base", 12, 768, 3072),):
        for name, (k, n, epi, res) in products(h, i).items():
            for form, us in zip(FORMS, (30.0, 20.0, 18.0)):
                rows.append({"geometry": geom, "product": name, "form": form, "T": 4096, "N": n, "K": k,
                             "epilogue": epi, "residual": res, "us": us, "tflops": 1.0, "max_rel_err_vs_twin": 1e-3})
    layers = {"bert_base": {"layers": 12, "per_layer_us": {f: 4 * u for f, u in zip(FORMS, (30.0, 20.0, 18.0))},
                            "per_call_us": {f: 48 * u for f, u in zip(FORMS, (30.0, 20.0, 18.0))}}}
    return {"device": {"name": "GPU"}, "batch": 32, "seq": 128, "calls": 5, "repeats": 3, "rows": rows,
            "layers": layers, "failures": []}


def test_projection_swaps_the_profiled_gemms_and_gelu_for_the_measured_epilogue_gemms():
    profile = {"geometries": {"bert_base": {
        "systems": {"ours fused fp16 (key_lengths) CUDA graph": {
            "gpu_busy_us_per_call": 1800.0, "by_category": {"gemm": {"us_per_call": 1100.0},
                                                            "gelu": {"us_per_call": 240.0}}},
            "torch reduce-overhead fp16": {"wall_ms": 2.4}},
        "analysis": {"ours_idle_us": 40.0}}}}
    p = projection(_fake_result(), profile)
    assert p["projected_busy_us"] == pytest.approx(1800 - 1100 - 240 + 48 * 20)
    assert p["projected_wall_us"] == pytest.approx(p["projected_busy_us"] + 40)
    assert p["projected_vs_reduce_overhead"] == pytest.approx(2400 / p["projected_wall_us"])
    res = dict(_fake_result(), projection=p)
    md = report_text(res)
    assert "| bert_base | ffn_up (gelu_bias) | 3072 x 768 | 30.0 | 20.0 | 18.0 | 1.50x |" in md
    assert "not a measurement" in md and f"{p['projected_vs_reduce_overhead']:.2f}x" in md


def report_text(res):
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "epilogue.json"
        f.write_text(json.dumps(res))
        return report(f)
