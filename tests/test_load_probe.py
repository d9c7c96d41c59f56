"""onnxruntime can crash the process that loads a valid model (a CRNN's FP16 model at graph optimization "all" in
onnxruntime 1.32: SIGSEGV, the converter gone with exit 139 and no message). The gate loads every model it writes
in a child process first, from the highest level down; the bundle records the level that loaded, and the runtime
caps its sessions there. A crash at every level is one ConversionError naming it, nothing written.

The crashes here are real signals: a stand-in interpreter kills itself with SIGSEGV where the child's options ask
for a level that "crashes", and runs the real load otherwise; the CRNN test converts the real model kind, and holds
on onnxruntime versions that crash on it and on those that do not."""
import json
import os
import signal
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from paddle2ort.runtime import load_probe
from paddle2ort.runtime.errors import BundleError
from paddle2ort.runtime.manifest import ModelFile, load_bundle
from paddle2ort.runtime.session import SessionOptions

from test_session_unit import tiny_model


def crashing_python(tmp_path: Path, levels: tuple[str, ...], only: str = "") -> str:
    """An interpreter that dies of SIGSEGV when the probe asks for one of `levels` (for a model whose path holds
    `only`), and is the real one otherwise."""
    cases = "\n".join(f'  *\'"graph_optimization": "{lv}"\'*) kill -SEGV $$;;' for lv in levels)
    script = tmp_path / "python-crashing"
    script.write_text(f'#!/bin/sh\ncase "$3" in *"{only}"*)\n case "$3" in\n{cases}\n esac;;\nesac\n'
                      f'exec "{sys.executable}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.fixture
def fresh_probe(monkeypatch):
    monkeypatch.setattr(load_probe, "_LEVELS", {})


@pytest.mark.unit
def test_a_crash_is_a_signal_in_a_child_and_the_next_level_is_kept(tmp_path, monkeypatch, fresh_probe):
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_model())
    monkeypatch.setattr(load_probe.sys, "executable", crashing_python(tmp_path, ("all",)))
    tried = load_probe.probe_levels(model)
    assert [(r.level, r.signal, r.ok) for r in tried] == [("all", signal.SIGSEGV, False), ("extended", None, True)]
    assert tried[0].describe() == "crashes (SIGSEGV) at 'all'" and tried[0].crashed
    assert load_probe.safe_options(model).graph_optimization == "extended"
    assert load_probe.highest_loading_level(model) == "extended"
    # the options asked for are kept but the level, and a lower level asked for is not raised
    opts = SessionOptions(device="cpu", intra_op_threads=1, graph_optimization="basic")
    assert load_probe.safe_options(model, opts) == opts


@pytest.mark.unit
def test_a_model_that_loads_is_probed_once(tmp_path, monkeypatch, fresh_probe):
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_model())
    calls = []
    real = load_probe.load_in_child
    monkeypatch.setattr(load_probe, "load_in_child", lambda *a: calls.append(a) or real(*a))
    assert load_probe.highest_loading_level(model) is None
    assert load_probe.safe_options(model).graph_optimization == "all"
    assert len(calls) == 1
    os.utime(model, ns=(1, 1))                              # another file now: probed again
    load_probe.safe_options(model)
    assert len(calls) == 2


@pytest.mark.unit
def test_an_onnxruntime_error_in_the_child_is_reported_by_check_onnx_file(tmp_path, fresh_probe):
    from onnx import TensorProto, helper

    from paddle2ort.convert.errors import ConversionError
    from paddle2ort.convert.export import check_onnx_file
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    i = helper.make_tensor_value_info("i", TensorProto.INT64, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    g = helper.make_graph([helper.make_node("Add", ["x", "i"], ["y"], name="bad.add")], "g", [x, i], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)   # onnx.checker passes it
    path = tmp_path / "m.onnx"
    path.write_bytes(m.SerializeToString())
    with pytest.raises(ConversionError) as e:
        check_onnx_file(path, producer="the fp16 pass")
    assert "node 'bad.add' (Add)" in str(e.value) and "bound to different types" in str(e.value)
    assert "crashes" not in str(e.value)


@pytest.mark.unit
def test_a_crash_at_every_level_is_one_error_naming_them(tmp_path, monkeypatch, fresh_probe):
    from paddle2ort.convert.errors import ConversionError
    from paddle2ort.convert.export import check_onnx_file
    model = tmp_path / "model.fp16.onnx"
    model.write_bytes(tiny_model())
    monkeypatch.setattr(load_probe.sys, "executable",
                        crashing_python(tmp_path, ("all", "extended", "basic", "disable")))
    with pytest.raises(load_probe.LoadCrashError, match="crashes"):    # never loaded in this process then
        load_probe.safe_options(model)
    with pytest.raises(ConversionError) as e:
        check_onnx_file(model, producer="the fp16 pass")
    text = str(e.value)
    assert "crashes (SIGSEGV) at 'all'" in text and "crashes (SIGSEGV) at 'disable'" in text
    assert "leave this precision out of --precision" in text


@pytest.mark.unit
def test_the_manifest_field_and_the_runtime_cap(tmp_path):
    d = {"precision": "fp16", "file": "model.fp16.onnx", "sha256": "0" * 64, "size_bytes": 1}
    assert ModelFile.from_json(d).max_graph_optimization is None
    assert ModelFile.from_json({**d, "max_graph_optimization": "basic"}).max_graph_optimization == "basic"
    with pytest.raises(BundleError, match="max_graph_optimization.*one of"):
        ModelFile.from_json({**d, "max_graph_optimization": "fast"})


def test_convert_records_the_level_and_the_runtime_uses_it(tiny_models, tmp_path, monkeypatch, fresh_probe):
    """A crash loading the FP16 file only: the bundle ships with fp16 capped at "extended", fp32 uncapped; the
    runtime's session of fp16 runs at "extended", asked for "all"; `validate` on the bundle passes the same way."""
    from paddle2ort.cli import main
    from paddle2ort.convert import ConvertConfig, convert
    from paddle2ort.runtime.arrays import ArrayModel
    monkeypatch.setattr(load_probe.sys, "executable", crashing_python(tmp_path, ("all",), only="model.fp16.onnx"))
    out = tmp_path / "b"
    convert(ConvertConfig(source=tiny_models("mlp"), output=out, precisions=("fp32", "fp16")))
    bundle = load_bundle(out)
    assert bundle.manifest.models["fp16"].max_graph_optimization == "extended"
    assert bundle.manifest.models["fp32"].max_graph_optimization is None
    written = json.loads((out / "manifest.json").read_text())["models"]
    assert written["fp16"]["max_graph_optimization"] == "extended"
    assert "max_graph_optimization" not in written["fp32"]          # written only where a level crashed
    sess = ArrayModel(out, precision="fp16").runner.session
    assert sess.get_session_options().graph_optimization_level.name == "ORT_ENABLE_EXTENDED"
    sess = ArrayModel(out, precision="fp32").runner.session
    assert sess.get_session_options().graph_optimization_level.name == "ORT_ENABLE_ALL"
    asked = SessionOptions(graph_optimization="basic")
    assert bundle.session_options("fp16", asked) == asked
    assert main(["-q", "validate", str(out), "--source", str(tiny_models("mlp"))]) == 0


def test_a_crnn_converts_to_fp16_whatever_onnxruntime_does_with_it(tiny_models, tmp_path, fresh_probe):
    """The model kind that crashed onnxruntime 1.32 (conv features + bidirectional LSTM + softmax head): FP32 and
    FP16 convert and pass the gate; where a level crashed, the bundle records the one that loaded; either way the
    runtime's FP16 session loads and reads a line as the FP32 model does."""
    from paddle2ort.convert import ConvertConfig, convert
    from paddle2ort.runtime.arrays import ArrayModel
    out = tmp_path / "crnn"
    convert(ConvertConfig(source=tiny_models("crnn"), output=out, precisions=("fp32", "fp16")))
    bundle = load_bundle(out)
    tried = load_probe.probe_levels(bundle.model_path("fp16"))
    assert bundle.manifest.models["fp16"].max_graph_optimization == (tried[-1].level if len(tried) > 1 else None)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 100)).astype(np.float32)
    p16 = ArrayModel(out, precision="fp16")({"x": x})["softmax"]
    p32 = ArrayModel(out, precision="fp32")({"x": x})["softmax"]
    assert p16.shape == (2, 25, 37)
    assert np.abs(p16 - p32).max() < 1e-2


@pytest.mark.unit
def test_a_probe_that_cannot_run_is_no_crash(tmp_path, monkeypatch, fresh_probe, caplog):
    """A child that exits without a result and without a signal (the probe could not start: not a Python, the
    package not importable) says so and the model is loaded as unchecked, not refused as an onnxruntime crash."""
    import logging
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_model())
    fake = tmp_path / "not-python"
    fake.write_text("#!/bin/sh\necho 'no module named paddle2ort' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(load_probe.sys, "executable", str(fake))
    with caplog.at_level(logging.WARNING, logger="paddle2ort.runtime.load_probe"):
        assert load_probe.safe_options(model).graph_optimization == "all"
    assert "did not run" in caplog.text and "no module named paddle2ort" in caplog.text
