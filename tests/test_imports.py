"""The import rules of docs/architecture.md: no cycles between modules, and live code never imports dev/.

Every import statement counts, including those inside functions: a lazy import still ties two
modules together and still ships the imported one in the serving process.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "exporter"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The pgvigil modules `path` imports (a `from package import name` counts as the submodule if it is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    graph = {name: imports_of(path, modules) - {name} for name, path in paths.items()}
    for name in graph:  # importing a submodule runs its packages' __init__ first; those are not edges
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_live_code_never_imports_dev():
    offenders = {name: sorted(m for m in deps if m == "exporter.dev" or m.startswith("exporter.dev."))
                 for name, deps in import_graph().items() if not name.startswith("exporter.dev")}
    assert {name: deps for name, deps in offenders.items() if deps} == {}


def test_the_scrape_core_does_not_reach_up_into_the_layers_above_it():
    above = ("exporter.cli", "exporter.server", "exporter.bundle", "exporter.backup")
    graph = import_graph()
    reaching = {name: sorted(m for m in deps if m.startswith(above))
                for name, deps in graph.items() if name.startswith("exporter.scrape")}
    assert {name: deps for name, deps in reaching.items() if deps} == {}


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
