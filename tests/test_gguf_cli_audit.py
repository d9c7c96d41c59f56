"""`paddle2ort import-gguf` and `zoo build` with a hostile new user's inputs: files that are no GGUF or a truncated
one, a tensor type gguf does not know or cannot dequantize, metadata of the wrong type or disagreeing with the
tensors, layers past block_count or tensors of another architecture (silently dropped before), special-token ids
outside the vocabulary, a split GGUF, -o inside the input, --overwrite over the user's own files; zoo names that are
unknown or misspelled, and a rebuild over files the build did not write or over another model's build. Each is one
message (exit 2, no traceback) before anything is dequantized or built, the work directory unchanged.

Cases run in this process through test_bad_inputs' runner (its W world, snapshot, TMPDIR check); the GGUFs are the
tiny ones of gguf_models.py, changed as each case needs while they are written."""
from __future__ import annotations

import functools
import json
import struct
from unittest import mock

import gguf
import numpy as np
import pytest

from gguf_models import train_bpe, write_gguf
from test_bad_inputs import TRACEBACK, W, refused_up_front, shared  # noqa: F401 (fixture)

from paddle2ort.cli import main

pytestmark = pytest.mark.unit
V = gguf.GGUFValueType


@functools.lru_cache(maxsize=None)
def bpe():
    return train_bpe()


def variant(path, arch: str = "llama", drop_keys=(), set_keys=None, drop_tensors=(), extra_tensors=None, **kw):
    """gguf_models.write_gguf with metadata keys dropped or set (key -> (value, type[, array item type])) and tensors
    dropped or added (name -> float32 array): the damaged and odd files a user meets."""
    writer = gguf.GGUFWriter
    add_kv, add_tensor, header = writer.add_key_value, writer.add_tensor, writer.write_header_to_file

    def kv(self, key, val, vtype, sub_type=None):
        if key not in drop_keys:
            add_kv(self, key, val, vtype, sub_type)

    def tensor(self, name, data, raw_shape=None, raw_dtype=None, tensor_endianess=None):
        if name not in drop_tensors:
            add_tensor(self, name, data, raw_shape=raw_shape, raw_dtype=raw_dtype)

    def write_header(self, *a, **k):
        for key, (val, vtype, *sub) in (set_keys or {}).items():
            self.kv_data[0][key] = gguf.GGUFValue(value=val, type=vtype, sub_type=sub[0] if sub else None)
        for name, data in (extra_tensors or {}).items():
            add_tensor(self, name, data)
        return header(self, *a, **k)

    with mock.patch.object(writer, "add_key_value", kv), mock.patch.object(writer, "add_tensor", tensor), \
            mock.patch.object(writer, "write_header_to_file", write_header):
        write_gguf(path, arch, tokenizer=bpe(), **kw)
    return path


def tiny(w: W, name: str = "m.gguf", **kw):
    return variant(w.p(name), **kw)


def retyped(w: W, tensor: str, type_id: int):
    """A GGUF whose tensor `tensor` is recorded with tensor type id `type_id` (the bytes as they were)."""
    path = tiny(w)
    data = bytearray(path.read_bytes())
    name = tensor.encode()
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, type_id)
    path.write_bytes(bytes(data))
    return path


def truncated(w: W, keep):
    path = tiny(w)
    data = path.read_bytes()
    path.write_bytes(data[:keep(len(data))])
    return path


def imp(path, w: W, *extra):
    return ["import-gguf", path, "-o", w.p("out"), *extra]


CASES = [   # (id, fragment expected in the output, argv)
    ("not-gguf-at-all", "no gguf at all", lambda w: imp(w.text("m.gguf", "<html>404 Not Found</html>"), w)),
    ("truncated-in-header", "truncated", lambda w: imp(truncated(w, lambda n: 12), w)),
    ("truncated-in-metadata", "truncated", lambda w: imp(truncated(w, lambda n: 3000), w)),
    ("truncated-in-tensor-data", "truncated", lambda w: imp(truncated(w, lambda n: n // 2), w)),
    ("truncated-last-bytes", "truncated", lambda w: imp(truncated(w, lambda n: n - 100), w)),
    ("tensor-type-gguf-does-not-know", "type id 200", lambda w: imp(retyped(w, "blk.0.attn_q.weight", 200), w)),
    ("no-architecture-field", "no general.architecture field",
     lambda w: imp(tiny(w, drop_keys={"general.architecture"}), w)),
    ("bos-id-past-the-vocabulary", "tokenizer.ggml.bos_token_id is 99999",
     lambda w: imp(tiny(w, set_keys={"tokenizer.ggml.bos_token_id": (99999, V.UINT32)}), w)),
    ("eos-id-negative", "tokenizer.ggml.eos_token_id is -3",
     lambda w: imp(tiny(w, set_keys={"tokenizer.ggml.eos_token_id": (-3, V.INT32)}), w)),
    ("token-types-fewer-than-tokens", "tokenizer.ggml.token_type has 10 entries",
     lambda w: imp(tiny(w, set_keys={"tokenizer.ggml.token_type": ([1] * 10, V.ARRAY, V.INT32)}), w)),
    ("head-count-a-string", "llama.attention.head_count is 'four'",
     lambda w: imp(tiny(w, set_keys={"llama.attention.head_count": ("four", V.STRING)}), w)),
    ("heads-do-not-divide-hidden", "llama.embedding_length 256 is not divisible by llama.attention.head_count 3",
     lambda w: imp(tiny(w, set_keys={"llama.attention.head_count": (3, V.UINT32)}), w)),
    ("block-count-zero", "block_count is 0", lambda w: imp(tiny(w, set_keys={"llama.block_count": (0, V.UINT32)}), w)),
    ("layer-past-block-count", "blk.1.attn_norm.weight",
     lambda w: imp(tiny(w, set_keys={"llama.block_count": (1, V.UINT32)}), w)),
    ("tensor-of-another-architecture", "blk.0.attn_q_norm.weight",
     lambda w: imp(tiny(w, extra_tensors={"blk.0.attn_q_norm.weight": np.ones(64, np.float32)}), w)),
    ("metadata-disagrees-with-shapes", "has shape [500, 256]",
     lambda w: imp(tiny(w, set_keys={"llama.embedding_length": (128, V.UINT32)}), w)),
    ("lm-head-of-another-vocabulary", "output.weight has shape [7, 256]",
     lambda w: imp(tiny(w, drop_tensors={"output.weight"},
                        extra_tensors={"output.weight": np.zeros((7, 256), np.float32)}), w)),
    ("split-gguf-part", "llama-gguf-split --merge",
     lambda w: imp(tiny(w, drop_tensors={"blk.1.ffn_up.weight", "blk.1.ffn_down.weight"},
                        set_keys={"split.count": (2, V.UINT16), "split.no": (0, V.UINT16)}), w)),
    ("output-inside-the-input-file", "inside the input file",
     lambda w: ["import-gguf", tiny(w), "-o", w.p("m.gguf/x")]),
    ("output-is-the-folder-of-the-input", "holds the input",            # the same hole convert-llm had: none here
     lambda w: ["import-gguf", w.p("models").mkdir() or tiny(w, "models/m.gguf"), "-o", w.p("models")]),
]


@pytest.mark.parametrize("cid,fragment,argv", CASES, ids=[c[0] for c in CASES])
def test_import_gguf_refuses_up_front(cid, fragment, argv, shared, tmp_path, monkeypatch, capsys):  # noqa: F811
    refused_up_front(argv, fragment, shared, tmp_path, monkeypatch, capsys)


def dequantized_sizes(monkeypatch) -> list:
    """The size of every array gguf dequantizes from now on (type probes are one block: a few bytes)."""
    sizes = []
    real = gguf.quants.dequantize
    monkeypatch.setattr(gguf.quants, "dequantize", lambda data, qtype: sizes.append(data.size) or real(data, qtype))
    return sizes


def test_missing_tensor_is_named_before_anything_is_dequantized(shared, tmp_path, monkeypatch, capsys):  # noqa: F811
    """A 7B file took minutes of dequantizing (and its float32 size in memory) before a missing tensor was named."""
    sizes = dequantized_sizes(monkeypatch)
    out = refused_up_front(lambda w: imp(tiny(w, drop_tensors={"blk.1.attn_q.weight"}), w), "blk.1.attn_q.weight",
                           shared, tmp_path, monkeypatch, capsys)
    assert all(n <= 64 for n in sizes), f"tensors were dequantized before the refusal: {sizes}"
    assert "download or convert it again" in out


def test_type_gguf_cannot_dequantize_is_named_before_any_tensor_is(shared, tmp_path, monkeypatch,  # noqa: F811
                                                                    capsys):
    """An I32 tensor: refused before the other tensors were dequantized, with the fix (llama-quantize) and gguf's
    version (it was 'which gguf  cannot dequantize': an empty version, and no fix)."""
    def argv(w):
        path = tiny(w, drop_tensors={"blk.1.ffn_up.weight"},
                    extra_tensors={"blk.1.ffn_up.weigh2": np.zeros((512, 256), np.int32)})
        path.write_bytes(path.read_bytes().replace(b"blk.1.ffn_up.weigh2", b"blk.1.ffn_up.weight"))
        return imp(path, w)
    sizes = dequantized_sizes(monkeypatch)
    out = refused_up_front(argv, "I32", shared, tmp_path, monkeypatch, capsys)
    assert all(n <= 64 for n in sizes), f"tensors were dequantized before the refusal: {sizes}"
    assert "blk.1.ffn_up.weight (I32)" in out and "llama-quantize" in out and f"gguf {gguf_version()} cannot" in out


def gguf_version() -> str:
    from importlib.metadata import version
    return version("gguf")


def test_padding_id_outside_the_vocabulary_pads_with_eos(tmp_path, capsys):
    """llama.cpp ignores a padding id past the vocabulary; import-gguf died with an IndexError traceback."""
    w = W(tmp_path, None, {})
    path = tiny(w, set_keys={"tokenizer.ggml.padding_token_id": (4294967295, V.UINT32)})
    assert main(["import-gguf", str(path), "-o", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert TRACEBACK not in err and "padding_token_id 4294967295" in err
    cfg = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    tok = json.loads((tmp_path / "out" / "tokenizer" / "tokenizer_config.json").read_text())
    assert cfg["pad_token_id"] == cfg["eos_token_id"] and tok["pad_token"] == tok["eos_token"] == "<|im_end|>"


# ------------------------------------------------------------------------------------------------- --overwrite
def earlier_import(w: W):
    from paddle2ort.convert.llm.gguf_import import import_gguf
    path = tiny(w)
    import_gguf(path, w.p("out"))
    return path


def test_overwrite_keeps_a_file_the_user_put_inside_the_import(shared, tmp_path, monkeypatch, capsys):  # noqa: F811
    """Only the import's top-level names were checked: a note in DIR/model/ went with the folder."""
    def argv(w):
        path = earlier_import(w)
        w.text("out/model/NOTES.md", "what I measured")
        return imp(path, w, "--overwrite")
    refused_up_front(argv, "model/NOTES.md", shared, tmp_path, monkeypatch, capsys)


def test_overwrite_never_replaces_a_folder_with_the_users_own_gguf_json(shared, tmp_path, monkeypatch,  # noqa: F811
                                                                         capsys):
    """Any file named gguf.json made a folder count as an earlier import (and replaced on --overwrite)."""
    def argv(w):
        w.text("out/gguf.json", json.dumps({"my": "llama.cpp run settings"}))
        w.text("out/model", "my model notes")
        return imp(tiny(w), w, "--overwrite")
    refused_up_front(argv, "not a paddle2ort gguf import", shared, tmp_path, monkeypatch, capsys)


# ------------------------------------------------------------------------------------------------------- zoo
def test_zoo_unknown_name_is_named_before_the_missing_paddle(shared, tmp_path, monkeypatch, capsys):  # noqa: F811
    """A runtime-only install was told to install Paddle first, and only then that the name was wrong."""
    monkeypatch.setattr("paddle2ort.cli.common.module_available", lambda m: False)
    refused_up_front(lambda w: ["zoo", "build", "gpt-5", "-o", w.p("z")], "unknown zoo model 'gpt-5'",
                     shared, tmp_path, monkeypatch, capsys)


def test_zoo_misspelled_name_suggests_the_zoo_name(shared, tmp_path, monkeypatch, capsys):  # noqa: F811
    refused_up_front(lambda w: ["zoo", "build", "SmolLM2", "-o", w.p("z")], "did you mean smollm2-135m",
                     shared, tmp_path, monkeypatch, capsys)


def stale_zoo_build(w: W, build_key: str = "smollm2-135m/v0"):
    """A zoo build folder of an older build key (built again on the next zoo build), as write_marker records it."""
    w.text("z/model/config.json", "{}")
    w.text("z/zoo.json", json.dumps({"build_key": build_key, "files": {"model/config.json": 2}}))
    return w.p("z")


@pytest.fixture
def fake_build(monkeypatch):
    """smollm2's build (minutes of Paddle work) replaced by a record of being called; Paddle counts as installed
    (unit tests hide it), the fake never imports it."""
    calls = []
    monkeypatch.setattr("paddle2ort.cli.common.module_available", lambda m: True)
    monkeypatch.setattr("paddle2ort.runtime.files.module_available", lambda m: True)
    monkeypatch.setattr("paddle2ort.convert.zoo.smollm2.build", lambda out, force=False: calls.append(out) or out)
    return calls


def test_zoo_rebuild_keeps_files_the_build_did_not_write(shared, tmp_path, monkeypatch, capsys,  # noqa: F811
                                                         fake_build):
    """zoo_entries looked at the top level only: a file in DIR/model/ went with the folder on a rebuild."""
    def argv(w):
        stale_zoo_build(w)
        w.text("z/model/my-eval.txt", "scores I wrote down")
        return ["zoo", "build", "smollm2-135m", "-o", w.p("z")]
    refused_up_front(argv, "model/my-eval.txt", shared, tmp_path, monkeypatch, capsys)
    assert not fake_build


def test_zoo_build_does_not_replace_another_models_build_without_force(shared, tmp_path, monkeypatch,  # noqa: F811
                                                                       capsys, fake_build):
    refused_up_front(lambda w: ["zoo", "build", "smollm2-135m", "-o", stale_zoo_build(w, "minilm-sentiment/v2")],
                     "holds the minilm-sentiment zoo build", shared, tmp_path, monkeypatch, capsys)
    assert not fake_build
    w = W(tmp_path, None, {})
    assert main(["zoo", "build", "smollm2-135m", "-o", str(stale_zoo_build(w, "minilm-sentiment/v2")), "--force"]) == 0
    assert fake_build == [tmp_path / "z"]
