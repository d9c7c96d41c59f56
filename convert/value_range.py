"""The value range a graph output's producer guarantees: Sigmoid and Softmax write [0, 1], Tanh [-1, 1].

A gate failure of such an output on samples where it moves over less than metrics.JUDGED_SPREAD of this range is the
samples' fault (exit 2): onnxruntime's FP32 Sigmoid and Tanh are accurate to ~1e-7 absolute, not relative, near the
ends of their range, so where a probability stays near 0 or 1 (a detector shown a blank image) that rounding is as
large as the output's spread, and no error bound relative to the spread can tell a broken conversion from a good one.
Read from the graph, never from output names. onnx only; nothing here runs a model.
"""
from __future__ import annotations

# op -> the width of the interval it writes into
BOUNDED = {"Sigmoid": 1.0, "Softmax": 1.0, "Tanh": 2.0}
# ops whose output values are a selection or rearrangement of their first input's (a bound carries through)
PASS_THROUGH = {"Identity", "Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather",
                "GatherElements", "GatherND", "Expand", "Tile", "Split", "MaxPool", "ReduceMax", "ReduceMin",
                "DepthToSpace", "SpaceToDepth"}


def output_value_ranges(model) -> dict[str, tuple[str, float]]:
    """{graph output name: (bounding op, width of the range its values are bounded to)} for the outputs a bounded
    op produces through value-preserving ops (a Concat counts when every input is bounded). Others are absent."""
    producer = {o: n for n in model.graph.node for o in n.output if o}
    memo: dict[str, tuple[str, float] | None] = {}

    def width(name: str, depth: int = 0) -> tuple[str, float] | None:
        if name in memo:
            return memo[name]
        node = producer.get(name)
        w = None
        if node is not None and depth < 64:
            if node.op_type in BOUNDED and node.domain in ("", "ai.onnx"):
                w = (node.op_type, BOUNDED[node.op_type])
            elif node.op_type in PASS_THROUGH and node.input:
                w = width(node.input[0], depth + 1)
            elif node.op_type == "Concat" and node.input:
                parts = [width(i, depth + 1) for i in node.input]
                w = None if any(p is None for p in parts) else max(parts, key=lambda p: p[1])
        memo[name] = w
        return w

    return {o.name: w for o in model.graph.output if (w := width(o.name)) is not None}


# ops whose last axis scores classes: linear heads (float or quantized) and the normalizations over them
CLASS_SCORERS = {"MatMul", "Gemm", "Einsum", "MatMulInteger", "MatMulNBits", "DynamicQuantizeMatMul", "QGemm",
                 "Softmax", "LogSoftmax", "Sigmoid"}
# ops that keep the last axis where it was: shape moves that leave it last, and elementwise ops with a constant
KEEPS_LAST_AXIS = {"Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}
WITH_A_CONSTANT = {"Add", "Sub", "Mul", "Div"}


def class_axis_outputs(model) -> set[str]:
    """Outputs of rank 3 or more whose last axis a linear head, Softmax or Sigmoid scores (an OCR recognizer's
    [N, T, C], a token classifier's [N, T, tags]), found back through ops that keep that axis last. A keypoint
    model's [N, K, 2] coordinates (a Concat), an image's [N, 3, H, W] (a Conv) and a heatmap are not: an argmax
    over x and y or over a row of pixels means nothing. (A rank-2 output [N, C] is read as classes as it stands.)"""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output if o}
    consts = {t.name for t in g.initializer} | {n.output[0] for n in g.node if n.op_type == "Constant"}

    def scored(name: str, depth: int = 0) -> bool:
        node = producer.get(name)
        if node is None or depth > 64:
            return False
        if node.op_type in CLASS_SCORERS or (node.domain == "com.microsoft" and node.op_type != "QuickGelu"):
            return True
        if node.op_type in KEEPS_LAST_AXIS and node.input:
            return scored(node.input[0], depth + 1)
        if node.op_type in WITH_A_CONSTANT and len(node.input) == 2:
            computed = [i for i in node.input if i not in consts]
            return len(computed) == 1 and scored(computed[0], depth + 1)
        return False

    return {o.name for o in g.output if scored(o.name)}
