"""Reading a PIR program (the JSON paddle2onnx is handed) for the pair repairs: its top block's ops of one kind, in
the order paddle2onnx maps them (one ONNX node, or node group, each), and their attributes."""
from __future__ import annotations


def top_ops(program: dict, name: str) -> list[dict]:
    """The top block's operations named `name` ("gelu" for "1.gelu"), in program order ([] for another layout)."""
    try:
        ops = program["program"]["regions"][0]["blocks"][0]["ops"]
    except (KeyError, IndexError, TypeError):
        return []
    return [op for op in ops if isinstance(op, dict) and op.get("#") == f"1.{name}"]


def attr(op: dict, name: str, default=None):
    """The value of the op's attribute `name`, else `default`."""
    return next((a.get("AT", {}).get("D") for a in op.get("A", []) if a.get("N") == name), default)
