"""decode.cu compiles for a real geometry wherever nvcc is installed (CI without a GPU included), module by module
as the engine compiles it (the attention one, one a weight format), and every kernel the engine launches is an entry
of its module that takes part in programmatic dependent launch (sm_90: each entry triggers its dependents and waits
for its predecessor, which is what makes the engine's pdl launch safe). Skipped without nvcc (the GPU tests compile
it with NVRTC)."""
import re
import shutil
import subprocess

import numpy as np
import pytest

from paddle2ort.runtime.kernels import engine

NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
@pytest.mark.parametrize("pipeline", [False, True])
def test_decode_kernels_compile_and_export_what_the_engine_launches(tmp_path, pipeline):
    """pipeline=True (PIPE) as well: there every entry's wait is at once followed by its trigger, so the next kernel
    launches one kernel ahead and no further (the trigger never comes before the wait, except in embed_rows, the
    step's first kernel)."""
    # SmolLM2's geometry: head size 64, GQA group 3, the chunk the engine picks
    chunk = engine.attention_chunk({"num_heads": 9, "kv_heads": 3, "head_dim": 64})
    procs = []
    for i, opts in enumerate(engine.module_options(64, 3, chunk, pipeline=pipeline)):
        ptx = tmp_path / f"decode{i}.ptx"
        procs.append((opts, ptx, subprocess.Popen([NVCC, "-std=c++17", "-arch=sm_90", *opts, "--ptx",
                                                   str(engine.SOURCE), "-o", str(ptx)], stderr=subprocess.PIPE,
                                                  text=True)))
    for opts, ptx, proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        entries = set(re.findall(r"\.entry\s+(\w+)", ptx.read_text()))
        missing = set(engine.module_names(opts)) - entries
        assert not missing, sorted(missing)
        bodies = re.split(r"\.entry\s+", ptx.read_text())[1:]
        no_pdl = [b.split("(", 1)[0] for b in bodies
                  if "griddepcontrol.wait" not in b or "griddepcontrol.launch_dependents" not in b]
        assert len(bodies) == len(entries) and not no_pdl, no_pdl
        if pipeline:
            late = [b.split("(", 1)[0] for b in bodies if not b.startswith("embed_rows")
                    and not re.search(r"griddepcontrol\.wait;\s*griddepcontrol\.launch_dependents;", b)]
            assert not late, late


def test_every_plan_names_a_compiled_kernel():
    """gemv_plan only picks entries decode.cu instantiates (GEMV2_MODE), for the models' shapes and odd ones."""
    names = {n for f in engine.EPL for n in engine.gemv_names(f)}
    for fmt in engine.EPL:
        for mode, n, k in [("qkv", 1152, 896), ("resid", 896, 4864), ("swiglu", 9728, 896), ("logits", 151936, 896),
                           ("resid", 894, 576), ("logits", 49154, 576), ("qkv", 960, 576)]:
            p = engine.Packed(fmt, np.zeros((1, 1), np.uint8), None, n, k, 32)
            for batch in (1, 2, 8, 9):
                for version in engine.GEMV_VERSIONS:
                    v1_rows = 4 if batch >= 4 and n % 4 == 0 else 2          # KernelEngine.rows_per_warp
                    plan = engine.gemv_plan(p, mode, batch, version, 64, v1_rows)
                    assert plan.name in names and n % plan.r == 0, (fmt, mode, n, batch, version, plan)
    big = engine.Packed("f16", np.zeros((1, 1), np.uint8), None, 896, 4864)
    assert engine.gemv_plan(big, "resid", 1).ks == 4          # down-proj of batch 1: K split over 4 warps
    assert engine.gemv_plan(big, "resid", 8).nb == 8          # batch 8: the weights read once for 8 rows
    # v3: 56 tasks of 16 rows over 152 steps of 32 inputs: K split until the grid has 2,048 warps or a warp 2 steps
    assert engine.gemv_plan(big, "resid", 1, "v3") == engine.Plan("gemv3_resid_f16_k16", 16, 16, 8)
    assert engine.gemv_plan(big, "resid", 1, "v3").warps == 16
    gate_up = engine.Packed("q4", np.zeros((1, 1), np.uint8), None, 9728, 896)
    assert engine.gemv_plan(gate_up, "swiglu", 8, "v3").name == "gemv3_swiglu_q4_k2"     # 7 steps of 128 inputs
    head = engine.Packed("f32", np.zeros((1, 1), np.float32), None, 151936, 896)
    assert engine.gemv_plan(head, "logits", 1, "v3").version == "v2"      # a float32 head stays on v2
    odd = engine.Packed("f16", np.zeros((1, 1), np.uint8), None, 894, 576)
    assert engine.gemv_plan(odd, "resid", 8, "v3") == engine.gemv_plan(odd, "resid", 8, "v2")  # 894: not 16 a task


def test_auto_gemv_candidates_are_compiled_entries_that_leave_every_warp_work():
    """gemv="auto" also times the v3 splits of K over warps and blocks (v3_plans): each names an entry decode.cu
    instantiates, none splits K into more parts than the product has 16-byte steps a lane, the block-split ones only
    where decode.cu has them (not the LM head), and split_scratch sizes their partial sums for the widest."""
    names = {n for f in engine.EPL for n in engine.gemv_names(f)}
    for fmt in engine.V3_FORMATS:
        for mode, n, k in [("qkv", 1152, 896), ("resid", 896, 4864), ("swiglu", 9728, 896), ("logits", 49152, 576),
                           ("resid", 576, 576)]:
            p = engine.Packed(fmt, np.zeros((1, 1), np.uint8), None, n, k, 32)
            plans = engine.v3_plans(p, mode, 1, 64)
            steps = -(-k // (4 * engine.EPL[fmt]))
            assert plans and all(pl.name in names and pl.ks * pl.ksl <= max(steps, 1) for pl in plans), (fmt, mode)
            assert any(pl.ksl > 1 for pl in plans) == (mode != "logits" and steps >= 8), (fmt, mode, steps)
            part, cnt = engine.split_scratch(np, [(p, pl) for pl in plans], 9)        # batch 9: two tiles
            widest = max(pl.ksl for pl in plans)
            if widest > 1:
                assert part.size >= 2 * (n // 16) * widest * 160
                assert cnt.size >= 2 * (n // 16) and not cnt.any()
    q4 = engine.Packed("q4", np.zeros((1, 1), np.uint8), None, 1152, 896, 32)        # 7 steps of 128 inputs
    assert {(pl.ks, pl.ksl) for pl in engine.v3_plans(q4, "qkv", 1, 64)} == {(1, 1), (2, 1), (4, 1)}
    odd = engine.Packed("f16", np.zeros((1, 1), np.uint8), None, 894, 576)
    assert engine.v3_plans(odd, "resid", 1, 64) == []                            # 894 rows: not 16 a task


def test_a_block_split_gemv_refuses_to_launch_without_its_scratch():
    p = engine.Packed("f16", np.zeros((896, 4864), np.float16), None, 896, 4864)
    plan = engine.Plan("gemv3s_resid_f16_k16", 16, 16, 8, 4)
    with pytest.raises(engine.BadInputError, match="split_scratch"):
        engine.launch_gemv({}, "resid", p, None, None, 1e-6, 1, None, plan=plan)


def test_the_v3_twin_keeps_large_activations_in_float16_range():
    """The v3 GEMVs feed float16(x * gamma * A16) to the tensor cores: residual-stream outliers far past float16's
    range (65,504) stay finite, and the result tracks the float32 twin to float16 rounding."""
    from paddle2ort.runtime.kernels import engine_reference as R
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((64, 256)) * 0.05).astype(np.float16).astype(np.float32)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    x[:, 7] = [3e5, -2e5, 9e4]                                  # outlier features: x * gamma overflows float16
    gamma = rng.uniform(0.5, 1.5, 256).astype(np.float16)
    with np.errstate(over="ignore"):
        assert np.isinf((x * gamma.astype(np.float32)).astype(np.float16)).any()
    for got, want in [(R.gemv_logits(w, x, gamma, 1e-6, a16=True), R.gemv_logits(w, x, gamma, 1e-6)),
                      (R.gemv_swiglu(w, x, gamma, 1e-6, 32, a16=True), R.gemv_swiglu(w, x, gamma, 1e-6, 32))]:
        assert np.isfinite(got).all()
        err = np.abs(got - want).max() / np.abs(want).max()
        assert 0 < err < 2e-3, err                            # float16 rounding: not exact, not more


def test_auto_gemv_keeps_the_faster_plan_and_ignores_noise():
    """gemv="auto" (KernelEngine._tune): per product the plan timed fastest; a later candidate within 3% of the
    best does not displace it (noise), and a candidate listed twice is timed once."""
    v3, v2 = engine.Plan("gemv3_resid_f16_k4", 16, 4, 8), engine.Plan("gemv2_resid_f16_r2_k1_b1", 2, 1, 1)
    us = {("down", v3.name): 7.1, ("down", v2.name): 4.9, ("o", v3.name): 3.0, ("o", v2.name): 2.95}
    calls = []

    def time_us(key, plan):
        calls.append((key, plan.name))
        return us[(key, plan.name)]
    got = engine.pick_fastest({"down": [v3, v2], "o": [v3, v2, v3]}, time_us)
    assert got == {"down": v2, "o": v3}
    assert len(calls) == len(set(calls)) == 4


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
@pytest.mark.parametrize("fmt", ["f16", "q4"])
def test_persistent_step_compiles_and_reads_its_own_writes_coherently(tmp_path, fmt):
    """The persistent step module, with the options the engine compiles it with: one `step_layers` entry that
    waits for its predecessor (launched with PDL), has the grid barrier's acquire loads, and reads every float32
    activation it writes between phases through L2 (ld.global.cg), never the non-coherent path (ld.global.nc)."""
    from paddle2ort.runtime.kernels import persistent
    opts = persistent.options(64, 7, 128, fmt, {"qkv": 8, "o": 8, "gate_up": 2, "down": 8})
    ptx = tmp_path / "step.ptx"
    r = subprocess.run([NVCC, "-std=c++17", "-arch=sm_90", *opts, "--ptx", str(engine.SOURCE), "-o", str(ptx)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    body = next(b for b in re.split(r"\.entry\s+", ptx.read_text())[1:] if b.startswith("step_layers"))
    assert "griddepcontrol.wait" in body and "ld.acquire.gpu" in body
    assert "ld.global.cg.v4.f32" in body and "ld.global.nc.v4.f32" not in body


def test_persistent_step_splits_spread_every_product_over_the_grid():
    """persistent.split on an H200's 132 SMs at batch 1 (Qwen2.5-0.5B): small products split K over a block's 8
    warps and then over blocks, the wide gate|up over 2 warps; no split leaves a warp without a K step."""
    from paddle2ort.runtime.kernels import persistent as S
    assert S.split(72, 28, 1, 132) == (8, 2)           # q|k|v f16: 72 tasks of 16 rows, 28 steps of 32 inputs
    assert S.split(608, 28, 1, 132) == (2, 1)          # gate|up: 608 tasks fill 132 x 8 warps with 2 a task
    assert S.split(56, 152, 1, 132) == (8, 4)          # down: 56 tasks over 4 blocks each
    assert S.split(72, 7, 1, 132) == (4, 1)            # q|k|v int4: 7 steps of 128 inputs
    for tasks, steps, batch in [(1, 1, 1), (3, 2, 9), (9728 // 16, 7, 8), (56, 152, 16), (4, 1000, 1)]:
        ks, ksl = S.split(tasks, steps, batch, 132)
        assert ks in (1, 2, 4, 8) and ksl & (ksl - 1) == 0 and ks * ksl <= max(steps, 1)


def test_persistent_step_says_why_it_does_not_fit():
    """persistent.unfit: None for uniform v3-shaped layers; else a reason (old GPU, attention v1, mixed formats)."""
    from paddle2ort.runtime.kernels import persistent as S

    def layer(fmt="f16", block=0):
        p = lambda n, k: engine.Packed(fmt, np.zeros((1, 1), np.uint8), None, n, k, block)  # noqa: E731
        return engine.Layer(ln1=None, ln2=None, qkv=p(1152, 896), bias=None, o=p(896, 896), gate_up=p(9728, 896),
                            down=p(896, 4864))
    assert S.unfit([layer(), layer()], 64, True, 90) is None
    assert "8.0" in S.unfit([layer()], 64, True, 75)
    assert "attention v1" in S.unfit([layer()], 64, False, 90)
    assert "formats" in S.unfit([layer(), layer("q4", 32)], 64, True, 90)
    odd = layer()
    odd.o = engine.Packed("f16", np.zeros((1, 1), np.uint8), None, 894, 896)
    assert "v3" in S.unfit([odd], 64, True, 90)
    with pytest.raises(engine.BadInputError, match="step must be one of"):
        engine.KernelEngine("-", {}, step="fast")
