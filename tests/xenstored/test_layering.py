"""The xenstored server modules import one another one way.

The core is given its handler table; handlers and control parse their
arguments with ``xenstored.protocol.args``. Every import is counted, also
the ones inside functions (a late import is still a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import xenstored

PKG = Path(xenstored.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


#: the client side (libxen) is not the server's concern here
CLIENT = {"libxen.xenstore.aio", "libxen.xenstore.aio_ops", "libxen.xenstore.sync",
          "xenstored.cli", "xenstored.cli_format"}


def test_no_import_cycle_in_the_server():
    graph = {n: d - CLIENT for n, d in _imports().items() if n not in CLIENT}
    assert _cycle(graph) is None


def test_core_imports_no_handlers():
    graph = _imports()
    assert not graph["xenstored.core"] & {"xenstored.handlers", "xenstored.control"}
    assert "xenstored.core" not in graph["xenstored.control"]
    for name, deps in graph.items():
        if name.startswith("xenstored.protocol"):
            assert not deps & {"xenstored.core", "xenstored.handlers", "xenstored.control"}
