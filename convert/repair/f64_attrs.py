"""Attributes Paddle >= 3.3 stores as float64 where paddle2onnx 2.1.0 reads float32.

Translating a program to PIR, Paddle 3.3 writes some float attributes as float64 (`0.a_f64`); paddle2onnx 2.1.0
reads them as float32 (pir_parser.cc). Measured, op by op (Paddle 3.3.1 x paddle2onnx 2.1.0, tiny models of each op
with non-default values, every export compared with Paddle):
  - an array (*_interp `scale`) aborts the export: `the 0th elementwise MUST be ir::FloatAttribute`;
  - softplus `beta`/`threshold` are misread, so the export refuses even the defaults (`Only support softplus with
    beta == 1.0 and threshold == 20.0`);
  - a scalar is read as NaN, 0 or whatever the memory held, silently and differently from run to run: leaky_relu
    `negative_slope` (NaN: every output NaN), pad3d `pad_value` (F.pad's constant: 0 or 1e19), group_norm
    `epsilon` (0: a constant group divides by zero).
Storing them as float32 is what paddle2onnx reads (and these are float32 values in Paddle's kernels). The list is
Paddle's own (libpaddle's version patches name the attributes it turned from float to double; a scan of 124 one-op
programs found no other float64 attribute); legacy programs get it too (convert._worker translates them to PIR
first). float64 by design stays: `full.value`, `assign_value_.values`, `set_value_.values` are read as double
(as float32, 2**40 + 3 or 1e200 would change).
"""
from __future__ import annotations

NAME = "paddle33_f64_attributes"
DEFECT = ("Paddle >= 3.3 writes some float attributes (pad3d.pad_value, group_norm.epsilon, ...) as float64; "
          "paddle2onnx 2.1.0 reads float32")
F64, F32 = "0.a_f64", "0.a_f32"
# op name (PIR, without the dialect prefix; a leading "*" matches a suffix) -> attribute names
ATTRIBUTES = {"leaky_relu": ("negative_slope",), "*_interp": ("scale",), "pad3d": ("pad_value",),
              "group_norm": ("epsilon",), "softplus": ("beta", "threshold")}


def walk_ops(program: dict):
    """Every operation of a PIR JSON program, nested blocks (if/while bodies) included."""
    stack = [program]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("#"), str) and node["#"].startswith("1.") and isinstance(node.get("A"), list):
                yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _attrs_for(op_name: str) -> tuple[str, ...]:
    for pattern, names in ATTRIBUTES.items():
        if op_name == pattern or (pattern.startswith("*") and op_name.endswith(pattern[1:])):
            return names
    return ()


def _f64_values(attr: dict) -> list[dict]:
    at = attr.get("AT", {})
    if at.get("#") == F64:
        return [at]
    if at.get("#") == "0.a_array":
        return [e for e in at.get("D", []) if isinstance(e, dict) and e.get("#") == F64]
    return []


def double_attrs(program: dict) -> list[tuple[str, str]]:
    """(op, attribute) for every float64 attribute of the program (for error messages)."""
    return [(op["#"][2:], attr.get("N", "?")) for op in walk_ops(program) for attr in op["A"] if _f64_values(attr)]


def apply(program: dict) -> int:
    count = 0
    for op in walk_ops(program):
        names = _attrs_for(op["#"][2:])
        for attr in op["A"]:
            if attr.get("N") in names:
                values = _f64_values(attr)
                for v in values:
                    v["#"] = F32
                count += bool(values)
    return count
