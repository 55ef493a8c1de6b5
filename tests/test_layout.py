"""The house's inner walls: no import cycle inside any package, modules under 600 lines
unless their docstring says why, no class over 300 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

ROOT = Path(__file__).parent.parent / "provisiond"
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 300


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), within one package."""
    modules = sorted(m for m in graph.modules if m.startswith("provisiond"))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def package(m: str) -> str:
        return m.rsplit(".", 1)[0]

    def edges(m: str) -> list[str]:
        # Within one package only: a package's __init__ re-exporting its modules is not
        # a cycle between those modules.
        return sorted(n for n in graph.find_modules_directly_imported_by(m)
                      if n.startswith("provisiond") and package(n) == package(m))

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for n in edges(m):
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in on_stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            component = []
            while True:
                n = stack.pop()
                on_stack.discard(n)
                component.append(n)
                if n == m:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for m in modules:
        if m not in index:
            visit(m)
    return found


def test_no_import_cycle_inside_any_package() -> None:
    graph = grimp.build_graph("provisiond")
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for m in ("provisiond.daemon.a", "provisiond.daemon.b", "provisiond.daemon.c"):
        graph.add_module(m)
    graph.add_import(importer="provisiond.daemon.a", imported="provisiond.daemon.b")
    graph.add_import(importer="provisiond.daemon.b", imported="provisiond.daemon.a")
    graph.add_import(importer="provisiond.daemon.c", imported="provisiond.daemon.a")
    assert _cycles(graph) == [["provisiond.daemon.a", "provisiond.daemon.b"]]


def _sources() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "migrations" not in p.parts)


def test_modules_stay_small_unless_they_say_why() -> None:
    long = []
    for path in _sources():
        text = path.read_text()
        if text.count("\n") < MAX_MODULE_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if "longer than" not in doc:  # e.g. "This module is longer than 600 lines because …"
            long.append(f"{path.relative_to(ROOT.parent)}: {text.count(chr(10))} lines")
    assert long == []


def test_no_class_over_300_lines() -> None:
    big = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    big.append(f"{path.relative_to(ROOT.parent)}: {node.name} {size} lines")
    assert big == []
