"""Adapters on the tiny random-weight LLaMA (GQA): a PaddleNLP LoRA merged before the export and a PTuning v2
prefix exported as cache rows, each held to PaddleNLP's own adapter model (LoRAModel / PrefixModelForCausalLM);
bad adapter input refused before any worker starts."""
import contextlib
import io
import json
import shutil

import numpy as np
import pytest

from paddle2ort.cli import main
from paddle2ort.convert.llm import LLMConvertConfig, convert_llm
from paddle2ort.convert.llm.adapters import PRE_CACHES, PREFIX_CONFIG
from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.generation import GenerationConfig, generate
from paddle2ort.runtime.llm import TextGenerator
from paddle2ort.runtime.manifest import load_bundle
from conftest import run_python
from near_tie import clear_divergences, greedy_reference, same_up_to_a_near_tie

PROMPTS = ["The capital of France is", "def f(x):", "Once upon a time"]
NEW_TOKENS = 8

# PaddleNLP's own peft classes make the adapters, and their greedy continuations of PROMPTS (LoRAModel unmerged,
# PrefixModelForCausalLM; full recompute, one prompt at a time: convert.llm.eager.greedy's loop, with each step's
# top-2 margin and the logits' range for the near-tie rule) are the references. In a child process: Paddle stays out
# of the test process.
MAKE_ADAPTERS = r"""
import json, sys, numpy as np, paddle
from paddlenlp.transformers import LlamaForCausalLM
from paddlenlp.peft import LoRAConfig, LoRAModel, PrefixConfig, PrefixModelForCausalLM
from paddlenlp.peft.prefix.utils import llama_postprocess_past_key_value
from paddle2ort.tokenization.bpe import BPETokenizer
def greedy(model, ids, n):
    seq, margins, spread = list(ids), [], 0.0
    with paddle.no_grad():
        for _ in range(n):
            lg = model(paddle.to_tensor([seq]), return_dict=False)
            lg = (lg[0] if isinstance(lg, (tuple, list)) else lg)[0, -1].numpy()
            top = np.sort(lg)
            margins.append(float(top[-1] - top[-2]))
            spread = max(spread, float(top[-1] - top[0]))
            seq.append(int(lg.argmax()))
    return {"ids": seq[len(ids):], "margins": margins, "range": spread}
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
    run_python("-c", MAKE_ADAPTERS, str(src / "model"), str(src / "tokenizer"), str(root), str(NEW_TOKENS),
               json.dumps(PROMPTS))
    out = {"src": src, "root": root, "refs": json.loads((root / "refs.json").read_text())}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):           # the LoRA one through the CLI: what it shows
        assert main(["-q", "convert-llm", str(src / "model"), "--tokenizer", str(src / "tokenizer"),
                     "-o", str(root / "b_lora"), "--lora", str(root / "lora")]) == 0
    out["lora"] = (root / "lora", root / "b_lora", load_bundle(root / "b_lora").manifest)
    out["cli"] = printed.getvalue()
    res = convert_llm(LLMConvertConfig(source=src / "model", tokenizer=src / "tokenizer", output=root / "b_prefix",
                                       prefix=root / "prefix"))
    out["prefix"] = (root / "prefix", root / "b_prefix", res.manifest)
    return out


@pytest.mark.parametrize("kind", ["lora", "prefix"])
def test_greedy_equals_paddlenlp_with_the_adapter(adapters, kind):
    """Batched (left-padded) and one at a time, the bundle's greedy tokens are PaddleNLP's adapter model's
    (LoRAModel unmerged / PrefixModelForCausalLM, full recompute): our merge / prefix rows, not theirs; up to a
    near-tie of PaddleNLP's (tests/near_tie.py)."""
    gen = TextGenerator(adapters[kind][1])
    ids = [gen.tokenizer.encode(p) for p in PROMPTS]
    refs = adapters["refs"][kind]
    want, margins = [r["ids"] for r in refs], [r["margins"] for r in refs]
    # the adapter's gate holds our logits to PaddleNLP's within 1e-4 (max_rel_diff): 1e-3 of the range is plenty
    eps = 1e-3 * max(r["range"] for r in refs)
    cfg = GenerationConfig(max_new_tokens=NEW_TOKENS)
    for got in (generate(gen.model, ids, cfg, gen.tokenizer.pad_token_id),
                [generate(gen.model, [i], cfg, gen.tokenizer.pad_token_id)[0] for i in ids]):
        assert not clear_divergences(got, want, margins, eps), (got, want)
    base = TextGenerator(adapters["prefix"][1]).model          # the prefix bundle without its rows: the base model
    base.set_prefix(None)
    assert generate(base, ids, cfg, gen.tokenizer.pad_token_id) != want          # the adapter changes the output


def test_manifest_records_the_adapters_and_the_cli_shows_them(adapters):
    lora_dir, _, m = adapters["lora"]
    a = m.extra["adapter"]
    assert "adapter lora: LoRA r=4 alpha=8 (scaling 2), merged into 6 modules; vs PaddleNLP max_rel_diff" in \
        adapters["cli"]
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


def test_prefix_rows_join_a_running_batch_like_alone(adapters):
    """With the prefix rows, rows joining a running batch (the server's in-flight batching) get what they get
    alone; without them the bundle generates otherwise."""
    from paddle2ort.runtime.generation import Generator
    _, bundle, _ = adapters["prefix"]
    gen = TextGenerator(bundle)
    dec, pad = gen.model, gen.tokenizer.pad_token_id
    ids = [gen.tokenizer.encode(p) for p in PROMPTS]
    cfg = GenerationConfig(max_new_tokens=6)
    # one graph, other batches (a row joins one of three) and other shapes: 1e-3 of the logit range
    refs = [greedy_reference(dec, [i], cfg, pad, 1e-3) for i in ids]
    alone = [w[0] for w, _, _ in refs]                                     # generate(dec, [i], cfg, pad)[0]
    g = Generator(dec, cfg, pad)
    g.add_rows(ids[:1])
    g.generate_next_token()
    g.add_rows(ids[1:])
    while not g.is_done():
        g.generate_next_token()
    assert all(same_up_to_a_near_tie(r, w[0], m[0], eps) for r, (w, m, eps) in zip(g.results(), refs)), \
        (g.results(), alone)
    dec.set_prefix(None)
    assert [generate(dec, [i], cfg, pad)[0] for i in ids] != alone


def test_bad_adapters_exit_2_before_any_worker(adapters, tmp_path, capsys, monkeypatch):
    """Every bad adapter exits 2 naming the problem and the fix before any worker starts (nothing written)."""
    import paddle2ort.convert.llm.api as llm_api

    def no_worker(task, *_):
        raise AssertionError(f"worker {task!r} started before the adapter was checked")

    monkeypatch.setattr(llm_api, "run_worker", no_worker)
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


# ----------------------------------------------------------------------------- no Paddle
class _Recorder:
    """A graph-contract forward that records its inputs: logits favour token (position + cached rows) % 7."""

    num_layers, kv_heads, head_dim, vocab_size, cache_dtype = 1, 1, 2, 7, np.float32

    def __init__(self):
        self.calls = []

    def __call__(self, ids, mask, pos, past):
        self.calls.append((ids.copy(), mask.copy(), pos.copy(), past.copy()))
        b, s = ids.shape
        logits = np.zeros((b, s, self.vocab_size), np.float32)
        logits[np.arange(b)[:, None], np.arange(s)[None], (pos + past.shape[0]) % self.vocab_size] = 1.0
        return logits, np.ones((s, 1, 2, b, 1, 2), np.float32)


@pytest.mark.unit
def test_prefix_rows_lead_every_row_masked_in_and_take_no_positions():
    from paddle2ort.runtime.generation import CacheDecoder
    from paddle2ort.runtime.prefix import to_cache_rows
    fwd = _Recorder()
    dec = CacheDecoder.wrap(fwd)
    pre = np.arange(1 * 2 * 1 * 3 * 2, dtype=np.float32).reshape(1, 2, 1, 3, 2) + 1     # [L, 2, KVH, P=3, D]
    dec.set_prefix(to_cache_rows(pre))
    generate(dec, [[4, 5], [6]], GenerationConfig(max_new_tokens=2), pad_id=0)
    ids, mask, pos, past = fwd.calls[0]                                   # the prefill, left-padded
    rows = to_cache_rows(pre)[:, :, :, 0]                                 # [P, L, 2, KVH, D]
    assert past.shape[0] == 3 and all(np.array_equal(past[:, :, :, b], rows) for b in (0, 1))   # every row's
    assert np.array_equal(rows[1, 0, 1, 0], pre[0, 1, 0, 1])             # row 1 = prefix token 1 of pre_caches
    assert mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 1]] and pos.tolist() == [[0, 1], [0, 0]]
    _, mask, pos, past = fwd.calls[1]                                     # a step: positions go on from the prompt
    assert past.shape[0] == 5 and pos.tolist() == [[2], [1]] and mask.shape == (2, 6)
    dec.set_prefix(None)
    fwd.calls.clear()
    generate(dec, [[4, 5]], GenerationConfig(max_new_tokens=1), pad_id=0)
    assert fwd.calls[0][3].shape[0] == 0                                  # no prefix: an empty cache again
    with pytest.raises(BadInputError, match="prefix rows are"):
        dec.set_prefix(np.zeros((3, 2, 2, 1, 1, 2), np.float32))          # 2 layers for a 1-layer decoder


@pytest.mark.unit
def test_bundle_prefix_file_and_manifest_entry_are_checked(tmp_path):
    from paddle2ort.runtime.errors import BundleError
    from paddle2ort.runtime.manifest import _check_adapter
    from paddle2ort.runtime.prefix import load_prefix
    llm = {"num_layers": 2, "kv_heads": 2, "head_dim": 16}
    np.save(tmp_path / "ok.npy", np.zeros((2, 2, 2, 5, 16), np.float32))
    assert load_prefix(tmp_path / "ok.npy", llm).shape == (5, 2, 2, 1, 2, 16)
    np.save(tmp_path / "bad.npy", np.zeros((3, 2, 2, 5, 16), np.float32))
    with pytest.raises(BundleError, match="not a prefix cache"):
        load_prefix(tmp_path / "bad.npy", llm)
    with pytest.raises(BundleError, match="extra.adapter.kind"):
        _check_adapter({"adapter": {"kind": "ia3", "sha256": {}}})
    with pytest.raises(BundleError, match="extra.adapter.file"):
        _check_adapter({"adapter": {"kind": "prefix", "sha256": {}, "file": "../x.npy", "file_sha256": "0" * 64,
                                    "num_prefix_tokens": 5}})


def _pickle(path, state):
    """paddle.save's format for a state dict: a pickle of NumPy arrays."""
    import pickle
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=4)


@pytest.mark.unit
def test_adapter_files_are_checked_without_paddle(tmp_path):
    """The parent reads paddle.save files with NumPy only (any other class in the pickle is refused), merges LoRA
    as W + A @ B * scaling (rslora: alpha / sqrt(r)), and names each mismatch with its fix."""
    import pickle

    from paddle2ort.convert.llm.adapters import check_lora, check_prefix, merge_lora
    base = tmp_path / "base"
    cfg = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 1, "num_attention_heads": 2,
           "num_key_value_heads": 1, "hidden_size": 8}
    rng = np.random.default_rng(0)
    w = {"llama.layers.0.self_attn.q_proj.weight": rng.normal(size=(8, 8)).astype(np.float32),
         "llama.layers.0.self_attn.k_proj.weight": rng.normal(size=(8, 4)).astype(np.float32)}
    _pickle(base / "model_state.pdparams", w)
    (base / "config.json").write_text(json.dumps(cfg))
    lora = tmp_path / "lora"
    a, b = rng.normal(size=(8, 2)).astype(np.float32), rng.normal(size=(2, 8)).astype(np.float32)
    _pickle(lora / "lora_model_state.pdparams", {"llama.layers.0.self_attn.q_proj.lora_A": a,
                                                 "llama.layers.0.self_attn.q_proj.lora_B": b})
    (lora / "lora_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4, "target_modules": ".*q_proj",
                                                       "rslora": True}))
    ad = check_lora(lora, base)
    assert ad.scaling == pytest.approx(4 / np.sqrt(2)) and ad.modules == ("llama.layers.0.self_attn.q_proj",)
    from safetensors.numpy import load_file
    merged = load_file(str(merge_lora(ad, base, tmp_path / "merged") / "model.safetensors"))
    np.testing.assert_allclose(merged["llama.layers.0.self_attn.q_proj.weight"],
                               w["llama.layers.0.self_attn.q_proj.weight"] + a @ b * ad.scaling, rtol=1e-5, atol=1e-5)
    assert np.array_equal(merged["llama.layers.0.self_attn.k_proj.weight"], w["llama.layers.0.self_attn.k_proj.weight"])
    nan_b = b.copy()
    nan_b[0, 0] = np.nan                 # a diverged adapter: refused here, not at the gate naming a temp file
    _pickle(lora / "lora_model_state.pdparams", {"llama.layers.0.self_attn.q_proj.lora_A": a,
                                                 "llama.layers.0.self_attn.q_proj.lora_B": nan_b})
    with pytest.raises(BadInputError, match="q_proj.lora_B hold NaN or Inf"):
        check_lora(lora, base)
    _pickle(lora / "lora_model_state.pdparams", {"llama.layers.0.self_attn.q_proj.lora_A": a,
                                                 "llama.layers.0.self_attn.q_proj.lora_B": b})
    (lora / "lora_config.json").write_text(json.dumps({"r": 2, "target_modules": ".*q_proj", "pissa": True}))
    with pytest.raises(BadInputError, match="pissa is set"):
        check_lora(lora, base)

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    (lora / "lora_config.json").write_text(json.dumps({"r": 2, "target_modules": ".*q_proj"}))
    with open(lora / "lora_model_state.pdparams", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(BadInputError, match="builtins.print, which is not part of a NumPy array"):
        check_lora(lora, base)
    (lora / "lora_model_state.pdparams").rename(lora / "lora_model_state.tp00.pdparams")
    with pytest.raises(BadInputError, match="merge_tensor_parallel=True"):
        check_lora(lora, base)

    prefix = tmp_path / "prefix"         # with the projection MLP: embedding [P, KVH*D], 2 linears
    pc = {"num_prefix_tokens": 3, "num_attention_heads": 2, "multi_query_group_num": 1, "num_hidden_layers": 1,
          "hidden_size": 8, "prefix_projection": True, "prefix_projection_hidden_size": 5}
    (prefix / "prefix_config.json").parent.mkdir()
    (prefix / "prefix_config.json").write_text(json.dumps(pc))
    good = {"0.weight": np.zeros((3, 4)), "1.weight": np.zeros((4, 5)), "1.bias": np.zeros(5),
            "3.weight": np.zeros((5, 8)), "3.bias": np.zeros(8)}
    _pickle(prefix / "prefix_model_state.pdparams", good)
    assert check_prefix(prefix, cfg, "llama", fused=False).pre_caches_shape == (1, 2, 1, 3, 4)
    _pickle(prefix / "prefix_model_state.pdparams", {**good, "3.weight": np.zeros((5, 16))})
    with pytest.raises(BadInputError, match="3.weight is \\[5, 16\\]"):
        check_prefix(prefix, cfg, "llama", fused=False)
    _pickle(prefix / "prefix_model_state.pdparams", good)
    np.save(prefix / "pre_caches.npy", np.zeros((1, 2, 1, 4, 4), np.float32))
    with pytest.raises(BadInputError, match="pre_caches.npy is \\[1, 2, 1, 4, 4\\]"):
        check_prefix(prefix, cfg, "llama", fused=False)
    with pytest.raises(BadInputError, match="covers the llama, mistral, qwen2 families"):
        check_prefix(prefix, cfg, "gpt", fused=False)


@pytest.mark.unit
def test_perplexity_refuses_what_it_would_mismeasure(tmp_path):
    """Perplexity windows run without prefix cache rows and the Paddle row is the base without its adapter: exit 2
    naming why, instead of a figure of something else."""
    from paddle2ort.benchmarks.perplexity import PerplexityConfig, check_adapter
    from paddle2ort.runtime.errors import BadInputError
    check_adapter(None, PerplexityConfig(bundle=tmp_path, paddle_model=tmp_path))
    check_adapter({"kind": "lora"}, PerplexityConfig(bundle=tmp_path))             # merged: measured as shipped
    with pytest.raises(BadInputError, match="prefix"):
        check_adapter({"kind": "prefix"}, PerplexityConfig(bundle=tmp_path))
    with pytest.raises(BadInputError, match="--paddle-model"):
        check_adapter({"kind": "lora"}, PerplexityConfig(bundle=tmp_path, paddle_model=tmp_path))
