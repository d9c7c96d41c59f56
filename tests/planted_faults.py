"""Planted faults: ONNX graph edits that break a converted model the way real converter bugs do.

Each takes a ModelProto (not modified) and returns a broken copy, or None where the fault does not apply (swapping
outputs needs two outputs of one shape). Used by tests/test_planted_faults.py against the gate's defaults.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

FLOAT_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16}
ACTIVATIONS = {"Relu", "HardSwish", "HardSigmoid", "Sigmoid", "Gelu", "Tanh", "Clip", "LeakyRelu", "Erf", "Swish",
               "Softplus", "PRelu", "BatchNormalization"}


def _rename_everywhere(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]


def _wrap_output(model, index: int, op: str, operand: np.ndarray | None):
    """output_k := op(output_k, operand) by renaming the producer's tensor."""
    m = copy.deepcopy(model)
    g = m.graph
    out = g.output[index]
    pre = out.name + "__planted"
    _rename_everywhere(g, out.name, pre)
    inputs = [pre]
    if operand is not None:
        dtype = helper.tensor_dtype_to_np_dtype(out.type.tensor_type.elem_type)
        g.initializer.append(numpy_helper.from_array(np.asarray(operand, dtype), out.name + "__operand"))
        inputs.append(out.name + "__operand")
    g.node.append(helper.make_node(op, inputs, [out.name], name=f"planted_{op}"))
    return m


def output_times_zero(model, ref: np.ndarray, index: int = 0):
    """Every value 0 (a label output: every label the first class, as an ArgMax of zeroed scores answers)."""
    return _wrap_output(model, index, "Mul", np.zeros((), np.float32))


def output_plus_c(model, ref: np.ndarray, index: int = 0):
    """A constant offset of half the reference's standard deviation; an integer (label) output's labels shifted by
    at least one (a class list off by one)."""
    c = 0.5 * np.std(ref)
    return _wrap_output(model, index, "Add", np.float32(c) if np.issubdtype(ref.dtype, np.floating)
                        else np.int64(max(1, round(c))))


def _float_initializers(model) -> list:
    """Float weights of some size that are not constant (a zero-initialized bias scaled by 1.01 is unchanged)."""
    return [t for t in model.graph.initializer if t.data_type in FLOAT_TYPES and np.prod(t.dims) >= 16
            and np.ptp(numpy_helper.to_array(t)) > 0]


def weight_perturbed(model, ref: np.ndarray, rel: float = 0.01):
    """The largest floating weight (or, in a dynamically quantized model, the scale of a quantized weight when no
    float weight of size remains) scaled by 1 + rel."""
    m = copy.deepcopy(model)
    weights = _float_initializers(m)
    if not weights:      # INT8 with every weight quantized: its scales are the floats that carry the weight
        weights = [t for t in m.graph.initializer if t.data_type in FLOAT_TYPES and t.name.endswith("_scale")]
    t = max(weights, key=lambda t: int(np.prod(t.dims)))
    w = numpy_helper.to_array(t)
    t.CopyFrom(numpy_helper.from_array((w.astype(np.float64) * (1 + rel)).astype(w.dtype), t.name))
    return m


def outputs_swapped(model, ref: np.ndarray):
    """The first two graph outputs exchange their values (a mis-ordered fetch list); where they have one element
    type (the swapped graph must still load: a detector's float detections and integer indices cannot swap)."""
    m = copy.deepcopy(model)
    g = m.graph
    if len(g.output) < 2 or g.output[0].type.tensor_type.elem_type != g.output[1].type.tensor_type.elem_type:
        return None
    a, b = g.output[0].name, g.output[1].name
    _rename_everywhere(g, a, a + "__planted")
    _rename_everywhere(g, b, b + "__planted")
    g.node.extend([helper.make_node("Identity", [b + "__planted"], [a], name="planted_swap_a"),
                   helper.make_node("Identity", [a + "__planted"], [b], name="planted_swap_b")])
    return m


def _bypass_candidates(graph) -> list:
    inits = {t.name for t in graph.initializer}
    consts = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    outputs = {o.name for o in graph.output}
    act = lambda x: x and x not in inits and x not in consts  # noqa: E731
    residual = [n for n in graph.node if n.op_type == "Add" and len(n.input) == 2 and all(act(x) for x in n.input)
                and n.output[0] not in outputs]
    if residual:
        return residual
    return [n for n in graph.node if n.op_type in ACTIVATIONS and act(n.input[0]) and n.output[0] not in outputs]


def block_skipped(model, ref: np.ndarray):
    """The middle residual block bypassed (its Add -> the skip input), or the middle activation where a model
    has no residual adds: consumers are rewired to the node's input."""
    m = copy.deepcopy(model)
    g = m.graph
    cands = _bypass_candidates(g)
    if not cands:
        return None
    node = cands[len(cands) // 2]
    src, dst = node.input[0], node.output[0]
    g.node.remove(node)
    for n in g.node:
        n.input[:] = [src if x == dst else x for x in n.input]
    return m


FAULTS = {"output x 0": output_times_zero, "output + c": output_plus_c, "weight x 1.01": weight_perturbed,
          "outputs swapped": outputs_swapped, "block skipped": block_skipped}


def fault_matrix(case, tmp_path) -> dict[tuple[str, str], str]:
    """(fault, precision) -> "caught" / "MISSED" / "n/a" at the default thresholds. case: (manifest, bundle, the
    gate's samples, Paddle's references); every precision of the bundle, each judged by `validate` with the lineage
    from its FP32 model."""
    from paddle2ort.convert.errors import ValidationError
    from paddle2ort.convert.validate import DEFAULT_THRESHOLDS, validate
    m, bundle, samples, refs = case
    ref0 = np.concatenate([r[0].ravel() for r in refs])
    out = {}
    for prec in m.models:
        model = onnx.load(str(bundle.model_path(prec)))
        for fault, plant in FAULTS.items():
            broken = plant(model, ref0)
            if broken is None:
                out[(fault, prec)] = "n/a"
                continue
            path = tmp_path / f"{prec}.{fault.replace(' ', '_')}.onnx"
            onnx.save(broken, str(path))
            try:
                validate(prec, path, samples, refs, list(m.outputs), DEFAULT_THRESHOLDS[prec],
                         fp32_model=bundle.model_path("fp32"))
                out[(fault, prec)] = "MISSED"
            except ValidationError:
                out[(fault, prec)] = "caught"
    return out


def gate_case(src, out) -> tuple:
    """(manifest, bundle, the gate's samples, Paddle's references) of the bundle at `out` converted from `src`: the
    samples from its validation_inputs.npz, the references from Paddle Inference again."""
    import tempfile
    from pathlib import Path

    from paddle2ort.convert.api import SAMPLES_NAME, paddle_reference
    from paddle2ort.convert.source import locate
    from paddle2ort.convert.validate import load_samples
    from paddle2ort.runtime.manifest import load_bundle
    bundle = load_bundle(out)
    m = bundle.manifest
    specs = [{"name": i.name, "dtype": i.dtype, "shape": [d if isinstance(d, int) else -1 for d in i.shape]}
             for i in m.inputs]
    samples = load_samples(Path(out) / SAMPLES_NAME, specs)
    with tempfile.TemporaryDirectory() as work:
        refs = paddle_reference(locate(src), samples, Path(work))
    return m, bundle, samples, refs
