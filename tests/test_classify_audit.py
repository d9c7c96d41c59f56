"""`paddle2ort classify` and /v1/classify as a hostile user meets them: text the shell passed as bytes, outputs that
are pipes, devices or inside the bundle, files of blank lines or UTF-16, INT8 answers that moved with their
batch-mates, a bundle of another kind, and /v1/classify's lone surrogates (each a defect found by an audit)."""
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

from paddle2ort.cli import main
from paddle2ort.runtime.errors import BundleError
from paddle2ort.runtime.pipelines import TextClassifier

from near_tie import top2_margins

TEXTS = ["a fine film", "awful, just awful", "it was ok I guess " * 3, "", "love it", "worst thing ever made",
         "meh", "the best " * 9, "so-so acting but a great plot", "no"]


@pytest.fixture
def own_bundle(clf_bundle, tmp_path):
    """A private copy of the tiny classifier (for cases that would damage the shared one on the old code)."""
    dst = tmp_path / "bundle"
    shutil.copytree(clf_bundle, dst)
    return dst


# ----------------------------------------------------------------------------------------------------- CLI
def test_text_that_is_not_utf8_is_refused_before_anything_runs(clf_bundle, tmp_path, capsys):
    """bytes not UTF-8 in --text arrive as lone surrogates: they were classified (as no words), echoed to stdout as
    invalid UTF-8, and with --output failed after the whole run with "'utf-8' codec can't encode"."""
    assert main(["-q", "classify", str(clf_bundle), "--text", "fine", "--text", "caf\udce9"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--text #2 is not valid UTF-8" in err and "\\xe9" in err and "Traceback" not in err


def test_output_inside_the_bundle_is_refused(own_bundle, capsys):
    """--output BUNDLE/preds.jsonl added a file to the bundle: every later run refused the bundle as tampered."""
    from paddle2ort.runtime.manifest import load_bundle
    assert main(["-q", "classify", str(own_bundle), "--text", "hi", "--output", str(own_bundle / "preds.jsonl")]) == 2
    assert "inside the bundle" in capsys.readouterr().err
    assert not (own_bundle / "preds.jsonl").exists()
    load_bundle(own_bundle)                                 # still whole


def test_output_dash_is_standard_output(clf_bundle, tmp_path, monkeypatch, capsys):
    """--output - wrote a file named "-" (and with --input - it was "the input file -")."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"good\nbad\n")))
    assert main(["-q", "classify", str(clf_bundle), "--input", "-", "--output", "-"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["good", "bad"] and not (tmp_path / "-").exists()


def test_output_into_a_fifo_writes_through_it(clf_bundle, tmp_path):
    """--output FIFO (or /dev/stdout, /dev/null, a shell's >(...)) was written beside it and renamed onto it: the
    FIFO (as root: the device node) was replaced by a regular file and its reader waited for ever."""
    fifo = tmp_path / "preds.fifo"
    os.mkfifo(fifo)
    got = []

    def reader():
        with open(fifo, encoding="utf-8") as f:
            got.append(f.read())
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    assert main(["-q", "classify", str(clf_bundle), "--text", "good", "--text", "bad", "--output", str(fifo)]) == 0
    t.join(30)
    if t.is_alive():            # the old code renamed a file onto the FIFO: its reader still waits (a daemon)
        pytest.fail("the FIFO's reader got nothing: the FIFO was replaced by a regular file")
    assert stat.S_ISFIFO(fifo.lstat().st_mode), "the FIFO was replaced by a regular file"
    assert [json.loads(x)["text"] for x in got[0].splitlines()] == ["good", "bad"]


def test_output_to_a_descriptor_of_a_regular_file_writes_into_it(clf_bundle, tmp_path):
    """--output /dev/stdout with stdout redirected to a file (here /dev/fd/N of a regular file) made a temp file in
    /dev/fd (fails: exit 2) or, where /dev is writable (root), renamed it onto /dev/stdout for the whole host."""
    target = tmp_path / "out.jsonl"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert main(["-q", "classify", str(clf_bundle), "--text", "good", "--output", f"/dev/fd/{fd}"]) == 0
    finally:
        os.close(fd)
    assert [json.loads(x)["text"] for x in target.read_text(encoding="utf-8").splitlines()] == ["good"]


def test_a_reader_that_closes_the_pipe_ends_the_job_quietly(clf_bundle, tmp_path):
    """`classify --input big.txt | head -1`: nothing came out before the whole file was classified, then
    "ERROR paddle2ort: [Errno 32] Broken pipe" and exit 2."""
    inp = tmp_path / "many.txt"
    inp.write_text("".join(f"text number {i} is rather good\n" for i in range(3000)), encoding="utf-8")
    p = subprocess.Popen([sys.executable, "-m", "paddle2ort.cli", "-q", "classify", str(clf_bundle), "--input",
                          str(inp), "--batch-size", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    first = p.stdout.readline()
    p.stdout.close()
    _, err = p.communicate(timeout=300)
    assert json.loads(first)["text"] == "text number 0 is rather good"
    assert p.returncode == 0 and b"Broken pipe" not in err and b"Traceback" not in err, err.decode()


def test_a_file_of_blank_lines_has_no_texts(clf_bundle, tmp_path, capsys):
    """A file of blank lines gave a confident label for each (what the model says for no words)."""
    inp = tmp_path / "blank.txt"
    inp.write_text("\n   \n\t\n", encoding="utf-8")
    assert main(["-q", "classify", str(clf_bundle), "--input", str(inp)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "has no texts (only 3 blank line(s))" in err
    inp.write_text("good\n\nbad\n", encoding="utf-8")         # among texts: kept in place (result N = line N), said
    assert main(["-q", "classify", str(clf_bundle), "--input", str(inp)]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(x)["text"] for x in out.splitlines()] == ["good", "", "bad"] and "1 blank line(s)" in err


def test_utf16_and_empty_stdin_are_named(clf_bundle, tmp_path, monkeypatch, capsys):
    """A UTF-16 file was "not valid UTF-8 (byte 0 ...)"; empty standard input "- has no texts"."""
    inp = tmp_path / "u16.txt"
    inp.write_text("good\nbad\n", encoding="utf-16")
    assert main(["-q", "classify", str(clf_bundle), "--input", str(inp)]) == 2
    assert "is UTF-16LE (it starts with the byte-order mark ff fe)" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert main(["-q", "classify", str(clf_bundle), "--input", "-"]) == 2
    assert "standard input has no texts" in capsys.readouterr().err


def test_a_bundle_of_another_kind_names_the_fix(own_bundle, capsys):
    m = json.loads((own_bundle / "manifest.json").read_text())
    m["task"], m["labels"] = None, None
    (own_bundle / "manifest.json").write_text(json.dumps(m))
    assert main(["-q", "classify", str(own_bundle), "--text", "hi"]) == 2
    assert "convert it again with --task text-classification" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------- pipeline
def test_int8_answers_do_not_depend_on_the_batch_mates(clf_bundle):
    """The INT8 model quantizes activations with one scale a batch (DynamicQuantizeLinear, padding included): a
    text's logits moved with the other texts of its batch (a quarter of the logits' scale on the real MiniLM
    bundle). rows_alone runs each text alone (its answer is then its own); the server never mixes clients for
    such a model (test below); batch jobs keep batching by default."""
    clf = TextClassifier(clf_bundle, precision="int8", batch_size=8, rows_alone=True)
    assert clf.batch_dependent and clf.rows_alone
    batched = clf.predict_logits(TEXTS)
    alone = np.concatenate([clf.predict_logits([t]) for t in TEXTS])
    tie = top2_margins(batched) <= 1e-4 * np.abs(batched).max()
    assert all(a == b or t for a, b, t in zip(alone.argmax(-1), batched.argmax(-1), tie))
    np.testing.assert_allclose(batched, alone, atol=1e-5 * max(1.0, np.abs(alone).max()))
    assert not TextClassifier(clf_bundle, precision="int8", batch_size=8).rows_alone          # the default batches
    fp32 = TextClassifier(clf_bundle, precision="fp32", batch_size=8, rows_alone=True)
    assert not fp32.batch_dependent and not fp32.rows_alone                                 # FP32 always batches


def test_the_server_never_batches_two_clients_for_a_batch_dependent_model():
    import asyncio
    from paddle2ort.runtime.serving.classify import MicroBatcher

    class Dynamic(FakeClassifier):
        batch_dependent = True
        calls: list = []

        def predict_logits(self, texts):
            self.calls.append(list(texts))
            return super().predict_logits(texts)

    async def go():
        clf = Dynamic()
        b = MicroBatcher(clf, max_texts=64, max_wait_s=0.5)
        b.start()
        try:
            await asyncio.gather(b.classify(["a", "b"]), b.classify(["c"]), b.classify(["d", "e"]))
        finally:
            b.task.cancel()
        return clf.calls

    assert sorted(map(tuple, asyncio.run(go()))) == [("a", "b"), ("c",), ("d", "e")]    # one request a batch


def test_logits_that_do_not_match_the_labels_are_a_bundle_error(clf_bundle):
    """A model whose output width is not the manifest's label count (a symbolic width, so not caught at load) was
    numpy's "could not broadcast" traceback (exit 1)."""
    clf = TextClassifier(clf_bundle)
    clf.runner = lambda feeds: [np.zeros((len(feeds["input_ids"]), 5), np.float32)]
    with pytest.raises(BundleError, match="names 3 labels .*re-convert"):
        clf(["hello", "world"])


# ----------------------------------------------------------------------------------------------------- /v1/classify
class FakeClassifier:
    labels = ("negative", "positive")

    def predict_logits(self, texts):
        return np.array([[0.0, float(len(t))] for t in texts], np.float32)


@pytest.fixture
def client():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from paddle2ort.runtime.serving.app import ServeConfig, Served, create_app
    from paddle2ort.runtime.serving.classify import MicroBatcher
    cfg = ServeConfig(max_classify_inputs=4, classify_max_wait_ms=0)
    clf = FakeClassifier()
    models = {"clf": Served("clf", "text-classification", None, classifier=clf, batcher=MicroBatcher(clf, 4, 0.0))}
    with TestClient(create_app(models, cfg), raise_server_exceptions=False) as c:
        yield c


def post(client, body: str):
    return client.post("/v1/classify", content=body.encode(), headers={"content-type": "application/json"})


def test_classify_route_refuses_lone_surrogates_and_says_how_to_split(client):
    """A lone surrogate ("\\ud800" in JSON) was classified as no words (200), as /v1/completions refuses it."""
    ok = post(client, '{"model": "clf", "input": ["ab", ""]}')
    assert ok.status_code == 200 and [d["label"] for d in ok.json()["data"]] == ["positive", "negative"]
    assert all(abs(sum(d["scores"].values()) - 1) < 1e-6 for d in ok.json()["data"])
    for body in ('{"model": "clf", "input": "\\ud800"}', '{"model": "clf", "input": ["fine", "x\\udfffy"]}'):
        r = post(client, body)
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == "input" and "surrogate" in err["message"], r.text
        assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    r = post(client, json.dumps({"model": "clf", "input": ["x"] * 5}))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_value"
    assert "split them over several requests" in r.json()["error"]["message"]


class Picky(FakeClassifier):
    """A model that cannot take one text (as a bundle whose tokenizer allows more tokens than its positions)."""

    def predict_logits(self, texts):
        from paddle2ort.runtime.errors import BadInputError
        if "too long" in texts:
            raise BadInputError("the model cannot take 600 tokens; lower max_seq_length")
        return super().predict_logits(texts)


def test_one_requests_failure_does_not_fail_the_requests_batched_with_it():
    """The micro-batch ran every waiting request as one batch and a failure failed them all: one client's text
    the model cannot take answered every client batched with it with a 500."""
    import asyncio

    from paddle2ort.runtime.errors import BadInputError
    from paddle2ort.runtime.serving.classify import MicroBatcher

    async def go():
        b = MicroBatcher(Picky(), max_texts=64, max_wait_s=0.5)
        b.start()
        try:
            return await asyncio.gather(b.classify(["fine"]), b.classify(["too long"]), b.classify(["also ok"]),
                                        return_exceptions=True)
        finally:
            await b.stop()
    fine, bad, ok = asyncio.run(go())
    assert isinstance(bad, BadInputError)
    assert [r["label"] for r in fine + ok] == ["positive", "positive"], (fine, ok)


def test_a_text_the_model_cannot_take_is_a_400(client):
    client.app.state.models["clf"].batcher.clf.__class__ = Picky
    r = post(client, '{"model": "clf", "input": ["too long"]}')
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "input" and "max_seq_length" in err["message"], r.text


def test_resume_continues_after_the_last_complete_line(clf_bundle, tmp_path, monkeypatch):
    """classify --resume: a run stopped midway (a chunk written, the next line cut off) continues from there, the
    final file equal to one uninterrupted run's; partial results of another input are refused, not overwritten."""
    from paddle2ort.cli import classify as classify_cli
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    whole, out = tmp_path / "whole.jsonl", tmp_path / "out.jsonl"
    monkeypatch.setattr(classify_cli, "CHUNK_BATCHES", 1)     # both runs classify the same chunks of 4 texts: a
    assert main(["-q", "classify", str(clf_bundle), "--input", str(src), "--output", str(whole),   # dynamic-INT8
                 "--batch-size", "4"]) == 0                   # answer moves with its batch-mates (any host)
    calls = []
    real = classify_cli.json_lines

    def dies_on_the_second_chunk(texts, preds):
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(texts, preds)

    monkeypatch.setattr(classify_cli, "json_lines", dies_on_the_second_chunk)
    args = ["-q", "classify", str(clf_bundle), "--input", str(src), "--output", str(out), "--resume",
            "--batch-size", "4"]
    assert main(args) == 130                                  # interrupted: 4 texts kept
    partial = tmp_path / "out.jsonl.partial"
    assert not out.exists() and len(partial.read_text().splitlines()) == 4
    with open(partial, "a", encoding="utf-8") as f:
        f.write('{"text": "cut of')                            # the line in flight when it died
    monkeypatch.setattr(classify_cli, "json_lines", real)
    calls.clear()
    assert main(args) == 0 and not partial.exists()
    assert [json.loads(x)["text"] for x in out.read_text().splitlines()] == TEXTS
    assert [json.loads(x)["label"] for x in out.read_text().splitlines()] == \
        [json.loads(x)["label"] for x in whole.read_text().splitlines()]
    other = tmp_path / "other.txt"
    other.write_text("something else\n" * 3, encoding="utf-8")
    partial.write_text(out.read_text().splitlines()[0] + "\n", encoding="utf-8")
    assert main(["-q", "classify", str(clf_bundle), "--input", str(other), "--output", str(tmp_path / "out.jsonl"),
                 "--resume"]) == 2
    assert partial.exists()                                    # the user's earlier results are left as they were


def test_resume_needs_a_regular_output_file(clf_bundle, capsys):
    assert main(["-q", "classify", str(clf_bundle), "--text", "hi", "--resume"]) == 2
    assert "--resume keeps the results so far beside --output FILE" in capsys.readouterr().err
