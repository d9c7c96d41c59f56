"""The layers import one way: cli -> benchmarks -> convert -> runtime -> tokenization.

Reads every module's imports from its source (ast: module-level and function-level `import` / `from ... import`,
relative ones resolved), so a lazy import inside a function counts like any other.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("cli", "benchmarks", "convert", "runtime", "tokenization")     # each may import only those after it
RANK = {name: i for i, name in enumerate(LAYERS)}


def modules() -> list[tuple[str, Path]]:
    """(dotted name, path) of every module of the five folders."""
    out = []
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.append((".".join(["paddle2ort", *parts]), path))
    return out


def imported_names(module: str, path: Path) -> list[tuple[str, int]]:
    """Fully qualified names this module imports, with line numbers (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.append((target, node.lineno))
            # `from paddle2ort import cli` / `from . import fused`: the imported names may be modules
            names += [(f"{target}.{a.name}", node.lineno) for a in node.names]
    return names


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    if len(parts) >= 2 and parts[0] == "paddle2ort" and parts[1] in RANK:
        return parts[1]
    return None


def edges() -> list[tuple[str, str, str, int, str]]:
    """(from layer, to layer, file, line, imported name) for every import between two different layers."""
    out = []
    for module, path in modules():
        src = layer_of(module)
        for name, line in imported_names(module, path):
            dst = layer_of(name)
            if dst is not None and dst != src:
                out.append((src, dst, str(path.relative_to(ROOT)), line, name))
    return out


def test_the_five_folders_have_modules():
    found = {layer_of(m) for m, _ in modules()}
    assert found == set(LAYERS)


def test_resolves_relative_and_function_level_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from ..runtime.errors import BadInputError\n    import paddle2ort.cli.main\n")
    got = {n for n, _ in imported_names("paddle2ort.benchmarks.x", f)}
    assert "paddle2ort.runtime.errors" in got and "paddle2ort.cli.main" in got


def test_no_import_runs_against_the_layer_order():
    wrong = [f"{file}:{line}: {src} imports {name} ({dst} is above {src})"
             for src, dst, file, line, name in edges() if RANK[dst] < RANK[src]]
    assert not wrong, "imports against cli -> benchmarks -> convert -> runtime -> tokenization:\n" + "\n".join(wrong)


def test_no_cycle_between_folders():
    graph: dict[str, set[str]] = {layer: set() for layer in LAYERS}
    for src, dst, *_ in edges():
        graph[src].add(dst)
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, stack + [node])):
                return cycle
        state[node] = 2
        return None

    for layer in LAYERS:
        if layer not in state:
            cycle = visit(layer, [])
            assert cycle is None, "import cycle between folders: " + " -> ".join(cycle)
