"""Package imports flow one way (README, Layout):

    hypervisord.public  <-  libxen  <-  daemonkit  <-  daemons (hypervisord, xenstored, backendd)
                                     <-  frontends, toolstack

Every import statement of every project module (module level or inside a
function, ``TYPE_CHECKING`` blocks included) is read from the source with
:mod:`ast` and checked against the allowed edges below. A daemon never
imports another daemon's internals, and nothing imports a daemon but
tests, benchmarks and examples.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.framework.hostres import SOURCE_TREE

# the walker test writes a probe module into frontends/, which the other tests walk
pytestmark = SOURCE_TREE

REPO = Path(__file__).resolve().parent.parent

#: unit -> the units it may import (besides itself). A unit is a top-level
#: package, except ``hypervisord.public``, the ABI, which is a unit apart.
ALLOWED: dict[str, set[str]] = {
    "hypervisord.public": set(),
    # The vCPU side of the hypervisor runs in the guest process (ARCHITECTURE.md).
    "hypervisord.vcpu": {"hypervisord.public", "libxen"},
    "libxen": {"hypervisord.public"},
    "daemonkit": {"hypervisord.public", "libxen"},
    "hypervisord": {"hypervisord.public", "libxen", "daemonkit"},
    "xenstored": {"hypervisord.public", "libxen", "daemonkit"},
    "backendd": {"hypervisord.public", "libxen", "daemonkit"},
    "frontends": {"hypervisord.public", "libxen"},
    # The launcher pre-loads the guest runtime into its fork template, so a
    # new domain's process starts warm (toolstack/monitor.py): the one edge
    # from the toolstack to guest-side code, and it goes to frontends only.
    "toolstack": {"hypervisord.public", "libxen", "daemonkit", "frontends",
                  "hypervisord.vcpu"},
}
PROJECT = set(ALLOWED) | {"bench", "examples", "tests"}
#: Measurement, demos and tests use everything.
UNCHECKED = {"bench", "examples", "tests"}


def unit_of(module: str) -> str | None:
    if module == "hypervisord.public" or module.startswith("hypervisord.public."):
        return "hypervisord.public"
    if module == "hypervisord.vcpu" or module.startswith("hypervisord.vcpu."):
        return "hypervisord.vcpu"
    top = module.split(".")[0]
    return top if top in PROJECT else None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package[:len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
            # ``from hypervisord import public`` names the unit in the alias
            found += [(node.lineno, f"{mod}.{alias.name}") for alias in node.names]
    return found


def project_files() -> list[Path]:
    files = []
    for unit in sorted(set(ALLOWED) - {"hypervisord.public"}):
        files += sorted((REPO / unit).rglob("*.py"))
    return files


def violations() -> list[str]:
    bad = []
    for path in project_files():
        src = unit_of(module_name(path))
        assert src is not None and src not in UNCHECKED
        for line, target in imported_modules(path):
            dst = unit_of(target)
            if dst is None or dst == src:
                continue
            # ``from hypervisord import public``: the alias is the real target
            if dst == "hypervisord" and target in ("hypervisord",):
                continue
            if dst not in ALLOWED[src]:
                bad.append(f"{path.relative_to(REPO)}:{line}: {src} -> {target}")
    return bad


def test_imports_flow_one_way() -> None:
    assert violations() == []


def test_every_package_is_known() -> None:
    """A new top-level package must be placed in the graph above."""
    tops = {p.parent.name for p in REPO.glob("*/__init__.py")}
    assert tops <= PROJECT, f"unplaced packages: {sorted(tops - PROJECT)}"


@pytest.mark.parametrize("source, expected", [
    ("import xenstored.store\n", ["xenstored.store"]),
    ("from hypervisord import hv\n", ["hypervisord", "hypervisord.hv"]),
    ("def f():\n    from libxen.core import XenCall\n", ["libxen.core", "libxen.core.XenCall"]),
])
def test_the_walker_sees_every_import_form(tmp_path: Path, source: str, expected: list[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker itself: plain, from-, and function-level imports are found,
    so the test above cannot pass by not looking."""
    pkg = REPO / "frontends"
    probe = pkg / "_probe_for_test_import_direction.py"
    probe.write_text(source)
    try:
        assert [t for _, t in imported_modules(probe)] == expected
        assert (any("frontends -> " in v for v in violations())
                == (unit_of(expected[0]) not in ALLOWED["frontends"] | {"frontends"}))
    finally:
        probe.unlink()
