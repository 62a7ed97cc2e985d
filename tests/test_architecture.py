"""The package's shape: imports point only down the layer order, with no cycle anywhere, and
the trainer never names a foresight source (DEVELOPERS.md, "Layout").

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a lazy
import upward is still a dependency upward.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import mirai

PACKAGE = Path(mirai.__file__).resolve().parent

# cli -> bench/analysis/serve -> training/builders -> foresight/sampling/evaluation/convert
#     -> models/data/figures -> checkpoint/config/hub -> errors. Lower numbers may import higher ones.
LAYERS = {
    "cli": 0, "__main__": 0,  # __main__: `python -m mirai`, the cli entry point
    "bench": 1, "analysis": 1, "serve": 1,
    "training": 2, "builders": 2,
    "foresight": 3, "sampling": 3, "evaluation": 3, "convert": 3,
    "models": 4, "data": 4, "figures": 4,
    "checkpoint": 5, "config": 5, "locks": 5, "hub": 5, "atomic": 5,
    "errors": 6,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The ``mirai`` modules that ``name`` imports (``from mirai.x import y`` names ``mirai.x.y`` when
    that is a module, else ``mirai.x``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mirai")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("mirai"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None  # None: the package root (version only)


def test_every_module_has_a_layer():
    missing = sorted({m.split(".")[1] for m in modules() if m != "mirai" and layer(m) is None})
    assert not missing, f"give these top-level modules a layer in LAYERS (and DEVELOPERS.md): {missing}"


def test_imports_point_only_down_the_layers():
    upward = [
        f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
        for a, targets in import_graph().items() for b in targets
        if layer(a) is not None and layer(b) is not None and layer(b) < layer(a)
    ]
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))
    root = import_graph()["mirai"]
    assert not root, f"the package root must import nothing of its own (it would load every layer): {root}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None, f"import cycle: {' -> '.join(find_cycle(import_graph()))}"
    # The detector itself finds a planted cycle (a package importing its own module counts).
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_trainer_never_names_a_foresight_source():
    pattern = re.compile(r"source\b.*==|teacher_decay|cache_features")
    hits = [f"{p.name}:{i}: {line.strip()}" for p in (PACKAGE / "training").rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, "training/ must stay source-agnostic:\n" + "\n".join(hits)


def test_no_source_file_is_over_450_lines():
    tests = Path(__file__).resolve().parent  # the package, its tests and the benchmarks
    files = [p for folder in (PACKAGE, tests, tests.parent / "benchmarks") for p in folder.rglob("*.py")]
    long = {p.name: n for p in files if (n := len(p.read_text().splitlines())) > 450}
    assert not long, f"split these files: {long}"
