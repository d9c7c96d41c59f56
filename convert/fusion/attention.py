"""Self-attention as paddle2onnx writes it -> one com.microsoft `Attention` node (packed QKV GEMM).

Written by hand because onnxruntime's FusionAttention does not match paddle2onnx's graph: Paddle scales Q *before*
Q·Kᵀ (Mul + Add 0 on Q) and transposes K twice ([0,2,1,3] then [0,1,3,2]), where ORT expects the scale after the
MatMul and one [0,2,3,1] Transpose; onnxscript's rewriter has no rule for it either.

The pattern, per layer (Identity nodes anywhere; scalar Mul/Div/Add-0 anywhere on the Q, K and score paths):

    X -> MatMul(Wq) -> Add(bq) -> Reshape[0,0,N,D] -> Transpose[0,2,1,3] -> (scale) ---------.
    X -> MatMul(Wk) -> Add(bk) -> Reshape -> Transpose[0,2,1,3] -> Transpose[0,1,3,2] -> MatMul -> (Add mask) -> Softmax
    X -> MatMul(Wv) -> Add(bv) -> Reshape -> Transpose[0,2,1,3] --------------------------------------------> MatMul
      -> Transpose[0,2,1,3] -> Reshape[0,0,H]  ==>  Attention(X, [Wq|Wk|Wv], [bq|bk|bv], attention_bias=mask)

The additive mask paddle2onnx builds ([B,1,1,T]) becomes, once per mask tensor:
- when it is an affine map of a 0/1 source (-10000·(ids == pad), (1 - attention_mask)·-10000: `mask_chain`), the
  2-D int32 `mask_index` (1 = attend) with `mask_filter_value` = the masked value: the same numbers, and the form
  QAttention (INT8) and the GPU kernels take;
- otherwise `attention_bias`, expanded to [B,1,S,T] (the op broadcasts batch and heads, not the query axis): exact for
  any mask values.
`mask_format="key_lengths"` instead gives a 0/1 mask as the 1-D `mask_index` [B] of key lengths (ReduceSum of the
attend mask): exact only for right-padded rows (every masked key after every attended one), the format
onnxruntime's own BERT optimizer writes by default (AttentionMaskFormat.MaskIndexEnd) and the only one for which its
CUDA Attention picks a fused kernel (TensorRT fused MHA / cuDNN SDPA) rather than GEMM + softmax; a 2-D mask never
gets one. Our tokenizers and bucket padding pad on the right.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

_SCALE_OPS = ("Mul", "Div", "Add", "Sub")


@dataclass(frozen=True)
class Projection:
    source: str              # the layer input X
    weight: np.ndarray       # [H_in, H]
    bias: np.ndarray         # [H]
    heads: int
    head_size: int


class _Graph:
    """Producer/consumer maps and constant lookup over one ONNX graph (rebuilt after each rewrite)."""

    def __init__(self, model):
        from onnx import numpy_helper
        self.model = model
        g = model.graph
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.inits = {t.name: t for t in g.initializer}
        self.consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
        self._np = numpy_helper
        self.outputs = {o.name for o in g.output}

    def const(self, name: str) -> np.ndarray | None:
        node = self.producer.get(name)
        while node is not None and node.op_type == "Identity":      # paddle2onnx wraps constants in Identity
            name = node.input[0]
            node = self.producer.get(name)
        if name in self.inits:
            return self._np.to_array(self.inits[name])
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return self._np.to_array(a.t)
        return None

    def parent(self, name: str):
        """The producer of `name`, looking through Identity nodes."""
        node = self.producer.get(name)
        while node is not None and node.op_type == "Identity":
            node = self.producer.get(node.input[0])
        return node

    def single_use(self, node) -> bool:
        return all(len(self.consumers.get(o, [])) <= 1 and o not in self.outputs for o in node.output)


def _perm(node) -> list[int] | None:
    for a in node.attribute:
        if a.name == "perm":
            return list(a.ints)
    return None


def _through_scale(g: _Graph, name: str) -> tuple[str, float, list]:
    """Walk up scalar Mul/Div/Add-0/Sub-0 nodes; returns (tensor above them, product of the scales, nodes)."""
    scale, nodes = 1.0, []
    while True:
        node = g.parent(name)
        if node is None or node.op_type not in _SCALE_OPS or len(node.input) != 2:
            return name, scale, nodes
        c0, c1 = g.const(node.input[0]), g.const(node.input[1])
        if (c0 is None) == (c1 is None):
            return name, scale, nodes
        c, var = (c1, node.input[0]) if c1 is not None else (c0, node.input[1])
        if c.size != 1 or not np.isfinite(c).all():
            return name, scale, nodes
        v = float(c.reshape(()))
        if node.op_type == "Mul":
            scale *= v
        elif node.op_type == "Div" and c1 is not None and v != 0.0:
            scale /= v
        elif node.op_type in ("Add", "Sub") and v == 0.0 and (node.op_type == "Add" or c1 is not None):
            pass
        else:
            return name, scale, nodes
        nodes.append(node)
        name = var


def _projection(g: _Graph, name: str) -> tuple[Projection, list] | None:
    """Transpose[0,2,1,3] <- Reshape[*, *, N, D] <- Add(bias) <- MatMul(X, W): the per-head view of X·W + b."""
    tr = g.parent(name)
    if tr is None or tr.op_type != "Transpose" or _perm(tr) != [0, 2, 1, 3]:
        return None
    rs = g.parent(tr.input[0])
    if rs is None or rs.op_type != "Reshape":
        return None
    shape = g.const(rs.input[1])
    add = g.parent(rs.input[0])
    if shape is None or shape.size != 4 or add is None or add.op_type != "Add":
        return None
    b0, b1 = g.const(add.input[0]), g.const(add.input[1])
    if (b0 is None) == (b1 is None):
        return None
    bias, mm_out = (b1, add.input[0]) if b1 is not None else (b0, add.input[1])
    mm = g.parent(mm_out)
    if mm is None or mm.op_type != "MatMul":
        return None
    w = g.const(mm.input[1])
    if w is None or w.ndim != 2 or bias.ndim != 1 or bias.shape[0] != w.shape[1] or w.dtype != np.float32:
        return None
    hidden = w.shape[1]
    heads, head_size = int(shape[2]), int(shape[3])
    if heads <= 0 and head_size > 0:
        heads = hidden // head_size
    if head_size <= 0 and heads > 0:
        head_size = hidden // heads
    if heads <= 0 or heads * head_size != hidden or int(shape[0]) not in (0, -1) or int(shape[1]) not in (0, -1):
        return None
    return Projection(mm.input[0], w, bias.astype(np.float32), heads, head_size), [tr, rs, add, mm]


@dataclass(frozen=True)
class Match:
    q: Projection
    k: Projection
    v: Projection
    scale: float
    mask: str | None          # the additive mask tensor added to the scores ([B,1,1,T] or broadcastable)
    output: str               # the final Reshape's output: the Attention node's output
    nodes: tuple              # every node the Attention node replaces
    q_matmul: object = None   # the Q projection's MatMul (X · Wq)


def match_at(g: _Graph, softmax) -> Match | None:
    """The attention block around one Softmax, or None when any part differs from the pattern."""
    if softmax.op_type != "Softmax":
        return None
    axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
    if axis not in (-1, 3):
        return None
    nodes = [softmax]
    name, scale, scale_nodes = _through_scale(g, softmax.input[0])
    nodes += scale_nodes
    mask = None
    node = g.parent(name)
    if node is not None and node.op_type == "Add":                 # scores + mask (either order)
        for scores, cand in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
            above, s, more = _through_scale(g, scores)
            mm = g.parent(above)
            if mm is not None and mm.op_type == "MatMul" and g.const(cand) is None:
                mask, name = cand, above
                scale *= s
                nodes += [node, *more]
                break
        else:
            return None
    qk = g.parent(name)
    if qk is None or qk.op_type != "MatMul":
        return None
    nodes.append(qk)
    q_name, s, more = _through_scale(g, qk.input[0])
    scale *= s
    nodes += more
    k_name, s, more = _through_scale(g, qk.input[1])
    scale *= s
    nodes += more
    kt = g.parent(k_name)                                           # Kᵀ: [0,1,3,2] after the per-head view
    if kt is None or kt.op_type != "Transpose" or _perm(kt) != [0, 1, 3, 2]:
        return None
    nodes.append(kt)
    q, k = _projection(g, q_name), _projection(g, kt.input[0])
    # probs · V -> Transpose[0,2,1,3] -> Reshape[0,0,H]
    users = g.consumers.get(softmax.output[0], [])
    if len(users) != 1:
        return None
    pv = users[0]
    while pv.op_type == "Identity" and len(g.consumers.get(pv.output[0], [])) == 1:
        nodes.append(pv)
        pv = g.consumers[pv.output[0]][0]
    if pv.op_type != "MatMul" or pv.input[0] not in (softmax.output[0], *(n.output[0] for n in nodes)):
        return None
    v = _projection(g, pv.input[1])
    if q is None or k is None or v is None:
        return None
    nodes.append(pv)
    tail, cur = [], pv
    for op in ("Transpose", "Reshape"):
        users = g.consumers.get(cur.output[0], [])
        while len(users) == 1 and users[0].op_type == "Identity":
            tail.append(users[0])
            users = g.consumers.get(users[0].output[0], [])
        if len(users) != 1 or users[0].op_type != op:
            return None
        cur = users[0]
        tail.append(cur)
    if _perm(next(n for n in tail if n.op_type == "Transpose")) != [0, 2, 1, 3]:
        return None
    out_shape = g.const(cur.input[1])
    (qp, qn), (kp, kn), (vp, vn) = q, k, v
    hidden = qp.weight.shape[1]
    if out_shape is None or out_shape.size != 3 or int(out_shape[2]) not in (hidden, -1):
        return None
    if not (qp.source == kp.source == vp.source) or qp.weight.shape != kp.weight.shape or \
            qp.weight.shape != vp.weight.shape or not (qp.heads == kp.heads == vp.heads):
        return None
    nodes += qn + kn + vn + tail
    inner = [n for n in nodes if n is not cur]
    if not all(g.single_use(n) for n in inner):                     # an intermediate is used elsewhere: leave it
        return None
    return Match(qp, kp, vp, scale, mask, cur.output[0], tuple(nodes), qn[-1])


_BOOL_OPS = ("Equal", "Not", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "IsNaN")


@dataclass(frozen=True)
class MaskChain:
    source: str               # a [B,T] 0/1 tensor: a bool op's output or an integer graph input
    is_bool: bool
    attend_when: int          # the source value (0 or 1) whose additive mask is 0
    filter_value: float       # the additive value at the other


def _axes(g: _Graph, node) -> list[int] | None:
    for a in node.attribute:
        if a.name == "axes":
            return list(a.ints)
    c = g.const(node.input[1]) if len(node.input) > 1 else None
    return None if c is None else [int(x) for x in c.ravel()]


def mask_chain(g: _Graph, mask: str) -> MaskChain | None:
    """M = a·s + b through Unsqueeze[1,2], Cast and scalar Mul/Add/Sub, s a 0/1 [B,T] tensor; None otherwise."""
    a, b, cur, unsqueezed = 1.0, 0.0, mask, False
    inputs = {i.name: i for i in g.model.graph.input}
    while True:
        node = g.parent(cur)
        if node is None:
            inp = inputs.get(cur)
            if inp is None or not unsqueezed or inp.type.tensor_type.elem_type not in (6, 7):   # int32 / int64
                return None
            source, is_bool = cur, False
            break
        if node.op_type in _BOOL_OPS:
            if not unsqueezed:
                return None
            source, is_bool = cur, True
            break
        if node.op_type == "Unsqueeze" and not unsqueezed and _axes(g, node) == [1, 2]:
            unsqueezed, cur = True, node.input[0]
            continue
        if node.op_type == "Cast":
            cur = node.input[0]
            continue
        if node.op_type not in ("Mul", "Add", "Sub") or len(node.input) != 2:
            return None
        c0, c1 = g.const(node.input[0]), g.const(node.input[1])
        if (c0 is None) == (c1 is None):
            return None
        c = c1 if c1 is not None else c0
        if c.size != 1:
            return None
        c, x = float(c.reshape(())), (node.input[0] if c1 is not None else node.input[1])
        if node.op_type == "Mul":
            a *= c
        elif node.op_type == "Add":
            b += a * c
        elif c1 is not None:                  # x - c
            b -= a * c
        else:                                 # c - x
            b, a = b + a * c, -a
        cur = x
    v0, v1 = b, a + b
    if v0 == 0.0 and v1 != 0.0:
        return MaskChain(source, is_bool, 0, v1)
    if v1 == 0.0 and v0 != 0.0:
        return MaskChain(source, is_bool, 1, v0)
    return None


MASK_FORMATS = ("mask_index_2d", "key_lengths")


def _key_lengths(model, attend: str, cache: dict) -> str:
    """[B] int32 key lengths = ReduceSum over T of the [B,T] int32 attend mask (right padding assumed)."""
    from onnx import helper, numpy_helper
    key = ("lengths", attend)
    if key in cache:
        return cache[key]
    p = f"fusion_attention_lengths_{len(cache)}"
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset >= 13:
        model.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), f"{p}_axes"))
        node = helper.make_node("ReduceSum", [attend, f"{p}_axes"], [p], name=p, keepdims=0)
    else:
        node = helper.make_node("ReduceSum", [attend], [p], name=p, axes=[1], keepdims=0)
    model.graph.node.append(node)
    cache[key] = p
    return p


def _mask_index(model, chain: MaskChain, cache: dict, mask_format: str = "mask_index_2d") -> str:
    """The [B,T] int32 mask (1 = attend) for one MaskChain, or its [B] key lengths (`key_lengths`)."""
    from onnx import TensorProto, helper, numpy_helper
    if mask_format == "key_lengths":
        return _key_lengths(model, _mask_index(model, chain, cache), cache)
    key = ("index", chain.source, chain.attend_when)
    if key in cache:
        return cache[key]
    p = f"fusion_attention_mask_{len(cache)}"
    if chain.attend_when == 1:
        new = [helper.make_node("Cast", [chain.source], [p], name=f"{p}_cast", to=TensorProto.INT32)]
    elif chain.is_bool:
        new = [helper.make_node("Not", [chain.source], [f"{p}_not"], name=f"{p}_not"),
               helper.make_node("Cast", [f"{p}_not"], [p], name=f"{p}_cast", to=TensorProto.INT32)]
    else:
        model.graph.initializer.append(numpy_helper.from_array(np.zeros((), np.int64), f"{p}_zero"))
        new = [helper.make_node("Cast", [chain.source], [f"{p}_i64"], name=f"{p}_i64", to=TensorProto.INT64),
               helper.make_node("Equal", [f"{p}_i64", f"{p}_zero"], [f"{p}_eq"], name=f"{p}_eq"),
               helper.make_node("Cast", [f"{p}_eq"], [p], name=f"{p}_cast", to=TensorProto.INT32)]
    model.graph.node.extend(new)
    cache[key] = p
    return p


def _bias_expand(model, g: _Graph, mask: str, x: str, cache: dict) -> str:
    """[B,1,1,T] additive mask -> [B,1,S,T] (S = X's sequence axis); one subgraph per distinct mask tensor."""
    from onnx import helper, numpy_helper
    if mask in cache:
        return cache[mask]
    p = f"fusion_attention_bias_{len(cache)}"
    for name, val in ((f"{p}_one", np.array([1], np.int64)), (f"{p}_s0", np.array([1], np.int64)),
                      (f"{p}_s1", np.array([2], np.int64))):
        model.graph.initializer.append(numpy_helper.from_array(val, name))
    new = [helper.make_node("Shape", [x], [f"{p}_xshape"], name=f"{p}_shape"),
           helper.make_node("Slice", [f"{p}_xshape", f"{p}_s0", f"{p}_s1"], [f"{p}_seq"], name=f"{p}_slice"),
           helper.make_node("Concat", [f"{p}_one", f"{p}_one", f"{p}_seq", f"{p}_one"], [f"{p}_target"],
                            name=f"{p}_concat", axis=0),
           helper.make_node("Expand", [mask, f"{p}_target"], [p], name=f"{p}_expand")]
    model.graph.node.extend(new)
    cache[mask] = p
    return p


def fuse_attention(model, use_mask_index: bool = True, mask_format: str = "mask_index_2d") -> int:
    """Rewrite every matching attention block in place; returns how many were fused. `use_mask_index=False`: every
    mask goes in as `attention_bias` (the general form). `mask_format`: how a 0/1 mask goes in as `mask_index`
    (MASK_FORMATS; "key_lengths" needs right-padded rows, see the module docstring)."""
    from onnx import helper, numpy_helper
    from onnxruntime.transformers.onnx_model import OnnxModel

    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
    fused, cache = 0, {}
    while True:
        g = _Graph(model)
        found = next((m for n in model.graph.node if n.op_type == "Softmax" for m in [match_at(g, n)] if m), None)
        if found is None:
            break
        m = found
        p = f"fusion_attention_{fused}"
        w = np.concatenate([m.q.weight, m.k.weight, m.v.weight], axis=1).astype(np.float32)
        b = np.concatenate([m.q.bias, m.k.bias, m.v.bias]).astype(np.float32)
        model.graph.initializer.extend([numpy_helper.from_array(w, f"{p}_qkv_weight"),
                                        numpy_helper.from_array(b, f"{p}_qkv_bias")])
        inputs = [m.q.source, f"{p}_qkv_weight", f"{p}_qkv_bias"]
        attrs = {}
        chain = mask_chain(g, m.mask) if m.mask is not None and use_mask_index else None
        if chain is not None:
            inputs.append(_mask_index(model, chain, cache, mask_format))
            attrs["mask_filter_value"] = float(chain.filter_value)
        elif m.mask is not None:
            inputs += ["", "", _bias_expand(model, g, m.mask, m.q.source, cache)]
        ids = {id(n) for n in m.nodes}
        keep = [n for n in model.graph.node if id(n) not in ids]
        del model.graph.node[:]
        model.graph.node.extend(keep)
        model.graph.node.append(helper.make_node("Attention", inputs, [m.output], name=p, domain="com.microsoft",
                                                 num_heads=m.q.heads, scale=float(m.scale), **attrs))
        fused += 1
    if fused:
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        om = OnnxModel(model)
        om.prune_graph(allow_remove_graph_inputs=False)
        om.topological_sort()
        log.debug("fused %d attention blocks", fused)
    return fused


def to_key_lengths(model) -> int:
    """An already fused graph's 2-D `mask_index` inputs (the ones fuse_attention wrote) -> 1-D key lengths, in place
    (same caveat: right-padded rows only). Returns how many Attention nodes changed."""
    from onnxruntime.transformers.onnx_model import OnnxModel
    cache, changed = {}, 0
    for node in list(model.graph.node):
        if node.op_type == "Attention" and node.domain == "com.microsoft" and len(node.input) > 3 \
                and node.input[3].startswith("fusion_attention_mask_") and len(node.input[3].split("_")) == 4:
            node.input[3] = _key_lengths(model, node.input[3], cache)
            changed += 1
    if changed:
        OnnxModel(model).topological_sort()
    return changed
