"""The matrix-product floor of a graph on its batches (issues 17.4 and 14): how long the products alone take.

Every matrix product the graph computes (the weight GEMMs, attention's two batched products a head, the head's
GEMM) is read from the graph with onnxruntime's symbolic shape inference, evaluated at each batch's (batch, sequence),
and run as the same onnxruntime operators (MatMul, MatMulInteger, MatMulNBits: the graph's own nodes, with the
bundle's weights, scales and zero points) in one standalone "skeleton" graph with nothing else in it; a decoder's
GroupQueryAttention can be left out by name (`skip`), making the floor a lower bound of a step. Its time is what the model would take if everything but the
products were free, on this host and this onnxruntime; with the FLOP count it turns "FP32 x 1.3 Paddle" or "INT8 x
1.8 FP32" into a ceiling a run can compute: peer time / floor time is the best ratio the graph can reach with these
kernels. Written here because no library counts a graph's products per shape (onnx-tool and the profilers count
per operator, not per padded batch) or times them alone.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PRODUCT_OPS = ("MatMul", "MatMulInteger", "MatMulNBits", "Attention")
# products this module does not model: a graph holding one fails loudly instead of reporting a floor without it,
# unless the caller leaves that op out by name (`skip`: a decoder's GroupQueryAttention, whose cost is the context's)
UNMODELLED = ("Gemm", "FusedMatMul", "QAttention", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearMatMul",
              "QGemm", "Conv", "ConvInteger", "MultiHeadAttention", "GroupQueryAttention")


class FloorError(ValueError):
    """The graph holds a product this module cannot time, or shapes it cannot resolve."""


@dataclasses.dataclass(frozen=True)
class Product:
    """One matrix product: A (a_dims) x B (b_dims, [K, N]), dims symbolic ('batch', 'sequence') or ints. `weight`:
    B's initializer name (a weight GEMM), else B is an activation (attention's products). `node`: the graph's own
    node for a weight product, which the skeleton runs as it is (attributes, scales, zero points) on its own A."""
    op: str                                  # MatMul | MatMulInteger | MatMulNBits
    a_dims: tuple
    b_dims: tuple
    weight: str | None
    node: onnx.NodeProto | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def b_zero_point(self) -> str | None:
        """MatMulInteger / MatMulNBits: the weight's zero point (the node's fourth input), if it has one."""
        n = self.node
        return (n.input[3] or None) if n is not None and n.op_type in ("MatMulInteger", "MatMulNBits") \
            and len(n.input) > 3 else None

    def shapes(self, batch: int, seq: int, symbols: dict) -> tuple[tuple, tuple]:
        return _concrete(self.a_dims, batch, seq, symbols), _concrete(self.b_dims, batch, seq, symbols)

    def flops(self, batch: int, seq: int, symbols: dict) -> int:
        a, b = self.shapes(batch, seq, symbols)
        return 2 * int(np.prod(a)) * int(b[-1])         # 2 M K N, batched over A's leading dims


def _concrete(dims: tuple, batch: int, seq: int, symbols: dict) -> tuple:
    out = []
    for d in dims:
        if isinstance(d, int):
            out.append(d)
            continue
        if d in (symbols["batch"], symbols["sequence"]):
            out.append(batch if d == symbols["batch"] else seq)
            continue
        import sympy
        try:
            v = sympy.sympify(d).subs({sympy.Symbol(symbols["batch"]): batch, sympy.Symbol(symbols["sequence"]): seq})
            out.append(int(v))
        except (TypeError, ValueError, sympy.SympifyError) as e:
            raise FloorError(f"dimension {d!r} is neither batch ({symbols['batch']!r}) nor sequence "
                             f"({symbols['sequence']!r}) nor a function of them") from e
    return tuple(out)


def _dims(t) -> tuple:
    return tuple(d.dim_param if d.dim_param else d.dim_value for d in t.type.tensor_type.shape.dim)


def products(model: onnx.ModelProto, skip: tuple[str, ...] = ()) -> tuple[list[Product], dict]:
    """The graph's products and its input symbols {'batch': name, 'sequence': name} (the first input's two dims);
    ops named in `skip` are left out (the floor is then that much lower)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    bad = sorted({n.op_type for n in model.graph.node if n.op_type in UNMODELLED and n.op_type not in skip})
    if bad:
        raise FloorError(f"the graph holds {', '.join(bad)}, which the floor does not model (it times "
                         f"{', '.join(PRODUCT_OPS)}; skip= leaves an op out by name)")
    first = _dims(model.graph.input[0])
    if len(first) != 2 or not all(isinstance(d, str) and d for d in first):
        raise FloorError(f"the first input {model.graph.input[0].name!r} is not [batch, sequence] with symbolic "
                         f"dims (got {list(first)})")
    symbols = {"batch": first[0], "sequence": first[1]}
    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    shapes = {v.name: _dims(v) for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    out = []
    for n in inferred.graph.node:
        if n.op_type not in PRODUCT_OPS or n.op_type in skip:
            continue
        a = shapes.get(n.input[0])
        if not a:
            raise FloorError(f"no inferred shape for {n.op_type} {n.name!r}'s input {n.input[0]!r}")
        if n.op_type == "Attention":             # com.microsoft: packed QKV GEMM, then softmax(Q K^T) V per head
            heads = next(x.i for x in n.attribute if x.name == "num_heads")
            w = inits.get(n.input[1])
            if w is None or len(w) != 2 or w[1] % 3:
                raise FloorError(f"Attention {n.name!r}: weights {n.input[1]!r} are not a [K, 3H] initializer")
            h = w[1] // 3
            bs, s = a[0], a[1]
            out += [Product("MatMul", tuple(a), w, n.input[1]),
                    Product("MatMul", (bs, heads, s, h // heads), (bs, heads, h // heads, s), None),
                    Product("MatMul", (bs, heads, s, s), (bs, heads, s, h // heads), None)]
            continue
        weight = n.input[1] if n.input[1] in inits else None
        if n.op_type == "MatMulNBits":         # B packed [N, blocks, bytes]: K and N are attributes
            attrs = {x.name: x.i for x in n.attribute}
            b = (attrs["K"], attrs["N"])
        else:
            b = inits[weight] if weight else shapes.get(n.input[1])
        if not b:
            raise FloorError(f"no inferred shape for {n.op_type} {n.name!r}'s input {n.input[1]!r}")
        out.append(Product(n.op_type, tuple(a), tuple(b), weight, node=n if weight else None))
    if not out:
        raise FloorError("the graph computes no matrix product")
    return out, symbols


def flops(prods: Iterable[Product], symbols: dict, shapes: Iterable[tuple[int, int]]) -> int:
    """FLOPs (2 per multiply-add) of every product over batches of the given (batch, sequence) shapes."""
    prods = list(prods)
    return sum(p.flops(b, s, symbols) for b, s in shapes for p in prods)


_ELEM = {TensorProto.FLOAT: np.float32, TensorProto.UINT8: np.uint8, TensorProto.INT8: np.int8}


def skeleton(model: onnx.ModelProto, prods: list[Product], symbols: dict) -> onnx.ModelProto:
    """One graph of the products alone: each product a node of its own op reading a graph input per distinct A (and
    activation B) shape and its own weight initializer (the bundle's bytes, zero points included); every product's
    output a graph output so none is pruned."""
    inits = {t.name: t for t in model.graph.initializer}
    ins, nodes, outs, used, feeds = {}, [], [], {}, {}

    def graph_input(dims: tuple, elem: int) -> str:
        key = (dims, elem)
        if key not in ins:
            name = f"x{len(ins)}"
            ins[key] = helper.make_tensor_value_info(name, elem, [d if isinstance(d, int) else str(d) for d in dims])
            feeds[name] = (dims, elem)
        return ins[key].name

    for i, p in enumerate(prods):
        elem = TensorProto.UINT8 if p.op == "MatMulInteger" else TensorProto.FLOAT
        a = graph_input(p.a_dims, elem)
        y = f"y{i}"
        if p.node is None:                   # an activation product (or one synthesized from Attention's weights)
            b = p.weight if p.weight else graph_input(p.b_dims, elem)
            if p.weight:
                used[p.weight] = inits[p.weight]
            nodes.append(helper.make_node(p.op, [a, b], [y]))
        else:                                # the graph's own node on the skeleton's A
            node_in = [a, *p.node.input[1:]]
            if p.op == "MatMulInteger" and len(node_in) > 2 and node_in[2] and node_in[2] not in inits:
                used["azp"] = numpy_helper.from_array(np.array(128, np.uint8), "azp")   # A's zero point: dynamic
                node_in[2] = "azp"
            for name in node_in[1:]:
                if name and name in inits:
                    used[name] = inits[name]
                elif name and name != "azp":
                    raise FloorError(f"{p.op} {p.node.name!r}: input {name!r} is neither A nor an initializer")
            copy = onnx.NodeProto()
            copy.CopyFrom(p.node)
            del copy.input[:]
            copy.input.extend(node_in)
            del copy.output[:]
            copy.output.append(y)
            nodes.append(copy)
        outs.append(helper.make_tensor_value_info(y, TensorProto.INT32 if p.op == "MatMulInteger" else TensorProto.FLOAT,
                                                  None))
    g = helper.make_graph(nodes, "products", list(ins.values()), outs, list(used.values()))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                          ir_version=8)
    m.metadata_props.add(key="symbols", value=f"{symbols['batch']},{symbols['sequence']}")
    return m


class Floor:
    """The products of one graph, timed on given batches: `run(feed)` runs the skeleton at that feed's (batch,
    sequence) on inputs drawn once (`outputs(feed)` returns what it computes); `gflop(feeds)` counts the FLOPs of those batches."""

    def __init__(self, model_path, threads: int, spinning: bool = True, seed: int = 0, skip: tuple[str, ...] = ()):
        model = onnx.load(str(model_path))
        self.skip = tuple(skip)
        self.products, self.symbols = products(model, skip)
        self.model = skeleton(model, self.products, self.symbols)
        self.session = _cpu_session(self.model, threads, spinning)
        self._rng = np.random.default_rng(seed)
        self._inputs: dict[tuple[int, int], dict] = {}

    @staticmethod
    def shape_of(feed: dict) -> tuple[int, int]:
        return tuple(int(x) for x in next(iter(feed.values())).shape[:2])

    def inputs(self, batch: int, seq: int) -> dict:
        key = (batch, seq)
        if key not in self._inputs:
            feeds = {}
            for i in self.model.graph.input:
                dims = _concrete(tuple(d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim), batch, seq,
                                 self.symbols)
                if i.type.tensor_type.elem_type == TensorProto.UINT8:
                    feeds[i.name] = self._rng.integers(0, 256, dims, dtype=np.uint8)
                else:
                    feeds[i.name] = self._rng.standard_normal(dims, dtype=np.float32)
            self._inputs[key] = feeds
        return self._inputs[key]

    def prepare(self, feeds: list[dict]) -> None:
        """Draw every batch's inputs before timing."""
        for f in feeds:
            self.inputs(*self.shape_of(f))

    def outputs(self, feed: dict) -> list:
        return self.session.run(None, self.inputs(*self.shape_of(feed)))

    def run(self, feed: dict) -> None:
        """The timed call: the products' outputs are dropped (a pass over a split would otherwise hold them all)."""
        self.outputs(feed)

    def gflop(self, feeds: list[dict]) -> float:
        return flops(self.products, self.symbols, [self.shape_of(f) for f in feeds]) / 1e9

    def summary(self) -> dict:
        kinds = {"weight GEMMs": sum(p.weight is not None for p in self.products),
                 "activation products": sum(p.weight is None for p in self.products)}
        return {"products": len(self.products), **kinds, "ops": sorted({p.op for p in self.products}),
                "left_out": list(self.skip)}


def _cpu_session(model: onnx.ModelProto, threads: int, spinning: bool):
    from paddle2ort.runtime.session import SessionOptions, create_session
    return create_session(model.SerializeToString(), SessionOptions(device="cpu", intra_op_threads=threads,
                                                                    intra_op_spinning=spinning))


PEAK_SHAPE = (2048, 1024, 1024)           # M, K, N: large enough that a GEMM kernel runs at its own best rate


def peak(threads: int, op: str = "MatMul", spinning: bool = True, shape: tuple = PEAK_SHAPE, runs: int = 15) -> float:
    """GFLOP/s (2 per multiply-add) of one large product through onnxruntime's `op` (MatMul float32, MatMulInteger
    u8 x s8) with these threads: the rate the floor's products would run at if their shapes cost nothing. Median of
    `runs` after 3 warm-ups."""
    from paddle2ort.runtime.timing import median_ms
    m, k, n = shape
    rng = np.random.default_rng(0)
    if op == "MatMulInteger":
        a, w = rng.integers(0, 256, (m, k), dtype=np.uint8), rng.integers(-127, 128, (k, n), dtype=np.int8)
        elem, out_elem = TensorProto.UINT8, TensorProto.INT32
    else:
        a, w = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
        elem, out_elem = TensorProto.FLOAT, TensorProto.FLOAT
    g = helper.make_graph([helper.make_node(op, ["a", "w"], ["y"])], "peak",
                          [helper.make_tensor_value_info("a", elem, [m, k])],
                          [helper.make_tensor_value_info("y", out_elem, [m, n])], [numpy_helper.from_array(w, "w")])
    sess = _cpu_session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), threads,
                        spinning)
    return 2 * m * k * n / median_ms(lambda: sess.run(None, {"a": a}), warmup=3, n=runs) / 1e6


def main(argv: list[str] | None = None) -> int:
    """`python -m paddle2ort.benchmarks.gemm_floor MODEL --batch B --seq S`: one shape's floor, as JSON on stdout
    (bench-llm runs it in a fresh process beside its other configurations)."""
    import argparse
    import json
    from pathlib import Path

    from paddle2ort.runtime.timing import median_ms
    ap = argparse.ArgumentParser(description="time an ONNX graph's matrix products alone at one (batch, sequence)")
    ap.add_argument("model", type=Path)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--calls", type=int, default=64, help="timed calls (the median is reported)")
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--skip", action="append", default=[], help="an op to leave out (repeatable)")
    ap.add_argument("--no-spin", action="store_true", help="intra-op threads do not spin")
    a = ap.parse_args(argv)
    fl = Floor(a.model, a.threads, spinning=not a.no_spin, skip=tuple(a.skip))
    feed = {"shape": np.zeros((a.batch, a.seq), np.int64)}
    ms = median_ms(lambda: fl.run(feed), warmup=a.warmup, n=a.calls)
    print(json.dumps({"ms": ms, "gflop": fl.gflop([feed]), **fl.summary()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

