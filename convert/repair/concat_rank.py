"""0-d inputs to Concat: paddle2onnx 2.x builds shape vectors by concatenating 0-d (scalar) shape values without
unsqueezing them, so onnxruntime refuses the graph (`All inputs to Concat must have same rank` or, when every input
is 0-d, `axis must be in [-rank, rank-1]`). Paddle's program means a 1-D vector there (paddle2onnx 1.3.1 wrote the
Unsqueeze): each 0-d input of a Concat of scalars and vectors gets an Unsqueeze to shape [1]."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ._shapes import ranks

NAME = "concat_rank0_inputs"
DEFECT = "paddle2onnx 2.x concatenates 0-d shape values without unsqueezing them"
MAX_PASSES = 8      # a repaired Concat can make the rank of a later one known; repeat until nothing changes


def _candidates(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    return [n for n in graph.node if n.op_type == "Concat"]


def _fix_pass(model: onnx.ModelProto, axes_name: str) -> int:
    graph = model.graph
    concats = _candidates(graph)
    if not concats:
        return 0
    rank = ranks(graph, model.opset_import)
    count, new_nodes = 0, []
    for node in graph.node:
        if node.op_type == "Concat":
            rs = [rank.get(i) for i in node.input]
            if 0 in rs and all(r in (0, 1, None) for r in rs):
                for k, (name, r) in enumerate(zip(node.input, rs)):
                    if r != 0:
                        continue
                    out = f"{name}__rank1_{node.name or 'concat'}_{k}"
                    new_nodes.append(helper.make_node("Unsqueeze", [name, axes_name], [out],
                                                      name=f"repair.{NAME}.{len(new_nodes)}.{node.name}"))
                    node.input[k] = out
                    count += 1
        new_nodes.append(node)
    if count:
        del graph.node[:]
        graph.node.extend(new_nodes)      # each Unsqueeze right before its Concat: the order stays topological
    return count


def apply(model: onnx.ModelProto) -> int:
    graph = model.graph
    if not _candidates(graph):
        return 0
    axes_name = f"repair.{NAME}.axes"
    total = 0
    for _ in range(MAX_PASSES):
        if not any(i.name == axes_name for i in graph.initializer):
            graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), axes_name))
        n = _fix_pass(model, axes_name)
        total += n
        if not n:
            break
    if not total:
        graph.initializer.remove(next(i for i in graph.initializer if i.name == axes_name))
    return total
