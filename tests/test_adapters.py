"""Adapters on the tiny random-weight LLaMA (GQA): a PaddleNLP LoRA merged before the export and a PTuning v2
prefix exported as cache rows, each held to PaddleNLP's own adapter model (LoRAModel / PrefixModelForCausalLM);
bad adapter input refused before any worker starts."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from paddle2ort.cli import main
from paddle2ort.convert.llm import LLMConvertConfig, convert_llm
from paddle2ort.convert.llm.adapters import PRE_CACHES, PREFIX_CONFIG
from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.generation import GenerationConfig, generate
from paddle2ort.runtime.llm import TextGenerator

PROMPTS = ["The capital of France is", "def f(x):", "Once upon a time"]
NEW_TOKENS = 8

# PaddleNLP's own peft classes make the adapters, and their greedy continuations of PROMPTS (LoRAModel unmerged,
# PrefixModelForCausalLM; full recompute, one prompt at a time) are the references. In a child process: Paddle
# stays out of the test process.
MAKE_ADAPTERS = r"""
import json, sys, paddle
from paddlenlp.transformers import LlamaForCausalLM
from paddlenlp.peft import LoRAConfig, LoRAModel, PrefixConfig, PrefixModelForCausalLM
from paddlenlp.peft.prefix.utils import llama_postprocess_past_key_value
from paddle2ort.convert.llm.eager import greedy
from paddle2ort.tokenization.bpe import BPETokenizer
src, tok, out, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
prompts = [BPETokenizer.load(tok).encode(p) for p in json.loads(sys.argv[5])]
paddle.set_device("cpu")
paddle.seed(11)
lora = LoRAModel(LlamaForCausalLM.from_pretrained(src, dtype="float32"),
                 LoRAConfig(target_modules=[".*q_proj", ".*v_proj", ".*down_proj"], r=4, lora_alpha=8))
with paddle.no_grad():          # lora_B starts at 0 (a no-op adapter): give it weight, as training would
    for name, p in lora.model.named_parameters():
        if name.endswith("lora_B"):
            p.set_value(paddle.randn(p.shape) * 0.5)
lora.save_pretrained(out + "/lora")
lora.eval()                     # merge_weights is False: eval keeps the adapter's own forward (x @ A @ B * scaling)
refs = {"lora": [greedy(lora, ids, n) for ids in prompts]}
base = LlamaForCausalLM.from_pretrained(src, dtype="float32")
pre = PrefixModelForCausalLM(base, PrefixConfig(num_prefix_tokens=5, num_attention_heads=4, multi_query_group_num=2,
                                                num_hidden_layers=2, hidden_size=64), llama_postprocess_past_key_value)
with paddle.no_grad():
    for p in pre.prefix_encoder.parameters():
        p.set_value(paddle.randn(p.shape) * 2.0)
pre.eval()
pre.save_pretrained(out + "/prefix")
refs["prefix"] = [greedy(pre, ids, n) for ids in prompts]
json.dump(refs, open(out + "/refs.json", "w"))
"""


@pytest.fixture(scope="module")
def adapters(tiny_models, tmp_path_factory):
    """The tiny LLaMA, a LoRA and a prefix adapter of it, and a bundle converted with each."""
    src = tiny_models("llama")
    root = tmp_path_factory.mktemp("adapters")
    subprocess.run([sys.executable, "-c", MAKE_ADAPTERS, str(src / "model"), str(src / "tokenizer"), str(root),
                    str(NEW_TOKENS), json.dumps(PROMPTS)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out = {"src": src, "root": root, "refs": json.loads((root / "refs.json").read_text())}
    for kind in ("lora", "prefix"):
        res = convert_llm(LLMConvertConfig(source=src / "model", tokenizer=src / "tokenizer", output=root / f"b_{kind}",
                                           **{kind: root / kind}))
        out[kind] = (root / kind, root / f"b_{kind}", res.manifest)
    return out


@pytest.mark.parametrize("kind", ["lora", "prefix"])
def test_greedy_equals_paddlenlp_with_the_adapter(adapters, kind):
    """Batched (left-padded) and one at a time, the bundle's greedy tokens are PaddleNLP's adapter model's
    (LoRAModel unmerged / PrefixModelForCausalLM, full recompute): our merge / prefix rows, not theirs."""
    gen = TextGenerator(adapters[kind][1])
    ids = [gen.tokenizer.encode(p) for p in PROMPTS]
    want = adapters["refs"][kind]
    cfg = GenerationConfig(max_new_tokens=NEW_TOKENS)
    assert generate(gen.model, ids, cfg, gen.tokenizer.pad_token_id) == want
    assert [generate(gen.model, [i], cfg, gen.tokenizer.pad_token_id)[0] for i in ids] == want
    base = TextGenerator(adapters["prefix"][1]).model          # the prefix bundle without its rows: the base model
    base.set_prefix(None)
    assert generate(base, ids, cfg, gen.tokenizer.pad_token_id) != want          # the adapter changes the output


def test_manifest_records_the_adapters(adapters, capsys):
    lora_dir, _, m = adapters["lora"]
    a = m.extra["adapter"]
    assert (a["kind"], a["rank"], a["alpha"], a["scaling"], a["merged_modules"]) == ("lora", 4, 8.0, 2.0, 6)
    from paddle2ort.runtime.manifest import sha256_file
    assert a["sha256"] == {n: sha256_file(lora_dir / n) for n in ("lora_config.json", "lora_model_state.pdparams")}
    assert a["validation"]["passed"] and a["validation"]["max_rel_diff"] <= 1e-4
    prefix_dir, bundle, m = adapters["prefix"]
    p = m.extra["adapter"]
    assert (p["kind"], p["num_prefix_tokens"], p["file"]) == ("prefix", 5, "prefix/pre_caches.npy")
    assert set(p["sha256"]) == {"prefix_config.json", "prefix_model_state.pdparams", "pre_caches.npy"}
    assert p["validation"]["passed"] and "fused" not in m.extra
    # the shipped rows are PaddleNLP's pre_caches (its predictor's layout), and the gate's scenario ran on them
    np.testing.assert_allclose(np.load(bundle / p["file"]), np.load(prefix_dir / PRE_CACHES), rtol=1e-5, atol=1e-6)
    assert m.validation["fp32"]["passed"]


def test_prefix_rows_take_no_positions_and_join_like_alone(adapters):
    """The prefix is attended to and shifts no position: rows joining a running batch (the server's in-flight
    batching) get what they get alone, and a bundle without the prefix rows generates otherwise."""
    from paddle2ort.runtime.generation import Generator
    _, bundle, _ = adapters["prefix"]
    gen = TextGenerator(bundle)
    dec, pad = gen.model, gen.tokenizer.pad_token_id
    ids = [gen.tokenizer.encode(p) for p in PROMPTS]
    cfg = GenerationConfig(max_new_tokens=6)
    alone = [generate(dec, [i], cfg, pad)[0] for i in ids]
    g = Generator(dec, cfg, pad)
    g.add_rows(ids[:1])
    g.generate_next_token()
    g.add_rows(ids[1:])
    while not g.is_done():
        g.generate_next_token()
    assert g.results() == alone
    dec.set_prefix(None)
    assert [generate(dec, [i], cfg, pad)[0] for i in ids] != alone


def test_cli_convert_llm_with_adapter_and_bad_adapters(adapters, tmp_path, capsys):
    """Every bad adapter exits 2 naming the problem before any worker starts (nothing written)."""
    src, root = adapters["src"], adapters["root"]
    base = ["-q", "convert-llm", str(src / "model"), "--tokenizer", str(src / "tokenizer"), "-o", str(tmp_path / "b")]

    def bad(adapter_dir, flag="--lora"):
        assert main(base + [flag, str(adapter_dir)]) == 2
        assert not (tmp_path / "b").exists()
        return capsys.readouterr().err

    lora, prefix = root / "lora", root / "prefix"
    assert "match no module" in bad(_edit_json(lora, tmp_path / "l1", "lora_config.json", target_modules=[".*qkv"]))
    assert "rank mismatch" in bad(_edit_json(lora, tmp_path / "l2", "lora_config.json", r=8))
    d = _copy(lora, tmp_path / "l3")
    (d / "lora_model_state.pdparams").unlink()
    assert "no lora_model_state.pdparams" in bad(d)
    v = "llama.layers.1.self_attn.v_proj"
    assert "missing key" in bad(_edit_state(lora, tmp_path / "l4", drop=[v + ".lora_B"]))
    assert "missing keys" in bad(_edit_state(lora, tmp_path / "l5", drop=[v + ".lora_A", v + ".lora_B"]))
    assert "trained on another model" in bad(_edit_json(prefix, tmp_path / "p1", PREFIX_CONFIG, num_hidden_layers=3),
                                             "--prefix")
    assert "multi_query_group_num=2" in bad(_edit_json(prefix, tmp_path / "p2", PREFIX_CONFIG,
                                                       multi_query_group_num=None), "--prefix")
    d = _edit_state(lora, tmp_path / "l6", **{"llama.layers.0.self_attn.q_proj.lora_A": np.zeros((32, 4), np.float32)})
    assert "wrong base model" in bad(d)
    assert main(base + ["--lora", str(lora), "--prefix", str(prefix)]) == 2          # exclusive options
    capsys.readouterr()
    with pytest.raises(BadInputError, match="not both"):
        convert_llm(LLMConvertConfig(source=src / "model", tokenizer=src / "tokenizer", output=tmp_path / "b",
                                     lora=lora, prefix=prefix))
    with pytest.raises(BadInputError, match="leave out --fused"):
        convert_llm(LLMConvertConfig(source=src / "model", tokenizer=src / "tokenizer", output=tmp_path / "b",
                                     prefix=prefix, fused=("fp32",)))


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_json(src, dst, name, **changes):
    _copy(src, dst)
    cfg = json.loads((dst / name).read_text())
    cfg.update(changes)
    (dst / name).write_text(json.dumps(cfg))
    return dst


def _edit_state(src, dst, drop=(), **arrays):
    """A copy of a LoRA dir whose weights file (paddle.save's pickle of NumPy arrays) lacks `drop` and has
    `arrays` put in."""
    import pickle
    _copy(src, dst)
    path = dst / "lora_model_state.pdparams"
    with open(path, "rb") as f:
        state = pickle.load(f)
    for k in drop:
        del state[k]
    state.update(arrays)
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=4)
    return dst
