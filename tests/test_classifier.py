"""Text classification end to end on a bundle with its tokenizer: pipeline, CLI, bad input."""
import json

import numpy as np
import pytest

from paddle2ort.cli import main
from paddle2ort.runtime.errors import BundleError, DeviceError
from paddle2ort.runtime.pipelines import TextClassifier
from paddle2ort.runtime.session import SessionOptions

from near_tie import top2_margins



def test_pipeline_matches_direct_session_and_sorts_back(clf_bundle):
    clf = TextClassifier(clf_bundle, batch_size=2)
    texts = ["a much longer sentence about driverless cars " * 3, "short", "medium length text", ""]
    preds = clf(texts)
    assert [p.label for p in preds] and all(p.label in clf.labels for p in preds)
    # each text alone gives the same answer as in a length-sorted, padded batch: other GEMM shapes, which another
    # ISA's kernels may round otherwise (~1e-7 here), so the label may differ only at a near-tie of the batch's
    # logits: a top-2 margin within 1e-4 of their largest magnitude (none here: the smallest is ~7e-3 of it)
    logits = clf.predict_logits(texts)
    ties = top2_margins(logits) <= 1e-4 * np.abs(logits).max()
    for t, p, tie in zip(texts, preds, ties):
        alone = clf(t)[0]
        assert (alone.label == p.label or tie) and alone.score == pytest.approx(p.score, abs=1e-5)
    fp16 = TextClassifier(clf_bundle, precision="fp16")
    assert np.allclose(fp16.predict_logits(texts), clf.predict_logits(texts), atol=1e-2)


def test_long_empty_and_odd_texts_are_documented_behaviour(clf_bundle):
    clf = TextClassifier(clf_bundle)
    texts = ["", "   ", "good " * 20_000, "good " * 200, "emoji 😀 \x00 control", "emoji 😀 control"]
    preds, logits = clf(texts), clf.predict_logits(texts)
    assert np.array_equal(logits[0], logits[1])                   # empty and blank: both the sequence [CLS][SEP]
    np.testing.assert_allclose(logits[2], logits[3], atol=1e-5)   # 100k characters: truncated like any long text
    np.testing.assert_allclose(logits[4], logits[5], atol=1e-5)   # control characters dropped by the cleaning
    assert not np.allclose(logits[0], logits[3], atol=1e-4)       # (and the model does tell texts apart)
    z = np.exp(logits - logits.max(-1, keepdims=True))
    probs = z / z.sum(-1, keepdims=True)
    assert [p.label for p in preds] == [clf.labels[i] for i in probs.argmax(-1)]
    np.testing.assert_allclose([p.score for p in preds], probs.max(-1), rtol=1e-5)   # score: the label's probability


def test_cli_classify_text_and_files(clf_bundle, tmp_path, capsys):
    assert main(["-q", "classify", str(clf_bundle), "--text", "hello", "--text", "world"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["text"] for x in lines] == ["hello", "world"] and all("label" in x for x in lines)
    inp, outp = tmp_path / "in.txt", tmp_path / "out.jsonl"
    inp.write_text("first line\nsecond line\n", encoding="utf-8")
    assert main(["-q", "classify", str(clf_bundle), "--input", str(inp), "--output", str(outp)]) == 0
    assert len(outp.read_text(encoding="utf-8").splitlines()) == 2


def test_cli_classify_bad_input(clf_bundle, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe broken\n")
    assert main(["-q", "classify", str(clf_bundle), "--input", str(bad)]) == 2
    assert "not valid UTF-8" in capsys.readouterr().err
    assert main(["-q", "classify", str(clf_bundle)]) == 2                                   # no texts
    assert main(["-q", "classify", str(tmp_path / "nope"), "--text", "x"]) == 2             # no bundle


def test_gpu_without_gpu_is_a_clear_error(clf_bundle):
    from paddle2ort.runtime.session import gpu_available
    if gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(DeviceError, match="use --device cpu"):
        TextClassifier(clf_bundle, session=SessionOptions(device="gpu"))


def test_bundle_without_tokenizer_is_refused(tiny_models, tmp_path):
    out = tmp_path / "b"
    assert main(["-q", "convert", str(tiny_models("bert_classifier")), "-o", str(out), "--task",
                 "text-classification", "--labels", "a,b,c"]) == 0
    with pytest.raises(BundleError, match="no tokenizer"):
        TextClassifier(out)


def test_a_max_seq_length_past_the_position_table_is_one_clear_error(clf_bundle):
    """max_seq_length beyond the model's positions was a raw onnxruntime Gather error; 0 or a string a TypeError."""
    from paddle2ort.runtime.errors import BadInputError
    from paddle2ort.runtime.pipelines import TextClassifier
    clf = TextClassifier(clf_bundle, max_seq_length=100_000)
    with pytest.raises(BadInputError, match="position table ends before that; lower max_seq_length"):
        clf(["hello " * 5000])
    for bad in ({"max_seq_length": 0}, {"batch_size": "8"}, {"batch_size": 0}):
        with pytest.raises(BadInputError, match="must be an integer >= 1"):
            TextClassifier(clf_bundle, **bad)
