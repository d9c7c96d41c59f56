"""The conversion gate re-run on a deployment host without Paddle (`paddle2ort validate BUNDLE`, convert.hostcheck):
the bundle keeps Paddle's outputs on the gate's samples; another host's CPU (other INT8/FP16 kernels) or GPU is
judged by the same rules. A host that computes a model otherwise (a weight changed, checksums rewritten: what a
different kernel's error looks like to the gate) is refused; a bundle that cannot be checked this way is exit 2
before any model runs."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import reseal
from paddle2ort.cli import main


@pytest.fixture(scope="module")
def gated(tiny_models, tmp_path_factory):
    """A tiny MLP bundle in every precision the gate judges, converted once for the module (where Paddle is: the
    GPU machine has none)."""
    from paddle2ort.runtime.files import module_available
    if not module_available("paddle"):
        pytest.skip("converts a tiny Paddle model: needs the converter side")
    from paddle2ort.convert import ConvertConfig, convert
    out = tmp_path_factory.mktemp("hostcheck") / "mlp"
    convert(ConvertConfig(source=tiny_models("mlp"), output=out, precisions=("fp32", "fp16", "int8")))
    return out


def _copy(bundle: Path, dst: Path) -> Path:
    shutil.copytree(bundle, dst)
    return dst


def _scale_largest_weight(model: Path, factor: float) -> None:
    """The largest float tensor of a linear layer's weight (its FP16 copy, or INT8's scale) times `factor`."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(model))
    floats = [t for t in m.graph.initializer if ".w_0" in t.name and np.any(numpy_helper.to_array(t))
              and numpy_helper.to_array(t).dtype in (np.float32, np.float16)]
    t = max(floats, key=lambda t: numpy_helper.to_array(t).size)
    a = numpy_helper.to_array(t)
    t.CopyFrom(numpy_helper.from_array((a * factor).astype(a.dtype), t.name))
    onnx.save(m, str(model))


def test_the_bundle_keeps_paddles_outputs_and_the_gates_host(gated):
    m = json.loads((gated / "manifest.json").read_text())
    assert "validation_outputs.npz" in m["files"]                  # covered by the checksums like every file
    v = json.loads((gated / "validation.json").read_text())
    assert v["host"]["provider"] == "CPUExecutionProvider" and v["host"]["cpu"] and v["host"]["onnxruntime"]
    with np.load(gated / "validation_inputs.npz") as x, np.load(gated / "validation_outputs.npz") as y:
        samples = {k.partition("/")[0] for k in x.files}
        assert {k.partition("/")[0] for k in y.files} == samples and len(y.files) == len(samples) * len(m["outputs"])


def test_the_gate_re_runs_here_and_reports(gated, tmp_path, capsys):
    report = tmp_path / "gate-here.json"
    assert main(["-q", "validate", str(gated), "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "gate ran on:" in out and "re-run here:" in out
    assert all(f"{p:10s} passed" in out for p in ("fp32", "fp16", "int8"))
    rep = json.loads(report.read_text())
    assert rep["passed"] is True and set(rep["models"]) == {"fp32", "fp16", "int8"}
    assert all(r["passed"] for r in rep["models"].values()) and rep["host"]["isa"] is not None
    assert main(["-q", "validate", str(gated), "--report", str(report)]) == 0      # its own report is replaced


def test_the_benchmark_tables_both_hosts(gated, tmp_path):
    from paddle2ort.benchmarks.hostcheck import main as bench
    assert bench(["run", str(gated), "--results", str(tmp_path / "r")]) == 0
    res = json.loads((tmp_path / "r" / "hostcheck.json").read_text())
    assert res["summary"] == {"bundles": 1, "models_judged": 3, "passed_here": 3, "unchecked_bundles": 0}
    row = res["rows"][0]
    assert row["gate_host"]["cpu"] and set(row["models"]) == {"fp32", "fp16", "int8"}
    assert all(r["gate"]["passed"] and r["here"]["passed"] for r in row["models"].values())
    assert "**3 of 3** model checks pass here" in (tmp_path / "r" / "hostcheck.md").read_text()


def test_no_paddle_is_needed(gated):
    """A deployment host has onnxruntime and onnx, not Paddle: the check imports neither paddle nor paddle2onnx."""
    code = ("import sys; sys.modules.update(paddle=None, paddle2onnx=None, paddlenlp=None)\n"
            "from paddle2ort.cli import main; sys.exit(main(['-q', 'validate', sys.argv[1]]))")
    r = subprocess.run([sys.executable, "-c", code, str(gated)], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "int8       passed" in r.stdout


def test_without_onnx_the_check_names_its_extra(gated, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["-q", "validate", str(gated)]) == 2
    assert "paddle2ort[check]" in capsys.readouterr().err


@pytest.mark.parametrize("prec", ["fp16", "int8"])
def test_a_host_computing_a_model_otherwise_is_refused(gated, tmp_path, capsys, prec):
    b = _copy(gated, tmp_path / "b")
    _scale_largest_weight(b / f"model.{prec}.onnx", 1.5)
    reseal(b)
    report = tmp_path / "r.json"
    assert main(["-q", "validate", str(b), "--report", str(report)]) == 3
    captured = capsys.readouterr()
    assert f"  {prec}: " in captured.err and "1 of 3 models fail" in captured.err
    rep = json.loads(report.read_text())
    assert rep["passed"] is False and rep["models"][prec]["passed"] is False and rep["models"][prec]["error"]
    assert all(rep["models"][p]["passed"] for p in ("fp32", "fp16", "int8") if p != prec)


def test_a_bundle_without_the_recorded_outputs_says_how_to_check_it(gated, tmp_path, capsys):
    b = _copy(gated, tmp_path / "old")
    (b / "validation_outputs.npz").unlink()
    reseal(b)
    assert main(["-q", "validate", str(b)]) == 2
    err = capsys.readouterr().err
    assert "validation_outputs.npz" in err and "--source" in err


def test_a_changed_reference_fails_the_checksums(gated, tmp_path, capsys):
    b = _copy(gated, tmp_path / "t")
    with np.load(b / "validation_outputs.npz") as d:
        arrays = {k: d[k] * 2 for k in d.files}
    np.savez(b / "validation_outputs.npz", **arrays)
    assert main(["-q", "validate", str(b)]) == 2
    assert "validation_outputs.npz" in capsys.readouterr().err


def test_report_paths_are_checked_before_the_gate_runs(gated, tmp_path, capsys):
    assert main(["-q", "validate", str(gated), "--report", str(gated / "r.json")]) == 2
    assert "inside the bundle" in capsys.readouterr().err and not (gated / "r.json").exists()
    theirs = tmp_path / "notes.json"
    theirs.write_text('{"mine": true}')
    assert main(["-q", "validate", str(gated), "--report", str(theirs)]) == 2
    assert theirs.read_text() == '{"mine": true}'


def test_a_threshold_for_a_model_the_bundle_lacks_is_refused(gated, capsys):
    assert main(["-q", "validate", str(gated), "--threshold", "int4.min_cosine=0.9"]) == 2
    assert "int4" in capsys.readouterr().err


def test_gpu_without_cuda_names_the_fix(gated, capsys):
    from paddle2ort.runtime.session import gpu_available
    if gpu_available():
        pytest.skip("checks the no-GPU path")
    assert main(["-q", "validate", str(gated), "--device", "gpu"]) == 2
    assert "onnxruntime-gpu" in capsys.readouterr().err


@pytest.mark.gpu
def test_the_gate_re_runs_on_cuda(gated, capsys):
    from paddle2ort.runtime.session import gpu_available
    if not gpu_available():
        pytest.skip("needs an NVIDIA GPU with onnxruntime-gpu")
    assert main(["-q", "validate", str(gated), "--device", "gpu"]) == 0
    assert "CUDAExecutionProvider" in capsys.readouterr().out


def test_a_run_stopped_before_judging_leaves_no_old_verdict(gated, tmp_path, capsys):
    report = tmp_path / "r.json"
    b = _copy(gated, tmp_path / "b")
    assert main(["-q", "validate", str(b), "--report", str(report)]) == 0
    with open(b / "model.fp16.onnx", "ab") as f:          # a changed file: refused before any model runs
        f.write(b"x")
    assert main(["-q", "validate", str(b), "--report", str(report)]) == 2
    rep = json.loads(report.read_text())
    assert rep["passed"] is False and "model.fp16.onnx" in rep["error"] and rep["exit_code"] == 2


def test_a_host_without_onnx_gets_the_message_not_a_traceback(gated):
    """In a new interpreter: the check for onnx comes before anything imports paddle2ort.convert."""
    code = ("import sys; sys.modules['onnx'] = None\n"
            "from paddle2ort.cli import main; sys.exit(main(['-q', 'validate', sys.argv[1]]))")
    r = subprocess.run([sys.executable, "-c", code, str(gated)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "paddle2ort[check]" in r.stderr and "Traceback" not in r.stderr, r.stderr[-800:]


def test_a_model_is_judged_at_the_optimization_level_its_bundle_caps(gated, tmp_path, monkeypatch):
    """A manifest's max_graph_optimization (a higher level crashed onnxruntime at conversion) is what every runtime
    loader uses: the re-run judges the model as it will run, not at "all"."""
    from paddle2ort.convert import validate as v
    b = _copy(gated, tmp_path / "capped")
    m = json.loads((b / "manifest.json").read_text())
    m["models"]["fp16"]["max_graph_optimization"] = "basic"
    (b / "manifest.json").write_text(json.dumps(m))
    seen, real = {}, v.create_session

    def create(model, opts):
        seen[Path(str(model)).name] = opts.graph_optimization
        return real(model, opts)
    monkeypatch.setattr(v, "create_session", create)
    assert main(["-q", "validate", str(b)]) == 0
    assert seen["model.fp16.onnx"] == "basic" and seen["model.fp32.onnx"] == "all"


def test_a_bundle_gated_on_the_users_inputs_is_rejudged_as_such(gated, tmp_path, monkeypatch):
    """validation.json says whose samples the gate ran on: a re-run's refusal then speaks of the user's --inputs
    (their fix), not of generated samples."""
    from paddle2ort.convert import api
    assert json.loads((gated / "validation.json").read_text())["samples_from"] == "generated"
    b = _copy(gated, tmp_path / "given")
    v = json.loads((b / "validation.json").read_text())
    v["samples_from"] = "inputs"
    (b / "validation.json").write_text(json.dumps(v))
    seen, real = [], api.validate

    def spy(prec, model, samples, refs, outputs, thr, user_inputs=False, **kw):
        seen.append(user_inputs)
        return real(prec, model, samples, refs, outputs, thr, user_inputs, **kw)
    monkeypatch.setattr(api, "validate", spy)
    assert main(["-q", "validate", str(reseal(b))]) == 0
    assert seen and all(seen)
    seen.clear()
    assert main(["-q", "validate", str(gated)]) == 0 and seen and not any(seen)
