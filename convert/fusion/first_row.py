"""The last encoder layer at the first row only, where the outputs read nothing else of it.

A [CLS]-pooled classifier (PaddleNLP's ErnieForSequenceClassification, BertForSequenceClassification) reads the
last layer's output at position 0 only: `Slice(axes=[1], starts=[0], ends=[1])` (or `Gather(axis=1, 0)`) into the
pooler. Every position of the last layer's input still feeds its keys and values, but its queries, the O projection,
both residuals, both LayerNorms and the FFN are needed for row 0 alone. So the last layer's Q projection and its
first residual read `X[:, 0:1]` instead of `X`, and everything after them runs on one row: for an L-layer encoder
about (10/12)/L of the GEMM work (MiniLM/ERNIE-Medium's 6 layers: 14%) goes, and the outputs are the same numbers
(each row of a post-LN encoder layer is computed from its own query; row 0's arithmetic is untouched).

Written by hand: neither onnxruntime's transformers optimizer nor onnxscript's rewriter has the rule (it needs the
consumer side of the graph, the pooled row, to license a rewrite inside the layer). The pass is strict about the form
(the attention block as attention.match_at finds it, a post-LN residual, the row-0 selection the only reader of the
last hidden state) and then checks itself: the rewritten graph must give the original's outputs on the conversion's
own samples (onnxruntime, CPU), or the original graph is kept. The conversion gate then holds it to Paddle.
"""
from __future__ import annotations

import copy
import logging

import numpy as np

from .attention import _Graph, match_at

log = logging.getLogger(__name__)

ROW0_TOLERANCE = 1e-4           # the self-check: max |diff| / the output's range (float32 reassociation only)


def _ints(g: _Graph, name: str) -> list[int] | None:
    v = g.const(name) if name else None
    return None if v is None else [int(x) for x in np.asarray(v).reshape(-1)]


def _row0_selection(g: _Graph, node) -> bool:
    """Slice(axes [1], starts [0], ends [1], steps [1]) or Gather(axis 1, index 0) of a [B, S, H] tensor."""
    if node.op_type == "Gather":
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        return axis == 1 and _ints(g, node.input[1]) == [0]
    if node.op_type == "Slice" and len(node.input) >= 4:
        steps = _ints(g, node.input[4]) if len(node.input) > 4 and node.input[4] else [1]
        return (_ints(g, node.input[1]), _ints(g, node.input[2]), _ints(g, node.input[3]), steps) == \
            ([0], [1], [1], [1])
    return False


def _upstream(g: _Graph, name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        n = g.producer.get(t)
        if n is not None:
            todo += [i for i in n.input if i]
    return seen


def plan(model):
    """(the last layer's input X, the Q projection's MatMul, the residual Add) when the graph has the form, else
    None (with the reason at debug level)."""
    g = _Graph(model)
    outputs = {o.name for o in model.graph.output}
    picks = [n for n in model.graph.node if _row0_selection(g, n)]
    hidden = {n.input[0] for n in picks}
    if len(hidden) != 1:
        log.debug("first-row pass: %d tensors read at row 0, not one", len(hidden))
        return None
    last = hidden.pop()
    if last in outputs or any(not _row0_selection(g, n) for n in g.consumers.get(last, [])):
        log.debug("first-row pass: the last hidden state is read whole")
        return None
    matches = [m for n in model.graph.node if n.op_type == "Softmax" for m in [match_at(g, n)] if m]
    feeding = _upstream(g, last)
    matches = [m for m in matches if m.output in feeding]
    if not matches:
        log.debug("first-row pass: no attention block feeds the row-0 selection")
        return None
    # the last layer: the attention block whose input comes after every other block's output
    m = next((m for m in matches for up in [_upstream(g, m.q.source)]
              if all(o.output in up for o in matches if o is not m)), None)
    if m is None:
        return None
    x = m.q.source
    users = g.consumers.get(x, [])
    adds = [n for n in users if n.op_type == "Add"]
    if len(users) != 4 or sum(n.op_type == "MatMul" for n in users) != 3 or len(adds) != 1 or \
            m.q_matmul not in users:
        log.debug("first-row pass: the last layer's input has consumers %s, not Q/K/V MatMuls and a residual Add",
                  [n.op_type for n in users])
        return None
    tail = [n for n in m.nodes if n.output[0] == m.output]            # Reshape [0, 0, H]: keeps the row count
    shape = _ints(g, tail[0].input[1]) if tail else None
    if shape is None or len(shape) != 3 or shape[1] not in (0, -1) or (shape[0] == -1 and shape[1] == -1):
        log.debug("first-row pass: the attention output's Reshape %s fixes the sequence length", shape)
        return None
    return x, m.q_matmul, adds[0]


def prune_to_first_row(model, samples: list[dict] | None = None):
    """-> (model, pruned): a copy with the last layer at row 0 where `plan` finds the form and the copy gives the
    original's outputs on `samples` (feeds by input name; none: the form alone decides), else (model, False)."""
    from onnx import helper, numpy_helper
    p = plan(model)
    if p is None:
        return model, False
    new = copy.deepcopy(model)
    x, q_mm, residual = p
    row0, names = f"{x}__row0", {i.name for i in new.graph.initializer}
    consts = []
    for key, value in (("starts", 0), ("ends", 1), ("axes", 1)):
        name = f"first_row_{key}"
        if name not in names:
            consts.append(numpy_helper.from_array(np.array([value], np.int64), name))
    new.graph.initializer.extend(consts)
    nodes = list(new.graph.node)
    for n in nodes:
        if n.name == q_mm.name and list(n.input) == list(q_mm.input) and n.op_type == "MatMul" or \
                n.name == residual.name and list(n.input) == list(residual.input) and n.op_type == "Add":
            for i, name in enumerate(n.input):
                if name == x:
                    n.input[i] = row0
    at = next(i for i, n in enumerate(nodes) if x in n.output) + 1 if any(x in n.output for n in nodes) else 0
    new.graph.node.insert(at, helper.make_node("Slice", [x, "first_row_starts", "first_row_ends", "first_row_axes"],
                                               [row0], name="first_row_slice"))
    try:
        same = _same_outputs(model, new, samples) if samples else True
    except Exception as e:  # noqa: BLE001  (a model onnxruntime cannot hold in memory here: no proof, no rewrite)
        log.warning("first-row pass: the self-check could not run (%s: %s); the graph is kept whole",
                    type(e).__name__, str(e)[:200])
        same = False
    if not same:
        log.warning("first-row pass: the rewritten graph is not the original on the samples; the graph is kept whole")
        return model, False
    log.info("the last encoder layer runs at the first row only (the outputs read nothing else of it)")
    return new, True


def _same_outputs(a, b, samples: list[dict]) -> bool:
    from paddle2ort.runtime.session import SessionOptions, create_session
    sa, sb = (create_session(m.SerializeToString(), SessionOptions(device="cpu")) for m in (a, b))
    names = [i.name for i in sa.get_inputs()]
    for feeds in samples[:4]:
        f = {n: feeds[n] for n in names if n in feeds}
        if len(f) != len(names):
            return False
        for want, got in zip(sa.run(None, f), sb.run(None, f)):
            want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
            if want.shape != got.shape or np.abs(got - want).max(initial=0.0) > \
                    ROW0_TOLERANCE * max(float(np.ptp(want)) if want.size else 0.0, 1e-6):
                return False
    return True
