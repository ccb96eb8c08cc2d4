"""The import graph of the code folders: arrows point one way and nothing imports itself back.

Read from the source (every `import`, also those behind `TYPE_CHECKING` or inside functions), so
a cycle hidden from the interpreter is still one here.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Folder -> import name, as pyproject's package-dir maps them (the client is `orchestrator.client`).
FOLDERS = {"codecs": "orchestrator.codecs", "subjects": "orchestrator.subjects",
           "service": "orchestrator.service", "service/client": "orchestrator.client"}  # fmt: skip


def _modules() -> dict[str, Path]:
    found: dict[Path, str] = {}
    for folder, package in sorted(FOLDERS.items()):  # "service/client" after "service": it wins
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            found[path] = ".".join((package, *parts)).removesuffix(".__init__")
    return {name: path for path, name in found.items()}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in modules:
                deps.add(node.module)
                submodules = (f"{node.module}.{alias.name}" for alias in node.names)
                deps.update(name for name in submodules if name in modules)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
        graph[name] = deps - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_is_read_from_every_module():
    graph = _graph()
    assert len(graph) > 50
    edge = graph["orchestrator.service.edge.ws_bridge"]
    assert "orchestrator.service.edge.ws_connection" in edge
    client = graph["orchestrator.client"]
    assert "orchestrator.client.orchestrator_client" in client


def test_no_module_imports_itself_back():
    assert _cycles(_graph()) == []


def test_a_cycle_is_found_when_there_is_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_codecs_and_subjects_never_import_the_service():
    for name, deps in _graph().items():
        if name.startswith(("orchestrator.codecs", "orchestrator.subjects")):
            assert not {d for d in deps if d.startswith("orchestrator.service")}, name
        if name.startswith("orchestrator.codecs"):
            assert not {d for d in deps if d.startswith("orchestrator.subjects")}, name
