"""FP16 overflow that a CPU cannot see.

onnxruntime's CPU provider has float16 kernels for few operators and casts around the others, computing them in
float32: a tensor past float16's range (65504) passes the FP16 gate on a CPU and is inf where float16 is computed
natively (CUDA; run47: a ConvNeXt's LayerNorm square, cosine 0.056 on an H100, 1.000000 on two CPUs). So the FP32
model the FP16 one came from is run on the gate's samples with every tensor the FP16 graph computes in float16
exposed, and those whose magnitude exceeds float16's range are named in a warning (range_row says why not a
refusal) and in validation.json.
Written by hand: onnxruntime's float16 converter and onnx check types, not ranges. onnx and onnxruntime only.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FP16_MAX = 65504.0
MAX_BYTES = 1 << 30            # past this the FP32 model is not run again (it would be serialized in memory)


def half_tensors(fp16_model) -> dict[str, str]:
    """{tensor: what makes it float16} of the FP16 graph: node outputs typed float16 (by onnx's type inference; {}
    where it cannot run) under their producer's op type, and the float32 inputs of Cast(to=FLOAT16) nodes (a
    blocked op's result entering float16: "Cast to float16 after OP"). Cast outputs are new names, not checked."""
    import onnx
    from onnx import TensorProto
    try:
        typed = onnx.shape_inference.infer_shapes(fp16_model, strict_mode=False)
    except Exception:  # noqa: BLE001 - too large to serialize, or an op it cannot type: nothing checked
        return {}
    half = {v.name for v in [*typed.graph.value_info, *typed.graph.output]
            if v.type.tensor_type.elem_type == TensorProto.FLOAT16}
    g = fp16_model.graph
    producer = {o: n.op_type for n in g.node for o in n.output}
    out = {o: n.op_type for n in g.node if n.op_type != "Cast" for o in n.output if o in half}
    for n in g.node:
        if n.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT16 for a in n.attribute):
            out.setdefault(n.input[0], f"Cast to float16 after {producer.get(n.input[0], 'an input')}")
    return out


def overflows(fp32_path: Path, fp16_path: Path, samples: list[dict]) -> tuple[int, list[dict]]:
    """(tensors checked, [{"tensor", "op", "max_abs"}] of those past float16's range on `samples`, largest first).
    A tensor is checked where the FP32 model computes it under the same name (its nodes' outputs)."""
    import onnx

    from paddle2ort.runtime.session import SessionOptions, create_session

    from .export import model_bytes
    if model_bytes(Path(fp32_path)) > MAX_BYTES:
        log.info("fp16 range check skipped: %s is over %d MB", Path(fp32_path).name, MAX_BYTES >> 20)
        return 0, []
    half = half_tensors(onnx.load(str(fp16_path), load_external_data=False))
    ref = onnx.load(str(fp32_path))
    try:                                # a name typed otherwise in the FP32 graph (indices) is not watched
        typed = onnx.shape_inference.infer_shapes(ref, strict_mode=False)
    except Exception:  # noqa: BLE001 - an op it cannot type: every float16 name is taken as float32 there
        typed = ref
    other = {v.name for v in typed.graph.value_info
             if v.type.tensor_type.elem_type not in (0, onnx.TensorProto.FLOAT)}
    # inference stops at the first contrib op of a fused encoder: an untyped tensor that is float16 in the FP16
    # graph is float32 in the graph it came from. Only tensors the inputs reach: a constant past the range (a
    # Clip's 3.4e38 bound) is clamped by the float16 converter itself
    from .lineage import _dynamic_tensors
    produced = {o for n in ref.graph.node for o in n.output}
    reached = (_dynamic_tensors(ref.graph) & produced) - {o.name for o in ref.graph.output} - other
    watch = sorted(t for t in half if t in reached)
    if not watch:
        return 0, []
    ref.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in watch)
    try:
        sess = create_session(ref.SerializeToString(), SessionOptions(device="cpu", graph_optimization="basic"))
        names = [i.name for i in sess.get_inputs()]
        top = np.zeros(len(watch))
        for s in samples:
            for k, a in enumerate(sess.run(watch, {n: s[n] for n in names})):
                a = np.asarray(a)
                if a.dtype.kind == "f" and a.size:
                    finite = np.abs(a[np.isfinite(a)])
                    top[k] = max(top[k], float(finite.max()) if finite.size else 0.0)
    except Exception as e:  # noqa: BLE001 - a tensor onnxruntime cannot expose: the check says so and stands aside
        log.info("fp16 range check not run (%s: %s)", type(e).__name__, str(e).splitlines()[0][:200])
        return 0, []
    over = [{"tensor": t, "op": half[t], "max_abs": float(m)} for t, m in zip(watch, top) if m > FP16_MAX]
    return len(watch), sorted(over, key=lambda r: -r["max_abs"])


def range_row(checked: int, over: list[dict]) -> dict:
    """The gate row of the check, and a warning where tensors (named with their op types) exceed float16's range.
    A warning, not a refusal: an element past the range need not reach the outputs (a clip, a max, a fusion that
    keeps float32: onnxruntime's CUDA provider ran a ConvNeXt whose stem reached 7.55e4 at cosine 0.999079), and the
    outputs are judged on the device itself by `paddle2ort validate BUNDLE --device gpu` (and `release`)."""
    ops = sorted({r["op"].rpartition(" ")[2] for r in over if r["op"] != "Cast to float16 after an input"} - MOVES)
    if over:
        shown = ", ".join(f"{r['tensor']!r} ({r['op']}, |x| up to {r['max_abs']:.3g})" for r in over[:4])
        more = f" and {len(over) - 4} more" if len(over) > 4 else ""
        from .precision import FP16Options
        block = FP16Options().op_block_list
        add = [op for op in ops if op not in block]
        keep = (f", or convert again keeping those ops in FP32: --fp16-block-ops {','.join([*block, *add])} (the "
                "default list with them added; add them to yours if you gave one)" if add else "")
        log.warning("fp16: %d tensor(s) the FP16 model computes in float16 exceed its range (65504) on the samples: "
                    "%s%s. This host's CPU computes them in float32, so its gate cannot see it: where float16 is "
                    "computed natively (CUDA) they may be inf. Judge the FP16 model there (paddle2ort validate "
                    "BUNDLE --device gpu)%s.", len(over), shown, more, keep)
    return {"output": RANGE_ROW, "kind": "fp16_range", "shape": None, "violations": [],
            "metrics": {"checked": checked, "max_abs_diff": max((r["max_abs"] for r in over), default=0.0),
                        "ops": ops, "over": over[:16], "kind": "fp16_range"}}


RANGE_ROW = "(float16 range of its tensors)"
# ops that pass values on unchanged: the op before them made the magnitude, no use keeping them in FP32
MOVES = {"Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Slice", "Gather", "Split",
         "Expand", "Tile", "Pad"}
