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
