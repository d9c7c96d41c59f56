"""The gate's sample-free half: invariants that a precision variant must keep with the FP32 model it came from.

Output statistics cannot see a fault smaller than the precision's own rounding noise (a weight off by 1% under
FP16's ~1% noise); these invariants can, on every host alike (no kernels run):
- fp16: every node of the FP32 graph is kept (same name and op type; the pass only adds Casts) and every FP32
  float weight is in the variant as itself or as its float16 rounding;
- int8 (dynamic): each quantized weight W_quantized/W_scale/W_zero_point dequantizes to within half a
  quantization step of the FP32 W; float weights kept under their FP32 name are unchanged, and FP32 tensors its
  constant folding turned into weights equal their value recomputed from the FP32 weights; nodes its graph
  optimizer never fuses (activations but Relu/Clip/HardSwish, Adds of two computed tensors) are kept; every FP32
  node it still has (same name, or a quantized Conv/MatMul's `<name>_quant`) keeps its attributes, schema
  defaults filled in (a ConvInteger's dilation 3 -> 2, a Pad's mode, a LayerNorm's epsilon passed the INT8 bounds).
  (Fused nodes, e.g. BatchNormalization folded into Conv, get new names and weights: judged by the outputs alone.)
- both: integer constants kept under their name are unchanged (a temporal shift's Slice bounds: FP16 and INT8's
  looser output bounds let fold 4 -> 3 channels pass), and a kept node is still read where the FP32 graph reads it
  (a LeakyReLU rewired out of the graph, its node left unread, passed).
Weight-only MatMulNBits variants (int4, LLM int8) are judged by their outputs alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FP16_ULP = 2.0 ** -10          # float16 rounding is at most half of this, relative
FP16_TINY = 6e-8               # the converter clamps magnitudes below float16's smallest subnormal


# Nodes that onnxruntime's basic graph optimizer (the int8 pass's pre-processing) never fuses away: activations
# other than Relu/Clip/HardSwish (fused into convolutions) and Adds of two computed tensors (Conv/MatMul-Add
# fusions take constants).
INT8_KEPT_OPS = {"HardSigmoid", "Sigmoid", "Tanh", "Erf", "Gelu", "Softmax", "LeakyRelu", "Softplus",
                 "Add"}


def _dynamic_tensors(graph) -> set[str]:
    """Tensors that depend on a graph input (constant folding cannot remove their producers)."""
    dyn = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    for n in graph.node:          # graphs are topologically sorted (ONNX requires it)
        if any(x in dyn for x in n.input):
            dyn.update(n.output)
    return dyn


def _noop_sources(g) -> dict[str, str]:
    """{output: input} of the nodes the optimizer's NoopElimination removes: Identity, Add/Sub of an all-zero
    constant, Mul/Div by an all-one constant."""
    from onnx import numpy_helper
    consts = {t.name: t for t in g.initializer}
    consts.update({n.output[0]: n.attribute[0].t for n in g.node if n.op_type == "Constant"
                   and len(n.attribute) == 1 and n.attribute[0].name == "value"})
    neutral = {"Add": 0.0, "Sub": 0.0, "Mul": 1.0, "Div": 1.0}
    out = {}
    for n in g.node:
        if n.op_type == "Identity" and n.input:
            out[n.output[0]] = n.input[0]
        elif n.op_type in neutral and len(n.input) == 2:
            k = n.input[1] if n.input[1] in consts else n.input[0] if n.op_type in ("Add", "Mul") else None
            c = numpy_helper.to_array(consts[k]) if k in consts else None
            if c is not None and c.size and np.all(c == neutral[n.op_type]):
                out[n.output[0]] = n.input[0] if k == n.input[1] else n.input[1]
    return out


def _kept_nodes(model, precision: str, produced: set[str] = frozenset(), kept: set[str] = frozenset()) -> list:
    """FP32 nodes the precision pass must keep under their name and op type. An Add of a MatMul's result (maybe
    through no-ops) and a computed tensor whose output the variant still computes (`produced`: its nodes'
    outputs) is not one: with the no-op gone (a zero bias: NoopElimination) the optimizer's MatMulAddFusion makes
    the pair one Gemm writing that tensor (a PaddleRec Wide&Deep's wide + deep sum). Deleted, it is missing. Nor is
    a node identical to another (op, inputs, attributes) where the variant keeps one of them (`kept`: its node
    names): the optimizer's common-subexpression elimination merges them (HiFiGAN's two resblocks open with the same
    LeakyReLU of one tensor)."""
    g = model.graph
    if precision == "fp16":
        return [n for n in g.node if n.name and n.op_type != "Constant"]
    dyn = _dynamic_tensors(g)
    producer = {o: n.op_type for n in g.node for o in n.output}
    noop = _noop_sources(g)

    after = {src: out for out, src in noop.items()}

    def still_computed(x: str) -> bool:          # the tensor, or what no-ops (an Identity) pass it on as
        for _ in range(8):
            if x in produced:
                return True
            if x not in after:
                return False
            x = after[x]
        return False

    def from_matmul(x: str) -> bool:
        for _ in range(8):
            if x not in noop:
                break
            x = noop[x]
        return producer.get(x) in ("MatMul", "Gemm")
    # value numbering: a node's signature reads its inputs' canonical names, so whole duplicated chains are twins
    # (LayoutXLM computes its visual embedding twice: Add -> Erf -> ... merged by onnxruntime, chain and all)
    twins: dict[tuple, list[str]] = {}
    canon: dict[str, str] = {}
    first: dict[tuple, object] = {}
    for n in g.node:
        sig = (n.domain, n.op_type, tuple(canon.get(x, x) for x in n.input),
               tuple(a.SerializeToString() for a in n.attribute))
        f = first.setdefault(sig, n)
        for k, o in enumerate(n.output):
            canon[o] = f.output[k] if f is not n and k < len(f.output) else o
        twins.setdefault(sig, []).append(n.name)
    merged = {name for group in twins.values() if len(group) > 1 and any(t in kept for t in group)
              for name in group if name not in kept}      # one kept twin stands for the others
    return [n for n in g.node if n.name and n.op_type in INT8_KEPT_OPS and n.name not in merged
            and all(x in dyn for x in (n.input if n.op_type == "Add" else n.input[:1]))
            and not (n.op_type == "Add" and still_computed(n.output[0]) and any(from_matmul(x) for x in n.input))]


def _weights(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def _fold_tolerance(want: np.ndarray) -> np.ndarray:
    """float32 rounding of a value onnxruntime computed from weights (a fold, a fusion), per element, with room for
    another association of its products."""
    return 1e-5 * np.abs(want) + 1e-7 * float(np.abs(want[np.isfinite(want)]).max(initial=0.0))


def _floating(a: np.ndarray) -> bool:
    """A float weight, scalars included (PP-HGNetV2's learnable-affine scale is one value: x1.01 passed FP16)."""
    return a.dtype in (np.float32, np.float16, np.float64) and a.size >= 1


ATTRIBUTE_KINDS = (1, 2, 3, 6, 7, 8)        # FLOAT, INT, STRING, FLOATS, INTS, STRINGS (not tensors, graphs)
RETYPING = {"to", "dtype"}                  # what a precision pass retypes (a Cast's target) is not compared


def _attributes(node) -> dict:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute
            if a.type in ATTRIBUTE_KINDS and a.name not in RETYPING}


# ops whose attributes onnxruntime's optimizer rewrites under the node's name (Transpose perms merged, Reshape /
# Squeeze / Unsqueeze / Slice folded into their neighbours): not compared in INT8; nor are axes anywhere (its
# transpose optimizer pushes a Transpose through a Split, a Concat, a reduction and renumbers their axis: an ERNIE
# QA head's Split axis 2 -> 0)
REWRITTEN_IN_PLACE = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Slice"}
AXES = {"axis", "axes", "perm"}
QUANTIZED_AS = {"Conv": "ConvInteger", "MatMul": "MatMulInteger"}


def _with_defaults(node, opset: int) -> dict:
    """A node's attributes with those it leaves out at their schema default (the quantizer writes auto_pad,
    storage_order, Resize's modes out; paddle2onnx leaves them to their defaults)."""
    from onnx import defs, helper
    out = _attributes(node)
    try:
        schema = defs.get_schema(node.op_type, opset, node.domain)
    except Exception:  # noqa: BLE001 - an op onnx does not know (a contrib op): its own attributes only
        return out
    for name, a in schema.attributes.items():
        if name not in out and name not in RETYPING and a.default_value.name:
            out[name] = helper.get_attribute_value(a.default_value)
    return out


def _pad_fused(ref_model, var_names: set[str]) -> set[str]:
    """FP32 nodes a Pad feeds that the variant lost: onnxruntime's PadFusion moved its pads into them."""
    pads = {o for n in ref_model.graph.node if n.op_type == "Pad" and n.name not in var_names for o in n.output}
    return {n.name for n in ref_model.graph.node if n.input and n.input[0] in pads}


def _attribute_violations(ref_model, var_model, skip: set[str]) -> tuple[int, list[str]]:
    """INT8: every FP32 node the variant still has under its name (or `<name>_quant`, its quantized form) keeps its
    attributes, both sides' schema defaults filled in. -> (nodes compared, violations). skip: nodes already
    compared (the kept ones)."""
    opset = next((o.version for o in ref_model.opset_import if o.domain in ("", "ai.onnx")), 17)
    var_opset = next((o.version for o in var_model.opset_import if o.domain in ("", "ai.onnx")), opset)
    nodes = {n.name: n for n in var_model.graph.node if n.name}
    fused_pads = _pad_fused(ref_model, set(nodes))
    checked, out = 0, []
    for n in ref_model.graph.node:
        if not n.name or n.name in skip or n.op_type in REWRITTEN_IN_PLACE:
            continue
        got = nodes.get(n.name)
        if got is None or got.op_type != n.op_type:
            got = nodes.get(f"{n.name}_quant")
            if got is None or got.op_type not in (n.op_type, QUANTIZED_AS.get(n.op_type)):
                continue
        want, have = _with_defaults(n, opset), _with_defaults(got, var_opset)
        for k in AXES:
            want.pop(k, None), have.pop(k, None)
        if n.name in fused_pads:
            for k in ("pads", "auto_pad"):
                want.pop(k, None), have.pop(k, None)
        checked += 1
        diff = sorted(k for k in want.keys() & have.keys() if want[k] != have[k])
        if diff:
            whose = (f"node {got.name!r} ({got.op_type})" if got.name == n.name
                     else f"node {got.name!r} ({got.op_type}, the FP32 graph's {n.name!r} {n.op_type})")
            out.append(f"{whose} has other attributes than in the FP32 graph: "
                       + ", ".join(f"{k} {_shown(want[k])} -> {_shown(have[k])}" for k in diff))
    return checked, out


def _shown(v) -> str:
    """An attribute value as a user reads it (a string attribute is bytes in onnx)."""
    if isinstance(v, bytes):
        return repr(v.decode("utf-8", "replace"))
    if isinstance(v, list):
        return "[" + ", ".join(_shown(x) for x in v) + "]"
    return repr(v)


def _integer_violations(ref: dict[str, np.ndarray], var: dict[str, np.ndarray]) -> tuple[int, list[str]]:
    """Integer constants the variant keeps under their FP32 name: unchanged (shapes, slice bounds, axes)."""
    checked, out = 0, []
    for name, w in ref.items():
        if name not in var or not np.issubdtype(w.dtype, np.integer) or not np.issubdtype(var[name].dtype, np.integer):
            continue
        checked += 1
        if var[name].shape != w.shape or not np.array_equal(var[name], w):
            out.append(f"integer constant {name!r} is {_brief(var[name])}, the FP32 model's {_brief(w)}")
    return checked, out


def _brief(a: np.ndarray) -> str:
    return str(a.tolist()) if a.size <= 8 else f"shape {list(a.shape)}"


def _unread(ref_model, var_model, names: list[str]) -> list[str]:
    """Kept nodes (`names`) whose outputs the FP32 graph reads and the variant no longer does (rewired around)."""
    from .repair._shapes import all_graphs

    def readers(g) -> set[str]:                  # subgraphs (If/Loop bodies) read from the enclosing scope too
        return {x for sub in all_graphs(g) for n in sub.node for x in n.input} | {o.name for o in g.output}
    ref_read, var_read = readers(ref_model.graph), readers(var_model.graph)
    ref_nodes = {n.name: n for n in ref_model.graph.node}
    var_nodes = {n.name: n for n in var_model.graph.node}
    out = []
    for name in names:
        n, got = ref_nodes.get(name), var_nodes.get(name)
        if n is None or got is None or got.op_type != n.op_type:
            continue
        if any(o in ref_read for o in n.output) and not any(o in var_read for o in got.output if o):
            out.append(f"node {name!r} ({n.op_type}) is kept, but nothing reads its output any more")
    return out


def _dequantized(q: np.ndarray, scale: np.ndarray, zp: np.ndarray,
                 ref: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """((q - zp) * scale, scale) broadcast to q's shape, a per-channel scale on the axis of its length; None if
    no axis fits. When several axes have that length (a square weight), the one closest to `ref` (the FP32
    weight) is the quantizer's channel axis."""
    q = q.astype(np.float64)
    scale, zp = scale.astype(np.float64), zp.astype(np.float64)
    if scale.size == 1:
        s = np.full(q.shape, float(scale.reshape(())))
        return (q - float(zp.reshape(()))) * s, s
    found = []
    for axis in range(q.ndim):
        if q.shape[axis] == scale.size:
            shape = [1] * q.ndim
            shape[axis] = scale.size
            s = np.broadcast_to(scale.reshape(shape), q.shape)
            found.append(((q - zp.reshape(shape)) * s, s))
    if len(found) > 1 and ref is not None and ref.shape == q.shape:
        return min(found, key=lambda d: float(np.abs(d[0] - ref.astype(np.float64)).max()))
    return found[0] if found else None


def _folded(ref_model, ref: dict[str, np.ndarray], names: set[str]) -> dict[str, np.ndarray]:
    """Values of FP32 tensors computed from weights alone (e.g. paddle2onnx's Reshape of an fc weight, which the
    int8 pass's constant folding turns into the weight it quantizes), by onnx's reference evaluator."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator
    producer = {o: n for n in ref_model.graph.node for o in n.output}
    out = {}
    for name in names:
        nodes, todo, seen = [], [name], set()
        while todo:
            t = todo.pop()
            if t in ref or t in seen:
                continue
            node = producer.get(t)
            if node is None:           # a graph input: not constant
                nodes = None
                break
            seen.add(t)
            nodes.append(node)
            todo.extend(x for x in node.input if x)
        if not nodes:
            continue
        order = [n for n in ref_model.graph.node if n in nodes]
        used = {x for n in order for x in n.input}
        g = helper.make_graph(order, "fold", [], [helper.make_tensor_value_info(name, 0, None)],
                              [t for t in ref_model.graph.initializer if t.name in used])
        model = helper.make_model(g, opset_imports=ref_model.opset_import)
        try:
            out[name] = np.asarray(ReferenceEvaluator(model).run(None, {})[0])
        except Exception:  # noqa: BLE001 - an op the reference evaluator lacks: that weight stays unchecked
            continue
    return out


def _conv_fused(ref_model, ref: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights onnxruntime's Conv fusions write, recomputed from the FP32 graph: ConvBnFusion's
    "ConvBnFusion_W_<conv weight>" = W * f and "ConvBnFusion_BN_B_<BN bias>" = bias * f + B - mean * f, f = scale /
    sqrt(var + epsilon) per output channel, the bias the conv's own or the constant paddle2onnx adds after a bias-less
    Conv (Conv -> Add -> BatchNormalization: ConvAddFusion runs first), else 0; ConvAddFusion's
    "ConvAddFusion_Add_B_<addend>" = that constant, flattened, where no BatchNormalization follows (a RepVGG's bias
    x1.1 in model.int8.onnx passed)."""
    consumers: dict[str, list] = {}
    for n in ref_model.graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)

    def only(x: str, op: str):          # the one consumer of x, past Identity nodes, if it is an `op`
        after = consumers.get(x, [])
        while len(after) == 1 and after[0].op_type == "Identity":
            after = consumers.get(after[0].output[0], [])
        return after[0] if len(after) == 1 and after[0].op_type == op else None
    plans = []                           # (conv, addend or None, bn or None)
    for n in ref_model.graph.node:
        if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in ref:
            continue
        add, addend = only(n.output[0], "Add"), None
        if add is not None and (len(n.input) < 3 or not n.input[2]):
            other = [x for x in add.input if x != n.output[0]]
            addend = other[0] if len(other) == 1 else None
        bn = only(add.output[0] if addend is not None else n.output[0], "BatchNormalization")
        if bn is not None and not all(x in ref for x in bn.input[1:5]):
            bn = None
        if bn is not None or addend is not None:
            plans.append((n, addend, bn))
    wanted = {a for _, a, _ in plans if a is not None}
    values = {**{x: ref[x] for x in wanted if x in ref}, **_folded(ref_model, ref, wanted - set(ref))}
    out = {}
    for n, addend, bn in plans:
        if addend is not None and addend not in values:
            continue
        bias = (np.asarray(values[addend], np.float64).reshape(-1) if addend is not None
                else ref[n.input[2]].astype(np.float64) if len(n.input) > 2 and n.input[2] in ref else 0.0)
        if bn is None:
            out[f"ConvAddFusion_Add_B_{addend}"] = bias
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale, b, mean, var = (ref[x].astype(np.float64) for x in bn.input[1:5])
        f = scale / np.sqrt(var + eps)
        w = ref[n.input[1]].astype(np.float64)
        out[f"ConvBnFusion_W_{n.input[1]}"] = w * f.reshape([-1] + [1] * (w.ndim - 1))
        out[f"ConvBnFusion_BN_B_{bn.input[2]}"] = bias * f + b - mean * f
    return out


def check_lineage(precision: str, fp32_path: Path, variant_path: Path, weights_only: bool = False) -> dict:
    """{"checked": weights and nodes verified, "worst_abs": largest weight deviation beyond rounding seen,
    "violations": [...]} for fp16 and dynamic int8 variants; other variants get checked = 0. weights_only: the
    variant was made from a differently fused FP32 graph than `fp32_path`: no node is expected kept."""
    import onnx
    ref_model = onnx.load(str(fp32_path))
    var_model = onnx.load(str(variant_path))
    ref, var = _weights(ref_model), _weights(var_model)
    violations: list[str] = []
    excess: list[tuple[str, np.ndarray]] = []
    checked, worst = 0, 0.0
    quantized = {k[:-len("_quantized")] for k in var if k.endswith("_quantized")}
    refolded: set[str] = set()
    if precision == "int8":
        # the int8 pass's constant folding turns FP32 tensors computed from weights alone into constants of the same
        # name (a reshaped fc weight it then quantizes; Swin's relative-position bias gathered from its table, its
        # shift masks): each is recomputed from the FP32 weights, so a changed one is caught as a changed weight
        computed = {o for n in ref_model.graph.node for o in n.output}
        constants = {k for k in var if k not in ref and k in computed and _floating(var[k])}
        folded = _folded(ref_model, ref, (quantized - set(ref)) | constants)
        refolded = set(folded) & constants
        ref.update(folded)
    if precision in ("fp16", "int8"):
        nodes = {n.name: n for n in var_model.graph.node}
        produced = {o for n in var_model.graph.node for o in n.output}
        kept = [] if weights_only else _kept_nodes(ref_model, precision, produced, set(nodes))
        for n in kept:
            checked += 1
            got = nodes.get(n.name)
            if got is None or got.op_type != n.op_type:
                violations.append(f"node {n.name!r} ({n.op_type}) of the FP32 graph is "
                                  + ("missing" if got is None else f"now {got.op_type}"))
                continue
            want, have = _attributes(n), _attributes(got)
            if want != have:                            # a LayerNormalization's epsilon 1e-6 -> 1e-2 passed FP16
                diff = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
                violations.append(f"node {n.name!r} ({n.op_type}) has other attributes than in the FP32 graph: "
                                  + ", ".join(f"{k} {_shown(want.get(k))} -> {_shown(have.get(k))}" for k in diff))
        if not weights_only:
            violations += _unread(ref_model, var_model, [n.name for n in kept])
            if precision == "int8":
                n_attr, found = _attribute_violations(ref_model, var_model, {n.name for n in kept})
                checked += n_attr
                violations += found
        n_int, found = _integer_violations(ref, var)
        checked += n_int
        violations += found
        for name, w in ref.items():
            if not _floating(w):
                continue
            if name in var and var[name].shape == w.shape and _floating(var[name]):
                v = var[name].astype(np.float64)
                w64 = w.astype(np.float64)
                if var[name].dtype == np.float16 and w.dtype != np.float16:
                    tol = np.maximum(np.abs(w64) * FP16_ULP, FP16_TINY)
                    tol = np.where(np.abs(w64) > 65504, np.inf, tol)
                elif name in refolded:          # float32 rounding of the fold, in whatever order it computed
                    tol = _fold_tolerance(w64)
                else:
                    tol = np.zeros_like(w64)
                with np.errstate(invalid="ignore"):          # inf - inf: an attention mask's -inf kept as -inf
                    err = np.abs(v - w64) - tol
                # equal (infinities included), or past float16's range and kept at its end with its sign
                same = (v == w64) | (np.isinf(tol) & (np.sign(v) == np.sign(w64)))
                err = np.where(same, 0.0, err)
            elif name in quantized and all(f"{name}{s}" in var for s in ("_scale", "_zero_point")):
                got = _dequantized(var[f"{name}_quantized"], var[f"{name}_scale"], var[f"{name}_zero_point"], w)
                if got is None or got[0].shape != w.shape:
                    violations.append(f"quantized weight {name!r} has shape {list(var[name + '_quantized'].shape)}"
                                      f" vs FP32 {list(w.shape)}")
                    continue
                deq, step = got
                err = np.abs(deq - w.astype(np.float64)) - (0.5 * np.abs(step) * (1 + 1e-3) + 1e-7)
            else:
                continue
            excess.append((name, err))
        for name, want in (_conv_fused(ref_model, ref).items() if precision == "int8" else ()):
            if name not in var or var[name].size != want.size:
                continue
            want = want.reshape(var[name].shape)
            # float32 rounding of the fold, with room for a different association of its products
            excess.append((name, np.abs(var[name].astype(np.float64) - want)
                           - _fold_tolerance(want)))
    for name, err in excess:             # err: deviation beyond the rounding the pass may introduce, per value
        checked += 1
        err = np.where(np.isnan(err), np.inf, err)     # a NaN never compares > 0: it would pass the tensor whole
        if err.size and err.max() > 0:
            worst = max(worst, float(err.max()))
            violations.append(f"weight {name!r} differs from the FP32 model's beyond {precision} rounding "
                              f"({int((err > 0).sum())} of {err.size} values; first at flat index "
                              f"{int(np.argmax(err))})")
    return {"checked": checked, "worst_abs": worst, "violations": violations}
