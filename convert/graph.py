"""Stage 3: make the exported graph readable — meaningful output names and named dynamic dimensions."""
from __future__ import annotations

import re
from collections import Counter

from paddle2ort.runtime.manifest import TensorSpec

from .errors import BadInputError
from .repair.output_shapes import PREFIX as DATA_DEPENDENT

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")


def default_output_names(outputs: list[dict]) -> list[str]:
    """Name each output after the operator that produces it (`softmax`, `sigmoid`, ...), numbered when repeated."""
    base = [o["producer"].split(".")[-1].rstrip("_") or "output" for o in outputs]
    counts, seen, names = Counter(base), Counter(), []
    for b in base:
        names.append(b if counts[b] == 1 else f"{b}_{seen[b]}")
        seen[b] += 1
    return names


def dim_names(name: str, dtype: str, shape: list[int]) -> list[int | str]:
    """Readable names for dynamic (-1) dims: batch, sequence (token ids), height/width (NCHW images)."""
    out: list[int | str] = []
    for axis, d in enumerate(shape):
        if d >= 0:
            out.append(int(d))
        elif axis == 0:
            out.append("batch")
        elif len(shape) == 2 and axis == 1 and "int" in dtype:
            out.append("sequence")
        elif len(shape) == 4 and axis in (2, 3):
            out.append("height" if axis == 2 else "width")
        else:
            out.append(f"{name}_dim{axis}")
    return out


def _set_shape(value_info, dims: list[int | str]):
    shape = value_info.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


def rename_and_annotate(model, inputs: list[dict], outputs: list[dict], output_names: list[str] | None):
    """Rename graph outputs, name dynamic dims; returns (model, input specs, output specs). Mutates `model`."""
    graph = model.graph
    if len(graph.output) != len(outputs):
        raise BadInputError(f"the ONNX graph has {len(graph.output)} outputs but the Paddle program fetches "
                            f"{len(outputs)}; cannot name them")
    names = list(output_names) if output_names else default_output_names(outputs)
    if len(names) != len(outputs):
        raise BadInputError(f"{len(names)} output name(s) given ({', '.join(names)}) but the model has "
                            f"{len(outputs)} output(s)")
    input_names = {i.name for i in graph.input}
    for n in names:
        if not _IDENT.match(n) or n in input_names:
            raise BadInputError(f"output name {n!r} is not a valid, unique tensor name")
    if len(set(names)) != len(names):
        raise BadInputError(f"output names must be unique, got {names}")

    # Rename every use of each old output name.
    mapping = {o.name: new for o, new in zip(graph.output, names)}
    for node in graph.node:
        for i, t in enumerate(node.output):
            if t in mapping:
                node.output[i] = mapping[t]
    rename_inputs(graph, mapping)
    for vi in graph.value_info:
        if vi.name in mapping:
            vi.name = mapping[vi.name]

    by_name = {i["name"]: i for i in inputs}
    in_specs = []
    for vi in graph.input:
        spec = by_name.get(vi.name)
        if spec is None:
            continue
        dims = dim_names(vi.name, spec["dtype"], spec["shape"])
        _set_shape(vi, dims)
        in_specs.append(TensorSpec(vi.name, spec["dtype"], tuple(dims)))
    out_specs = []
    for vi, spec, new in zip(graph.output, outputs, names):
        # a static Paddle dim that is only an upper bound (convert.repair.output_shapes) stays dynamic
        bound = {a for a, d in enumerate(vi.type.tensor_type.shape.dim) if d.dim_param.startswith(DATA_DEPENDENT)}
        vi.name = new
        dims = dim_names(new, spec["dtype"], [-1 if a in bound else d for a, d in enumerate(spec["shape"])])
        dims = [f"{new}_dim{a}" if a in bound else d for a, d in enumerate(dims)]
        _set_shape(vi, dims)
        out_specs.append(TensorSpec(new, spec["dtype"], tuple(dims)))
    return model, in_specs, out_specs


def outputs_from_nodes(graph) -> None:
    """An output that is a weight (constant folding makes a PaddleRec DSSM's `ones([n, 1])` of a static n one)
    gets a producing Identity, under its own name, the weight renamed. The FP16 pass's output Casts assume a
    producing node (it left a cycle: "Graph is not a DAG")."""
    from onnx import helper
    weights = {t.name: t for t in graph.initializer}
    for o in graph.output:
        if o.name in weights:
            held = f"{o.name}.value"
            rename_inputs(graph, {o.name: held})
            weights[o.name].name = held
            for i in graph.input:               # IR < 4 lists weights among the inputs too
                if i.name == o.name:
                    i.name = held
            graph.node.append(helper.make_node("Identity", [held], [o.name], name=f"{o.name}.identity"))


def rename_inputs(graph, mapping: dict[str, str]) -> None:
    """Rename every use of the names in `mapping` in `graph`, and in the If/Loop/Scan bodies below it that read them
    from the outer scope (a body that defines a name itself shadows it there). Mutates `graph`."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]
        for body in _bodies(node):
            own = ({i.name for i in body.input} | {t.name for t in body.initializer}
                   | {o for n in body.node for o in n.output})
            inner = {k: v for k, v in mapping.items() if k not in own}
            if inner:
                rename_inputs(body, inner)
                for out in body.output:     # a body output that is an outer name itself
                    if out.name in inner:
                        out.name = inner[out.name]


def _bodies(node) -> list:
    from onnx import AttributeProto
    return [b for a in node.attribute for b in ([a.g] if a.type == AttributeProto.GRAPH else
                                                list(a.graphs) if a.type == AttributeProto.GRAPHS else [])]


def outer_reads(node) -> set[str]:
    """Names a node's If/Loop/Scan bodies (at any depth) read from the scopes around the node."""
    out: set[str] = set()
    for body in _bodies(node):
        own = {i.name for i in body.input} | {t.name for t in body.initializer} | {o for n in body.node
                                                                                    for o in n.output}
        for n in body.node:
            out |= {i for i in list(n.input) + sorted(outer_reads(n)) if i and i not in own}
    return out


# ops whose output's shape depends on the values of an input (a count, a shape, repeats, k...)
VALUE_SHAPED = {"NonZero", "Unique", "NonMaxSuppression", "Compress", "TopK", "Range", "Reshape", "Expand", "Tile",
                "ConstantOfShape", "Slice", "Pad", "Resize", "Upsample", "OneHot", "Squeeze", "Unsqueeze", "Split",
                "CenterCropPad", "Loop", "If", "Scan"}
RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli",
              "Dropout"}


def shape_only_outputs(graph) -> set[str]:
    """Graph outputs whose values the inputs' values never reach, only their shapes (Shape/Size cut the flow):
    a PaddleRec DSSM's `ones([batch, 1])`. Flat on any samples by construction, they are not refused as flat
    samples. Conservative: the Shape of a tensor whose shape the inputs' values set (past a NonZero, a Reshape to
    a computed shape...) carries them; random ops and nodes with subgraphs count as reading the inputs; the
    result does not depend on the nodes' order."""
    value = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    shaped: set[str] = set()                  # tensors whose shape the inputs' values decide
    changed = True
    while changed:
        changed = False
        for n in graph.node:
            if n.op_type in ("Shape", "Size"):
                hit = bool(n.input) and n.input[0] in shaped
                grows_shape = False
            else:
                hit = n.op_type in RANDOM_OPS or bool(_bodies(n)) or any(x in value for x in n.input)
                grows_shape = any(x in shaped for x in n.input) or (hit and n.op_type in VALUE_SHAPED)
            for o in n.output:
                if hit and o not in value:
                    value.add(o)
                    changed = True
                if grows_shape and o not in shaped:
                    shaped.add(o)
                    changed = True
    return {o.name for o in graph.output} - value


def sort_nodes(graph) -> bool:
    """Put `graph`'s nodes in topological order counting what their bodies read from outside (onnxruntime's
    quantizer orders by explicit inputs only: an If turned Loop then ran before the node making a name its body
    reads, and the file failed the checker). Stable; True where the order changed. Mutates `graph`."""
    import heapq
    nodes = list(graph.node)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    deps = [{producer[x] for x in list(n.input) + sorted(outer_reads(n)) if x in producer and producer[x] != k}
            for k, n in enumerate(nodes)]
    users: dict[int, list[int]] = {}
    for k, ds in enumerate(deps):
        for d in ds:
            users.setdefault(d, []).append(k)
    waiting = [len(ds) for ds in deps]
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for u in users.get(k, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes) or order == list(range(len(nodes))):
        return False                    # a cycle (left for the checker to name) or already in order
    del graph.node[:]
    graph.node.extend(nodes[k] for k in order)
    return True


def share_duplicate_weights(model) -> int:
    """Move Constant-node weights (paddle2onnx's form) into initializers and keep one copy of identical ones.

    PaddleNLP's LLaMA gives every layer its own rotary cos/sin tables ([1, 8192, 1, 64] each); exported, they were
    ~1/3 of SmolLM2's ONNX file. Returns the bytes saved. Mutates `model`."""
    import hashlib

    from onnx import numpy_helper

    from .precision import constants_to_initializers
    constants_to_initializers(model)
    g = model.graph
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    keep, saved = [], 0
    for t in g.initializer:
        arr = numpy_helper.to_array(t)
        key = (t.data_type, tuple(t.dims), hashlib.sha256(arr.tobytes()).hexdigest())
        if key in first:
            rename[t.name] = first[key]
            saved += arr.nbytes
        else:
            first[key] = t.name
            keep.append(t)
    if not rename:
        return 0
    del g.initializer[:]
    g.initializer.extend(keep)
    rename_inputs(g, rename)            # If/Loop bodies read outer weights too (Swin's 54 Ifs)
    for o in g.output:
        if o.name in rename:          # a graph output that is a bare weight: route it through Identity
            g.node.append(onnx_helper_identity(rename[o.name], o.name))
    return saved


def onnx_helper_identity(src: str, dst: str):
    from onnx import helper
    return helper.make_node("Identity", [src], [dst], name=f"share_{dst}")


def pin_unbatchable(model, in_specs: list[TensorSpec], samples: list[dict]) -> tuple[list[TensorSpec], str | None]:
    """Inputs declared with a dynamic batch the graph cannot run: where every input's first dim is dynamic or a static
    1 (PaddleDetection's scale_factor [1, 2]) and the gate's samples are all batch 1 (so the gate never runs
    another), the FP32 graph is run once on sample 0 with the dynamic inputs repeated twice; if onnxruntime refuses
    it (paddle2onnx's multiclass_nms3 concatenates per-image results for one image only), that dim is pinned to 1 in
    the graph and the specs: a user's batch of 2 then gets a shape error naming it, not a failure inside the graph.
    -> (specs, onnxruntime's reason, or None where nothing was pinned). Mutates `model`."""
    import numpy as np
    names = [s.name for s in in_specs]
    batched = [s.name for s in in_specs if s.shape and isinstance(s.shape[0], str)]
    if (not samples or not batched or any(s.name not in batched and (not s.shape or s.shape[0] != 1)
                                          for s in in_specs)        # a static batch of 1 (scale_factor [1, 2]) stays
            or any(np.ndim(x[n]) == 0 or np.shape(x[n])[0] != 1 for x in samples for n in names)
            or model.ByteSize() > 1_900_000_000):
        return in_specs, None
    from paddle2ort.runtime.session import SessionOptions, create_session
    try:                        # basic: the fusions that crash onnxruntime on some graphs are the later levels'
        sess = create_session(model.SerializeToString(), SessionOptions(graph_optimization="basic"))
    except Exception:  # noqa: BLE001 - a graph that does not load: the load check names it
        return in_specs, None
    try:
        sess.run(None, {n: np.concatenate([samples[0][n]] * 2) if n in batched else samples[0][n] for n in names})
        return in_specs, None
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own (pybind) exception types
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    for vi in model.graph.input:
        if vi.name in batched:
            vi.type.tensor_type.shape.dim[0].dim_value = 1         # clears the dim_param
    return [TensorSpec(s.name, s.dtype, (1, *s.shape[1:])) if s.name in batched else s for s in in_specs], reason
