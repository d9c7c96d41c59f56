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
