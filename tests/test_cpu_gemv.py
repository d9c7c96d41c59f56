"""The exploratory int8 GEMV (benchmarks/cpu_kernels/gemv_q8.c) against its NumPy twin, for each code path the
host can run: the host's own ISA, AVX2 without VNNI (x86-64-v3) and the scalar loop (x86-64). Quantization is
compared exactly; the product to 1e-5 of its scale (the kernel sums the blocks' float terms in another order)."""
import platform
import shutil
import subprocess

import numpy as np
import pytest

from paddle2ort.benchmarks.cpu_gemv import Chain, Q8, build, check_chain, validate

pytestmark = pytest.mark.unit
SHAPES = [(64, 5), (576, 96), (1536, 33), (32, 1)]        # K a multiple of 32; N not one of 4


def _runs_here(march: str) -> bool:
    flags = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
    return march != "x86-64-v3" or all(f in flags for f in (" avx2", " fma", " bmi2"))


@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler")
@pytest.mark.parametrize("march", ["native", "x86-64-v3", "x86-64"])
def test_kernel_matches_its_twin(march, tmp_path):
    if march != "native" and platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip(f"-march={march} is an x86-64 target")
    if not _runs_here(march):
        pytest.skip(f"this CPU cannot run -march={march} code")
    try:
        so = build(tmp_path, march)
    except subprocess.CalledProcessError as e:
        pytest.skip(f"the compiler refused -march={march}: {e.stderr[-300:]}")
    want = {"x86-64": "scalar", "x86-64-v3": "avx2"}.get(march)
    if want:
        assert so.gemv_q8_isa().decode() == want
    rng = np.random.default_rng(0)
    assert validate(so, SHAPES, rng) <= 1e-5
    mats = [Q8(so, k, n, rng) for k, n in SHAPES * 2]          # the step in one parallel region: the same bits
    xs = {k: rng.standard_normal(k).astype(np.float32) for k, _ in SHAPES}
    check_chain(Chain(so, mats, xs), mats, xs)


def test_report_of_the_committed_run():
    """The committed exploratory run renders (the README quotes its figures)."""
    import json
    from pathlib import Path

    from paddle2ort.benchmarks.cpu_gemv import markdown
    res = json.loads((Path(__file__).parents[1] / "benchmarks/results/llm-cpu/avx512-gemv/cpu-gemv.json").read_text())
    md = markdown(res)
    assert "| 576 x 49152 | 1 |" in md and f"| MatMulNBits | {res['ms_per_step']['MatMulNBits']:.2f} |" in md
    assert f"| ours, one parallel region | {res['ms_per_step']['ours, one parallel region']:.2f} |" in md
    assert res["validation_worst_rel_error"] <= 1e-5 and res["products"] == sum(x["count"] for x in res["per_shape"])
