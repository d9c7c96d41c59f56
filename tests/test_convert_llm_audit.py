"""`paddle2ort convert-llm` with a hostile new user's inputs: a config.json whose geometry does not divide, holds
NaN, a string for a boolean or a rope scaling the export does not compute; weights that are truncated, of another
depth or vocabulary than the config, a safetensors file PaddleNLP 2.8.1 cannot open (no metadata, bfloat16), a
broken shard index, a tensor missing or of the wrong shape; a tokenizer directory missing a file or with a chat
template that cannot render; --block-size / --threshold accepted and then ignored. Before, these crashed the Paddle
worker with a traceback (exit 1/4) or converted and passed the gate. Each is now one message, exit 2, no traceback,
the work directory unchanged; all but the two the worker finds are refused before any Paddle worker starts.

Cases run in this process through test_bad_inputs' runner (its W world, snapshot and TMPDIR check)."""
from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest

from test_bad_inputs import W, refused_up_front, shared  # noqa: F401 (fixture)

import paddle2ort.convert.llm.api as llm_api
from paddle2ort.runtime.errors import BadInputError

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152, "hidden_size": 64,
         "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False}


def cllm(w: W, src, *extra, tok=None):
    return ["convert-llm", str(src), "-o", str(w.p("out")), "--tokenizer", str(tok or w.llm_tok()), *extra]


def no_worker(monkeypatch):
    def refuse(task, *a, **k):
        raise AssertionError(f"a Paddle worker ({task}) started before the input was refused")
    monkeypatch.setattr(llm_api, "run_worker", refuse)


def refused(argv, fragment, shared, tmp_path, monkeypatch, capsys, worker: bool = False):  # noqa: F811
    if not worker:
        no_worker(monkeypatch)
    return refused_up_front(argv, fragment, shared, tmp_path, monkeypatch, capsys)


# ------------------------------------------------------------------------- config.json: refused from the file alone
def edited(**changes) -> str:
    cfg = {**LLAMA, **changes}
    return json.dumps({k: v for k, v in cfg.items() if v is not ...})


CONFIGS = {  # id: (config.json text, fragment of the message)
    "hidden-not-divisible": (edited(hidden_size=63), "hidden_size 63 is not divisible by num_attention_heads 4"),
    "kv-heads-not-dividing": (edited(num_key_value_heads=3), "not a multiple of num_key_value_heads 3"),
    "vocab-zero": (edited(vocab_size=0), "vocab_size is 0"),
    "layers-negative": (edited(num_hidden_layers=-1), "num_hidden_layers is -1"),
    "heads-float": (edited(num_attention_heads=4.0), "num_attention_heads is 4.0"),
    "eps-nan": (edited(rms_norm_eps=float("nan")), "rms_norm_eps is nan"),      # json.dumps writes NaN
    "eps-negative": (edited(rms_norm_eps=-1e-5), "rms_norm_eps is -1e-05"),
    "rope-theta-zero": (edited(rope_theta=0), "rope_theta is 0"),
    "tie-as-string": (edited(tie_word_embeddings="false"), "tie_word_embeddings is 'false'"),
    "rope-scaling-yarn": (edited(rope_scaling={"type": "yarn", "factor": 4.0}), "rope_scaling of type 'yarn'"),
    "rope-scaling-string": (edited(rope_scaling="linear"), "rope_scaling is 'linear'"),
    "rope-llama3-incomplete": (edited(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "low_freq_factor"),
    "rope-dynamic-ntk": (edited(rope_scaling_type="dynamic_ntk", rope_scaling_factor=2.0), "dynamic_ntk"),
    "rope-type-unknown": (edited(rope_scaling_type="su"), "rope_scaling_type 'su'"),
    "gpt-with-llama3-rope": (json.dumps({"architectures": ["GPTForCausalLM"], "vocab_size": 49152,
                                         "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                          "high_freq_factor": 4.0,
                                                          "original_max_position_embeddings": 64}}),
                             "for the gpt family"),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_contradictory_config_is_refused_before_any_worker(case, shared, tmp_path, monkeypatch, capsys):
    """Before: a traceback from the worker (exit 4: reshape / negative dimensions; exit 1: onnxruntime refusing the
    NaN epsilon), or a bundle that passed the gate with the scaling or the string ignored."""
    text, fragment = CONFIGS[case]
    refused(lambda w: cllm(w, w.llm_src(config=text)), fragment, shared, tmp_path, monkeypatch, capsys)


# ------------------------------------------------------------------------- weights: read as names and shapes only
def real_src(w: W, config: dict | None = None, safetensors: bool = False, shards: int = 0, edit=None):
    """A copy of the tiny LLaMA checkpoint: its config changed by `config`, its weights re-saved as (sharded)
    safetensors (format "np", as PaddleNLP writes them) with `edit(state, path) -> (state, metadata)` applied."""
    d = w.p("src")
    shutil.copytree(w.shared.model("llama") / "model", d)
    if config:
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, **config}))
    if safetensors:
        from safetensors.numpy import save_file

        from paddle2ort.convert.llm.adapters import load_weights
        state, meta = load_weights(d), {"format": "np"}
        (d / "model_state.pdparams").unlink()
        if edit:
            state, meta = edit(state, meta)
        if not shards:
            save_file(state, str(d / "model.safetensors"), metadata=meta)
        else:
            names, index = sorted(state), {}
            for i in range(shards):
                part = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
                chunk = names[i::shards]
                save_file({k: state[k] for k in chunk}, str(d / part), metadata=meta)
                index.update({k: part for k in chunk})
            (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    return d


def _truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep(len(data))])


def _bf16(state, meta):
    import ml_dtypes
    return {k: v.astype(ml_dtypes.bfloat16) for k, v in state.items()}, meta


def _truncated_pdparams(w):
    d = real_src(w)
    _truncate(d / "model_state.pdparams", lambda n: n // 2)
    return d


def _truncated_safetensors(w):
    d = real_src(w, safetensors=True)
    _truncate(d / "model.safetensors", lambda n: n - 1000)
    return d


def _index_not_json(w):
    d = real_src(w, safetensors=True, shards=2)
    (d / "model.safetensors.index.json").write_text("{not json")
    return d


def _shard_missing(w):
    d = real_src(w, safetensors=True, shards=2)
    (d / "model-00002-of-00002.safetensors").unlink()
    return d


WEIGHTS = {  # id: (source maker, fragment)
    "config-fewer-layers": (lambda w: real_src(w, {"num_hidden_layers": 1}), "hold layers 0..1"),
    "config-more-layers": (lambda w: real_src(w, {"num_hidden_layers": 3}), "num_hidden_layers 3"),
    "config-other-vocab": (lambda w: real_src(w, {"vocab_size": 50000}), "has 49152 rows"),
    "pdparams-truncated": (_truncated_pdparams, "model_state.pdparams is not a state dict"),
    "safetensors-truncated": (_truncated_safetensors, "model.safetensors is truncated"),
    "safetensors-no-metadata": (lambda w: real_src(w, safetensors=True, edit=lambda s, m: (s, None)),
                                "no metadata format"),
    "safetensors-torch-metadata": (lambda w: real_src(w, safetensors=True, edit=lambda s, m: (s, {"format": "pt"})),
                                   "metadata format 'pt'"),
    "safetensors-bf16": (lambda w: real_src(w, safetensors=True, edit=_bf16), "bfloat16"),
    "shard-index-not-json": (_index_not_json, "is not json"),
    "shard-missing": (_shard_missing, "model-00002-of-00002.safetensors"),
}


@pytest.mark.parametrize("case", list(WEIGHTS))
def test_damaged_or_mismatched_weights_are_refused_before_any_worker(case, shared, tmp_path, monkeypatch, capsys):
    """Before: exit 4 with Paddle's or safetensors' error (paddle.load can not parse, MetadataIncompleteBuffer,
    "'set' object has no attribute 'get'", a JSONDecodeError, FileNotFoundError, "memory's size is 0"), or, for a
    config with fewer layers than the weights, a bundle of the truncated model that passed the gate (exit 0)."""
    make, fragment = WEIGHTS[case]
    refused(lambda w: cllm(w, make(w)), fragment, shared, tmp_path, monkeypatch, capsys)


def _drop(name):
    return lambda state, meta: ({k: v for k, v in state.items() if k != name}, meta)


def _reshape(name, shape):
    return lambda state, meta: ({**state, name: np.zeros(shape, np.float32)}, meta)


@pytest.mark.parametrize("edit, fragment", [
    (_drop("llama.layers.1.mlp.up_proj.weight"), "it lacks llama.layers.1.mlp.up_proj.weight"),
    (_reshape("llama.layers.1.mlp.up_proj.weight", (64, 96)), "llama.layers.1.mlp.up_proj.weight [64, 96] "
                                                               "(config.json: [64, 128])"),
], ids=["tensor-missing", "tensor-wrong-shape"])
def test_weights_that_do_not_fill_the_model_are_exit_2_from_the_worker(edit, fragment, shared, tmp_path, monkeypatch,
                                                                        capsys):
    """PaddleNLP's from_pretrained logs what it could not place and goes on; the export then failed with "Tensor's
    dimension is out of bound ... memory's size is 0" or a broadcast error (exit 4). Now the worker names the
    tensor (exit 2)."""
    refused(lambda w: cllm(w, real_src(w, safetensors=True, edit=edit), "--default-graph", "generic"), fragment,
            shared, tmp_path, monkeypatch, capsys, worker=True)


# ------------------------------------------------------------------------------------------------------ tokenizer
def _tok_without(w, name):
    d = w.llm_tok()
    (d / name).unlink()
    return d


def _tok_with_template(w, template):
    d = w.llm_tok()
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": template}))
    return d


@pytest.mark.parametrize("make, fragment", [
    (lambda w: _tok_without(w, "tokenizer_config.json"), "has no tokenizer_config.json"),
    (lambda w: _tok_without(w, "tokenizer.json"), "has no tokenizer.json"),
    (lambda w: _tok_with_template(w, "{% for m in messages %}{{ m.content "), "chat_template"),
    (lambda w: _tok_with_template(w, "{{ messages[0].nope.deeper }}"), "chat_template"),
], ids=["no-config", "no-tokenizer-json", "template-syntax", "template-undefined"])
def test_tokenizer_directory_problems_name_the_option_and_the_file(make, fragment, shared, tmp_path, monkeypatch,
                                                                   capsys):
    """Before: a missing file said "re-create the bundle" (no bundle is involved), and a chat template that cannot
    render shipped in a bundle whose `generate --chat` then failed."""
    out = refused(lambda w: cllm(w, real_src(w), tok=make(w)), fragment, shared, tmp_path, monkeypatch, capsys)
    assert "re-create the bundle" not in out
    assert "--tokenizer" in out or "tokenizer_config.json" in out


# ------------------------------------------------------------------------------------------ -o inside an input
def _src_link(w):
    """-o through a symbolic link that points into the source folder."""
    src = w.llm_src(config=json.dumps(LLAMA))
    w.p("link").symlink_to(src, target_is_directory=True)
    return src, w.p("link") / "bundle"


@pytest.mark.parametrize("where, fragment", [
    (lambda w, src, tok: src / "bundle", "is inside the source model folder"),
    (lambda w, src, tok: src / "a" / "b", "is inside the source model folder"),
    (lambda w, src, tok: src, "is the source model folder"),
    (lambda w, src, tok: tok / "bundle", "is inside the --tokenizer folder"),
    (None, "is inside the source model folder"),
], ids=["in-src", "deep-in-src", "is-src", "in-tokenizer", "through-a-link"])
def test_output_inside_an_input_folder_is_refused_before_any_worker(where, fragment, shared, tmp_path, monkeypatch,
                                                                     capsys):
    """Before: -o SRC/bundle was accepted: the export ran, the bundle landed in the user's model folder (its
    staging folder beside the weights during the run), and the next convert of SRC read a model folder that held
    a bundle. Now exit 2 before any worker, naming both paths and the fix, as release does for --report-dir."""
    seen = {}

    def argv(w):
        tok = w.p("tok")
        tok.mkdir()
        if where is None:
            src, out = _src_link(w)
        else:
            src = w.llm_src(config=json.dumps(LLAMA))
            out = where(w, src, tok)
        seen.update(src=src, tok=tok, out=out)
        return ["convert-llm", str(src), "-o", str(out), "--tokenizer", str(tok)]
    out = refused(argv, fragment, shared, tmp_path, monkeypatch, capsys)
    inside = seen["tok"] if "tokenizer" in fragment else seen["src"]
    assert f"-o {seen['out']} " in out and f" {inside}, which convert-llm reads" in out, out
    assert f"give a folder outside it, e.g. -o {inside.name}-bundle" in out, out


@pytest.mark.unit
def test_output_beside_the_inputs_passes_the_check(tmp_path):
    from paddle2ort.convert.bundle import check_outside_inputs
    (tmp_path / "src").mkdir()
    (tmp_path / "tok").mkdir()
    (tmp_path / "weights.bin").write_bytes(b"")
    inputs = (("the source model folder", tmp_path / "src"), ("the --tokenizer folder", tmp_path / "tok"),
              ("the --lora adapter folder", None), ("a file", tmp_path / "weights.bin"))
    for out in (tmp_path / "bundle", tmp_path / "src-bundle", tmp_path / "srcx" / "b", tmp_path / "weights.bin2"):
        check_outside_inputs(out, inputs)


# ------------------------------------------------------------------------------------------- options then ignored
@pytest.mark.parametrize("extra, fragment", [
    (["--block-size", "64"], "no int8 or int4 graph is built"),
    (["--precision", "fp16", "--block-size", "128"], "--block-size 128"),
    (["--threshold", "fp32.min_cosine=0.99", "--no-validate"], "--no-validate skips"),
    (["--threshold", "int4.min_cosine=0.5"], "--threshold names int4"),
], ids=["block-size-fp32", "block-size-fp16", "threshold-no-validate", "threshold-unbuilt"])
def test_options_that_would_be_ignored_are_refused(extra, fragment, shared, tmp_path, monkeypatch, capsys):
    refused(lambda w: cllm(w, w.llm_src(config=json.dumps(LLAMA)), *extra), fragment, shared, tmp_path, monkeypatch,
            capsys)


@pytest.mark.unit
def test_options_that_reach_a_graph_are_kept():
    from paddle2ort.cli.convert_llm import DEFAULT_BLOCK_SIZE, check_options

    def ns(**kw):
        base = dict(precision=("fp32",), fused=(), block_size=None, threshold=[], no_validate=False, lora=None,
                    prefix=None)
        return argparse.Namespace(**{**base, **kw})
    a = ns()
    check_options(a)
    assert a.block_size == DEFAULT_BLOCK_SIZE
    for kw in (dict(precision=("int8",), block_size=64), dict(fused=("int4",), block_size=128),
               dict(threshold=[("int8.min_cosine", 0.9)], precision=("fp32", "int8")),
               dict(threshold=[("fp16.min_cosine", 0.9)], fused=("fp16",)),
               dict(threshold=[("fp32.min_cosine", 0.9)], precision=("int8",), lora="adapter")):
        check_options(ns(**kw))


@pytest.mark.unit
def test_every_family_checkpoint_layout_passes_the_weight_checks(tmp_path):
    """The weight checks read each family's names: layer index under `layers.N.` or `h.N.`, the embedding's rows."""
    from safetensors.numpy import save_file

    from paddle2ort.convert.llm.source_checks import check_weights
    layouts = {"llama.layers.{i}.mlp.up_proj.weight": "llama.embed_tokens.weight",
               "transformer.h.{i}.attn.qkv_proj.weight": "transformer.wte.weight",
               "chatglm_v2.encoder.layers.{i}.mlp.w.weight": "chatglm_v2.embedding.word_embeddings.weight",
               "bloom.h.{i}.mlp.w.weight": "bloom.word_embeddings.weight"}
    for n, (layer, emb) in enumerate(layouts.items()):
        d = tmp_path / str(n)
        d.mkdir()
        state = {layer.format(i=i): np.zeros((2, 2), np.float32) for i in range(3)}
        state[emb] = np.zeros((10, 2), np.float32)
        state[emb.replace("weight", "layernorm.weight")] = np.zeros((2,), np.float32)
        save_file(state, str(d / "model.safetensors"), metadata={"format": "np"})
        check_weights(d, {"num_hidden_layers": 3, "vocab_size": 10})
        check_weights(d, {"n_layer": 3, "vocab_size": 10})
        with pytest.raises(BadInputError, match="hold layers 0..2"):
            check_weights(d, {"n_layer": 2, "vocab_size": 10})
        with pytest.raises(BadInputError, match="has 10 rows"):
            check_weights(d, {"n_layer": 3, "vocab_size": 11})


@pytest.mark.unit
def test_a_checkpoint_mismatch_is_bad_input_in_every_worker_task(tmp_path, monkeypatch):
    """The generate / logprobs / bench workers load the checkpoint too: its mismatch is exit 2 there as well (the
    worker's own KeyError mapping lives in the export tasks only)."""
    import json as _json

    from paddle2ort.convert import _worker
    from paddle2ort.convert.llm.eager import CheckpointMismatch

    def task(args):
        raise CheckpointMismatch("the checkpoint in m does not fit the model its config.json describes: it lacks w")

    monkeypatch.setitem(_worker.TASKS, "fake_llm_task", task)
    (tmp_path / "in.json").write_text("{}")
    assert _worker.main(["fake_llm_task", str(tmp_path / "in.json"), str(tmp_path / "out.json")]) == 1
    out = _json.loads((tmp_path / "out.json").read_text())
    assert out == {"ok": False, "kind": "bad_input",
                   "message": "the checkpoint in m does not fit the model its config.json describes: it lacks w"}
