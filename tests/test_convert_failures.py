"""The gate bites: every failure is one clear error, the right exit code, and no output left behind."""
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from paddle2ort.convert import export as export_stage
from paddle2ort.cli import main
from paddle2ort.convert.paddle_proc import run_worker
from paddle2ort.convert.errors import ConversionError


def _convert(src, out, *extra):
    return main(["-q", "convert", str(src), "-o", str(out), *extra])


def test_perturbed_weight_fails_validation_with_exit_3(tiny_models, tmp_path, capsys):
    src, out = tiny_models("mlp"), tmp_path / "b"
    assert _convert(src, out) == 0
    path = out / "model.fp32.onnx"
    model = onnx.load(str(path))
    # paddle2onnx stores weights as initializers or as Constant nodes: take the largest weight either way
    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node if n.op_type == "Constant"
                                               for a in n.attribute if a.name == "value"]
    weight = max(tensors, key=lambda t: np.prod(t.dims))
    w = numpy_helper.to_array(weight).copy()
    w.flat[0] += 5.0                                                          # one weight, one value
    weight.CopyFrom(numpy_helper.from_array(w, weight.name))
    onnx.save(model, str(path))
    capsys.readouterr()
    assert main(["-q", "validate", str(out), "--source", str(src)]) == 2          # the checksum catches it first
    assert "model.fp32.onnx" in capsys.readouterr().err
    import json                                  # a tamperer who also rewrites the manifest: the gate catches it
    from paddle2ort.runtime.manifest import sha256_file
    m = json.loads((out / "manifest.json").read_text())
    m["files"]["model.fp32.onnx"] = {"sha256": sha256_file(path), "size_bytes": path.stat().st_size}
    m["models"]["fp32"]["sha256"] = sha256_file(path)
    (out / "manifest.json").write_text(json.dumps(m))
    assert main(["-q", "validate", str(out), "--source", str(src)]) == 3
    msg = capsys.readouterr().err
    assert "fp32" in msg and f"weight {weight.name!r}" in msg and "differs from Paddle's parameter" in msg


@pytest.mark.parametrize("payload", [b"", b"not a protobuf at all"], ids=["zero-byte", "garbage"])
def test_silent_paddle2onnx_failure_is_exit_4(tiny_models, tmp_path, monkeypatch, capsys, payload):
    def fake_export(source, save_file, opset, workdir):
        save_file.write_bytes(payload)
        log = workdir / "export.log"
        log.write_text("paddle2onnx: pretend everything went fine\n")
        return log, []

    monkeypatch.setattr(export_stage, "run_paddle2onnx", fake_export)
    out = tmp_path / "b"
    assert _convert(tiny_models("mlp"), out) == 4
    err = capsys.readouterr().err
    assert ("empty (0-byte)" if not payload else "invalid ONNX file") in err
    assert "pretend everything went fine" in err                     # the log tail is shown
    assert not out.exists()


def test_unsupported_operators_listed_with_counts(tiny_models, tmp_path, capsys):
    out = tmp_path / "b"
    assert _convert(tiny_models("unsupported"), out) == 4
    err = capsys.readouterr().err
    assert "pd_op.digamma (x1)" in err and "pd_op.lgamma (x2)" in err
    assert not out.exists()


def test_an_operator_form_paddle2onnx_refuses_is_named_not_the_abort(tiny_models, tmp_path, capsys):
    """conv2d is supported, NHWC conv2d is not: paddle2onnx logs the refusal, then aborts (SIGABRT). The error is
    the refusal and the fix, not the abort and a C++ stack."""
    out = tmp_path / "b"
    assert _convert(tiny_models("nhwc_conv"), out) == 4
    err = capsys.readouterr().err
    assert "pd_op.conv2d: Cannot support input with NHWC format" in err and "data_format='NCHW'" in err
    assert "SIGABRT" not in err and "C++ Traceback" not in err
    assert not out.exists()


@pytest.mark.unit
def test_operator_form_refusals_read_from_the_log():
    from paddle2ort.convert.errors import OperatorFormError
    log = ("[Paddle2ONNX] Start parsing the Paddle model file...\n"
           "[ERROR][Paddle2ONNX] [OP: pd_op.conv2d] Cannot support input with NHWC format.\n"
           "[ERROR][Paddle2ONNX] [OP: pd_op.conv2d] Cannot support input with NHWC format.\n"
           "[ERROR][Paddle2ONNX] [OP: pd_op.pool2d] Adaptive pooling with this output size is not supported\n"
           "[ERROR][Paddle2ONNX] There are unsupported features.\n")
    e = OperatorFormError.from_log(log, "2.1.0")
    assert e.refusals == {"pd_op.conv2d": ["Cannot support input with NHWC format"],
                          "pd_op.pool2d": ["Adaptive pooling with this output size is not supported"]}
    assert e.exit_code == 4 and "paddle2onnx 2.1.0 supports" in str(e)
    assert OperatorFormError.from_log("F1123 fatal: mapper exploded\n[ERROR][Paddle2ONNX] There are unsupported "
                                      "features.\n") is None          # no operator named: the crash stays a crash
    # an abort that names no op but one form (a Conformer's bool mask constants, helper-58's trial)
    e = OperatorFormError.from_log("[ERROR][Paddle2ONNX] Only support data type of FLOAT/DOUBLE/INT32/INT64 in "
                                   "Constant function.\nAborted\n", "2.1.0")
    assert list(e.refusals) == ["pd_op.full / full_like of dtype bool"]
    assert "astype('bool')" in str(e)


@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_worker_crash_is_reported(tmp_path, monkeypatch, mode):
    """A SIGABRT in the child (what paddle2onnx does on C++ errors) becomes a ConversionError, not a dead parent;
    in the warm (fork) mode the server survives it and runs the next task."""
    from paddle2ort.convert import paddle_proc
    script = tmp_path / "abort_worker.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        print("F1123 fatal: mapper exploded", sys.argv[1], flush=True)
        os.abort()
    """))
    monkeypatch.setenv("PADDLE2ORT_WORKER", mode)
    monkeypatch.setattr(paddle_proc, "WORKER_MODULE", str(script))
    for attempt in range(2):
        with pytest.raises(ConversionError) as e:
            run_worker("export", {}, tmp_path / f"work{attempt}")
        assert "SIGABRT" in str(e.value) and "mapper exploded export" in str(e.value)
    # Paddle crashing on the gate's samples is the samples' problem (exit 2, asking for real inputs), not the
    # conversion's (a DeepSpeech2's GRU aborted on generated lengths of 0 or 1)
    from paddle2ort.runtime.errors import BadInputError
    with pytest.raises(BadInputError) as e:
        run_worker("reference", {}, tmp_path / "work-ref")
    assert "SIGABRT" in str(e.value) and "--inputs" in str(e.value) and "mapper exploded reference" in str(e.value)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("mode", ["fork", "spawn"])
def test_worker_timeout_kills_the_task(tmp_path, monkeypatch, mode):
    from paddle2ort.convert import paddle_proc
    script = tmp_path / "hang.py"
    pidfile = tmp_path / "pid"
    script.write_text(f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)\n")
    monkeypatch.setenv("PADDLE2ORT_WORKER", mode)
    monkeypatch.setattr(paddle_proc, "WORKER_MODULE", str(script))
    with pytest.raises(ConversionError, match="timed out after 3s"):
        run_worker("export", {}, tmp_path / "work", timeout_s=3)
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower() \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


# ---- bad input: exit 2, one clear message, no output directory ----

def test_missing_params(tiny_models, tmp_path, capsys):
    src = tmp_path / "m"
    shutil.copytree(tiny_models("mlp"), src)
    (src / "model.pdiparams").unlink()
    assert _convert(src, tmp_path / "b") == 2
    assert "model.pdiparams not found" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_truncated_params(tiny_models, tmp_path, capsys):
    src = tmp_path / "m"
    shutil.copytree(tiny_models("mlp"), src)
    p = src / "model.pdiparams"
    p.write_bytes(p.read_bytes()[:100])
    assert _convert(src, tmp_path / "b") == 2
    assert "truncated" in capsys.readouterr().err and not (tmp_path / "b").exists()


@pytest.mark.parametrize("error, kind", [
    (RuntimeError("(PreconditionNotMet) The size of params file does not match"), "BadInput"),
    (OSError(11, "Resource temporarily unavailable"), "RuntimeError"),       # pthread_create's EAGAIN: no threads left
    (RuntimeError("std::bad_alloc"), "RuntimeError"), (MemoryError(), "RuntimeError")])
def test_a_host_out_of_resources_is_not_blamed_on_the_model_files(error, kind):
    """Paddle failing to load for want of threads or memory is exit 4 'run again', never exit 2 'your params file is
    truncated' (a run beside a thread-hungry job was told its good model was corrupt)."""
    from paddle2ort.convert._worker import load_error
    got = load_error(error, "m/model.json", "m/model.pdiparams")
    assert type(got).__name__ == kind
    assert ("truncated" in str(got)) == (kind == "BadInput") and ("ran out" in str(got)) == (kind != "BadInput")


def test_a_resaved_1x_folder_that_fails_to_load_is_named_not_our_copy():
    """The user gave a Paddle 1.x folder; Paddle loading our re-saved copy of it fails: the message names their
    folder, never the temporary fluid1_resaved files they never saw."""
    from paddle2ort.convert._worker import load_error
    got = load_error(RuntimeError("(PreconditionNotMet) The size of params file does not match"),
                     "/tmp/paddle2ort-x/fluid1_resaved.pdmodel", "/tmp/paddle2ort-x/fluid1_resaved.pdiparams",
                     origin="models/senta")
    assert "models/senta" in str(got) and "fluid1_resaved" not in str(got) and "re-copy the whole folder" in str(got)



# A legacy program whose op Paddle no longer registers (Senta 1.x's sequence_unpad): the relu of build_legacy renamed
# in its ProgramDesc, as a .pdmodel pair or as a 1.x directory (__model__ + one file per variable).
_REMOVED_OP = textwrap.dedent("""
    import shutil, sys
    from pathlib import Path
    import paddle
    from paddle.base.proto import framework_pb2
    src, out, layout = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    out.mkdir(parents=True)
    desc = framework_pb2.ProgramDesc()
    desc.ParseFromString((src / "model.pdmodel").read_bytes())
    next(op for op in desc.blocks[0].ops if op.type == "relu").type = "sequence_unpad"
    if layout == "pdmodel":
        (out / "model.pdmodel").write_bytes(desc.SerializeToString())
        shutil.copy(src / "model.pdiparams", out / "model.pdiparams")
    else:
        sys.path.insert(0, sys.argv[4])                          # tests/: paddle_models
        from paddle_models import save_fluid1_vars
        save_fluid1_vars(src, out)
        (out / "__model__").write_bytes(desc.SerializeToString())
""")


@pytest.mark.parametrize("layout", ["pdmodel", "fluid1"])
def test_an_operator_paddle_no_longer_has_is_named_not_blamed_on_the_params(tiny_models, tmp_path, capsys, layout):
    """Senta 1.x's model uses sequence_unpad, which Paddle 3 no longer registers: Paddle Inference refuses it with
    'Operator (sequence_unpad) is not registered'. That is named as such (exit 2, re-export), never as a truncated
    or mismatched params file (and never by the work directory's re-saved copy of a 1.x directory)."""
    from conftest import run_python
    src = tmp_path / "m"
    run_python("-c", _REMOVED_OP, str(tiny_models("legacy")), str(src), layout, str(Path(__file__).parent))
    assert _convert(src, tmp_path / "b") == 2
    err = capsys.readouterr().err
    assert "does not have: sequence_unpad (x1)" in err and "Re-export" in err
    assert "truncated" not in err and "fluid1_resaved" not in err and not (tmp_path / "b").exists()

def test_directory_with_two_models(tiny_models, tmp_path, capsys):
    src = tmp_path / "m"
    shutil.copytree(tiny_models("mlp"), src)
    shutil.copy(src / "model.json", src / "other.json")
    shutil.copy(src / "model.pdiparams", src / "other.pdiparams")
    assert _convert(src, tmp_path / "b") == 2
    assert "holds 2 Paddle models" in capsys.readouterr().err and not (tmp_path / "b").exists()


@pytest.mark.parametrize("name,content", [("notes.txt", b"hello"), ("config.json", b'{"a": 1}')])
def test_non_paddle_file(tmp_path, capsys, name, content):
    f = tmp_path / name
    f.write_bytes(content)
    assert _convert(f, tmp_path / "b") == 2
    assert "not a Paddle" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_unwritable_output_path(tiny_models, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")                         # a file where a directory is needed (root ignores chmod)
    assert _convert(tiny_models("mlp"), blocker / "sub" / "bundle") == 2
    assert "not a writable directory" in capsys.readouterr().err


def test_existing_bundle_needs_overwrite(tiny_models, tmp_path, capsys):
    out = tmp_path / "b"
    assert _convert(tiny_models("mlp"), out) == 0
    before = (out / "manifest.json").read_bytes()
    assert _convert(tiny_models("mlp"), out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "manifest.json").read_bytes() == before
    # a failing overwrite keeps the good bundle
    assert _convert(tiny_models("mlp"), out, "--overwrite", "--threshold", "fp32.max_rel_diff=0") == 3
    assert (out / "manifest.json").read_bytes() == before
    assert _convert(tiny_models("mlp"), out, "--overwrite") == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # no staging dirs left


def test_usage_errors_exit_2(tmp_path):
    assert main(["convert"]) == 2
    assert main(["convert", str(tmp_path), "-o", str(tmp_path / "b"), "--precision", "int3"]) == 2
    assert main(["convert", str(tmp_path), "-o", str(tmp_path / "b"), "--opset", "99"]) == 2
    assert main(["convert", str(tmp_path), "-o", str(tmp_path / "b"), "--input-shape", "x:1,a"]) == 2


def test_help_documents_exit_codes(capsys):
    assert main(["convert", "--help"]) == 0
    out = capsys.readouterr().out
    for code in ("0 ok", "2 bad input", "3 validation failed", "4 conversion failed"):
        assert code in out


def test_runtime_never_imports_paddle():
    code = ("import sys, paddle2ort.runtime, paddle2ort.cli, paddle2ort.tokenization, "
            "paddle2ort.runtime.llm, paddle2ort.runtime.generation, paddle2ort.runtime.pipelines, "
            "paddle2ort.tokenization.bpe, paddle2ort.benchmarks.classifier, paddle2ort.benchmarks.llm, "
            "paddle2ort.benchmarks.perplexity, paddle2ort.convert.llm; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('paddle', 'paddle2onnx', 'paddlenlp')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_failing_fp16_names_the_block_list_fix(tiny_models, tmp_path, capsys):
    """FP16 failing where FP32 passes is mostly one op type overflowing: the error names --fp16-block-ops before the
    generic threshold advice (a real PP-OCRv4 det needs BatchNormalization kept in FP32)."""
    assert _convert(tiny_models("mlp"), tmp_path / "b", "--precision", "fp32,fp16",
                    "--threshold", "fp16.max_rel_diff=0") == 3
    err = capsys.readouterr().err
    assert "fp16: ONNX output does not match Paddle" in err
    assert err.index("--fp16-block-ops") < err.index("Thresholds can be overridden")
    assert not (tmp_path / "b").exists()
