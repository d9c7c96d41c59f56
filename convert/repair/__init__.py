"""Repairs for paddle2onnx's known defects, one family a file, each applied only where its pattern is present.

Two stages: `program` repairs rewrite the PIR program (JSON) handed to paddle2onnx, in the export worker; `onnx`
repairs rewrite the exported graph before the load check. A `pair` repair needs both (which ops of the program
paddle2onnx mistranslated, fixed in its graph): it runs in the export worker on the bytes paddle2onnx returns, the
graph parsed only where the program holds its pattern. Each returns how many sites it changed; the converter
records `[{name, count}]` in the manifest (source.repairs), and the validation gate proves the result against Paddle.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from . import (bool_where, concat_rank, f64_attrs, gelu_tanh, hardtanh_bounds, loop_shapes, nms_score_index,
               output_shapes, resize_inputs, roi_align_mode, thresholded_relu_value)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Repair:
    name: str
    stage: str                      # "program" (PIR JSON dict) | "onnx" (onnx.ModelProto)
    apply: Callable[[object], int]  # mutates its argument; returns the number of sites changed
    defect: str                     # what paddle2onnx gets wrong, one line (logged when applied)


REPAIRS = (
    Repair(f64_attrs.NAME, "program", f64_attrs.apply, f64_attrs.DEFECT),
    Repair(hardtanh_bounds.NAME, "program", hardtanh_bounds.apply, hardtanh_bounds.DEFECT),
    Repair(loop_shapes.NAME, "onnx", loop_shapes.apply, loop_shapes.DEFECT),     # first: inference needs it
    Repair(concat_rank.NAME, "onnx", concat_rank.apply, concat_rank.DEFECT),
    Repair(bool_where.NAME, "onnx", bool_where.apply, bool_where.DEFECT),
    Repair(output_shapes.NAME, "onnx", output_shapes.apply, output_shapes.DEFECT),
    Repair(resize_inputs.NAME, "onnx", resize_inputs.apply, resize_inputs.DEFECT),
    Repair(nms_score_index.NAME, "onnx", nms_score_index.apply, nms_score_index.DEFECT),
)


def _run(stage: str, target) -> list[dict]:
    done = []
    for r in REPAIRS:
        if r.stage != stage:
            continue
        n = r.apply(target)
        if n:
            log.info("repair %s: %d site(s) (%s)", r.name, n, r.defect)
            done.append({"name": r.name, "count": n})
    return done


def repair_program(program: dict) -> list[dict]:
    """Apply the program repairs to a PIR program (the parsed JSON); returns [{name, count}] of those applied."""
    return _run("program", program)


# pair repairs: (name, sites(program) -> list, apply(model, sites) -> count, defect)
PAIRS = ((gelu_tanh.NAME, gelu_tanh.sites, gelu_tanh.apply, gelu_tanh.DEFECT),
         (roi_align_mode.NAME, roi_align_mode.sites, roi_align_mode.apply, roi_align_mode.DEFECT),
         (thresholded_relu_value.NAME, thresholded_relu_value.sites, thresholded_relu_value.apply,
          thresholded_relu_value.DEFECT))


def repair_exported(program: dict, onnx_bytes: bytes) -> tuple[bytes, list[dict]]:
    """Apply the pair repairs to paddle2onnx's output for `program`; -> (the bytes, rewritten only where one applied,
    [{name, count}])."""
    found = [(name, s, apply, defect) for name, sites, apply, defect in PAIRS if (s := sites(program))]
    if not found:
        return onnx_bytes, []
    import onnx
    model = onnx.load_from_string(onnx_bytes)
    done = []
    for name, s, apply, defect in found:
        n = apply(model, s)
        if n:
            log.info("repair %s: %d site(s) (%s)", name, n, defect)
            done.append({"name": name, "count": n})
    return (model.SerializeToString() if done else onnx_bytes), done


def repair_onnx(model) -> list[dict]:
    """Apply the ONNX repairs to an exported model in place; returns [{name, count}] of those applied."""
    return _run("onnx", model)
