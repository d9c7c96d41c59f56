"""Models past protobuf's 2 GiB limit: weights go to an external data file, decided from the initializers' sizes
(serializing the proto to measure it is what fails), on the fused and the generic paths (paddle2onnx exports the
graph with the parameters as inputs, the weights are attached from the parameters file); the bundle's checksums
cover the external files."""
import gc

import numpy as np
import onnx
import pytest

from paddle2ort.convert.llm import fused
from paddle2ort.convert.llm.fused import DecoderSpec, build_variant, initializer_bytes, random_state
from paddle2ort.runtime.fused import FusedDecoder
from paddle2ort.runtime.session import SessionOptions
from conftest import run_python
from near_tie import clear_divergences, greedy_reference

TWO_GIB = 2 ** 31
PROMPT = [3, 17, 250, 999]


def spec_with_vocab(vocab: int) -> DecoderSpec:
    # hidden 64: one layer of a few kB; the (tied) embedding and LM head carry all the bytes
    return DecoderSpec(vocab_size=vocab, hidden_size=64, num_layers=1, num_heads=4, kv_heads=2, head_dim=16,
                       intermediate_size=128, norm_eps=1e-6, rope_theta=10000.0, max_positions=64)


def prompt_logits(path, spec) -> np.ndarray:
    dec = FusedDecoder(path, spec.to_json(), SessionOptions(device="cpu"), max_length=16)
    got = dec.prompt_logits(dec.state(1), [PROMPT], pad_id=0)[0]
    dec.release()
    return got


@pytest.mark.unit
def test_initializer_bytes_counts_without_serializing(tmp_path):
    spec = spec_with_vocab(500)
    model = fused.build_decoder(spec, random_state(spec), "float32")
    assert initializer_bytes(model) == sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    assert 0.9 < initializer_bytes(model) / model.ByteSize() <= 1.0


@pytest.mark.unit
def test_external_data_file_gives_the_same_logits(tmp_path):
    """Forced below the limit: the external-data file loads and computes exactly what the embedded one does."""
    spec = spec_with_vocab(1000)
    state = random_state(spec, seed=1)
    build_variant(spec, state, "fp32", tmp_path / "embedded.onnx")
    fused.save_model(fused.build_decoder(spec, state, "float32"), tmp_path / "external.onnx", threshold=0)
    assert not (tmp_path / "embedded.onnx.data").exists()
    assert (tmp_path / "external.onnx.data").stat().st_size > (tmp_path / "external.onnx").stat().st_size
    np.testing.assert_array_equal(prompt_logits(tmp_path / "external.onnx", spec),
                                  prompt_logits(tmp_path / "embedded.onnx", spec))


def files_in(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.unit
def test_external_data_is_written_byte_for_byte_as_onnx_save_writes_it(tmp_path, monkeypatch):
    """The fused path writes the data file itself (build_variant streams the arrays, save_model the protos' bytes):
    model and data file are byte for byte what onnx.save(save_as_external_data=True) writes (same order, offsets,
    small tensors inline), for both dtypes and the GPT form; saving again over them replaces, never appends."""
    import dataclasses
    monkeypatch.setattr(fused, "EXTERNAL_DATA_BYTES", 0)
    llama = spec_with_vocab(1000)
    for n, (spec, dtype, prec) in enumerate([(llama, "float32", "fp32"), (llama, "float16", "fp16"),
                                             (dataclasses.replace(llama, family="gpt", kv_heads=4, qkv_bias=True),
                                              "float32", "fp32")]):
        state = random_state(spec, seed=4)
        want, by_variant, by_save = (tmp_path / f"{n}{k}" for k in "abc")
        for d in (want, by_variant, by_save):
            d.mkdir()
        onnx.save(fused.build_decoder(spec, state, dtype), str(want / "m.onnx"), save_as_external_data=True,
                  all_tensors_to_one_file=True, location="m.onnx.data")
        for _ in range(2):
            build_variant(spec, state, prec, by_variant / "m.onnx")
            fused.save_model(fused.build_decoder(spec, state, dtype), by_save / "m.onnx")
        assert files_in(by_variant) == files_in(by_save) == files_in(want)
        assert len(files_in(want)["m.onnx.data"]) > 10 * len(files_in(want)["m.onnx"])


@pytest.mark.unit
def test_a_failed_external_save_leaves_the_previous_files(tmp_path, monkeypatch):
    """Model and data file are written to temp files renamed when both are complete: a failure while writing the
    data or the graph leaves the previous export as it was, and no temp file."""
    monkeypatch.setattr(fused, "EXTERNAL_DATA_BYTES", 0)
    spec = spec_with_vocab(1000)
    build_variant(spec, random_state(spec, seed=1), "fp32", tmp_path / "m.onnx")
    before = files_in(tmp_path)
    assert set(before) == {"m.onnx", "m.onnx.data"}
    other = random_state(spec, seed=2)

    def boom(*args, **kwargs):
        raise OSError("disk full")
    with monkeypatch.context() as m:
        m.setattr(onnx, "save", boom)                         # the data file is complete, the graph fails
        with pytest.raises(OSError, match="disk full"):
            build_variant(spec, other, "fp32", tmp_path / "m.onnx")
    assert files_in(tmp_path) == before
    model, weights = fused.decoder_graph(spec, other, "float32")
    weights[-1] = (weights[-1][0], weights[-1][1].T)           # not C-contiguous: its write fails mid-file
    with pytest.raises((BufferError, ValueError)):
        fused.save_graph(model, weights, tmp_path / "m.onnx")
    assert files_in(tmp_path) == before


@pytest.mark.slow
@pytest.mark.unit
def test_fused_decoder_over_2gib_is_written_with_external_data(tmp_path):
    """A one-layer decoder with a 4.3M-token vocabulary (embedding + untied LM head = 2.2 GB in fp32): the proto
    cannot be serialized (`ByteSize()` raised EncodeError before), so the weights go to decoder.onnx.data. Its
    logits on the first and on the last 1,000 tokens equal those of the same layers with the vocabulary cut to
    those 1,000 tokens (the hidden state does not depend on the vocabulary size); the head columns that make them
    are 64 stripes across the whole head, which ends in the data file past 2 GiB."""
    big, small = spec_with_vocab(4_300_000), spec_with_vocab(1000)
    v, h = big.vocab_size, big.hidden_size
    # One 1.1 GB buffer is both the embedding [V, 64] and the LM head [64, V] (two views: filling 1.1 GB and
    # transposing it into the tied head took ~20 s of this test). Zeros (untouched pages, never written by the
    # test) except what the compared logits read, random: the prompt's embedding rows (< 1,000) and the head's
    # first and last 1,000 columns. A misplaced read lands on zeros or on other rows, never on a copy.
    buf = np.zeros(v * h, np.float32)
    embed, head = buf.reshape(v, h), buf.reshape(h, v)
    rng = np.random.default_rng(3)
    embed[:1000] = rng.standard_normal((1000, h), dtype=np.float32) * np.float32(0.05)
    head[:, :1000] = rng.standard_normal((h, 1000), dtype=np.float32) * np.float32(0.05)
    head[:, -1000:] = rng.standard_normal((h, 1000), dtype=np.float32) * np.float32(0.05)
    layers = random_state(small, seed=2)
    for name, cols in (("first", slice(0, 1000)), ("last", slice(v - 1000, v))):
        build_variant(small, {**layers, "llama.embed_tokens.weight": embed[:1000].copy(),
                              "lm_head.weight": head[:, cols].copy()}, "fp32", tmp_path / f"{name}.onnx")
    build_variant(big, {**layers, "llama.embed_tokens.weight": embed, "lm_head.weight": head}, "fp32",
                  tmp_path / "decoder.onnx")
    del buf, embed, head
    gc.collect()
    data = tmp_path / "decoder.onnx.data"
    assert data.stat().st_size > TWO_GIB
    assert (tmp_path / "decoder.onnx").stat().st_size < 1_000_000
    graph_only = onnx.load(str(tmp_path / "decoder.onnx"), load_external_data=False)
    external = [t for t in graph_only.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"decoder.onnx.data"}
    head_at = {e.key: int(e.value) for t in external if t.name == "lm_head" for e in t.external_data
               if e.key in ("offset", "length")}
    assert head_at["offset"] + head_at["length"] > TWO_GIB        # the compared stripes are read past 2 GiB too
    del graph_only
    got = prompt_logits(tmp_path / "decoder.onnx", big)
    assert got.shape == (len(PROMPT), big.vocab_size) and np.isfinite(got).all()
    np.testing.assert_allclose(got[:, :1000], prompt_logits(tmp_path / "first.onnx", small), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[:, -1000:], prompt_logits(tmp_path / "last.onnx", small), rtol=1e-5, atol=1e-5)


EMBED_BUILDER = """
import sys, paddle
from paddle.static import InputSpec
paddle.set_device("cpu")
class M(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.emb = paddle.nn.Embedding(1000, 64)
    def forward(self, ids):
        return self.emb(ids) * 2.0
paddle.jit.save(M(), sys.argv[1], input_spec=[InputSpec([None, None], "int64", "ids")])
"""


def big_embedding_model(tmp_path, vocab: int, rows: dict[int, np.ndarray]):
    """A Paddle program (an embedding lookup x 2) whose one parameter is [vocab, 64] float32, written without
    writing its bytes: the program saved by Paddle with 1,000 rows and its shape patched, the parameters file in
    Paddle's save_combine layout as a sparse file (a hole reads as zeros) with `rows` written in."""
    import json
    import struct
    (tmp_path / "build.py").write_text(EMBED_BUILDER)           # to_static reads the Layer's source file
    run_python(str(tmp_path / "build.py"), str(tmp_path / "m"))
    program = json.loads((tmp_path / "m.json").read_text())
    text = json.dumps(program).replace("[1000, 64]", f"[{vocab}, 64]")
    (tmp_path / "m.json").write_text(text)
    desc = bytes([0x08, 5]) + b"".join(bytes([0x10]) + _varint(d) for d in (vocab, 64))   # FP32, dims
    head = struct.pack("<IQIi", 0, 0, 0, len(desc)) + desc
    with open(tmp_path / "m.pdiparams", "wb") as f:
        f.write(head)
        f.truncate(len(head) + vocab * 64 * 4)
        for r, v in rows.items():
            f.seek(len(head) + r * 64 * 4)
            f.write(v.astype("<f4").tobytes())
    return tmp_path / "m.json"


def _varint(n: int) -> bytes:
    out = b""
    while n >= 0x80:
        out, n = out + bytes([n & 0x7F | 0x80]), n >> 7
    return out + bytes([n])


def test_generic_export_over_2gib_keeps_the_weights_apart(tmp_path):
    """A single 2.15 GB parameter (paddle2onnx 2.1.0 failed parsing one that large: vector::_M_default_append): the
    program's parameters become inputs for paddle2onnx, then external data copied from the parameters file; the
    exported graph loads in onnxruntime and looks up the rows written into the parameters file."""
    import onnxruntime as ort
    from paddle2ort.convert import export as export_stage
    from paddle2ort.convert.source import locate
    vocab = 8_400_000                                             # x 64 x 4 bytes = 2.15 GB > 2 GiB
    rng = np.random.default_rng(0)
    rows = {r: rng.standard_normal(64).astype(np.float32) for r in (0, 3_000_001, vocab - 1)}
    source = locate(big_embedding_model(tmp_path, vocab, rows))
    assert source.params_file.stat().st_size > TWO_GIB
    res = export_stage.export(source, tmp_path / "raw.onnx", 17, tmp_path)
    data = tmp_path / "raw.onnx.data"
    assert data.stat().st_size == vocab * 64 * 4 and (tmp_path / "raw.onnx").stat().st_size < 100_000
    assert res.opset_written == 17
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    ids = np.array([[0, 3_000_001, vocab - 1, 5]], np.int64)
    got = sess.run(None, {sess.get_inputs()[0].name: ids})[0][0]
    want = np.stack([rows[0], rows[3_000_001], rows[vocab - 1], np.zeros(64, np.float32)]) * 2
    np.testing.assert_array_equal(got, want)


def test_sparse_copy_takes_each_region_whatever_was_read_before(tmp_path):
    """attach_weights copies each parameter's bytes from the parameters file at its offset; _copy_sparse moves the
    descriptor with SEEK_DATA/SEEK_HOLE. Through a buffered reader, tensors read after small ones (the buffer holding
    more than they were) came out with other bytes (a llama's rotary table from the 2 GiB path: zeros where Paddle
    has -1); through an unbuffered one (what attach_weights opens) every tensor is its own bytes, in any order."""
    from paddle2ort.convert.export import _copy_sparse
    rng = np.random.default_rng(1)
    regions, off = [], 0
    for n in [256] * 5 + [16384] * 4:                             # five norm weights, then four tables
        off += 64                                                  # each tensor's header
        regions.append((off, n))
        off += n
    blob = rng.integers(0, 256, off, dtype=np.uint8).tobytes()
    src = tmp_path / "params"
    src.write_bytes(blob)
    for order in (list(range(len(regions))), [8, 0, 6, 5, 1, 7]):
        dst = tmp_path / "data"
        with open(src, "rb", buffering=0) as s, open(dst, "wb") as d:
            for k in order:
                s.seek(regions[k][0])
                _copy_sparse(s, d, regions[k][1])
        assert dst.read_bytes() == b"".join(blob[regions[k][0]:sum(regions[k])] for k in order)


def test_external_data_is_covered_by_the_bundle_checksums(tiny_models, tmp_path, monkeypatch):
    """Both paths forced past their limits (thresholds 0) through convert-llm --fused: the generic graph is exported
    with its weights kept apart (model.fp32.onnx.data), the fused one writes decoder.fp32.onnx.data; both gates
    replay Paddle's steps through those files, both are in the manifest's files, the bundle generates with either
    graph, and a changed byte in either data file fails the checksum check."""
    from paddle2ort.convert import export as export_stage
    from paddle2ort.convert.llm import LLMConvertConfig, convert_llm
    from paddle2ort.runtime.errors import BundleError
    from paddle2ort.runtime.generation import GenerationConfig
    from paddle2ort.runtime.llm import TextGenerator
    from paddle2ort.runtime.manifest import load_bundle
    monkeypatch.setattr(fused, "EXTERNAL_DATA_BYTES", 0)
    monkeypatch.setattr(export_stage, "PADDLE2ONNX_MAX_PARAMS", 0)
    monkeypatch.setattr(export_stage, "EXTERNAL_DATA_BYTES", 0)
    src = tiny_models("llama")
    dest = tmp_path / "bundle"
    res = convert_llm(LLMConvertConfig(source=src / "model", tokenizer=src / "tokenizer", output=dest,
                                       fused=("fp32",)))
    assert {"model.fp32.onnx.data", "fused/decoder.fp32.onnx.data"} <= set(res.manifest.files)
    assert res.manifest.validation["fp32"]["passed"] and res.manifest.extra["fused"]["fp32"]["validation"]["passed"]
    graph_only = onnx.load(str(dest / "model.fp32.onnx"), load_external_data=False)
    inline = [t.name for t in graph_only.graph.initializer
              if t.data_location != onnx.TensorProto.EXTERNAL and len(t.raw_data) > 1024]
    data, graph = (dest / "model.fp32.onnx.data").stat().st_size, (dest / "model.fp32.onnx").stat().st_size
    assert not inline and data > 10 * graph
    # two graphs (another ISA's kernels may round them otherwise): the fused one's greedy tokens are the generic
    # one's up to a near-tie of the generic one's (tests/near_tie.py); both gated within 1e-4 of Paddle's logits,
    # 1e-3 of the logit range is plenty
    gens = {g: TextGenerator(dest, graph=g) for g in ("generic", "fused")}
    ids = [gens["generic"].prompt_ids("The capital of France is")]
    cfg = GenerationConfig(max_new_tokens=4)
    want, margins, eps = greedy_reference(gens["generic"].model, ids, cfg, gens["generic"].tokenizer.pad_token_id,
                                          1e-3)
    got = gens["fused"].generate_token_ids(ids, cfg)
    assert len(want[0]) == 4 and not clear_divergences(got, want, margins, eps), (got, want)
    for name in ("model.fp32.onnx.data", "fused/decoder.fp32.onnx.data"):
        data = dest / name
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
        with pytest.raises(BundleError, match=name.split("/")[-1]):
            load_bundle(dest)
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))


def two_matmuls(tmp_path, rng):
    """x @ w1 -> Relu -> @ w2, saved twice: tmp_path/small/src.onnx (weights in the proto) and tmp_path/large/src.onnx
    (weights in src.onnx.data, as a source past 2 GiB has them)."""
    from onnx import TensorProto, helper, numpy_helper
    w1, w2 = (numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), n) for n in ("w1", "w2"))
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                               helper.make_node("MatMul", ["r", "w2"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 64])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (tmp_path / "small").mkdir()
    (tmp_path / "large").mkdir()
    onnx.save(model, str(tmp_path / "small" / "src.onnx"))
    onnx.save_model(model, str(tmp_path / "large" / "src.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="src.onnx.data", size_threshold=0)


@pytest.mark.unit
def test_dynamic_int8_of_a_model_past_the_limit_keeps_its_weights_apart(tmp_path, monkeypatch):
    """INT8 dynamic quantization of a source past the limit (forced: threshold 0; the source itself with external
    data): the pre-processed model and the result keep their weights in `NAME.data`, and the result computes what
    the in-proto quantization of the same source computes; so does a small source whose weights are external."""
    import onnxruntime as ort
    from paddle2ort.convert import export as export_stage
    from paddle2ort.convert.precision import to_int8
    rng = np.random.default_rng(0)
    two_matmuls(tmp_path, rng)
    to_int8(tmp_path / "small" / "src.onnx", tmp_path / "small" / "int8.onnx")
    to_int8(tmp_path / "large" / "src.onnx", tmp_path / "large" / "in-proto.onnx")     # external source, small
    assert not (tmp_path / "large" / "in-proto.onnx.data").exists()
    monkeypatch.setattr(export_stage, "EXTERNAL_DATA_BYTES", 0)
    info = to_int8(tmp_path / "large" / "src.onnx", tmp_path / "large" / "int8.onnx")
    assert info["quantized_nodes"] == 2
    data = tmp_path / "large" / "int8.onnx.data"
    assert data.stat().st_size >= 2 * 64 * 64          # both int8 weights live there
    assert not (tmp_path / "small" / "int8.onnx.data").exists()
    x = rng.standard_normal((3, 64)).astype(np.float32)
    got, inproto, want = (ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"])
                          .run(None, {"x": x})[0] for f in ("large/int8.onnx", "large/in-proto.onnx",
                                                             "small/int8.onnx"))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(inproto, want)


@pytest.mark.unit
def test_fp16_of_a_model_past_the_limit_converts_from_its_path(tmp_path, monkeypatch):
    """FP16 of a source past the limit (forced) goes through infer_shapes_path (infer_shapes serializes the proto,
    which fails past 2 GiB); its weights go to `NAME.data` and it computes what the in-proto conversion computes."""
    import onnxruntime as ort
    from paddle2ort.convert import export as export_stage
    from paddle2ort.convert.precision import to_fp16
    rng = np.random.default_rng(1)
    two_matmuls(tmp_path, rng)
    to_fp16(tmp_path / "small" / "src.onnx", tmp_path / "small" / "fp16.onnx")
    monkeypatch.setattr(export_stage, "EXTERNAL_DATA_BYTES", 0)
    seen = []
    import onnxruntime.transformers.float16 as f16
    real = f16.convert_float_to_float16
    monkeypatch.setattr(f16, "convert_float_to_float16", lambda m, **kw: seen.append(type(m)) or real(m, **kw))
    to_fp16(tmp_path / "large" / "src.onnx", tmp_path / "large" / "fp16.onnx")
    assert seen == [str]
    assert (tmp_path / "large" / "fp16.onnx.data").stat().st_size >= 2 * 64 * 64 * 2
    x = rng.standard_normal((3, 64)).astype(np.float32)
    got, want = (ort.InferenceSession(str(tmp_path / d / "fp16.onnx"), providers=["CPUExecutionProvider"])
                 .run(None, {"x": x})[0] for d in ("large", "small"))
    np.testing.assert_array_equal(got, want)
