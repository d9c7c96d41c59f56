"""gelu(approximate=True): paddle2onnx 2.1.0's gelu mapper writes the erf form whatever the op's `approximate`
attribute says (0.5 x (1 + erf(x / sqrt 2))), where Paddle computes the tanh form (0.5 x (1 + tanh(sqrt(2 / pi)
(x + 0.044715 x^3)))); they differ by up to ~5e-4 per activation, enough for an encoder's FP32 gate to refuse.
The program says which gelu ops approximate; paddle2onnx names the k-th gelu of the top block's output
`p2o.pd_op.gelu.k.0`: there the Div -> Erf pair is replaced by the tanh polynomial (opset 17 has no Gelu op).
A pair repair: it needs the program and the exported graph, so it runs in the export worker."""
from __future__ import annotations

import math

from ._program import attr, top_ops

NAME = "gelu_tanh"
DEFECT = "paddle2onnx 2.1.0 exports gelu(approximate=True) in its erf form"


def sites(program: dict) -> list[int]:
    """k of each top-block gelu op whose `approximate` is true (paddle2onnx's output name p2o.pd_op.gelu.k.0)."""
    return [k for k, op in enumerate(top_ops(program, "gelu")) if attr(op, "approximate") is True]


def apply(model, ks: list[int]) -> int:
    import numpy as np
    from onnx import helper, numpy_helper
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    count = 0
    for k in ks:
        out = producer.get(f"p2o.pd_op.gelu.{k}.0")
        found = _erf_pair(out, producer, readers)
        if found is None:
            continue
        x, div, erf = found
        tag = f"repair.{NAME}.{k}"
        consts = {"c": 0.044715, "s": math.sqrt(2.0 / math.pi)}
        for key, v in consts.items():
            g.initializer.append(numpy_helper.from_array(np.array([v], np.float32), f"{tag}.{key}"))
        new = [helper.make_node("Mul", [x, x], [f"{tag}.x2"], name=f"{tag}.x2"),
               helper.make_node("Mul", [f"{tag}.x2", x], [f"{tag}.x3"], name=f"{tag}.x3"),
               helper.make_node("Mul", [f"{tag}.x3", f"{tag}.c"], [f"{tag}.cx3"], name=f"{tag}.cx3"),
               helper.make_node("Add", [x, f"{tag}.cx3"], [f"{tag}.inner"], name=f"{tag}.inner"),
               helper.make_node("Mul", [f"{tag}.inner", f"{tag}.s"], [f"{tag}.arg"], name=f"{tag}.arg"),
               helper.make_node("Tanh", [f"{tag}.arg"], [erf.output[0]], name=f"{tag}.tanh")]
        nodes = list(g.node)
        at = nodes.index(div)
        nodes = [n for n in nodes if n is not div and n is not erf]
        nodes[at:at] = new
        del g.node[:]
        g.node.extend(nodes)
        producer = {o: n for n in g.node for o in n.output}
        count += 1
    return count


def _erf_pair(out, producer: dict, readers: dict):
    """(x, the Div node, the Erf node) where `out` = Mul(Mul(x, Add(Erf(Div(x, c)), c1)), c05), else None."""
    if out is None or out.op_type != "Mul":
        return None
    for name in out.input:
        inner = producer.get(name)
        if inner is None or inner.op_type != "Mul":
            continue
        for j, a in enumerate(inner.input):
            add = producer.get(a)
            if add is None or add.op_type != "Add":
                continue
            x = inner.input[1 - j]
            erf = next((producer[i] for i in add.input if i in producer and producer[i].op_type == "Erf"), None)
            div = producer.get(erf.input[0]) if erf is not None else None
            if (div is not None and div.op_type == "Div" and div.input[0] == x and readers.get(div.output[0]) == 1
                    and readers.get(erf.output[0]) == 1):
                return x, div, erf
    return None
