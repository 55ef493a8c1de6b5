"""The targets' layout holds: no import cycle among ``provisiond.targets``' modules; the
RouterOS room's modules stay small (under 600 lines unless the docstring says why, no
class over 300 lines), and librouteros stays in ``wire``."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grimp
import pytest

import provisiond.targets.routeros as routeros_package

MODULE_LINES = 600
CLASS_LINES = 300
ROOM = Path(routeros_package.__file__).parent


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("provisiond", include_external_packages=True)


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle in ``edges`` as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done
    path: list[str] = []

    def walk(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for imported in sorted(edges.get(module, ())):
            if state.get(imported) == 1:
                return path[path.index(imported):] + [imported]
            if imported not in state and (found := walk(imported)) is not None:
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(edges):
        if module not in state and (found := walk(module)) is not None:
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) is None


def test_no_import_cycle_among_the_targets_modules(graph: grimp.ImportGraph) -> None:
    inside = {m for m in graph.modules if m == "provisiond.targets" or m.startswith("provisiond.targets.")}
    assert "provisiond.targets.routeros.wire" in inside
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i in inside} for m in inside}
    assert _cycle(edges) is None


def test_only_wire_imports_librouteros(graph: grimp.ImportGraph) -> None:
    # An external package is one node: ``librouteros.protocol`` counts as ``librouteros``.
    importers = {m for m in graph.find_modules_that_directly_import("librouteros")
                 if m.startswith("provisiond.")}
    assert importers == {"provisiond.targets.routeros.wire"}


@pytest.mark.parametrize("path", sorted(ROOM.glob("*.py")), ids=lambda p: p.name)
def test_a_module_of_the_room_is_small(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text)
    lines = len(text.splitlines())
    docstring = ast.get_docstring(tree) or ""
    assert docstring, f"{path.name} has no module docstring"
    # A longer module says why in its docstring: "Over 600 lines: ...".
    assert lines < MODULE_LINES or re.search(r"over 600 lines", docstring, re.IGNORECASE), (
        f"{path.name} has {lines} lines")
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            size = (node.end_lineno or node.lineno) - node.lineno + 1
            assert size <= CLASS_LINES, f"{path.name}: class {node.name} has {size} lines"
