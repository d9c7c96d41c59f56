"""thresholded_relu(x, threshold, value): Paddle gives `value` where x <= threshold; paddle2onnx 2.1.0 writes ONNX's
ThresholdedRelu, which gives 0 there, whatever the op's `value` (a probe with value 0.1 was refused by the gate,
no cause named). Where a program's thresholded_relu has a value other than 0, the k-th ThresholdedRelu node of the
graph (paddle2onnx maps the top block's ops in order, one node each) becomes Where(x > threshold, x, value).
A pair repair (the program and the exported graph), in the export worker."""
from __future__ import annotations

from ._program import attr, top_ops

NAME = "thresholded_relu_value"
DEFECT = "paddle2onnx 2.1.0 exports thresholded_relu without its value (0 below the threshold)"


def sites(program: dict) -> list[float]:
    """Each top-block thresholded_relu op's `value`, in program order, where any is not 0 (else [])."""
    values = [attr(op, "value", 0.0) for op in top_ops(program, "thresholded_relu")]
    values = [float(v) if isinstance(v, (int, float)) else 0.0 for v in values]
    return values if any(values) else []


def apply(model, values: list[float]) -> int:
    import numpy as np
    from onnx import helper, numpy_helper
    g = model.graph
    nodes = [n for n in g.node if n.op_type == "ThresholdedRelu"]
    if len(nodes) != len(values):
        return 0
    count = 0
    for k, (node, value) in enumerate(zip(nodes, values)):
        if not value:
            continue
        alpha = next((a.f for a in node.attribute if a.name == "alpha"), 1.0)
        tag = f"repair.{NAME}.{k}"
        g.initializer.extend([numpy_helper.from_array(np.array(alpha, np.float32), f"{tag}.threshold"),
                              numpy_helper.from_array(np.array(value, np.float32), f"{tag}.value")])
        x, out = node.input[0], node.output[0]
        new = [helper.make_node("Greater", [x, f"{tag}.threshold"], [f"{tag}.above"], name=f"{tag}.above"),
               helper.make_node("Where", [f"{tag}.above", x, f"{tag}.value"], [out], name=node.name or tag)]
        at = list(g.node).index(node)
        g.node.remove(node)
        for i, n in enumerate(new):
            g.node.insert(at + i, n)
        count += 1
    return count
