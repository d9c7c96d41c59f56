"""Empty tensors for Resize's unused inputs: paddle2onnx writes Resize(X, roi=[], scales=[], sizes) with empty
constant tensors where ONNX lets the optional inputs be omitted. onnxruntime accepts that graph, but the FP16 pass
puts a Cast on each float input, and a Cast of an empty tensor is no longer recognized as "not given": the FP16
model fails to load (`Either sizes or scales must be provided, but not both of them`; EISeg HRNet18, 36 Resize
nodes). Empty roi/scales next to a given `sizes` are replaced by the omitted-input name "" (opset >= 13)."""
from __future__ import annotations

import onnx

NAME = "resize_empty_optional_inputs"
DEFECT = "paddle2onnx passes empty tensors for Resize's unused roi/scales instead of omitting them"


def _empty_constants(graph: onnx.GraphProto) -> set[str]:
    def numel(t):
        n = 1
        for d in t.dims:
            n *= d
        return n
    names = {t.name for t in graph.initializer if numel(t) == 0}
    names |= {n.output[0] for n in graph.node if n.op_type == "Constant" and n.attribute
              and n.attribute[0].name == "value" and numel(n.attribute[0].t) == 0}
    return names


def apply(model: onnx.ModelProto) -> int:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    graph = model.graph
    resizes = [n for n in graph.node if n.op_type == "Resize" and len(n.input) == 4 and n.input[3]]
    if opset < 13 or not resizes:
        return 0
    empty = _empty_constants(graph)
    count = 0
    for node in resizes:
        if node.input[3] in empty:
            continue                       # `sizes` itself empty: then scales are what is used
        for k in (1, 2):
            if node.input[k] and node.input[k] in empty:
                node.input[k] = ""
                count += 1
    return count
