"""decode.cu compiles for a real geometry wherever nvcc is installed (CI without a GPU included), and every kernel
the engine launches is an entry of it. Skipped without nvcc (the GPU tests compile it with NVRTC)."""
import re
import shutil
import subprocess

import pytest

from paddle2ort.runtime.kernels import engine

NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
def test_decode_kernels_compile_and_export_what_the_engine_launches(tmp_path):
    ptx = tmp_path / "decode.ptx"
    # SmolLM2's geometry: head size 64, GQA group 3, the chunk the engine picks
    chunk = engine.attention_chunk({"num_heads": 9, "kv_heads": 3, "head_dim": 64})
    r = subprocess.run([NVCC, "-std=c++17", "-arch=sm_80", "-DHD=64", "-DGQA=3", f"-DCHUNK={chunk}", "--ptx",
                        str(engine.SOURCE), "-o", str(ptx)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx.read_text()))
    launched = {"embed_rows", "attn_split"} | {f"gemv_{m}_{f}{s}" for m in ("resid", "logits", "swiglu", "qkv")
                                               for f in engine.EPL for s in ("", "_r4")}
    assert launched <= entries, sorted(launched - entries)
