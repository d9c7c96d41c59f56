"""`paddle2ort release` with a new user's bad and unusual inputs: options of the other kind of release, odd tie
margins, thread counts, windows and generation lengths past the model's context, a dataset that is not the model's,
a dataset path naming a file, an LLM --name; each refused with one message (exit 2, no traceback) before the
conversion where it can be known then, leaving the work directory as it was. And: INT8 of a model without the ops
it rewrites is no candidate (the others are released), a run without a plot drops the earlier run's report.png, and
a run stopped before its bundle is in place leaves no PASSED report in --report-dir.

Cases run in this process through test_bad_inputs' runner pieces (its W world, shared tiny models, snapshot)."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import run_python
from test_bad_inputs import TRACEBACK, W, refused_up_front, shared  # noqa: F401 (fixture)
from test_release import release_args, write_dataset

from paddle2ort.cli import main

def rel(w: W, *extra, src=None):
    """A classifier release of the tiny BERT (not quiet: the log shows whether the conversion started)."""
    data = w.p("data") if w.p("data").exists() else write_dataset(w.p("data"))
    return release_args(src or w.shared.model("bert_classifier"), w.p("out"), data, *extra)[1:]


def llm_rel(w: W, *extra, src=None):
    """An LLM release of the tiny LLaMA (context 256 tokens) on 120 lines of a play."""
    from paddle2ort.benchmarks.texts import play_lines
    if not w.p("text").exists():
        w.text("text/dev.txt", "\n".join(play_lines()[:120]))
    llama = w.shared.model("llama")
    return ["release", src or llama / "model", "-o", w.p("out"), "--dataset-dir", w.p("text"), "--tokenizer",
            llama / "tokenizer", "--precision", "fp32", "--device", "cpu", "--window", "24", "--windows", "3",
            "--new-tokens", "4", "--repeats", "1", *extra]


def _llm_src_with_a_larger_bound(w: W):
    """The tiny LLaMA whose config.json also names seq_length 100000: config.json then bounds the context above
    256 (as QWen's seq_length and max_position_embeddings differ), so only the exported bundle's context tells."""
    d = w.p("llm_model")
    shutil.copytree(w.shared.model("llama") / "model", d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "seq_length": 100000}))
    return d


def _dataset_is_a_file(args: list, w: W) -> list:
    """--dataset-dir naming the text file itself instead of its folder."""
    i = args.index("--dataset-dir") + 1
    args[i] = w.text("text.txt", "To be, or not to be, that is the question")
    return args


CASES = [   # (id, fragment expected in the output, whether the conversion may have started, argv)
    ("llm-options-to-a-classifier", "--block-size, --window apply to llm releases; ", False,
     lambda w: rel(w, "--block-size", "64", "--window", "16")),
    ("new-tokens-to-a-classifier", "--new-tokens applies to llm releases", False,
     lambda w: rel(w, "--new-tokens", "8")),
    ("tie-margin-one", "argument --tie-margin: want a fraction in [0, 1)", False,
     lambda w: rel(w, "--tie-margin", "1")),
    ("tie-margin-percent", "argument --tie-margin: want a fraction in [0, 1)", False,
     lambda w: rel(w, "--tie-margin", "5")),
    ("threads-huge", "intra_op_threads=99999 is more than this host takes", False,
     lambda w: rel(w, "--threads", "99999")),
    ("llm-threads-huge", "intra_op_threads=99999 is more than this host takes", False,
     lambda w: llm_rel(w, "--threads", "99999")),
    # the model's classes are known after the inspect stage only (a Paddle worker, no export)
    ("dataset-of-another-model", "data/label.txt lists 3 labels (negative, neutral, positive) but the model's first "
     "output has 5 classes", True, lambda w: rel(w, src=w.shared.model("mlp"))),
    ("llm-window-past-the-context", "--window 300 is longer than the model's context of 256 tokens; pass --window 256",
     False, lambda w: llm_rel(w, "--window", "300", "--windows", "1")),
    ("llm-new-tokens-past-the-context", "--new-tokens 1000 after the 24-token prompt of the speed run exceed the "
     "model's context of 256 tokens; pass --new-tokens 232 or less", False,
     lambda w: llm_rel(w, "--new-tokens", "1000")),
    ("llm-window-past-the-exported-context", "--window 300 is longer than the model's context of 256 tokens", True,
     lambda w: llm_rel(w, "--window", "300", "--windows", "1", src=_llm_src_with_a_larger_bound(w))),
    # report.json beside the model's inference.json: the folder would hold two programs for the next convert
    ("report-dir-in-the-source", "is inside the source model folder", False,
     lambda w: rel(w, "--report-dir", w.shared.model("bert_classifier") / "ci")),
    ("llm-dataset-dir-is-a-file", "text.txt is a file; give the folder holding dev.txt", False,
     lambda w: _dataset_is_a_file(llm_rel(w), w)),
    ("llm-name-empty", "model name must be a non-empty single line, got ''", False, lambda w: llm_rel(w, "--name", "")),
    ("llm-name-two-lines", "model name must be a non-empty single line", False,
     lambda w: llm_rel(w, "--name", "a\nb")),
]


@pytest.mark.parametrize("cid,fragment,converts,argv", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_up_front(cid, fragment, converts, argv, shared, tmp_path, monkeypatch,  # noqa: F811
                                       capsys):
    out = refused_up_front(argv, fragment, shared, tmp_path, monkeypatch, capsys)
    if not converts:
        assert "paddle2ort.convert" not in out, f"converted before the refusal:\n{out[-3000:]}"
    assert "paddle2ort.benchmarks.classifier" not in out, "measured before the refusal"


# a text classifier whose layers are an embedding and a convolution: nothing dynamic INT8 rewrites (MatMul/Gemm)
TEXT_CNN = """
import sys, paddle
class TextCNN(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.emb, self.conv = paddle.nn.Embedding(30522, 8), paddle.nn.Conv1D(8, 3, 3, padding=1)
    def forward(self, input_ids, token_type_ids, attention_mask):
        mask = attention_mask.astype("float32").unsqueeze(1) + 0 * token_type_ids.astype("float32").unsqueeze(1)
        return (self.conv(self.emb(input_ids).transpose([0, 2, 1])) * mask).mean(axis=2)
paddle.seed(0)
m = TextCNN()
m.eval()
paddle.jit.save(m, sys.argv[1] + "/model", input_spec=[paddle.static.InputSpec([None, None], "int64", n)
                                                       for n in ("input_ids", "token_type_ids", "attention_mask")])
"""


def test_int8_of_a_model_without_the_ops_it_rewrites_is_no_candidate(tmp_path, capsys):
    """The default candidates include int8: a model it does not apply to is released at the others (the report says
    why int8 is not among them), not refused with `drop int8 from --precision` the user never gave."""
    src, out = tmp_path / "textcnn", tmp_path / "bundle"
    script = tmp_path / "text_cnn.py"              # a file: Paddle's dy2static reads the forward's source
    script.write_text(TEXT_CNN)
    run_python(str(script), str(src))
    assert main(release_args(src, out, write_dataset(tmp_path / "data"), "--output-names", "logits")) == 0
    printed = capsys.readouterr().out
    assert "released: cpu -> " in printed and "not made: nothing in the model INT8 rewrites" in printed
    assert "| int8 | n/a |" in printed and "**failed**" not in printed      # not made is not a failed gate
    by = {c["precision"]: c for c in json.loads((out / "manifest.json").read_text())["extra"]["release"]["cpu"]
          ["candidates"]}
    assert set(by) == {"fp32", "fp16", "int8"} and by["fp32"]["gate_passed"] and by["fp16"]["gate_passed"]
    assert not by["int8"]["gate_passed"] and by["int8"]["delta"] is None and not by["int8"]["within_budget"]
    assert "has none" in by["int8"]["gate"]["error"] and "note" not in by["int8"]["gate"]
    assert "model.int8.onnx" not in {p.name for p in out.iterdir()}


def test_a_run_without_a_plot_drops_the_earlier_runs_report_png(tiny_models, tmp_path, capsys):
    """FP32 failing its gate leaves nothing to plot: report.png of an earlier (passing) run must not stay beside
    this run's report.json/.md as if it were this run's figure."""
    ci = tmp_path / "ci"
    ci.mkdir()
    earlier = {"kind": "text-classification", "passed": True, "environment": {"versions": {"paddle2ort": "0"}}}
    (ci / "report.json").write_text(json.dumps(earlier))
    (ci / "report.png").write_bytes(b"\x89PNG earlier run")
    args = release_args(tiny_models("bert_classifier"), tmp_path / "o", write_dataset(tmp_path / "data"),
                        "--precision", "fp32", "--threshold", "fp32.max_rel_diff=0", "--report-dir", str(ci))
    assert main(args) == 3
    assert "FP32 fails the conversion gate" in capsys.readouterr().err
    assert sorted(p.name for p in ci.iterdir()) == ["report.json", "report.md"]
    assert json.loads((ci / "report.json").read_text())["passed"] is False


def test_a_run_stopped_before_its_bundle_is_in_place_leaves_no_passed_report(tiny_models, tmp_path, monkeypatch,
                                                                              capsys):
    """--report-dir is CI's evidence: a report saying PASSED with no bundle at -o (Ctrl-C or a CI timeout's SIGTERM
    while the bundle was being finished) would be a lie. The report goes there once the bundle is in place."""
    from paddle2ort.benchmarks import release

    def stopped(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(release, "_record_in_manifest", stopped)
    out, ci = tmp_path / "o", tmp_path / "ci"
    args = release_args(tiny_models("bert_classifier"), out, write_dataset(tmp_path / "data"), "--precision", "fp32",
                        "--report-dir", str(ci))
    assert main(args) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not out.exists() and not [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.")]
    assert not (ci / "report.json").exists()


def test_an_int8_only_classifier_release_for_the_gpu_is_refused_before_converting(tiny_models, tmp_path,
                                                                                   monkeypatch, capsys):
    """Dynamic INT8 is never run (so never released) on the GPU: with int8 the only candidate the GPU could get
    nothing, which the run found out only after converting and measuring (exit 3). A GPU host is faked: the refusal
    comes before anything touches the GPU."""
    from paddle2ort.benchmarks import release
    monkeypatch.setattr(release, "gpu_available", lambda: True)
    out = tmp_path / "o"
    args = release_args(tiny_models("bert_classifier"), out, write_dataset(tmp_path / "data"), "--precision", "int8")
    args[args.index("--device") + 1] = "gpu"
    assert main(args[1:]) == 2
    err = capsys.readouterr().err
    assert "the only candidate, int8, is never released for the GPU" in err and "--device cpu" in err
    assert "paddle2ort.convert" not in err and TRACEBACK not in err
    assert not out.exists()
