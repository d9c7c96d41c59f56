"""Models past protobuf's 2 GiB limit: weights go to an external data file, decided from the initializers' sizes
(serializing the proto to measure it is what fails), on the fused and the generic paths; the bundle's checksums
cover the external file."""
import gc

import numpy as np
import onnx
import pytest

from paddle2ort.convert.llm import fused
from paddle2ort.convert.llm.fused import DecoderSpec, build_variant, initializer_bytes, random_state
from paddle2ort.runtime.fused import FusedDecoder
from paddle2ort.runtime.session import SessionOptions

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


@pytest.mark.slow
@pytest.mark.unit
def test_fused_decoder_over_2gib_is_written_with_external_data(tmp_path):
    """A one-layer decoder with a 4.3M-token vocabulary (embedding + LM head = 2.2 GB in fp32): the proto cannot
    be serialized (`ByteSize()` raised EncodeError before), so the weights go to decoder.onnx.data. Its logits on
    the first 1,000 tokens equal those of the same layers with the vocabulary cut to 1,000 (the hidden state does
    not depend on the vocabulary size)."""
    big = spec_with_vocab(4_300_000)
    state = random_state(spec_with_vocab(1000), seed=2)
    rng = np.random.default_rng(3)
    embed = rng.standard_normal((big.vocab_size, big.hidden_size), dtype=np.float32) * np.float32(0.05)
    embed[:1000] = state["llama.embed_tokens.weight"]
    small_state = dict(state)
    state["llama.embed_tokens.weight"] = embed
    build_variant(spec_with_vocab(1000), small_state, "fp32", tmp_path / "small.onnx")
    build_variant(big, state, "fp32", tmp_path / "decoder.onnx")
    del state, embed
    gc.collect()
    data = tmp_path / "decoder.onnx.data"
    assert data.stat().st_size > TWO_GIB
    assert (tmp_path / "decoder.onnx").stat().st_size < 1_000_000
    graph_only = onnx.load(str(tmp_path / "decoder.onnx"), load_external_data=False)
    external = [t for t in graph_only.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"decoder.onnx.data"}
    del graph_only
    got = prompt_logits(tmp_path / "decoder.onnx", big)
    assert got.shape == (len(PROMPT), big.vocab_size) and np.isfinite(got).all()
    np.testing.assert_allclose(got[:, :1000], prompt_logits(tmp_path / "small.onnx", spec_with_vocab(1000)),
                               rtol=1e-5, atol=1e-5)


def sparse_file(path, size: int):
    """A file of `size` bytes that takes no disk space (a hole): enough for the size checks."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@pytest.mark.unit
def test_generic_export_refuses_params_over_2gib_before_paddle2onnx(tmp_path, monkeypatch):
    from paddle2ort.convert import export as export_stage
    from paddle2ort.convert.errors import ConversionError
    from paddle2ort.convert.source import ModelSource

    def never(*a, **k):
        raise AssertionError("paddle2onnx ran")
    monkeypatch.setattr(export_stage, "run_paddle2onnx", never)
    (tmp_path / "m.json").write_text("{}")
    src = ModelSource("pir", tmp_path / "m.json", sparse_file(tmp_path / "m.pdiparams", TWO_GIB + 1))
    with pytest.raises(ConversionError, match="over 2 GiB"):
        export_stage.export(src, tmp_path / "raw.onnx", 17, tmp_path)
    assert not (tmp_path / "raw.onnx").exists()


def test_convert_llm_over_2gib_is_exit_4_before_the_worker(tmp_path, capsys, monkeypatch):
    import json
    import time

    import paddle2ort.convert.llm.api as api
    from paddle2ort.cli import main
    from paddle2ort.tokenization.bpe import tokenizer_from_gguf_fields
    from gguf_models import train_bpe

    def never(*a, **k):
        raise AssertionError("a Paddle worker started")
    monkeypatch.setattr(api, "run_worker", never)
    tokens, types, merges = train_bpe()
    tokenizer_from_gguf_fields({"ggml.model": "gpt2", "ggml.tokens": tokens, "ggml.token_type": types,
                                "ggml.merges": merges, "ggml.bos_token_id": 0, "ggml.eos_token_id": 2}
                               ).save(tmp_path / "tok")
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "vocab_size": 49152,
                                                 "dtype": "bfloat16"}))
    sparse_file(src / "model.safetensors", TWO_GIB // 2 + 1)          # bfloat16: twice that in float32
    t0 = time.perf_counter()
    assert main(["convert-llm", str(src), "--tokenizer", str(tmp_path / "tok"), "-o", str(tmp_path / "b")]) == 4
    assert time.perf_counter() - t0 < 10
    assert "over 2 GiB" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_fused_external_data_is_covered_by_the_bundle_checksums(tiny_models, tmp_path, monkeypatch):
    """Forced external data (threshold 0) through convert-llm --fused: the .data file is in the manifest's files,
    the bundle loads and generates, and a changed byte in it fails the checksum check."""
    from paddle2ort.convert.llm import LLMConvertConfig, convert_llm
    from paddle2ort.runtime.errors import BundleError
    from paddle2ort.runtime.llm import TextGenerator
    from paddle2ort.runtime.manifest import load_bundle
    monkeypatch.setattr(fused, "EXTERNAL_DATA_BYTES", 0)
    src = tiny_models("llama")
    dest = tmp_path / "bundle"
    res = convert_llm(LLMConvertConfig(source=src / "model", tokenizer=src / "tokenizer", output=dest,
                                       fused=("fp32",)))
    assert "fused/decoder.fp32.onnx.data" in res.manifest.files
    assert res.manifest.extra["fused"]["fp32"]["validation"]["passed"]
    from paddle2ort.runtime.generation import GenerationConfig
    cfg = GenerationConfig(max_new_tokens=4, min_new_tokens=4)
    # the gate above replayed Paddle's steps through the external-data file; here the bundle loads and decodes
    assert len(TextGenerator(dest, graph="fused").generate_ids(["The capital of France is"], cfg)[0]) == 4
    data = dest / "fused" / "decoder.fp32.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="decoder.fp32.onnx.data"):
        load_bundle(dest)
