"""The house rules of docs/DESIGN.md, checked on the source: no import cycle among botsq's
modules (imports inside functions count), and ``engine/`` never imports ``tasks/``, ``ops/`` or
``beat_schedule``.

An edge is an import statement naming a botsq module: ``import a.b`` names ``a.b``;
``from a.b import c`` names ``a.b.c`` when that is a module, else ``a.b``. Imports under
``if TYPE_CHECKING:`` are annotations only and never run; they are not edges.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGES = ("engine", "tasks", "ops")
TOP_MODULES = ("beat_schedule",)


def modules() -> dict[str, Path]:
    """Every botsq module by dotted name (a package by its name, for its __init__.py)."""
    mods: dict[str, Path] = {name: REPO / f"{name}.py" for name in TOP_MODULES}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imports(path: Path, mods: dict[str, Path]) -> list[tuple[str, int]]:
    """(botsq module imported, line) for every import in the file that runs, at any depth."""
    found: list[tuple[str, int]] = []

    def deepest(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = deepest(alias.name)
                if target:
                    found.append((target, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: botsq uses absolute imports only"
            for alias in node.names:
                target = f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in mods \
                    else deepest(node.module or "")
                if target:
                    found.append((target, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {mod: {t for t, _ in imports(path, mods) if t != mod} for mod, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return found


def test_no_import_cycle_among_botsq_modules():
    found = cycles(import_graph())
    assert found == [], "import cycles (each line: modules that import each other round): " + \
        "; ".join(" <-> ".join(c) for c in found)


def test_engine_imports_neither_tasks_nor_ops():
    mods = modules()
    bad = [f"{path.relative_to(REPO)}:{line} imports {target}"
           for mod, path in mods.items() if mod.split(".")[0] == "engine"
           for target, line in imports(path, mods)
           if target.split(".")[0] in ("tasks", "ops") or target in TOP_MODULES]
    assert bad == []


@pytest.mark.parametrize("edges,expected", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["a", "b"], ["c", "d"]]),
])
def test_the_cycle_finder_finds_cycles(edges, expected):
    assert sorted(cycles(edges)) == expected


def test_function_level_and_from_imports_are_edges(tmp_path):
    mods = {"pkg": tmp_path / "pkg.py", "pkg.a": tmp_path / "a.py", "pkg.b": tmp_path / "b.py"}
    mods["pkg.a"].write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.b\n"
                             "def f():\n    from pkg import b\n    import pkg\n")
    assert imports(mods["pkg.a"], mods) == [("pkg.b", 5), ("pkg", 6)]
