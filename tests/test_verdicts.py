"""Acceptance verdicts are computed from the committed results JSON, and the results READMEs say the same."""
import json
import shutil

import pytest

from paddle2ort.benchmarks import verdicts as V


pytestmark = pytest.mark.unit              # no Paddle, no assets: the committed results only


def test_every_committed_readme_agrees_with_the_json():
    assert V.stale(readme=V.PROJECT_README) == []


def test_headline_names_file_and_run_of_every_figure():
    text = V.headline_table(V.RESULTS)
    for h in V.HEADLINES:
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {h.figure} |"))
        assert f"`{h.file}`" in line and h.run in line


def test_every_target_reads_its_file_and_names_it(tmp_path):
    got = V.evaluate()
    assert len(got) == len(V.TARGETS)
    for v in got:
        assert (V.RESULTS / v.target.file).is_file()
        assert v.met == V.OPS[v.target.op](round(v.measured, 9), v.target.value)
    text = V.table(got)
    assert all(f"`{t.file}`" in text for t in V.TARGETS)
    assert {v.target.benchmark for v in got} == set(V.READMES)


def _copy_results(tmp_path):
    root = tmp_path / "results"
    shutil.copytree(V.RESULTS, root)
    return root


def test_a_changed_measurement_changes_the_verdict_and_flags_the_readme(tmp_path):
    root = _copy_results(tmp_path)
    path = root / "llm-gpu/run7/bench-qwen2.5-0.5b.json"
    res = json.loads(path.read_text())
    genai = next(r for r in res["rows"] if r["system"] == "onnxruntime-genai (CUDA graph)" and r["batch"] == 1)
    genai["tok_s_per_seq"] = 100.0                                  # ours would now be 7x the CUDA-graph peer
    path.write_text(json.dumps(res))
    V._load.cache_clear()
    try:
        before = {v.target.name: v.met for v in V.evaluate()}
        after = {v.target.name: v.met for v in V.evaluate(root=root)}
        changed = {k for k in before if before[k] != after[k]}
        assert changed == {"batch-1 decode >= 1.5x onnxruntime-genai with CUDA graphs, 0.5B"}
        assert V.stale(root) == ["llm-gpu/README.md"]
    finally:
        V._load.cache_clear()


def test_render_replaces_only_the_block_and_needs_one():
    vs = V.evaluate()
    text = f"intro\n{V.BEGIN}\nold\n{V.END}\noutro\n"
    out = V.render(text, "llm", vs)
    assert out.startswith("intro\n") and out.endswith("\noutro\n") and "old" not in out
    assert "ONNX FP32 perplexity" in out and "INT8-CPU" not in out
    assert V.render(out, "llm", vs) == out
    with pytest.raises(ValueError, match="verdicts:begin"):
        V.render("no markers", "llm", vs)


def test_check_command_fails_on_a_stale_readme(tmp_path, monkeypatch, capsys):
    root = _copy_results(tmp_path)
    readme = root / "llm/README.md"
    readme.write_text(readme.read_text().replace("| met |", "| **missed** |", 1))
    monkeypatch.setattr(V, "RESULTS", root)
    project = tmp_path / "README.md"
    shutil.copy(V.PROJECT_README, project)
    monkeypatch.setattr(V, "PROJECT_README", project)
    V._load.cache_clear()
    assert V.main(["--check"]) == 1
    assert "llm/README.md" in capsys.readouterr().err
    assert V.main(["--write"]) == 0 and V.main(["--check"]) == 0
