"""SmolLM2's tokenizer from the GGUF (HF tokenizers) vs an independent Python BPE reference; chat template; stream."""
import pytest

from paddle2ort.benchmarks.texts import all_lines
from paddle2ort.convert.zoo.smollm2 import gguf_path, read_gguf_tokenizer
from paddle2ort.tokenization.bpe import BPETokenizer, StreamDecoder, tokenizer_from_gguf_fields

from bpe_reference import reference_encoder

EDGE = ["", " ", "   leading and trailing   ", "tabs\tand\nnew\r\nlines", "CJK 中文字符 日本語 한국어",
        "accents café naïve Ångström", "emoji 😀👍🏽 🇫🇷", "digits 1234567, 3.14159 and 2+2=4", "Arabic-Indic ٣٤",
        "control \x00\x07\x1b chars", "a" * 3000, "supercalifragilisticexpialidocious" * 20,
        "<|im_start|>user\nhi<|im_end|>\n", "it's I'll we're they've", "nbsp\u00a0em\u2003space", "\n\n\n",
        "    def f(x):\n        return x  # code", "ﬁ ligature, ½ fraction, ² superscript"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("smol_tok")
    tokenizer_from_gguf_fields(read_gguf_tokenizer(gguf_path())).save(d)
    return BPETokenizer.load(d), d


def test_ids_match_reference_on_real_lines_and_edge_cases(tok, tmp_path):
    t, d = tok
    ref = reference_encoder(d, tmp_path)
    lines = all_lines()[:3000]
    assert len(lines) >= 2000
    ours = t.encode_batch(lines)
    bad = [(ln, a, ref(ln)) for ln, a in zip(lines, ours) if a != ref(ln)]
    assert not bad, bad[:3]
    for text in EDGE:
        assert t.encode(text) == ref(text), repr(text)
        assert t.decode(t.encode(text), skip_special_tokens=False) == text        # byte-level: lossless


def test_special_tokens_and_chat_template(tok):
    t, _ = tok
    assert (t.bos_token_id, t.eos_token_id, t.pad_token_id) == (1, 2, 2)
    text = t.apply_chat_template([{"role": "user", "content": "What is 2+2?"}])
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert t.encode("<|im_start|>")[0] == 1


def test_stream_decoder_deltas_add_up(tok):
    t, _ = tok
    ids = t.encode("Streaming 😀 text, café — 中文!")
    dec = StreamDecoder(t)
    assert "".join(dec.push(i) for i in ids) == t.decode(ids)
