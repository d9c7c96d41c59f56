"""The repair pass for paddle2onnx's known defects: each repair fixes its pattern (the graph loads and computes
the right values afterwards), leaves graphs without it untouched, and the converter names what it applied."""
import ast
import json
import math
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from paddle2ort.convert import export as export_stage
from paddle2ort.convert._worker import _export_failure
from paddle2ort.cli import main
from paddle2ort.convert.errors import ConversionError
from paddle2ort.convert.repair import (bool_where, concat_rank, f64_attrs, gelu_tanh, hardtanh_bounds, loop_shapes,
                                       output_shapes, repair_exported, repair_onnx, repair_program,
                                       thresholded_relu_value)
from conftest import run_python


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _reshape_by_scalar_concat(all_scalars: bool):
    """x[N, 4] reshaped by a shape vector concatenated from 0-d shape values (paddle2onnx 2.x's form)."""
    nodes = [h.make_node("Shape", ["x"], ["s"]),
             h.make_node("Gather", ["s", "i0"], ["n"], axis=0),            # 0-d: rank 0
             h.make_node("Gather", ["s", "i1"], ["c"], axis=0)]
    if all_scalars:       # every input 0-d: onnxruntime says `axis must be in [-rank, rank-1]`
        nodes.append(h.make_node("Concat", ["n", "c"], ["shape"], axis=0, name="Concat.0"))
    else:                 # 0-d next to 1-D: `All inputs to Concat must have same rank`
        nodes.append(h.make_node("Concat", ["n", "two", "half"], ["shape"], axis=0, name="Concat.0"))
    nodes.append(h.make_node("Reshape", ["x", "shape"], ["y"]))
    inits = [h.make_tensor("i0", T.INT64, [], [0]), h.make_tensor("i1", T.INT64, [], [1]),
             h.make_tensor("two", T.INT64, [1], [2]), h.make_tensor("half", T.INT64, [1], [2])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["N", 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, [None] * (2 if all_scalars else 3))], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


@pytest.mark.parametrize("all_scalars", [False, True], ids=["mixed-ranks", "all-0d"])
def test_concat_rank0_inputs_repaired(all_scalars):
    model = _reshape_by_scalar_concat(all_scalars)
    with pytest.raises(Exception, match="same rank|axis must be in"):
        _session(model)
    assert repair_onnx(model) == [{"name": concat_rank.NAME, "count": 2 if all_scalars else 1}]
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    (y,) = _session(model).run(None, {"x": x})
    np.testing.assert_array_equal(y, x.reshape(3, 4) if all_scalars else x.reshape(3, 2, 2))


def test_repairs_leave_a_sound_graph_untouched():
    g = h.make_graph([h.make_node("Shape", ["x"], ["s"]), h.make_node("Concat", ["s", "s"], ["y"], axis=0)], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, ["N", 4])], [h.make_tensor_value_info("y", T.INT64, [4])])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    before = model.SerializeToString()
    assert repair_onnx(model) == []
    assert model.SerializeToString() == before


def test_data_dependent_output_shape_no_longer_folded():
    """A static upper bound declared on a NonZero/NMS output makes onnxruntime fold Shape() of it (PicoDet's count)."""
    g = h.make_graph([h.make_node("NonZero", ["x"], ["idx"]), h.make_node("Shape", ["idx"], ["s"]),
                      h.make_node("Gather", ["s", "one"], ["n"], axis=0)], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [6])],
                     [h.make_tensor_value_info("idx", T.INT64, [1, 6]), h.make_tensor_value_info("n", T.INT64, [])],
                     [h.make_tensor("one", T.INT64, [], [1])])
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    x = {"x": np.array([0, 1, 0, 2, 0, 0], np.float32)}
    assert int(_session(model).run(["n"], x)[0]) == 6          # the bound, not the count: the defect
    assert repair_onnx(model) == [{"name": output_shapes.NAME, "count": 1}]
    dims = model.graph.output[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1 and dims[1].dim_param == f"{output_shapes.PREFIX}1"   # the provable dim stays
    idx, n = _session(model).run(None, x)
    assert int(n) == 2 and idx.tolist() == [[1, 3]]


def _pir_program():
    def op(name, attrs):
        return {"#": f"1.{name}", "A": attrs, "I": [], "O": []}

    def attr(name, kind, value):
        return {"AT": {"#": kind, "D": value}, "N": name}
    ops = [op("leaky_relu", [attr("negative_slope", "0.a_f64", 0.2)]),
           op("nearest_interp", [attr("scale", "0.a_array", [{"#": "0.a_f64", "D": 2.0}, {"#": "0.a_f64", "D": 2.0}]),
                                 attr("out_h", "0.a_i32", -1)]),
           op("bilinear_interp", [attr("scale", "0.a_array", [])]),
           op("pad3d", [attr("mode", "0.a_str", "constant"), attr("pad_value", "0.a_f64", 0.5)]),
           op("full", [attr("value", "0.a_f64", 0.5)])]           # float64 by design: left alone
    return {"base_code": {"magic": "pir"}, "program": {"regions": [{"blocks": [{"ops": ops}]}]}}


def test_paddle33_float64_attributes_repaired():
    program = _pir_program()
    assert repair_program(program) == [{"name": f64_attrs.NAME, "count": 3}]
    kinds = {(o["#"], a["N"]): a["AT"] for o in f64_attrs.walk_ops(program) for a in o["A"]}
    assert kinds[("1.leaky_relu", "negative_slope")]["#"] == "0.a_f32"
    assert kinds[("1.pad3d", "pad_value")] == {"#": "0.a_f32", "D": 0.5}
    assert {e["#"] for e in kinds[("1.nearest_interp", "scale")]["D"]} == {"0.a_f32"}
    assert kinds[("1.full", "value")]["#"] == "0.a_f64"
    assert repair_program(program) == []                            # applied only where the pattern is present


def _erf_gelus(n: int) -> onnx.ModelProto:
    """n GELUs in a row as paddle2onnx 2.1.0 writes every one: Mul(Mul(x, Add(Erf(Div(x, sqrt 2)), 1)), 0.5)."""
    from onnx import numpy_helper
    nodes, inits, x = [], [], "x"
    for k, v in {"sqrt2": math.sqrt(2.0), "one": 1.0, "half": 0.5}.items():
        inits.append(numpy_helper.from_array(np.array([v], np.float32), k))
    for k in range(n):
        out = f"p2o.pd_op.gelu.{k}.0"
        nodes += [h.make_node("Div", [x, "sqrt2"], [f"d{k}"]), h.make_node("Erf", [f"d{k}"], [f"e{k}"]),
                  h.make_node("Add", [f"e{k}", "one"], [f"a{k}"]), h.make_node("Mul", [x, f"a{k}"], [f"m{k}"]),
                  h.make_node("Mul", [f"m{k}", "half"], [out])]
        x = out
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [4, 8])],
                          [h.make_tensor_value_info(x, T.FLOAT, [4, 8])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_a_tanh_gelu_is_exported_as_one():
    """The program's second of two gelu ops approximates: only its graph becomes the tanh form; the first keeps erf."""
    def gelu(approximate):
        return {"#": "1.gelu", "A": [{"AT": {"#": "0.a_bool", "D": approximate}, "N": "approximate"}], "I": [], "O": []}
    program = {"program": {"regions": [{"blocks": [{"ops": [gelu(False), gelu(True)]}]}]}}
    assert gelu_tanh.sites(program) == [1]
    data, done = repair_exported(program, _erf_gelus(2).SerializeToString())
    assert done == [{"name": gelu_tanh.NAME, "count": 1}]
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node].count("Erf") == 1
    x = np.linspace(-4, 4, 32, dtype=np.float32).reshape(4, 8)
    erf = np.vectorize(math.erf)
    want = 0.5 * x * (1 + erf(x / math.sqrt(2)))
    want = 0.5 * want * (1 + np.tanh(math.sqrt(2 / math.pi) * (want + 0.044715 * want ** 3)))
    np.testing.assert_allclose(_session(model).run(None, {"x": x})[0], want, atol=1e-6)
    assert repair_exported({"program": {"regions": [{"blocks": [{"ops": [gelu(False)]}]}]}}, data) == (data, [])


def test_thresholded_relu_keeps_its_value():
    """Paddle's thresholded_relu gives `value` below the threshold, ONNX's ThresholdedRelu 0: the program's second op
    has value 0.1, so only the second node becomes Where(x > threshold, x, 0.1)."""
    def op(value):
        return {"#": "1.thresholded_relu", "I": [], "O": [],
                "A": [{"AT": {"#": "0.a_f32", "D": 0.3}, "N": "threshold"},
                      {"AT": {"#": "0.a_f32", "D": value}, "N": "value"}]}
    program = {"program": {"regions": [{"blocks": [{"ops": [op(0.0), op(0.1)]}]}]}}
    assert thresholded_relu_value.sites(program) == [0.0, pytest.approx(0.1)]
    nodes = [h.make_node("ThresholdedRelu", ["x"], ["a"], alpha=0.3),
             h.make_node("ThresholdedRelu", ["a"], ["y"], alpha=0.3)]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [8])],
                     [h.make_tensor_value_info("y", T.FLOAT, [8])])
    data, done = repair_exported(program, h.make_model(g, opset_imports=[h.make_opsetid("", 17)]).SerializeToString())
    assert done == [{"name": thresholded_relu_value.NAME, "count": 1}]
    x = np.linspace(-1, 1, 8, dtype=np.float32)
    a = np.where(x > np.float32(0.3), x, 0)
    want = np.where(a > np.float32(0.3), a, np.float32(0.1))
    np.testing.assert_array_equal(_session(onnx.load_from_string(data)).run(None, {"x": x})[0], want)


def test_hardtanh_bounds_given_under_the_names_paddle2onnx_reads():
    program = {"program": {"regions": [{"blocks": [{"ops": [
        {"#": "1.hardtanh", "A": [{"AT": {"#": "0.a_f32", "D": 0.0}, "N": "t_min"},
                                  {"AT": {"#": "0.a_f32", "D": 20.0}, "N": "t_max"}], "I": [], "O": []}]}]}]}}
    assert repair_program(program) == [{"name": hardtanh_bounds.NAME, "count": 1}]
    attrs = {a["N"]: a["AT"]["D"] for o in f64_attrs.walk_ops(program) for a in o["A"]}
    assert attrs == {"t_min": 0.0, "t_max": 20.0, "min": 0.0, "max": 20.0}
    assert repair_program(program) == []


def test_float_attribute_abort_is_explained():
    """paddle2onnx's C++ abort names no operator: the message lists the float64 attributes, the cause, the fix."""
    program = _pir_program()
    msg = _export_failure("(Unimplemented) the 0th elementwise MUST be ir::FloatAttribute\n  [Hint: ...]", program)
    assert "nearest_interp.scale (x1)" in msg and "leaky_relu.negative_slope (x1)" in msg
    assert "Paddle >= 3.3" in msg and "Next step" in msg


def test_onnxruntime_load_failure_names_node_cause_and_next_step(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_reshape_by_scalar_concat(False), str(path))
    with pytest.raises(ConversionError) as e:
        export_stage.check_onnx_file(path)
    msg = str(e.value)
    assert "node 'Concat.0' (Concat)" in msg and "0-d shape values" in msg and "Next step:" in msg


def test_repair_file_rewrites_only_when_applied(tmp_path):
    path = tmp_path / "m.onnx"
    model = _reshape_by_scalar_concat(False)
    onnx.save(model, str(path))
    assert export_stage.repair_file(path) == [{"name": concat_rank.NAME, "count": 1}]
    export_stage.check_onnx_file(path)                               # now loads
    stamp = path.stat().st_mtime_ns
    assert export_stage.repair_file(path) == [] and path.stat().st_mtime_ns == stamp


# ---- Paddle 1.x inference directories ----

_FLUID = textwrap.dedent("""
    import shutil, sys
    from pathlib import Path
    import paddle
    src, out, layout = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    out.mkdir(parents=True)
    shutil.copy(src / "model.pdmodel", out / "__model__")            # a 1.x __model__ is the same ProgramDesc
    if layout == "combined":
        shutil.copy(src / "model.pdiparams", out / "__params__")     # save_combine format, as 1.x wrote it
    else:                                                            # one file per variable (1.x default)
        sys.path.insert(0, sys.argv[4])                          # tests/: paddle_models
        from paddle_models import save_fluid1_vars
        save_fluid1_vars(src, out)
    print(sorted(p.name for p in out.iterdir()))
""")


@pytest.mark.parametrize("layout", ["combined", "per-variable"])
def test_paddle1_directory_is_resaved_and_converted(tiny_models, tmp_path, capsys, layout):
    src = tmp_path / "fluid"
    listing = run_python("-c", _FLUID, str(tiny_models("legacy")), str(src), layout, str(Path(__file__).parent),
                         stdout=True)
    assert "__model__" in listing and ("__params__" in listing) == (layout == "combined")
    out = tmp_path / "b"
    assert main(["-q", "convert", str(src), "-o", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["source"]["format"] == "fluid1" and "__model__" in m["source"]["sha256"]
    assert m["validation"]["fp32"]["passed"]
    assert sorted(p.name for p in src.iterdir()) == sorted(ast.literal_eval(listing))   # the user's files stay


def test_broken_program_file_is_not_blamed_on_the_params(tiny_models, tmp_path, capsys):
    import shutil
    src = tmp_path / "m"
    shutil.copytree(tiny_models("mlp"), src)
    prog = src / "model.json"
    prog.write_bytes(prog.read_bytes()[: prog.stat().st_size // 2])    # truncated program, intact params
    assert main(["-q", "convert", str(src), "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "program file" in err and "model.json" in err and "params file was not read" in err
    assert not (tmp_path / "b").exists()


def test_resize_empty_inputs_omitted_so_the_fp16_pass_keeps_a_loadable_graph(tmp_path):
    """paddle2onnx's Resize(X, roi=[], scales=[], sizes): the FP16 pass casts the empty tensors and onnxruntime
    then sees both scales and sizes (EISeg HRNet18). With the inputs omitted, the FP16 model loads and agrees."""
    from paddle2ort.convert.precision import to_fp16
    from paddle2ort.convert.repair import resize_inputs

    def model():
        g = h.make_graph([h.make_node("Resize", ["x", "empty", "empty", "sizes"], ["y"], mode="linear")], "g",
                         [h.make_tensor_value_info("x", T.FLOAT, [1, 1, 4, 4])],
                         [h.make_tensor_value_info("y", T.FLOAT, [1, 1, 8, 8])],
                         [h.make_tensor("empty", T.FLOAT, [0], []), h.make_tensor("sizes", T.INT64, [4], [1, 1, 8, 8])])
        return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    x = {"x": np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)}
    (ref,) = _session(model()).run(None, x)
    broken, fixed = tmp_path / "broken.onnx", tmp_path / "fixed.onnx"
    onnx.save(model(), str(broken))
    to_fp16(broken, tmp_path / "broken16.onnx")
    with pytest.raises(Exception, match="sizes.*scales|scales.*sizes"):
        ort.InferenceSession(str(tmp_path / "broken16.onnx"), providers=["CPUExecutionProvider"])
    m = model()
    assert repair_onnx(m) == [{"name": resize_inputs.NAME, "count": 2}]
    onnx.save(m, str(fixed))
    to_fp16(fixed, tmp_path / "fixed16.onnx")
    (y,) = ort.InferenceSession(str(tmp_path / "fixed16.onnx"), providers=["CPUExecutionProvider"]).run(None, x)
    np.testing.assert_allclose(y, ref, rtol=1e-2, atol=1e-2)


def _paddle_while_loop():
    """A Paddle while loop as paddle2onnx 2.1 writes it (SLANet-plus): the body declares the iteration count [1] and
    the [1]-shaped condition and counter 0-d, and the loop flag is chosen by a Where of booleans (select_input)."""
    body = h.make_graph(
        [h.make_node("Add", ["i_in", "one"], ["i_next"]), h.make_node("Add", ["acc_in", "acc_in"], ["acc_next"]),
         h.make_node("Less", ["i_next", "limit"], ["go"]), h.make_node("Where", ["go", "go", "no"], ["flag"])],
        "body", [h.make_tensor_value_info("iter", T.INT64, [1]), h.make_tensor_value_info("cond_in", T.BOOL, []),
                 h.make_tensor_value_info("i_in", T.INT64, []), h.make_tensor_value_info("acc_in", T.FLOAT, [1])],
        [h.make_tensor_value_info("flag", T.BOOL, []), h.make_tensor_value_info("i_next", T.INT64, []),
         h.make_tensor_value_info("acc_next", T.FLOAT, [1])],
        [h.make_tensor("one", T.INT64, [1], [1]), h.make_tensor("no", T.BOOL, [1], [False])])
    g = h.make_graph([h.make_node("Less", ["i0", "limit"], ["c0"]),
                      h.make_node("Loop", ["", "c0", "i0", "x"], ["i", "acc"], body=body)], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [1])],
                     [h.make_tensor_value_info("i", T.INT64, [1]), h.make_tensor_value_info("acc", T.FLOAT, [1])],
                     [h.make_tensor("i0", T.INT64, [1], [0]), h.make_tensor("limit", T.INT64, [1], [3])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_paddle_while_loop_loads_and_computes_after_repair():
    """paddle2onnx's Loop fails onnx's inference in onnxruntime's load (inferred=1 declared=0), and its Where of
    booleans has no kernel; repaired, the loop runs three times as Paddle's would."""
    with pytest.raises(Exception, match="Loop|inferred|declared"):
        _session(_paddle_while_loop())
    m = _paddle_while_loop()
    assert repair_onnx(m) == [{"name": loop_shapes.NAME, "count": 5}, {"name": bool_where.NAME, "count": 1}]
    onnx.checker.check_model(m)
    i, acc = _session(m).run(None, {"x": np.array([1.5], np.float32)})
    assert i.tolist() == [3] and acc.tolist() == [12.0]
    assert repair_onnx(m) == []                                # repaired once: nothing left to change


def test_bool_where_alone_computes_in_uint8():
    g = h.make_graph([h.make_node("Where", ["c", "a", "b"], ["y"])], "g",
                     [h.make_tensor_value_info(n, T.BOOL, [4]) for n in "cab"],
                     [h.make_tensor_value_info("y", T.BOOL, [4])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    with pytest.raises(Exception, match="implementation for Where"):
        _session(m)
    assert repair_onnx(m) == [{"name": bool_where.NAME, "count": 1}]
    feed = {"c": np.array([1, 0, 1, 0], bool), "a": np.array([1, 1, 0, 0], bool), "b": np.array([0, 1, 1, 0], bool)}
    (y,) = _session(m).run(None, feed)
    assert y.dtype == bool and y.tolist() == [True, True, False, False]
