"""`paddle2ort perplexity` and `paddle2ort bench` with a new user's bad and unusual inputs: each is refused with one
message (exit 2, no traceback) before anything is scored or timed, and leaves the work directory as it was; a bench
run without a plot drops the earlier run's.

Cases run in this process through test_bad_inputs' runner pieces (its W world, shared tiny bundles, snapshot)."""
from __future__ import annotations

import json
import os

import pytest

from test_bad_inputs import W, _dataset, bench, ppl, refused_up_front, shared  # noqa: F401 (fixture)


def _int8_only(w: W):
    """The tiny classifier as a bundle converted with --precision int8 alone (its one model relabelled)."""
    def edit(m):
        (mf,) = m["models"].values()
        m["models"] = {"int8": {**mf, "precision": "int8"}}
    return w.manifest(w.bundle("clf"), edit)


def _renamed(w: W, kind: str):
    """A private copy of a tiny Paddle model, its files named other.* (not like the bundle's source files)."""
    d = w.src(kind)
    for f in list(d.iterdir()):
        if f.name.startswith("model."):
            f.rename(d / f.name.replace("model.", "other.", 1))
    return d


CASES = [   # (id, fragment expected in the output, argv)
    ("perplexity-output-is-the-bundle", "inside the bundle",
     lambda w: ["perplexity", w.bundle("llm"), "--output", w.bundle("llm"), "--window", "4", "--windows", "1"]),
    ("perplexity-output-in-a-folder-of-the-bundle", "inside the bundle",
     lambda w: ["perplexity", w.bundle("llm"), "--output", w.bundle("llm") / "tokenizer" / "res", "--window", "4",
                "--windows", "1"]),
    ("perplexity-run-in-the-bundle", "--output bench-results is inside the bundle .: files added to a bundle make "
     "it fail its integrity check; give a folder outside it, e.g. --output ../bundle_llm-results",
     lambda w: w.env.update(__cwd__=str(w.bundle("llm"))) or ["perplexity", ".", "--window", "4", "--windows", "1"]),
    ("perplexity-paddle-model-not-a-model", "not a paddlenlp model directory",
     lambda w: ppl(w, "--window", "4", "--windows", "1", "--paddle-model", w.text("pm/notes.txt", "x") and w.p("pm"))),
    ("perplexity-paddle-model-is-a-file", "is not a directory; pass a paddlenlp model directory",
     lambda w: ppl(w, "--window", "4", "--windows", "1", "--paddle-model", w.text("pm.pdparams", "x"))),
    ("perplexity-paddle-model-of-another-shape", "is not the bundle's source model: its vocab_size 500",
     lambda w: ppl(w, "--window", "4", "--windows", "1", "--paddle-model",
                   w.llm_src('{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 500}'))),
    ("perplexity-precision-upper-case", "precision names are lower case: --precision fp32",
     lambda w: ppl(w, "--precision", "FP32")),
    ("bench-output-is-the-bundle", "inside the bundle",
     lambda w: ["bench", w.bundle("clf"), "--dataset-dir", _dataset(w), "--output", w.bundle("clf")]),
    ("bench-precision-twice", "names a precision twice", lambda w: bench(w, "--precision", "fp32,fp32")),
    ("bench-precision-upper-case", "precision names are lower case: --precision fp32",
     lambda w: bench(w, "--precision", "FP32")),
    ("bench-paddle-model-of-another-name", "is not the model bundle",
     lambda w: bench(w, "--limit", "2", "--repeats", "1", "--warmup", "0", "--precision", "fp32",
                     "--paddle-model", _renamed(w, "mlp"))),
    ("bench-dataset-dir-is-a-file", "is a file; give the folder holding label.txt",
     lambda w: bench(w, ds=_dataset(w) / "dev.txt")),
    ("bench-int8-only-on-the-gpu", "--device gpu leaves out",
     lambda w: ["bench", _int8_only(w), "--dataset-dir", _dataset(w), "--output", w.p("res"), "--device", "gpu",
                "--repeats", "1", "--warmup", "0"]),
]


@pytest.mark.parametrize("cid,fragment,argv", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_up_front(cid, fragment, argv, shared, tmp_path, monkeypatch, capsys):  # noqa: F811
    out = refused_up_front(argv, fragment, shared, tmp_path, monkeypatch, capsys)
    assert "INFO paddle2ort.benchmarks." not in out, "a row was scored or timed before the refusal"


def test_the_bundles_source_named_otherwise_is_its_peer(shared, tmp_path):
    """--paddle-model's files are compared with the bundle's source by role: a renamed copy of the source is it."""
    from paddle2ort.convert.peer import matching_source
    from paddle2ort.runtime.manifest import load_bundle
    w = W(tmp_path, shared, dict(os.environ))
    src = matching_source(_renamed(w, "bert_classifier"), load_bundle(w.bundle("clf")).manifest)
    assert src.model_file.name.startswith("other.")


def test_a_bench_run_without_a_plot_drops_the_earlier_runs_plot(shared, tmp_path, monkeypatch):
    """results.png shows this run's rows: a later run into the same folder without matplotlib has none, and the
    earlier run's results.png would sit beside the new results.json as if it were this run's."""
    from paddle2ort.benchmarks import report
    from paddle2ort.cli import main
    pytest.importorskip("matplotlib")
    w = W(tmp_path, shared, dict(os.environ))
    monkeypatch.chdir(tmp_path)
    argv = ["-q", *map(str, bench(w, "--limit", "2", "--repeats", "1", "--warmup", "0", "--threads", "1"))]
    assert main(argv) == 0
    assert (w.p("res") / "results.png").is_file()
    monkeypatch.setattr(report, "pyplot", lambda: None)               # as on an install without matplotlib
    assert main([*argv, "--limit", "1"]) == 0
    assert json.loads((w.p("res") / "results.json").read_text())["dataset"]["samples"] == 1
    assert not (w.p("res") / "results.png").exists()
