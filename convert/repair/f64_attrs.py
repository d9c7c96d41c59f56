"""Attributes Paddle >= 3.3 stores as float64 where paddle2onnx 2.1.0 reads float32.

Translating a program to PIR, Paddle 3.3 writes a few attributes as float64 (`0.a_f64`) that Paddle 3.2 wrote as
float32 (measured on the corpus, same programs under both: leaky_relu `negative_slope` and the *_interp ops' `scale`
array; every other float attribute kept its type). paddle2onnx 2.1.0 reads them as float32 (pir_parser.cc), so
  - an array (`scale`) aborts the export: `the 0th elementwise MUST be ir::FloatAttribute`;
  - a scalar (`negative_slope`) is read as NaN, silently: LeakyRelu(alpha=nan) makes every output NaN.
Storing them as float32 is what Paddle 3.2 wrote (and slopes/resize factors are float32 values to begin with).
"""
from __future__ import annotations

NAME = "paddle33_f64_attributes"
DEFECT = "Paddle >= 3.3 writes leaky_relu.negative_slope / *_interp.scale as float64; paddle2onnx 2.1.0 reads float32"
F64, F32 = "0.a_f64", "0.a_f32"
# op name (PIR, without the dialect prefix; a leading "*" matches a suffix) -> attribute names
ATTRIBUTES = {"leaky_relu": ("negative_slope",), "*_interp": ("scale",)}


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
