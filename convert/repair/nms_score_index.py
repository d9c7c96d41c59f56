"""multiclass_nms3 over a candidate count the program does not know: paddle2onnx 2.1.0 gathers each kept
detection's score from the flattened scores [N, C, M] at class * M + box, writing M as the program's static size,
which is -1 where the count depends on the input's size (a PP-YOLOE exported with a dynamic image size): the index
class * -1 + box reads the wrong scores and the kept boxes come out in another order (FP32's detection agreement
0.32 on a trial PP-YOLOE). The -1 becomes M read from the scores' shape at run time."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

NAME = "nms_score_index"
DEFECT = "paddle2onnx 2.1.0 indexes multiclass_nms3's flattened scores with the candidate count -1 when it is dynamic"


def _const(g, name: str):
    """The value of an initializer or a Constant node's output (paddle2onnx writes both)."""
    for t in g.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in g.node:
        if n.op_type == "Constant" and n.output[0] == name and n.attribute and n.attribute[0].name == "value":
            return numpy_helper.to_array(n.attribute[0].t)
    return None


def apply(model: onnx.ModelProto) -> int:
    g = model.graph
    nms = [n for n in g.node if n.op_type == "NonMaxSuppression" and len(n.input) >= 2]
    if not nms:
        return 0
    readers: dict[str, list] = {}
    for n in g.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    count, extra = 0, {}
    for k, sup in enumerate(nms):
        for gather in readers.get(sup.output[0], []):             # selected [K, 3]: batch, class, box
            idx = _const(g, gather.input[1]) if gather.op_type == "Gather" and len(gather.input) == 2 else None
            if idx is None or idx.reshape(-1).tolist() != [1]:
                continue                                           # not the class column
            for mul in readers.get(gather.output[0], []):
                if mul.op_type != "Mul" or len(mul.input) != 2:
                    continue
                j = 1 if mul.input[0] == gather.output[0] else 0
                c = _const(g, mul.input[j])
                if c is None or c.size != 1 or int(c.reshape(())) != -1:
                    continue
                tag = f"repair.{NAME}.{k}"
                if tag not in extra:
                    g.initializer.append(numpy_helper.from_array(np.array([2], np.int64), f"{tag}.axis"))
                    extra[tag] = [helper.make_node("Shape", [sup.input[1]], [f"{tag}.shape"], name=f"{tag}.shape"),
                                  helper.make_node("Gather", [f"{tag}.shape", f"{tag}.axis"], [f"{tag}.count"],
                                                   name=f"{tag}.count", axis=0)]
                mul.input[j] = f"{tag}.count"
                count += 1
    for tag, new in extra.items():                                 # before their first reader: the graph stays sorted
        nodes = list(g.node)
        at = next(i for i, n in enumerate(nodes) if f"{tag}.count" in n.input)
        nodes[at:at] = new
        del g.node[:]
        g.node.extend(nodes)
    return count
