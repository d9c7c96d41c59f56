"""`paddle2ort bench`: the perf run on a tiny classifier bundle, its Paddle Inference peer row, results files, bad input."""
import json

import numpy as np
import pytest

from paddle2ort.benchmarks.classifier import BenchConfig, evaluate_targets, run_bench
from paddle2ort.benchmarks.dataset import load_split
from paddle2ort.benchmarks.report import merge, write_results
from paddle2ort.cli import main
from paddle2ort.runtime.errors import BadInputError
from paddle2ort.runtime.pipelines import TextClassifier
from paddle2ort.runtime.timing import warmup_order

from near_tie import top2_margins

LABELS = ["negative", "neutral", "positive"]
TEXTS = ["driverless cars scare me", "i love my new car", "the bus is late again", "",
         "google builds a car", "traffic was fine today " * 20, "not sure about robots", "ok"]


@pytest.fixture
def dataset(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "label.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    lines = [f"{t}\t{LABELS[i % 3]}" for i, t in enumerate(TEXTS)]
    (d / "dev.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d


def test_bench_rows_match_the_pipeline_and_paddle(clf_bundle, tiny_models, dataset, tmp_path):
    cfg = BenchConfig(bundle=clf_bundle, dataset_dir=dataset, batch_size=3, warmup=2, repeats=2,
                      paddle_model=tiny_models("bert_classifier"))
    res = run_bench(cfg)
    rows = {r["name"]: r for r in res["rows"]}
    assert set(rows) == {"FP32-CPU", "FP16-CPU", "INT8-CPU", "Paddle-Inference-CPU"}
    # accuracy is what the pipeline predicts, computed independently here
    clf = TextClassifier(clf_bundle, batch_size=3)
    logits = clf.predict_logits(TEXTS)
    assert [p.label_id for p in clf(TEXTS)] == logits.argmax(-1).tolist()
    want = float(np.mean(logits.argmax(-1) == np.arange(len(TEXTS)) % 3))
    # the bench's threads, or Paddle Inference's kernels (IR passes + oneDNN, chosen per ISA), may flip a class only
    # at a near-tie: a row whose top-2 margin is within the FP32 gate's tie margin (1e-3 of the logits' spread; the
    # gate holds onnxruntime to Paddle within 1e-4 of it). None is, on these texts: then every class is the same.
    ties = int((top2_margins(logits) <= 1e-3 * np.ptp(logits)).sum())
    assert abs(rows["FP32-CPU"]["accuracy"] - want) <= ties / len(TEXTS) + 1e-9
    assert rows["Paddle-Inference-CPU"]["argmax_agreement_vs_fp32"] >= 1 - ties / len(TEXTS) - 1e-9
    for r in rows.values():
        assert r["samples"] == len(TEXTS) and len(r["pass_times_s"]) == 2
        assert r["ms_per_sample"] == pytest.approx(np.median(r["pass_times_s"]) / len(TEXTS) * 1e3)
        assert r["e2e_ms_per_sample"] == pytest.approx(r["ms_per_sample"] + r["tokenize_ms_per_sample"])
        assert 0 < r["p50_batch_ms"] <= r["p90_batch_ms"]
    assert rows["Paddle-Inference-CPU"]["notes"]["threads"] == res["config"]["threads"]
    assert res["environment"]["versions"]["paddlepaddle"] and res["environment"]["cpu"]
    assert {t["target"] for t in res["targets"]} >= {"INT8-CPU speed-up over FP32-CPU",
                                                      "FP32-CPU vs Paddle-Inference-CPU speed"}
    paths = write_results(res, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["rows"][0]["name"] == "FP32-CPU"
    assert "| FP32-CPU |" in paths["md"].read_text() and paths["png"].stat().st_size > 1000
    text, _ = merge([paths["json"], paths["json"]])
    assert text.count("| INT8-CPU |") == 2


@pytest.mark.unit
def test_limit_samples_the_whole_split_not_its_first_rows():
    """--limit N took the first N rows: on a split sorted by label (the zoo's dev.txt is) it measured one class."""
    from paddle2ort.benchmarks.classifier import spread_subset
    labels = [0] * 500 + [1] * 300 + [2] * 200                       # sorted by label
    for n in (3, 10, 100, 999):
        keep = spread_subset(len(labels), n)
        assert len(keep) == len(set(keep)) == n and keep == sorted(keep) and keep[-1] < len(labels)
        if n >= 10:
            assert {labels[i] for i in keep} == {0, 1, 2}
            counts = np.bincount([labels[i] for i in keep], minlength=3) / n
            assert np.allclose(counts, [0.5, 0.3, 0.2], atol=1 / n + 1e-9)   # each class in its share
    assert spread_subset(5, 10) == [0, 1, 2, 3, 4]


def test_bench_cli_writes_results(clf_bundle, dataset, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["-q", "bench", str(clf_bundle), "--dataset-dir", str(dataset), "--precision", "fp32",
                 "--repeats", "1", "--warmup", "0", "--output", str(out)]) == 0
    assert "| FP32-CPU |" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md", "results.png"]


@pytest.mark.unit
def test_targets_are_judged_on_measured_rows():
    rows = [{"name": "FP32-CPU", "ms_per_sample": 3.0, "accuracy": 0.80},
            {"name": "INT8-CPU", "ms_per_sample": 2.5, "accuracy": 0.785},
            {"name": "Paddle-Inference-CPU", "ms_per_sample": 2.0, "accuracy": 0.80},
            {"name": "FP16-GPU", "ms_per_sample": 0.1, "accuracy": 0.801}]
    got = {t["target"]: t["met"] for t in evaluate_targets(rows)}
    assert got == {"INT8-CPU speed-up over FP32-CPU": False, "INT8-CPU accuracy drop vs FP32-CPU": False,
                   "FP16-GPU accuracy vs FP32-CPU": True, "FP32-CPU vs Paddle-Inference-CPU speed": False}


@pytest.mark.unit
def test_warmup_covers_the_length_range():
    for n, w in [(10, 3), (100, 8), (7, 7), (2, 8), (50, 1), (33, 5)]:
        got = warmup_order(n, w)
        assert got == sorted(set(got)) and len(got) == min(w, n)        # distinct batches, as many as asked/exist
        assert got[0] == 0 and (w == 1 or got[-1] == n - 1)             # shortest and longest batches included
        if len(got) > 2:
            gaps = np.diff(got)
            assert gaps.max() - gaps.min() <= 1                         # evenly spread over the length range
    assert warmup_order(5, 0) == [] and warmup_order(0, 3) == []


@pytest.mark.unit
@pytest.mark.parametrize("content, message", [
    ("a text without tab\n", "has no TAB"),
    ("text\tsurprised\n", "not in label.txt"),
    ("\n\n", "has no examples"),
])
def test_dataset_bad_lines(dataset, content, message):
    (dataset / "dev.txt").write_text(content, encoding="utf-8")
    with pytest.raises(BadInputError, match=message):
        load_split(dataset, "dev")


@pytest.mark.unit
def test_dataset_bad_files(dataset, tmp_path):
    (dataset / "dev.txt").write_bytes(b"good\tpositive\nbad \xff\tnegative\n")
    with pytest.raises(BadInputError, match=r"dev.txt:2 is not valid UTF-8"):
        load_split(dataset, "dev")
    with pytest.raises(BadInputError, match="test.txt is missing"):
        load_split(dataset, "test")
    with pytest.raises(BadInputError, match="does not exist"):
        load_split(tmp_path / "nope", "dev")


def test_bench_cli_bad_input(clf_bundle, tiny_models, dataset, capsys):
    (dataset / "label.txt").write_text("positive\nnegative\nneutral\n", encoding="utf-8")
    assert main(["-q", "bench", str(clf_bundle), "--dataset-dir", str(dataset)]) == 2
    assert "does not match the bundle's labels" in capsys.readouterr().err
    (dataset / "label.txt").write_text("\n".join(LABELS), encoding="utf-8")
    assert main(["-q", "bench", str(clf_bundle), "--dataset-dir", str(dataset), "--precision", "bf16"]) == 2
    assert "has no bf16 model" in capsys.readouterr().err
    # a Paddle model that is not the bundle's source is refused before any timing
    assert main(["-q", "bench", str(clf_bundle), "--dataset-dir", str(dataset),
                 "--paddle-model", str(tiny_models("mlp"))]) == 2
    assert "not the model bundle" in capsys.readouterr().err


@pytest.mark.unit
def test_plot_headline_states_the_ratios_of_the_rows():
    from paddle2ort.benchmarks.report import headline
    rows = [({"name": "FP32-CPU", "system": "onnxruntime", "precision": "fp32", "ms_per_sample": 7.5}, {}),
            ({"name": "INT8-CPU", "system": "onnxruntime", "precision": "int8", "ms_per_sample": 5.0}, {}),
            ({"name": "Paddle-Inference-CPU", "system": "paddle-inference", "precision": "fp32",
              "ms_per_sample": 6.0}, {})]
    assert headline(rows) == "INT8-CPU 1.50x faster than FP32; FP32-CPU 1.25x slower than Paddle-Inference-CPU"
    assert headline(rows[:1]) == ""


@pytest.mark.unit
def test_report_says_when_a_missed_int8_speed_row_is_the_cpus():
    from paddle2ort.benchmarks.report import isa_note, markdown
    rows = [{"name": "FP32-CPU", "ms_per_sample": 3.0, "accuracy": 0.80, "tokenize_ms_per_sample": 0.1,
             "p50_batch_ms": 1.0, "p90_batch_ms": 2.0, "throughput": 10.0, "argmax_agreement_vs_fp32": 1.0,
             "device": "cpu"},
            {"name": "INT8-CPU", "ms_per_sample": 2.5, "accuracy": 0.80, "tokenize_ms_per_sample": 0.1,
             "p50_batch_ms": 1.0, "p90_batch_ms": 2.0, "throughput": 12.0, "argmax_agreement_vs_fp32": 1.0,
             "device": "cpu"}]
    env = {"versions": {}, "cpu": "x", "usable_cores": 2, "gpus": [], "git_commit": None}

    def res(flags, ms_int8=2.5):
        rs = [dict(rows[0]), dict(rows[1], ms_per_sample=ms_int8)]
        return {"benchmark": "b", "bundle": {"name": "m"}, "dataset": {"split": "dev", "samples": 2},
                "created_at": "t", "config": {"threads": 2, "batch_size": 32, "warmup": 1, "repeats": 1},
                "environment": {**env, **({} if flags is None else {"cpu_simd_flags": flags})},
                "rows": rs, "targets": evaluate_targets(rs)}
    assert "no int8 dot-product instructions" in markdown(res(["avx2", "fma"]))       # 1.2x on AVX2: the note
    assert isa_note(res(["avx2", "avx512_vnni"])) is None                             # a VNNI host: no excuse
    assert isa_note(res(["avx2"], ms_int8=1.0)) is None                               # target met: nothing to say
    assert isa_note(res(None)) is None                                                # flags not recorded
    assert isa_note(res(["asimd", "asimddp"])) is None                                # aarch64 with SDOT/UDOT
    assert "no int8 dot-product instructions" in (isa_note(res(["asimd"])) or "")     # aarch64 without them


@pytest.mark.unit
def test_cpu_flags_read_x86_and_aarch64_cpuinfo():
    from paddle2ort.benchmarks.env import ISA, cpu_flags
    x86 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx2 fma avx512_vnni\nbugs\t\t: x\n"
    arm = "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd asimddp i8mm bf16 sve\nCPU part\t: 0xd40\n"
    assert [f for f in ISA if f in cpu_flags(x86)] == ["sse4_2", "avx2", "fma", "avx512_vnni"]
    assert [f for f in ISA if f in cpu_flags(arm)] == ["asimd", "asimddp", "i8mm", "bf16", "sve"]
    assert cpu_flags("processor\t: 0\n") == set()
