"""The FP32 model's weights against the Paddle model's parameters (convert/paddle_params.py): bit-equal after a real
conversion, a weight x 1.01 refused naming it (below the output gate's bounds on a PP-LCNetV2), a renamed or
reshaped weight skipped and counted; by values (npz) and by sha256 digests (models past the npz limit)."""
import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from paddle2ort.convert.errors import ValidationError
from paddle2ort.convert.paddle_params import (PARAMETERS_ROW, check_parameters, gate_parameters, paddle_parameters,
                                              parameters_row)
from paddle2ort.convert.validate import DEFAULT_THRESHOLDS


# ------------------------------------------------------------------------------------------ pure: hand-made arrays
def _model(path, weights: dict, constants: dict = (), external: bool = False):
    """A graph that reads every weight (x + sum of each), saved at `path` (its weights as external data if asked)."""
    inits = [numpy_helper.from_array(a, n) for n, a in weights.items()]
    nodes = [helper.make_node("Constant", [], [n], value=numpy_helper.from_array(a, n + "_t"))
             for n, a in dict(constants).items()]
    names = [*weights, *dict(constants)]
    for i, n in enumerate(names):
        nodes.append(helper.make_node("ReduceSum", [n], [f"s{i}"], keepdims=0))
    nodes.append(helper.make_node("Sum", ["x", *[f"s{i}" for i in range(len(names))]], ["y"]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])
    if external:
        onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=0)
    else:
        onnx.save(m, str(path))
    return path


@pytest.mark.unit
def test_check_parameters_hand_made(tmp_path):
    rng = np.random.default_rng(0)
    w, b, k, c = (rng.standard_normal(s).astype(np.float32) for s in ((4, 3), (3,), (2, 6), (5,)))
    bad = w.copy()
    bad[1, 2] *= np.float32(1.01)
    path = _model(tmp_path / "m.onnx", {"w": bad, "b": b, "k": k, "other.w_0": w}, {"c": c})
    params = {"w": w, "b": b, "k": k.reshape(3, 4), "c": c, "gone.w_0": w}
    r = check_parameters(path, params)
    assert r["checked"] == 3                                  # w, b and the Constant c
    assert r["skipped_renamed"] == 1 and r["skipped_reshaped"] == 1 and r["skipped_retyped"] == 0
    assert r["parameters"] == 5
    (v,) = r["violations"]
    assert "'w'" in v and "1 of 12 values" in v
    assert r["worst_abs"] == pytest.approx(abs(w[1, 2]) * 0.01, rel=1e-3)
    row = parameters_row(r)
    assert row["output"] == PARAMETERS_ROW and row["kind"] == "lineage" and row["violations"] == [v]
    # bitwise: -0.0 is not 0.0 (a weight the export rewrote is not the one Paddle holds)
    z = np.zeros(3, np.float32)
    assert check_parameters(_model(tmp_path / "z.onnx", {"z": -z}), {"z": z})["violations"]
    # another dtype under the name and shape: skipped, counted
    r = check_parameters(path, {"b": b.astype(np.float64)})
    assert r["checked"] == 0 and r["skipped_retyped"] == 1 and not r["violations"]


@pytest.mark.unit
def test_check_parameters_external_data_and_digests(tmp_path):
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((64, 32)).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    path = _model(tmp_path / "model.fp32.onnx", {"w": w * np.float32(1.01), "b": b}, external=True)
    assert (tmp_path / "model.fp32.onnx.data").is_file()
    r = check_parameters(path, {"w": w, "b": b})
    assert r["checked"] == 2 and len(r["violations"]) == 1 and "'w'" in r["violations"][0]
    assert f"of {w.size} values" in r["violations"][0]

    def digest(a):
        return {"dtype": a.dtype.name, "shape": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}

    r = check_parameters(path, {"w": digest(w), "b": digest(b), "x": digest(b)})
    assert r["checked"] == 2 and r["skipped_renamed"] == 1
    (v,) = r["violations"]
    assert "'w'" in v and "sha256" in v and r["worst_abs"] == float("inf")
    assert not check_parameters(path, {"w": digest(w * np.float32(1.01)), "b": digest(b)})["violations"]


@pytest.mark.unit
def test_gate_parameters_refuses_with_exit_3(tmp_path):
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = _model(tmp_path / "m.onnx", {"w": w + 1})
    with pytest.raises(ValidationError) as e:
        gate_parameters("fp32", path, {"w": w}, DEFAULT_THRESHOLDS["fp32"], 2)
    assert e.value.exit_code == 3 and "'w'" in str(e.value)
    assert ValidationError.OVERRIDE not in str(e.value)     # no --threshold can excuse a changed weight
    assert e.value.report["results"][0]["output"] == PARAMETERS_ROW and not e.value.report["passed"]
    row = gate_parameters("fp32", path, {"w": w + 1}, DEFAULT_THRESHOLDS["fp32"], 2)
    assert row["metrics"]["checked"] == 1 and not row["violations"]


# ------------------------------------------------------------------------- tiny Paddle models, converted for real
@pytest.fixture(scope="module", params=["mlp", "legacy"])
def converted(request, tiny_models, tmp_path_factory):
    """(FP32 model of a real conversion, Paddle's parameters by value, the same as sha256 digests): a PIR and a
    legacy (*.pdmodel) program."""
    from paddle2ort.convert import ConvertConfig, convert
    from paddle2ort.convert.source import locate
    root = tmp_path_factory.mktemp(f"params_{request.param}")
    src = tiny_models(request.param)
    convert(ConvertConfig(source=src, output=root / "bundle", precisions=("fp32",)))
    source = locate(src)
    params = paddle_parameters(source, root / "work")
    digests = paddle_parameters(source, root / "work_digests", max_npz_bytes=0)
    return root / "bundle" / "model.fp32.onnx", params, digests


def _edit(src, dst, name, fn):
    """A copy of the ONNX model at `src` with initializer `name` replaced by fn(its array)."""
    m = onnx.load(str(src))
    t = next(t for t in m.graph.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(t)), name))
    onnx.save(m, str(dst))
    return dst


def _weight(model_path, params) -> str:
    """The largest Paddle parameter in the model's initializers (a matrix, not a bias)."""
    inits = {t.name for t in onnx.load(str(model_path)).graph.initializer}
    return max((n for n in params.keys() if n in inits), key=lambda n: np.asarray(params[n]).size)


def test_real_export_is_bit_equal(converted):
    model, params, digests = converted
    assert len(params.keys()) >= 4
    for p in (params, digests):
        r = check_parameters(model, p)
        assert not r["violations"]
        assert r["checked"] + r["skipped_renamed"] + r["skipped_reshaped"] + r["skipped_retyped"] == r["parameters"]
        assert r["checked"] >= 4 and r["checked"] >= r["parameters"] - 1        # paddle2onnx keeps their names
    assert set(digests) == set(params.keys())


def test_weight_times_1_01_is_named(converted, tmp_path):
    model, params, digests = converted
    name = _weight(model, params)
    bad = _edit(model, tmp_path / "bad.onnx", name, lambda a: (a * np.float32(1.01)).astype(a.dtype))
    r = check_parameters(bad, params)
    (v,) = r["violations"]
    assert repr(name) in v and "largest difference" in v
    assert 0 < r["worst_abs"] <= 0.0101 * float(np.abs(params[name]).max())
    (v,) = check_parameters(bad, digests)["violations"]
    assert repr(name) in v and "sha256" in v
    with pytest.raises(ValidationError) as e:
        gate_parameters("fp32", bad, params, DEFAULT_THRESHOLDS["fp32"], 2)
    assert e.value.exit_code == 3 and repr(name) in str(e.value)


def test_renamed_initializer_is_skipped_and_counted(converted, tmp_path):
    model, params, _ = converted
    base = check_parameters(model, params)
    name = _weight(model, params)
    m = onnx.load(str(model))
    for t in m.graph.initializer:
        if t.name == name:
            t.name = name + "_renamed"
    for n in m.graph.node:
        n.input[:] = [name + "_renamed" if i == name else i for i in n.input]
    onnx.save(m, str(tmp_path / "renamed.onnx"))
    r = check_parameters(tmp_path / "renamed.onnx", params)
    assert not r["violations"]
    assert r["skipped_renamed"] == base["skipped_renamed"] + 1 and r["checked"] == base["checked"] - 1


def test_bundle_external_data_is_read(converted, tmp_path):
    """A bundle whose FP32 weights lie in model.fp32.onnx.data (models past 2 GiB): read from there."""
    model, params, _ = converted
    m = onnx.load(str(model))
    out = tmp_path / "model.fp32.onnx"
    onnx.save_model(m, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.fp32.onnx.data", size_threshold=0)
    r = check_parameters(out, params)
    assert not r["violations"] and r["checked"] == check_parameters(model, params)["checked"]
    name = _weight(model, params)              # its bytes in the data file x 1.01
    t = next(t for t in onnx.load(str(out), load_external_data=False).graph.initializer if t.name == name)
    info = {e.key: e.value for e in t.external_data}
    data = tmp_path / "model.fp32.onnx.data"
    raw = bytearray(data.read_bytes())
    at, n = int(info.get("offset", 0)), int(info["length"])
    a = np.frombuffer(bytes(raw[at:at + n]), np.float32) * np.float32(1.01)
    raw[at:at + n] = a.astype(np.float32).tobytes()
    data.write_bytes(bytes(raw))
    (v,) = check_parameters(out, params)["violations"]
    assert repr(name) in v
