"""hardtanh's bounds: Paddle 3 names them `t_min` / `t_max`; paddle2onnx 2.1.0's hardtanh mapper reads `min` / `max`
and, finding neither, writes Clip(-1, 1) whatever the layer's bounds (F.hardtanh(x, 0, 20), DeepSpeech2's clipped
ReLU, became a clip at 1; measured). The bounds are given under both names: Paddle reads t_min / t_max, paddle2onnx
min / max (an extra attribute is read by no one else)."""
from __future__ import annotations

from .f64_attrs import walk_ops

NAME = "hardtanh_bounds"
DEFECT = "paddle2onnx 2.1.0 reads hardtanh's bounds as min/max, Paddle writes t_min/t_max: it clipped at -1..1"
RENAMED = {"t_min": "min", "t_max": "max"}


def apply(program: dict) -> int:
    count = 0
    for op in walk_ops(program):
        if op["#"] != "1.hardtanh":
            continue
        have = {a.get("N") for a in op["A"]}
        extra = [{**a, "N": RENAMED[a["N"]], "AT": dict(a["AT"])} for a in op["A"]
                 if a.get("N") in RENAMED and RENAMED[a["N"]] not in have]
        op["A"].extend(extra)
        count += bool(extra)
    return count
