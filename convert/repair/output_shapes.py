"""Static output shapes that are only upper bounds: Paddle's infer-meta gives a data-dependent output (NMS boxes,
nonzero indices, ...) a static bound (PicoDet's multiclass_nms3: [3598, 6]) and paddle2onnx declares it as the
graph output's shape. onnxruntime trusts declared shapes when it folds Shape nodes, so a value computed from the
output's shape (PicoDet's box count: 3598 instead of 100) is wrong; it also warns on every run. Each static dim of
an output downstream of a data-dependent operator that shape inference cannot confirm is made dynamic (named
`data_dependent_AXIS`, which convert.graph keeps dynamic)."""
from __future__ import annotations

import onnx

from ._shapes import shapes

NAME = "data_dependent_output_shapes"
DEFECT = "paddle2onnx declares Paddle's static upper bound as the shape of a data-dependent output"
DATA_DEPENDENT_OPS = {"NonMaxSuppression", "NonZero", "Unique", "Compress", "TopK"}
PREFIX = "data_dependent_"


def data_dependent_outputs(graph: onnx.GraphProto) -> set[str]:
    """Graph outputs with a data-dependent operator among their ancestors."""
    producer = {o: n for n in graph.node for o in n.output}
    found = set()
    for out in graph.output:
        stack, seen = [out.name], set()
        while stack:
            name = stack.pop()
            node = producer.get(name)
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if node.op_type in DATA_DEPENDENT_OPS:
                found.add(out.name)
                break
            stack.extend(node.input)
    return found


def apply(model: onnx.ModelProto) -> int:
    graph = model.graph
    suspects = [o for o in graph.output if o.name in data_dependent_outputs(graph)
                and any(d.HasField("dim_value") for d in o.type.tensor_type.shape.dim)]
    if not suspects:
        return 0
    inferred = shapes(graph, model.opset_import, trust_outputs=False)
    count = 0
    for out in suspects:
        proven = inferred.get(out.name) or []
        for axis, dim in enumerate(out.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and (axis >= len(proven) or proven[axis] != dim.dim_value):
                dim.Clear()
                dim.dim_param = f"{PREFIX}{axis}"
                count += 1
    return count
