"""HF LLaMA/Qwen2 state dict -> PaddleNLP LlamaForCausalLM: names, shapes and transposes, on a tiny random
HF-style state dict whose names and [out, in] layout are written here from HF's convention."""
import json
import textwrap

import numpy as np
import pytest

from paddle2ort.convert.llm.fused import DecoderSpec, check_state, expected_weights
from paddle2ort.convert.llm.hf_mapping import hf_to_paddlenlp
from paddle2ort.runtime.errors import BadInputError
from conftest import run_python

# every dimension distinct, so a missing or extra transpose shows as a shape mismatch
CFG = dict(vocab_size=96, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0)


def hf_state(qkv_bias: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """An HF-style state dict: `model.` prefix, nn.Linear weights [out_features, in_features]."""
    rng = np.random.default_rng(seed)
    h, i, v = CFG["hidden_size"], CFG["intermediate_size"], CFG["vocab_size"]
    hd = h // CFG["num_attention_heads"]
    q, kv = CFG["num_attention_heads"] * hd, CFG["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for n in range(CFG["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                       p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                       p + "mlp.down_proj.weight": (h, i)})
        if qkv_bias:
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)})
    return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


@pytest.mark.unit
@pytest.mark.parametrize("qkv_bias", [False, True], ids=["llama", "qwen2"])
def test_names_and_shapes_are_what_the_fused_builder_reads(qkv_bias):
    hf = hf_state(qkv_bias)
    pd = hf_to_paddlenlp(hf)
    spec = DecoderSpec.from_config(CFG, qkv_bias=qkv_bias)
    want = expected_weights(spec)
    assert set(pd) == set(want) | {"lm_head.weight"}
    check_state(spec, pd)                                        # every weight present with the spec's shape
    assert pd["lm_head.weight"].shape == (CFG["hidden_size"], CFG["vocab_size"])


@pytest.mark.unit
def test_linear_weights_are_transposed_and_the_rest_kept():
    hf = hf_state(qkv_bias=True)
    pd = hf_to_paddlenlp(hf)
    x = np.random.default_rng(1).normal(size=(3, CFG["hidden_size"])).astype(np.float32)
    for name in ("self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj"):
        w_hf, w_pd = hf[f"model.layers.1.{name}.weight"], pd[f"llama.layers.1.{name}.weight"]
        np.testing.assert_array_equal(w_pd, w_hf.T)              # paddle Linear x @ W == torch Linear x @ W.T
        np.testing.assert_allclose(x @ w_pd, x @ w_hf.T, rtol=1e-5, atol=1e-5)  # BLAS sums in any order
    np.testing.assert_array_equal(pd["llama.embed_tokens.weight"], hf["model.embed_tokens.weight"])
    np.testing.assert_array_equal(pd["llama.layers.0.self_attn.q_proj.bias"], hf["model.layers.0.self_attn.q_proj.bias"])
    np.testing.assert_array_equal(pd["lm_head.weight"], hf["lm_head.weight"].T)
    assert all(a.flags.c_contiguous and a.dtype == np.float32 for a in pd.values())


@pytest.mark.unit
def test_rotary_buffers_are_dropped_and_foreign_names_refused_together():
    hf = hf_state(qkv_bias=False)
    hf["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
    assert "llama.layers.0.self_attn.rotary_emb.inv_freq" not in hf_to_paddlenlp(hf)
    hf["transformer.h.0.attn.c_attn.weight"] = np.ones((2, 2), np.float32)
    hf["model.layers.0.mlp.fc1.weight"] = np.ones((2, 2), np.float32)
    with pytest.raises(BadInputError, match=r"2 state-dict name\(s\).*c_attn.*fc1"):
        hf_to_paddlenlp(hf)


@pytest.mark.unit
def test_a_one_dimensional_linear_weight_is_refused():
    hf = hf_state(qkv_bias=False)
    hf["model.layers.0.mlp.up_proj.weight"] = np.ones(5, np.float32)
    with pytest.raises(BadInputError, match="up_proj.*2-D"):
        hf_to_paddlenlp(hf)


CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import paddle
    from paddlenlp.transformers import LlamaConfig, LlamaForCausalLM
    cfg, path = json.loads(sys.argv[1]), sys.argv[2]
    sd = dict(np.load(path))
    model = LlamaForCausalLM(LlamaConfig(**cfg, tie_word_embeddings=False, use_flash_attention=False,
                                         use_fused_rms_norm=False, use_fused_rope=False))
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in sd.items()})
    x = np.random.default_rng(2).normal(size=(3, cfg["hidden_size"])).astype("float32")
    lin = model.llama.layers[1].mlp.gate_proj
    y = lin(paddle.to_tensor(x)).numpy()
    same = {k: bool(np.array_equal(model.state_dict()[k].numpy(), sd[k])) for k in sd if k in own}
    print(json.dumps({"own": own, "loaded_equal": same, "gate_out": y.tolist(), "x": x.tolist()}))
""")


def test_the_mapped_state_loads_into_a_paddlenlp_llama(tmp_path):
    """The one test that needs Paddle (in a child process): every name of PaddleNLP's own LlamaForCausalLM is
    produced with its shape, loads, and its gate_proj computes HF's x @ W.T."""
    pytest.importorskip("paddlenlp")
    hf = hf_state(qkv_bias=False)
    pd = hf_to_paddlenlp(hf)
    np.savez(tmp_path / "sd.npz", **pd)
    out = run_python("-c", CHILD, json.dumps(CFG), str(tmp_path / "sd.npz"), stdout=True)
    res = json.loads(out.strip().splitlines()[-1])
    assert {k: tuple(v) for k, v in res["own"].items()} == {k: v.shape for k, v in pd.items()}
    assert all(res["loaded_equal"].values())
    x = np.array(res["x"], np.float32)
    np.testing.assert_allclose(np.array(res["gate_out"]), x @ hf["model.layers.1.mlp.gate_proj.weight"].T,
                               rtol=1e-5, atol=1e-5)
