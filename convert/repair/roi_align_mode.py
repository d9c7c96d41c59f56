"""roi_align(aligned=False): paddle2onnx 2.1.0 writes RoiAlign without coordinate_transformation_mode, whatever the
op's `aligned` says; from opset 16 that mode defaults to half_pixel, which is Paddle's aligned=True, so a model
with aligned=False (PaddleDetection's older RoIAlign heads) samples every bin half a pixel off (cosine 0.49 against
Paddle on a probe; aligned=True matched to 9e-8). The program gives each roi_align's flag; the k-th RoiAlign node
of the graph (paddle2onnx maps the top block's ops in order, one node each) gets its mode: output_half_pixel for
aligned=False, half_pixel for True. A pair repair (the program and the exported graph), in the export worker."""
from __future__ import annotations

from ._program import attr, top_ops

NAME = "roi_align_mode"
DEFECT = "paddle2onnx 2.1.0 writes RoiAlign without coordinate_transformation_mode (aligned=False read as True)"


def sites(program: dict) -> list[bool]:
    """Each top-block roi_align op's `aligned`, in program order, where any is False (else [])."""
    flags = [attr(op, "aligned") is True for op in top_ops(program, "roi_align")]
    return flags if not all(flags) else []


def apply(model, flags: list[bool]) -> int:
    from onnx import helper
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    nodes = [n for n in model.graph.node if n.op_type == "RoiAlign"]
    if opset < 16 or len(nodes) != len(flags):       # below 16 the op has no mode (and computes output_half_pixel)
        return 0
    count = 0
    for node, aligned in zip(nodes, flags):
        if any(a.name == "coordinate_transformation_mode" for a in node.attribute):
            continue
        node.attribute.append(helper.make_attribute("coordinate_transformation_mode",
                                                    "half_pixel" if aligned else "output_half_pixel"))
        count += not aligned
    return count
