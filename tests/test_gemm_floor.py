"""The products floor (benchmarks/gemm_floor.py) on inline fused encoders: every product found with its shapes, the
FLOP count equal to the geometry's arithmetic, the skeleton computing exactly the graph's products (weights wired,
zero points kept), refusals for products it does not model."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from paddle2ort.benchmarks.encoder_graphs import fused_encoder_model
from paddle2ort.benchmarks.gemm_floor import Floor, FloorError, flops, products
from paddle2ort.runtime.kernels.encoder import random_weights

GEOMETRIES = [dict(layers=2, hidden=64, heads=4, inter=128), dict(layers=1, hidden=96, heads=3, inter=80)]


def expected_flops(g: dict, batch: int, seq: int, classes: int) -> int:
    h, i, n = g["hidden"], g["inter"], g["heads"]
    per_layer = 2 * batch * seq * (3 * h * h + h * h + 2 * h * i) + 2 * 2 * batch * n * seq * seq * (h // n)
    return g["layers"] * per_layer + 2 * batch * h * classes


def model(g: dict, path, classes: int = 3):
    w = random_weights(g["layers"], g["hidden"], g["heads"], g["inter"], vocab=50).astype(np.float32)
    onnx.save(fused_encoder_model(w, classes=classes, head="mean"), str(path))
    return w


@pytest.mark.unit
@pytest.mark.parametrize("g", GEOMETRIES, ids=lambda g: f"h{g['hidden']}x{g['layers']}")
def test_products_and_flops_match_the_geometry(g, tmp_path):
    model(g, tmp_path / "m.onnx", classes=5)
    prods, symbols = products(onnx.load(str(tmp_path / "m.onnx")))
    assert symbols == {"batch": "batch", "sequence": "sequence"}
    assert len(prods) == 6 * g["layers"] + 1           # QKV, Q K^T, S V, O, up, down a layer; the head
    assert sum(p.weight is not None for p in prods) == 4 * g["layers"] + 1
    for b, s in [(1, 7), (4, 33), (32, 128)]:
        assert flops(prods, symbols, [(b, s)]) == expected_flops(g, b, s, 5)
    assert flops(prods, symbols, [(1, 7), (4, 33)]) == expected_flops(g, 1, 7, 5) + expected_flops(g, 4, 33, 5)


@pytest.mark.unit
def test_skeleton_computes_the_graphs_products(tmp_path):
    g = GEOMETRIES[0]
    w = model(g, tmp_path / "m.onnx")
    floor = Floor(tmp_path / "m.onnx", threads=1)
    feed = {"input_ids": np.zeros((3, 11), np.int64)}
    outs = dict(zip([o.name for o in floor.model.graph.output], floor.outputs(feed)))
    x = floor.inputs(3, 11)
    qkv = next(i for i, p in enumerate(floor.products) if p.weight and p.b_dims == (g["hidden"], 3 * g["hidden"]))
    a = x[floor.model.graph.node[qkv].input[0]]
    np.testing.assert_allclose(outs[f"y{qkv}"], a @ w.layers[0].wqkv, rtol=1e-4, atol=1e-4)
    for i, p in enumerate(floor.products):           # every output at the shape the graph computes it
        a_shape, b_shape = p.shapes(3, 11, floor.symbols)
        assert outs[f"y{i}"].shape == (*a_shape[:-1], b_shape[-1])
    assert floor.gflop([feed]) * 1e9 == pytest.approx(expected_flops(g, 3, 11, 3))


@pytest.mark.unit
def test_int8_products_keep_the_weights_and_zero_points(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    g = GEOMETRIES[0]
    model(g, tmp_path / "m.onnx")
    # 7-bit weights, as convert.precision quantizes (reduce_range): on x86 without VNNI (AVX2, AVX-512F) MLAS's
    # u8 x s8 kernel adds byte-pair products in int16 with saturation, which the skeleton's full-range u8 inputs
    # against full-range int8 weights overflow (~1% of the pairs here); 2 x 255 x 64 < 2^15 cannot, so the
    # integer product below is exact on every ISA
    quantize_dynamic(str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), op_types_to_quantize=["MatMul"],
                     per_channel=True, reduce_range=True, weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})
    q = onnx.load(str(tmp_path / "q.onnx"))
    floor = Floor(tmp_path / "q.onnx", threads=1)
    ints = [p for p in floor.products if p.op == "MatMulInteger"]
    assert len(ints) == 3 * g["layers"] + 1
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    skel = {t.name: numpy_helper.to_array(t) for t in floor.model.graph.initializer}
    for p in ints:
        np.testing.assert_array_equal(skel[p.weight], inits[p.weight])
        if p.b_zero_point:
            np.testing.assert_array_equal(skel[p.b_zero_point], inits[p.b_zero_point])
    feed = {"input_ids": np.zeros((2, 5), np.int64)}
    outs = floor.outputs(feed)
    node = next(i for i, n in enumerate(floor.model.graph.node) if n.op_type == "MatMulInteger")
    a = floor.inputs(2, 5)[floor.model.graph.node[node].input[0]].astype(np.int32) - 128
    p = floor.products[node]
    zp = inits[p.b_zero_point].astype(np.int32) if p.b_zero_point else 0
    np.testing.assert_array_equal(outs[node], a @ (inits[p.weight].astype(np.int32) - zp))
    assert floor.gflop([feed]) * 1e9 == expected_flops(g, 2, 5, 3)


@pytest.mark.unit
def test_refuses_what_it_does_not_model(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    gemm = helper.make_model(helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"])], "g", [x], [y], [w]))
    with pytest.raises(FloorError, match="Gemm, which the floor does not model"):
        products(gemm)
    fixed = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    mm = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [fixed], [y], [w]))
    with pytest.raises(FloorError, match="not \\[batch, sequence\\] with symbolic dims"):
        products(mm)
    relu = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]))
    with pytest.raises(FloorError, match="no matrix product"):
        products(relu)


@pytest.mark.unit
def test_ceilings_from_a_run():
    """The ceiling is the peer's time over the products floor; a ceiling under the wanted ratio says 'no'."""
    from paddle2ort.benchmarks.encoder import ceiling_table, ceilings, rows_table
    row = lambda name, system, p, ms, **kw: {"name": name, "system": system, "precision": p, "ms_per_sample": ms,  # noqa: E731
                                             "pass_times_s": [ms], **kw}
    res = {"rows": [row("FP32-CPU fused-noskip tuned", "onnxruntime", "fp32", 3.6, session="tuned", accuracy=0.9,
                        variant="fused-noskip", gflop_per_s=180.0),
                    row("INT8-CPU unfused tuned", "onnxruntime", "int8", 1.5, session="tuned", accuracy=0.9,
                        variant="unfused"),
                    row("FP32 floor", "products-floor", "fp32", 3.0, variant="fused-noskip", gflop_per_s=215.0),
                    row("INT8 floor", "products-floor", "int8", 1.0, variant="unfused"),
                    row("Paddle", "paddle-inference", "fp32", 3.75), row("Paddle 1", "paddle-inference", "fp32", 7.0)]}
    fp32, int8 = ceilings(res)
    assert fp32["measured"] == pytest.approx(3.75 / 3.6) and fp32["ceiling"] == pytest.approx(1.25)
    assert fp32["floor_share"] == pytest.approx(3.0 / 3.6) and fp32["peer"] == "Paddle"
    assert int8["measured"] == pytest.approx(2.4) and int8["ceiling"] == pytest.approx(3.6)
    table = ceiling_table(res).splitlines()
    assert "| 1.25x | 83% | - | **no** |" in table[2] and "| 3.60x | 67% | - | yes |" in table[3]
    res["peaks"] = {"shape_mkn": [8, 8, 8], "before_and_after_the_passes": [{"MatMul": 200.0, "MatMulInteger": 500.0},
                                                                            {"MatMul": 215.0, "MatMulInteger": 400.0}]}
    res["rows"][3]["gflop_per_s"] = 250.0
    table = ceiling_table(res).splitlines()
    assert "8x8x8 product" in table[0] and "| 83% | 100% | **no** |" in table[2] and "| 67% | 50% | yes |" in table[3]
    assert "| FP32 floor | - | - | 3.000 | - | 215 |" in rows_table(res)
    assert ceilings({"rows": res["rows"][:2]}) == []


def test_floor_of_converted_bundles(clf_bundle):
    """paddle2onnx's graphs as the converter leaves them (FP32 and per-channel INT8 of a tiny BERT classifier): the
    floor finds their products (attention's included) and times them on the classifier's own batches."""
    from paddle2ort.benchmarks.encoder import floors_for
    from paddle2ort.runtime.pipelines import TextClassifier
    from paddle2ort.runtime.session import SessionOptions
    clfs = {("v", p, "default"): TextClassifier(clf_bundle, precision=p, session=SessionOptions(device="cpu"))
            for p in ("fp32", "int8")}
    feeds = [clfs[("v", "fp32", "default")].encode(t) for t in (["short"], ["a somewhat longer text", "and another"])]
    floors = floors_for(clfs, feeds, threads=1)
    fp32, int8 = floors[("v", "fp32")], floors[("v", "int8")]
    assert fp32.summary()["activation products"] == int8.summary()["activation products"] > 0
    assert fp32.summary()["weight GEMMs"] > 0 and int8.summary()["ops"] == ["MatMul", "MatMulInteger"]
    assert fp32.gflop(feeds) > 0
    assert fp32.gflop(feeds) == pytest.approx(int8.gflop(feeds))    # the same math, whatever the precision
    for fl in (fp32, int8):
        for f in feeds:
            fl.run(f)
    skipped = {}                                  # a product the floor does not model: that graph gets none
    import paddle2ort.benchmarks.gemm_floor as gf
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gf, "UNMODELLED", gf.UNMODELLED + ("MatMulInteger",))
        assert list(floors_for(clfs, feeds, threads=1, skipped=skipped)) == [("v", "fp32")]
    assert list(skipped) == ["v:int8"] and "MatMulInteger, which the floor does not model" in skipped["v:int8"]
