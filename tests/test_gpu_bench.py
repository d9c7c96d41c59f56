"""The GPU bench's pure parts on a CPU: roofline accounting and Markdown reports recomputed from the committed
results of benchmarks/results/llm-gpu/, prompts from the config's own vocabulary, pad ids from the config, the
genai config patch, the one timing loop, and the int4 margin statistics."""
import copy
import json
from pathlib import Path

import numpy as np
import pytest

from paddle2ort.benchmarks.gpu import common, genai_config, peer, report, roofline
from paddle2ort.benchmarks.int4_margin import margin_stats

pytestmark = pytest.mark.unit              # no Paddle, no assets: the committed results only

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "llm-gpu"
BENCH = sorted(RESULTS.glob("run*/bench-*.json"))
CHECK = sorted(RESULTS.glob("run*/check.json"))
# check.md of run4 was written before the GPT-2 line took its present wording (its table rows still match)
CHECK_OLD_WORDING = {"run4"}


def _load(p: Path) -> dict:
    return json.loads(p.read_text())


def test_committed_results_are_present():
    assert len(BENCH) >= 9 and len(CHECK) >= 6


@pytest.mark.parametrize("path", BENCH, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_bench_markdown_regenerates_the_committed_file(path):
    assert report.bench_markdown(_load(path)) == path.with_suffix(".md").read_text()


@pytest.mark.parametrize("path", CHECK, ids=lambda p: p.parent.name)
def test_check_markdown_regenerates_the_committed_file(path):
    got, want = report.check_markdown(_load(path)), path.with_suffix(".md").read_text()
    if path.parent.name in CHECK_OLD_WORDING:
        table = [ln for ln in want.splitlines() if ln.startswith("|")]
        assert table == [ln for ln in got.splitlines() if ln.startswith("|")]
    else:
        assert got == want


@pytest.mark.parametrize("path", BENCH, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_roofline_rows_recompute_from_timings(path):
    """Every row's bytes per step and % roofline follow from its timing, the weights and the spec."""
    r = _load(path)
    bw = r["copy_bandwidth_gb_s"] * 1e9
    for row in r["rows"]:
        decode_s = row["step_ms"] / 1e3 * (r["new_tokens"] - 1)
        wb = roofline.row_weight_bytes(row["system"], row["precision"], r["weight_bytes"], r["spec"])
        got = roofline.decode_row(row["system"], row["precision"], row["batch"], row["ttft_ms"], decode_s,
                                  new_tokens=r["new_tokens"], prompt_tokens=r["prompt_tokens"], weight_bytes=wb,
                                  spec=r["spec"], bandwidth=bw)
        assert got["bytes_per_step"] == pytest.approx(row["bytes_per_step"], rel=1e-12), row["system"]
        for k in ("pct_hbm_roofline", "tok_s_per_seq", "tok_s_aggregate"):
            assert got[k] == pytest.approx(row[k], rel=1e-9), (row["system"], k)


def test_spec_weight_bytes_equals_the_decoder_spec():
    from paddle2ort.convert.llm.fused import DecoderSpec
    for name, c in common.CONFIGS.items():
        spec = DecoderSpec.from_config({k: v for k, v in c.items() if k != "arch"}, qkv_bias=c["arch"] == "qwen2")
        assert roofline.spec_weight_bytes(spec.to_json(), 2) == spec.weight_bytes(2), name


def test_step_bytes_grow_with_batch_and_context():
    spec = {"num_layers": 2, "kv_heads": 2, "head_dim": 4}
    base = roofline.step_bytes(1000, spec, 1, 10)
    assert base == 1000 + 2 * 2 * 1 * 2 * 4 * 10 * 2
    assert roofline.step_bytes(1000, spec, 2, 10) - 1000 == 2 * (base - 1000)
    assert roofline.step_bytes(1000, spec, 1, 20) - 1000 == 2 * (base - 1000)


def test_prompts_cover_the_configs_vocabulary_and_skip_special_ids():
    c = common.CONFIGS["qwen2.5-0.5b"]
    specials = common.special_ids(c)
    a = common.random_prompts(np.random.default_rng(0), 8, 128, c["vocab_size"], specials)
    assert a.shape == (8, 128) and a.dtype == np.int64
    assert a.min() >= 0 and a.max() < c["vocab_size"]
    assert a.max() > common.CONFIGS["smollm2-135m"]["vocab_size"]          # not capped at SmolLM2's 49,152
    assert not np.isin(a, specials).any()
    b = common.random_prompts(np.random.default_rng(0), 8, 128, c["vocab_size"], specials)
    assert np.array_equal(a, b)


def test_pad_id_comes_from_the_config():
    assert common.pad_id({"pad_token_id": 7, "eos_token_id": 2}) == 7
    assert common.pad_id(common.GPT2_CONFIG) == 50256                       # no pad: eos, as HF/PaddleNLP do
    assert common.pad_id({"pad_token_id": None, "eos_token_id": [5, 6]}) == 5
    with pytest.raises(ValueError, match="pad_token_id"):
        common.pad_id({"vocab_size": 10})
    assert common.special_ids({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}) == (1, 2)
    assert common.gguf_special_ids({"ggml.bos_token_id": 1, "ggml.eos_token_id": 2}) == \
        {"bos_token_id": 1, "eos_token_id": 2}


def test_genai_config_gets_cuda_graphs_without_touching_the_original():
    bare = {"model": {"decoder": {"filename": "model.onnx"}}}
    with_cuda = {"model": {"decoder": {"session_options": {"provider_options": [{"cuda": {"x": "1"}}]}}}}
    for cfg in (bare, with_cuda):
        before = copy.deepcopy(cfg)
        out = genai_config.with_cuda_graph(cfg)
        provs = out["model"]["decoder"]["session_options"]["provider_options"]
        assert [p["cuda"]["enable_cuda_graph"] for p in provs if "cuda" in p] == ["1"]
        assert cfg == before
    assert genai_config.with_cuda_graph(with_cuda)["model"]["decoder"]["session_options"]["provider_options"][0][
        "cuda"]["x"] == "1"


def test_timing_loop_times_only_the_passes_after_warmup():
    calls = []

    def first(arg=None):
        calls.append(("first", arg))
        return len(calls)

    r = peer.timed_generation(3, first, lambda s: calls.append(("rest", s)), prepare=lambda: "p", warmup=2)
    assert [c[0] for c in calls] == ["first", "rest"] * 5
    assert all(c[1] == "p" for c in calls if c[0] == "first")
    assert r["state"] == 9 and r["ttft_ms"] >= 0 and r["decode_s"] >= 0


def test_agreement_counts_positions_and_rows():
    got = common.agreement([[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 0, 6, 7]])
    assert got == {"token_agreement": 5 / 7, "identical_rows": 1, "rows": 2}


def test_margin_stats_flip_exactly_where_the_error_beats_the_margin():
    rng = np.random.default_rng(0)
    wide = rng.normal(0, 1, (200, 500))
    wide[np.arange(200), rng.integers(0, 500, 200)] += 20                  # a clear winner per row
    small = rng.normal(0, 0.05, wide.shape)
    s = margin_stats(wide, wide + small)
    assert s["top1_agreement"] == 1.0 and s["margin_below_error_std"] == 0.0
    flat = rng.normal(0, 0.01, (200, 500))                                  # near-uniform logits: tiny margins
    s = margin_stats(flat, flat + rng.normal(0, 1.0, flat.shape))
    assert s["top1_agreement"] < 0.05 and s["margin_below_error_std"] > 0.95
    assert s["positions"] == 200 and s["top1_margin"]["p50"] < s["int4_logit_error_std"]["p50"]


TINY_LLAMA = dict(vocab_size=96, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
                  bos_token_id=1, eos_token_id=2, pad_token_id=2)
TINY_GPT = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=128, bos_token_id=95, eos_token_id=95)


def test_our_timed_path_runs_on_the_cpu_and_decodes_greedily(tmp_path):
    """The bench's timed path (fused decoder + the one decode loop + the timing loop), on the CPU: the tokens it
    times are the greedy tokens of the same graph and prompts."""
    from paddle2ort.convert.llm.fused import DecoderSpec, build_variant, random_state
    from paddle2ort.runtime.fused import FusedDecoder
    from paddle2ort.runtime.generation import GenerationConfig, generate
    spec = DecoderSpec.from_config(TINY_LLAMA)
    path = tmp_path / "tiny.fused.fp32.onnx"
    build_variant(spec, random_state(spec, seed=0, std=0.5), "fp32", path)
    prompts = common.random_prompts(np.random.default_rng(0), 2, 8, spec.vocab_size, common.special_ids(TINY_LLAMA))
    pad = common.pad_id(TINY_LLAMA)
    r = peer.time_ours(path, spec.to_json(), prompts, new=6, reps=2, pad=pad, device="cpu")
    assert r["ttft_ms"] > 0 and r["decode_s"] > 0
    want = generate(FusedDecoder(path, spec.to_json(), max_length=14), prompts.tolist(),
                    GenerationConfig(max_new_tokens=6), pad)
    assert [list(t) for t in r["tokens"]] == [list(t) for t in want]


def test_gpt2_check_runs_on_the_cpu(tmp_path):
    """The device check's GPT-2 section on a tiny GPT with the CPU standing in for the GPU: the same fp16 graph on
    the same device is deterministic (100%), and its prompt logits match the fp32 graph's."""
    from paddle2ort.benchmarks.gpu.check import gpt2_check
    out = gpt2_check(tmp_path, prompts=4, new=6, config=TINY_GPT, device="cpu")
    assert out["gpu_fp16_vs_cpu_fp16"] == {"token_agreement": 1.0, "identical_rows": 4, "rows": 4}
    assert out["prefill_logits_gpu_fp16_vs_cpu_fp32"]["cosine"] > 0.999
    assert out["geometry"].startswith("GPT (2 x 32, vocab 96)")
    assert "GPT-2 fused decoder" in report.check_markdown({"device": {"gpu": "cpu", "versions": {}}, "golden": "g",
                                                           "prompts": 0, "max_new_tokens": 0, "gpt2": out})


def test_encoder_profile_sorts_kernels_into_families_and_counts_the_dense_flops():
    """The encoder profile's kernel families (names of onnxruntime's, cuBLAS's and inductor's kernels) and the
    GEMM FLOPs it divides by: attention before GEMM (memory-efficient attention kernels are CUTLASS's)."""
    from paddle2ort.benchmarks.encoder_gpu import encoder_flops, kernel_category, linear_flops
    cases = {"fmha_cutlassF_f16_aligned_64x64_rf_sm80": "attention", "flash_fwd_kernel<...>": "attention",
             "sm90_xmma_gemm_f16f16_f16f32_f32_tn_n": "gemm", "nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NTN": "gemm",
             "triton_tem_fused_addmm_gelu_3": "gemm",
             "void onnxruntime::cuda::SkipLayerNormKernelSmall<half>": "layernorm",
             "triton_per_fused_native_layer_norm_2": "layernorm", "BiasGeluKernel<half>": "gelu",
             "Memcpy DtoD (Device -> Device)": "copy", "void at::native::vectorized_elementwise_kernel<4>": "other"}
    assert {n: kernel_category(n) for n in cases} == cases
    # BERT-base, 32 x 128: the dense layers are all of encoder_flops but Q.K^T and P.V
    t, h, i, layers = 32 * 128, 768, 3072, 12
    assert linear_flops("bert_base") == layers * (8 * t * h * h + 4 * t * h * i)
    assert encoder_flops(layers, h, i, 32, 128) - linear_flops("bert_base") == layers * 4 * 32 * 128 * 128 * h


def test_kernel_times_keep_device_kernels_per_call():
    """The profiles' one reader of torch.profiler's averages: device kernels per call, names cut to `width`, host
    events (no device time) left out."""
    from types import SimpleNamespace as E

    from paddle2ort.benchmarks.gpu.common import kernel_times
    prof = E(key_averages=lambda: [E(key="nvjet_gemm_long_name", count=8, self_device_time_total=40.0),
                                    E(key="cudaLaunchKernel", count=8, self_device_time_total=0),
                                    E(key="old_torch_kernel", count=4, self_cuda_time_total=12.0)])
    assert kernel_times(prof, 4) == {"nvjet_gemm_long_name": (2.0, 10.0), "old_torch_kernel": (1.0, 3.0)}
    assert set(kernel_times(prof, 4, 5)) == {"nvjet", "old_t"}
