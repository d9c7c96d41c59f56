"""The family registry (convert/llm/families.py): the family is read from config.json before any worker starts;
an unsupported one is exit 2 at once naming the supported ones. Each family that exports: a tiny random-weight
model (a GGUF written with gguf.GGUFWriter, imported with import-gguf) through convert-llm, i.e. Paddle parity of
the prefill + decode steps through the gate, generic and (where the family fits it) fused."""
import json

import numpy as np
import pytest

from paddle2ort.cli import main
from paddle2ort.convert.llm.families import (ARCHITECTURES, FUSED_FORM, UnsupportedFamily, family_name,
                                             rope_freq_factors)

from paddle2ort.convert.llm.gguf_import import read_gguf

from gguf_models import train_bpe, write_gguf
from conftest import run_python

# architectures with no adapter: exit 2 naming the supported ones
NOT_YET = ("BertForMaskedLM", "ChatGLMModel")


def model_dir(tmp_path, cfg: dict):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model_state.pdparams").write_bytes(b"x")
    return d


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from paddle2ort.tokenization.bpe import tokenizer_from_gguf_fields
    tokens, types, merges = train_bpe()
    tok = tokenizer_from_gguf_fields({"ggml.model": "gpt2", "ggml.pre": "qwen2", "ggml.tokens": tokens,
                                      "ggml.token_type": types, "ggml.merges": merges,
                                      "ggml.bos_token_id": 0, "ggml.eos_token_id": 2})
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    tok.save(out)
    return out


@pytest.mark.parametrize("arch", NOT_YET)
def test_unsupported_family_is_exit_2_before_any_worker(tmp_path, tokenizer_dir, capsys, monkeypatch, arch):
    import paddle2ort.convert.llm.api as api

    def no_worker(*a, **k):
        raise AssertionError("a Paddle worker started")
    monkeypatch.setattr(api, "run_worker", no_worker)
    src = model_dir(tmp_path, {"architectures": [arch], "vocab_size": 1000})
    assert main(["convert-llm", str(src), "--tokenizer", str(tokenizer_dir), "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert arch in err and "LlamaForCausalLM" in err and "Qwen2ForCausalLM" in err
    assert not (tmp_path / "b").exists()


@pytest.mark.unit
def test_family_from_architectures_or_model_type():
    assert family_name({"architectures": ["Qwen2ForCausalLM"], "model_type": "llama"}) == "qwen2"
    assert family_name({"model_type": "mistral"}) == "mistral"
    assert family_name({"architectures": ["GPT2LMHeadModel"]}) == "gpt"
    assert family_name({"model_type": "chatglm_v2"}) == "chatglm2"
    with pytest.raises(UnsupportedFamily, match="model_type 'baichuan'"):
        family_name({"model_type": "baichuan"})
    assert set(FUSED_FORM) == set(ARCHITECTURES.values())


def test_tokenizer_larger_than_the_model_vocabulary_is_exit_2(tmp_path, tokenizer_dir, capsys):
    src = model_dir(tmp_path, {"architectures": ["LlamaForCausalLM"], "vocab_size": 300})
    assert main(["convert-llm", str(src), "--tokenizer", str(tokenizer_dir), "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "500 tokens" in err and "vocabulary of 300" in err


# ---------------------------------------------------------------- Paddle parity through the gate, per family
CASES = {  # name: (GGUF architecture, sliding window, the family it must land in, tensor types, rope factors)
    "llama": ("llama", None, "llama", {"blk.0.ffn_down.weight": "Q8_0", "blk.1.attn_q.weight": "Q6_K"}, False),
    "llama3-rope": ("llama", None, "llama", {}, True),
    "mistral": ("llama", 48, "mistral", {}, False),
    "qwen2": ("qwen2", None, "qwen2", {"blk.1.ffn_up.weight": "Q4_K"}, False),
    "gpt2": ("gpt2", None, "gpt", {"blk.0.attn_qkv.weight": "Q5_0"}, False),
    "gemma": ("gemma", None, "gemma", {"blk.1.ffn_gate.weight": "Q8_0"}, False),
}


def rope_factors() -> np.ndarray:
    head_dim = 256 // 4
    cfg = {"rope_theta": 10000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}
    return np.asarray(rope_freq_factors(cfg, head_dim), np.float32)


def test_llama3_rope_factors_scale_only_the_long_wavelengths():
    f = rope_factors()
    inv = 1.0 / 10000.0 ** (np.arange(0, 64, 2) / 64)
    wavelen = 2 * np.pi / inv
    np.testing.assert_allclose(f[wavelen < 16 / 4], 1.0)          # high frequencies kept
    np.testing.assert_allclose(f[wavelen > 16 / 1], 8.0)          # low frequencies divided by the factor
    mid = f[(wavelen >= 4) & (wavelen <= 16)]
    assert mid.size and ((mid > 1.0) & (mid < 8.0)).all()


@pytest.mark.parametrize("case", list(CASES))
def test_family_exports_with_paddle_parity(tmp_path, case):
    import gguf
    from paddle2ort.convert.llm import LLMConvertConfig, convert_llm
    arch, window, family, types, rope = CASES[case]
    path = tmp_path / f"{case}.gguf"
    write_gguf(path, arch, sliding_window=window, pre="gpt2" if arch == "gpt2" else "llama-bpe",
               types={k: gguf.GGMLQuantizationType[v] for k, v in types.items()},
               rope_freqs=rope_factors() if rope else None)
    assert main(["import-gguf", str(path), "-o", str(tmp_path / "imp")]) == 0
    fused = ("fp32",) if FUSED_FORM[family] and not rope else ()
    res = convert_llm(LLMConvertConfig(source=tmp_path / "imp" / "model", tokenizer=tmp_path / "imp" / "tokenizer",
                                       output=tmp_path / "bundle", fused=fused))
    llm = res.manifest.extra["llm"]
    assert llm["family"] == family
    gate = res.manifest.validation["fp32"]           # prefill + decode steps replayed against Paddle's
    assert gate["passed"] and gate["samples"] >= 4 and gate["min_cosine"] > 0.9999
    if fused:
        assert res.manifest.extra["fused"]["fp32"]["validation"]["passed"]
    if window:
        assert llm["max_context"] == window       # the export's full attention is exact within the window only
    if case == "gemma":
        check_gemma_first_token(tmp_path / "bundle", read_gguf(path))


def check_gemma_first_token(bundle, gg):
    """Gemma's math written out in NumPy (embedding x sqrt(H), RMSNorm with the stored 1 + w gains, one position:
    attention returns v, tanh-GELU gate), against the exported graph's logits for a one-token prompt."""
    import onnxruntime as ort
    s, c = gg.state, gg.config
    h_dim, heads, kvh, layers = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], \
        c["num_hidden_layers"]
    rms = lambda x, w: x / np.sqrt((x * x).mean() + c["rms_norm_eps"]) * w  # noqa: E731
    gelu = lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))  # noqa: E731
    tok = 7
    x = s["llama.embed_tokens.weight"][tok].astype(np.float64) * np.sqrt(h_dim)
    for i in range(layers):
        p = f"llama.layers.{i}."
        n = rms(x, s[p + "input_layernorm.weight"])
        v = (n @ s[p + "self_attn.v_proj.weight"]).reshape(kvh, -1)
        x = x + np.repeat(v, heads // kvh, axis=0).reshape(-1) @ s[p + "self_attn.o_proj.weight"]
        n = rms(x, s[p + "post_attention_layernorm.weight"])
        x = x + (gelu(n @ s[p + "mlp.gate_proj.weight"]) * (n @ s[p + "mlp.up_proj.weight"])) @ \
            s[p + "mlp.down_proj.weight"]
    want = rms(x, s["llama.norm.weight"]) @ s["lm_head.weight"]
    sess = ort.InferenceSession(str(bundle / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    past = np.zeros((0, layers, 2, 1, kvh, h_dim // heads), np.float32)
    got = sess.run(["logits"], {"input_ids": np.array([[tok]]), "attention_mask": np.array([[1]]),
                                "position_ids": np.array([[0]]), "past_key_values": past})[0][0, 0]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_llama3_rope_scaling_changes_paddles_answer(tmp_path):
    """The factors reach Paddle's rotary tables (the reference the gate compares against): same weights with and
    without them give different log-likelihoods."""
    from paddle2ort.convert.llm.reference import paddle_nll
    window = [[5, 17, 90, 33, 250, 7, 61, 12, 400, 3, 88, 19, 27, 301, 45, 9, 77, 150, 2, 66]]
    nll = []
    for rope in (False, True):
        path = tmp_path / f"r{rope}.gguf"
        write_gguf(path, "llama", rope_freqs=rope_factors() if rope else None)
        assert main(["import-gguf", str(path), "-o", str(tmp_path / f"imp{rope}")]) == 0
        nll.append(paddle_nll(tmp_path / f"imp{rope}" / "model", window)[0])
    assert abs(nll[0] - nll[1]) > 1e-4 * abs(nll[0])


QWEN_BUILDER = """
import sys, paddle
from paddlenlp.transformers import QWenConfig, QWenForCausalLM
paddle.seed(0)
cfg = QWenConfig(vocab_size=500, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 kv_channels=16, seq_length=64, max_position_embeddings=64, use_flash_attention=False,
                 use_fused_rms_norm=False, use_fused_rope=False, eos_token_id=2, pad_token_id=2, bos_token_id=0)
model = QWenForCausalLM(cfg)
with paddle.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.set_value(paddle.randn(p.shape) * 0.1)     # Qwen's q/k/v biases matter: make them non-zero
model.save_pretrained(sys.argv[1])
"""


def test_qwen_v1_exports_as_qwen2_with_paddle_parity(tmp_path, tokenizer_dir):
    """QWenForCausalLM (PaddleNLP 2.8.1) is exported as LLaMA + q/k/v biases; the worker checks the remapped
    model's logits against QWen's own class, then the gate replays Paddle's steps (generic and fused)."""
    from paddle2ort.convert.llm import LLMConvertConfig, convert_llm
    run_python("-c", QWEN_BUILDER, str(tmp_path / "qwen"))
    res = convert_llm(LLMConvertConfig(source=tmp_path / "qwen", tokenizer=tokenizer_dir, output=tmp_path / "b",
                                       fused=("fp32",)))
    llm = res.manifest.extra["llm"]
    assert llm["architecture"] == "QWenForCausalLM" and llm["family"] == "qwen2" and llm["max_context"] == 64
    assert res.manifest.validation["fp32"]["passed"] and res.manifest.extra["fused"]["fp32"]["validation"]["passed"]


MIXTRAL_BUILDER = """
import sys, numpy as np, paddle
from paddlenlp.transformers import MixtralConfig, MixtralForCausalLM
paddle.seed(0)
cfg = MixtralConfig(vocab_size=500, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128,
                    rms_norm_eps=1e-5, use_flash_attention=False, use_fused_rms_norm=False, use_fused_rope=False,
                    eos_token_id=2, pad_token_id=2, bos_token_id=0)
model = MixtralForCausalLM(cfg)
model.save_pretrained(sys.argv[1])
np.savez(sys.argv[1] + "/state.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
"""


def onnx_nll(bundle, llm: dict, window: list[int]) -> float:
    """Negative log-likelihood of window[1:] from the exported graph (one prefill)."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(bundle / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    n = len(window)
    past = np.zeros((0, llm["num_layers"], 2, 1, llm["kv_heads"], llm["head_dim"]), np.float32)
    logits = sess.run(["logits"], {"input_ids": np.array([window]), "attention_mask": np.ones((1, n), np.int64),
                                   "position_ids": np.arange(n)[None], "past_key_values": past})[0][0].astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return float(-logp[np.arange(n - 1), window[1:]].sum())


def mixtral_first_token_logits(s: dict, tok: int, layers: int, heads: int, kvh: int, eps: float) -> np.ndarray:
    """Mixtral's math written out in NumPy for a one-token prompt (attention returns v): the MoE picks the top-2
    experts by softmax(gate), renormalizes their weights and sums their SwiGLU outputs."""
    rms = lambda x, w: x / np.sqrt((x * x).mean() + eps) * w  # noqa: E731
    silu = lambda x: x / (1 + np.exp(-x))  # noqa: E731
    x = s["mixtral.embed_tokens.weight"][tok].astype(np.float64)
    for i in range(layers):
        p = f"mixtral.layers.{i}."
        n = rms(x, s[p + "input_layernorm.weight"])
        v = (n @ s[p + "self_attn.v_proj.weight"]).reshape(kvh, -1)
        x = x + np.repeat(v, heads // kvh, axis=0).reshape(-1) @ s[p + "self_attn.o_proj.weight"]
        n = rms(x, s[p + "post_attention_layernorm.weight"])
        g = n @ s[p + "block_sparse_moe.gate.weight"]
        prob = np.exp(g - g.max()) / np.exp(g - g.max()).sum()
        top = np.argsort(-prob)[:2]
        moe = 0.0
        for e in top:
            q = p + f"block_sparse_moe.experts.{e}."
            moe = moe + prob[e] / prob[top].sum() * ((silu(n @ s[q + "w1.weight"]) * (n @ s[q + "w3.weight"]))
                                                     @ s[q + "w2.weight"])
        x = x + moe
    return rms(x, s["mixtral.norm.weight"]) @ s["lm_head.weight"]


def test_mixtral_exports_with_a_dense_moe(tmp_path, tokenizer_dir):
    """MixtralForCausalLM: the MoE computed densely (every expert, weighted by its renormalized top-2 routing weight;
    PaddleNLP 2.8.1's sparse forward fails eagerly), exported generic-only; the gate replays Paddle's steps, the
    graph's first-token logits equal Mixtral's math in NumPy, and Paddle's own log-likelihood reference runs."""

    import onnxruntime as ort
    from paddle2ort.convert.llm import LLMConvertConfig, convert_llm
    from paddle2ort.convert.llm.reference import paddle_nll
    src = tmp_path / "mixtral"
    run_python("-c", MIXTRAL_BUILDER, str(src))
    state = dict(np.load(src / "state.npz"))
    (src / "state.npz").unlink()
    res = convert_llm(LLMConvertConfig(source=src, tokenizer=tokenizer_dir, output=tmp_path / "b"))
    llm = res.manifest.extra["llm"]
    assert llm["family"] == "mixtral" and res.manifest.validation["fp32"]["passed"]
    sess = ort.InferenceSession(str(tmp_path / "b" / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    past = np.zeros((0, 2, 2, 1, 2, 16), np.float32)
    got = sess.run(["logits"], {"input_ids": np.array([[7]]), "attention_mask": np.array([[1]]),
                                "position_ids": np.array([[0]]), "past_key_values": past})[0][0, 0]
    want = mixtral_first_token_logits(state, 7, layers=2, heads=4, kvh=2, eps=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
    window = [5, 17, 90, 33, 250, 7, 61, 12, 400, 3, 88, 19, 27, 301, 45, 9]
    want_nll, count = paddle_nll(src, [window])
    assert count == len(window) - 1
    assert abs(onnx_nll(tmp_path / "b", llm, window) - want_nll) <= 1e-4 * abs(want_nll)


OPT_BUILDER = """
import sys, paddle
from paddlenlp.transformers import OPTConfig, OPTForCausalLM
paddle.seed(0)
cfg = OPTConfig(vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=128, word_embed_proj_dim=64, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, eos_token_id=2, pad_token_id=2, bos_token_id=0)
OPTForCausalLM(cfg).save_pretrained(sys.argv[1])
"""


def test_opt_exports_with_paddle_parity(tmp_path, tokenizer_dir):
    """OPTForCausalLM (learned positions offset by 2, ReLU, pre-LN): the gate replays Paddle's steps, and the
    graph's log-likelihood of a window equals OPT's own forward (reference.paddle_nll: the unpatched class)."""
    from paddle2ort.convert.llm import LLMConvertConfig, convert_llm
    from paddle2ort.convert.llm.reference import paddle_nll
    src = tmp_path / "opt"
    run_python("-c", OPT_BUILDER, str(src))
    res = convert_llm(LLMConvertConfig(source=src, tokenizer=tokenizer_dir, output=tmp_path / "b"))
    llm = res.manifest.extra["llm"]
    assert llm["family"] == "opt" and res.manifest.validation["fp32"]["passed"]
    window = [5, 17, 90, 33, 250, 7, 61, 12, 400, 3, 88, 19, 27, 301, 45, 9]
    want, _ = paddle_nll(src, [window])
    assert abs(onnx_nll(tmp_path / "b", llm, window) - want) <= 1e-4 * abs(want)


GPTJ_BUILDER = """
import sys, paddle
from paddlenlp.transformers import GPTJConfig, GPTJForCausalLM
paddle.seed(0)
cfg = GPTJConfig(vocab_size=500, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=128, n_inner=128,
                 embd_pdrop=0.0, resid_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new",
                 eos_token_id=2, pad_token_id=2, bos_token_id=0)
GPTJForCausalLM(cfg).save_pretrained(sys.argv[1])
"""


CODEGEN_BUILDER = GPTJ_BUILDER.replace("GPTJConfig", "CodeGenConfig").replace("GPTJForCausalLM", "CodeGenForCausalLM")


@pytest.mark.parametrize("family,builder", [("gptj", GPTJ_BUILDER), ("codegen", CODEGEN_BUILDER)])
def test_gptj_and_codegen_export_with_paddle_parity(tmp_path, tokenizer_dir, family, builder):
    """GPTJForCausalLM / CodeGenForCausalLM (parallel attention + MLP, interleaved partial rotary; CodeGen's fused
    qkv in 4 blocks): the block is recomputed from its sublayers with rotary by position_ids; the gate replays
    Paddle's steps and the graph's log-likelihood of a window equals the class's own forward."""
    from paddle2ort.convert.llm import LLMConvertConfig, convert_llm
    from paddle2ort.convert.llm.reference import paddle_nll
    src = tmp_path / family
    run_python("-c", builder, str(src))
    res = convert_llm(LLMConvertConfig(source=src, tokenizer=tokenizer_dir, output=tmp_path / "b"))
    llm = res.manifest.extra["llm"]
    assert llm["family"] == family and res.manifest.validation["fp32"]["passed"]
    window = [5, 17, 90, 33, 250, 7, 61, 12, 400, 3, 88, 19, 27, 301, 45, 9]
    want, _ = paddle_nll(src, [window])
    assert abs(onnx_nll(tmp_path / "b", llm, window) - want) <= 1e-4 * abs(want)


FALCON_BUILDER = """
import sys, paddle
from paddlenlp.transformers import RWConfig, RWForCausalLM
paddle.seed(0)
cfg = RWConfig(vocab_size=500, hidden_size=64, n_layer=2, n_head=4, multi_query=MQ, parallel_attn=MQ, bias=False,
               alibi=False, hidden_dropout=0.0, attention_dropout=0.0, eos_token_id=2, pad_token_id=2,
               bos_token_id=0)
RWForCausalLM(cfg).save_pretrained(sys.argv[1])
"""


@pytest.mark.parametrize("multi_query", [True, False])
def test_falcon_exports_with_paddle_parity(tmp_path, tokenizer_dir, multi_query):
    """RWForCausalLM (Falcon, rotary; multi-query + parallel attention like Falcon-7B, or per-head q|k|v and
    sequential): the gate replays Paddle's steps and the graph's log-likelihood equals RW's own forward."""
    from paddle2ort.convert.llm import LLMConvertConfig, convert_llm
    from paddle2ort.convert.llm.reference import paddle_nll
    src = tmp_path / "rw"
    run_python("-c", FALCON_BUILDER.replace("MQ", str(multi_query)), str(src))
    res = convert_llm(LLMConvertConfig(source=src, tokenizer=tokenizer_dir, output=tmp_path / "b"))
    llm = res.manifest.extra["llm"]
    assert llm["family"] == "falcon" and llm["kv_heads"] == (1 if multi_query else 4)
    assert res.manifest.validation["fp32"]["passed"]
    window = [5, 17, 90, 33, 250, 7, 61, 12, 400, 3, 88, 19, 27, 301, 45, 9]
    want, _ = paddle_nll(src, [window])
    assert abs(onnx_nll(tmp_path / "b", llm, window) - want) <= 1e-4 * abs(want)


BLOOM_BUILDER = """
import sys, paddle
from paddlenlp.transformers import BloomConfig, BloomForCausalLM
paddle.seed(0)
cfg = BloomConfig(vocab_size=500, hidden_size=64, n_layer=2, n_head=4, hidden_dropout=0.0, attention_dropout=0.0,
                  use_flash_attention=False, eos_token_id=2, pad_token_id=2, bos_token_id=0)
model = BloomForCausalLM(cfg)
with paddle.no_grad():                   # PaddleNLP's Bloom initializes its projections to 0: random weights instead
    for name, p in model.named_parameters():
        base = 1.0 if "layernorm" in name and name.endswith("weight") else 0.0
        p.set_value(base + paddle.randn(p.shape) * 0.05)
model.save_pretrained(sys.argv[1])
"""


def test_bloom_exports_with_paddle_parity(tmp_path, tokenizer_dir):
    """BloomForCausalLM (ALiBi, tied head, embedding LayerNorm): the gate replays Paddle's left-padded steps (ALiBi
    counts real keys only) and the graph's log-likelihood equals Bloom's own forward."""
    from paddle2ort.convert.llm import LLMConvertConfig, convert_llm
    from paddle2ort.convert.llm.reference import paddle_nll
    src = tmp_path / "bloom"
    run_python("-c", BLOOM_BUILDER, str(src))
    res = convert_llm(LLMConvertConfig(source=src, tokenizer=tokenizer_dir, output=tmp_path / "b"))
    llm = res.manifest.extra["llm"]
    assert llm["family"] == "bloom" and res.manifest.validation["fp32"]["passed"]
    window = [5, 17, 90, 33, 250, 7, 61, 12, 400, 3, 88, 19, 27, 301, 45, 9]
    want, _ = paddle_nll(src, [window])
    assert abs(onnx_nll(tmp_path / "b", llm, window) - want) <= 1e-4 * abs(want)


@pytest.mark.parametrize("cfg", [{"architectures": ["ChatGLMForCausalLM"]}, {"model_type": "chatglm"}])
def test_chatglm_v1_is_refused_at_config_time_with_the_reason(tmp_path, tokenizer_dir, capsys, monkeypatch, cfg):
    """ChatGLM v1's GLM attention (bidirectional prompt up to [gMASK], 2-D position ids) does not fit the causal
    decoder contract: exit 2 from config.json alone, naming why and that v2 exports."""
    import paddle2ort.convert.llm.api as api

    def no_worker(*a, **k):
        raise AssertionError("a Paddle worker started")
    monkeypatch.setattr(api, "run_worker", no_worker)
    src = model_dir(tmp_path, {**cfg, "vocab_size": 1000})
    assert main(["convert-llm", str(src), "--tokenizer", str(tokenizer_dir), "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "bidirectional" in err and "2-D position ids" in err and "ChatGLMv2ForCausalLM" in err
    assert not (tmp_path / "b").exists()


GLM2_BUILDER = """
import sys, paddle
from paddlenlp.transformers import ChatGLMv2Config, ChatGLMv2ForCausalLM
paddle.seed(0)
cfg = ChatGLMv2Config(vocab_size=500, hidden_size=64, ffn_hidden_size=96, kv_channels=16, num_hidden_layers=2,
                      num_attention_heads=4, multi_query_group_num=2, add_qkv_bias=True, max_sequence_length=128,
                      eos_token_id=2, pad_token_id=2, bos_token_id=0)
model = ChatGLMv2ForCausalLM(cfg)
with paddle.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.set_value(paddle.randn(p.shape) * 0.1)     # the q/k/v biases matter: make them non-zero
model.save_pretrained(sys.argv[1])
"""


def test_chatglm_v2_exports_with_paddle_parity(tmp_path, tokenizer_dir):
    """ChatGLMv2ForCausalLM (multi-query groups, interleaved rotary on half of each head, SwiGLU, q/k/v biases):
    generic export only (the fused decoder's attention rotates whole heads: --fused is exit 2 at config time); the
    gate replays Paddle's prefill + decode steps and the graph's log-likelihood equals the class's own forward."""
    from paddle2ort.convert.llm import LLMConvertConfig, convert_llm
    from paddle2ort.convert.llm.reference import paddle_nll
    from paddle2ort.runtime.errors import BadInputError
    src = tmp_path / "glm2"
    run_python("-c", GLM2_BUILDER, str(src))
    with pytest.raises(BadInputError, match="fused decoder does not cover the chatglm2 family"):
        convert_llm(LLMConvertConfig(source=src, tokenizer=tokenizer_dir, output=tmp_path / "f", fused=("fp32",)))
    res = convert_llm(LLMConvertConfig(source=src, tokenizer=tokenizer_dir, output=tmp_path / "b"))
    llm = res.manifest.extra["llm"]
    assert llm["family"] == "chatglm2" and llm["kv_heads"] == 2 and llm["max_context"] == 128
    gate = res.manifest.validation["fp32"]
    assert gate["passed"] and gate["samples"] >= 4
    window = [5, 17, 90, 33, 250, 7, 61, 12, 400, 3, 88, 19, 27, 301, 45, 9]
    want, _ = paddle_nll(src, [window])
    assert abs(onnx_nll(tmp_path / "b", llm, window) - want) <= 1e-4 * abs(want)
