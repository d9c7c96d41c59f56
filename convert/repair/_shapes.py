"""Tensor ranks of an ONNX graph from onnx's shape inference, run on a weightless skeleton of the graph (large
weights become graph inputs of the same type and shape), so multi-GB models cost no copy of their weights."""
from __future__ import annotations

import onnx
from onnx import helper, shape_inference

_BIG = 4096          # elements; smaller Constant nodes stay (shape inference may read their values)


def all_graphs(graph: onnx.GraphProto):
    """A graph and every subgraph below it (Loop, If and Scan bodies, nested), the graph first."""
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from all_graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from all_graphs(g)


def _value_info(name: str, tensor) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims))


def ranks(graph: onnx.GraphProto, opset_import) -> dict[str, int]:
    """name -> rank for every tensor whose rank shape inference can tell (subgraphs not entered)."""
    return {k: len(v) for k, v in shapes(graph, opset_import).items()}


def _inferred(graph: onnx.GraphProto, opset_import, trust_outputs: bool = True):
    """(the skeleton after onnx's shape inference, its nodes)."""
    nodes, extra_inputs = [], []
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value" \
                and _numel(n.attribute[0].t) > _BIG:
            extra_inputs.append(_value_info(n.output[0], n.attribute[0].t))
        else:
            nodes.append(n)
    extra_inputs += [_value_info(t.name, t) for t in graph.initializer]
    outputs = list(graph.output) if trust_outputs else [onnx.ValueInfoProto(name=o.name) for o in graph.output]
    skeleton = helper.make_model(helper.make_graph(nodes, "skeleton", list(graph.input) + extra_inputs, outputs),
                                 opset_imports=list(opset_import))
    return shape_inference.infer_shapes(skeleton, strict_mode=False), nodes


def shapes(graph: onnx.GraphProto, opset_import, trust_outputs: bool = True) -> dict[str, list[int | None]]:
    """name -> dims (int when static, None when not) for every tensor whose rank shape inference can tell.
    `trust_outputs=False` infers the graph outputs from the nodes alone, not from their declared shapes."""
    inferred, nodes = _inferred(graph, opset_import, trust_outputs)
    out: dict[str, list[int | None]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    for n in nodes:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            out[n.output[0]] = list(n.attribute[0].t.dims)
    return out


def _numel(t) -> int:
    k = 1
    for d in t.dims:
        k *= d
    return k


def elem_types(graph: onnx.GraphProto, opset_import) -> dict[str, int]:
    """name -> TensorProto element type of every tensor type inference can tell, subgraphs (If branches, Loop
    bodies) included: ONNX names are unique across a model's scopes."""
    inferred, _ = _inferred(graph, opset_import)
    out: dict[str, int] = {}

    def visit(g: onnx.GraphProto) -> None:
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                out[vi.name] = vi.type.tensor_type.elem_type
        for t in g.initializer:
            out[t.name] = t.data_type
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                out[n.output[0]] = n.attribute[0].t.data_type
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    visit(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sub in a.graphs:
                        visit(sub)
    visit(inferred.graph)
    return out
