"""The import graph of driftax: no cycles, the documented direction, every module importable.

The graph is read statically (`ast`) from every `import` statement of every module, including the
ones inside functions: a function-level import that closes a cycle is still a cycle between two
files (it only moves the failure from import time to call time). Imports under
`if TYPE_CHECKING:` are ignored. `from pkg import name` is an edge to `pkg.name` when that is a
module, else to `pkg` (its `__init__`).
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

import driftax

ROOT = Path(driftax.__file__).resolve().parent

# module -> reason: modules known to sit on an import cycle. Each is xfail(strict=True), so its
# entry must be removed as soon as the cycle is gone.
KNOWN_CYCLES: dict[str, str] = {}

# subpackage -> the subpackages it may import (the design's direction:
# energies <- samplers <- {flows, diffusion}; private top-level modules sit below all of them).
ALLOWED = {
    "energies": set(),
    "samplers": {"energies"},
    "flows": {"energies", "samplers"},
    "diffusion": {"energies", "samplers"},
}


def _modules() -> dict[str, Path]:
    """Every module of the package, by dotted name -> file."""
    names = {"driftax": ROOT / "__init__.py"}
    for info in pkgutil.walk_packages([str(ROOT)], prefix="driftax."):
        rel = Path(*info.name.split(".")[1:])
        names[info.name] = (
            ROOT / rel / "__init__.py" if info.ispkg else ROOT / rel.with_suffix(".py")
        )
    return dict(sorted(names.items()))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, modules) -> set[str]:
    """The driftax modules that module `name` imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "driftax":
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "driftax":
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in modules else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    found.discard(name)
    return {m for m in found if m in modules}


@cache
def _graph() -> dict[str, frozenset[str]]:
    modules = _modules()
    graph = {name: set(_imports(name, path, modules)) for name, path in modules.items()}
    # importing a submodule first runs its parent packages' __init__
    for name in modules:
        parts = name.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent != name:
                graph[name].add(parent)
    return {k: frozenset(v) for k, v in graph.items()}


def _strip_parents(graph):
    """The graph without the implicit child -> parent-package edges and without __init__ files.

    A package `__init__` that re-exports its submodules, and a submodule that (through its parent)
    runs that `__init__`, is not a cycle of the code; cycles between implementation files are.
    """
    packages = {m for m, p in _modules().items() if p.name == "__init__.py"}
    return {
        m: frozenset(t for t in targets if t not in packages)
        for m, targets in graph.items()
        if m not in packages
    }


def _strongly_connected(graph) -> dict[str, tuple[str, ...]]:
    """node -> the strongly connected component (size > 1) it belongs to (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: dict[str, tuple[str, ...]] = {}
    counter = [0]

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                for w in component:
                    result[w] = tuple(sorted(component))

    for v in graph:
        if v not in index:
            connect(v)
    return result


@cache
def _cycles() -> dict[str, tuple[str, ...]]:
    return _strongly_connected(_strip_parents(_graph()))


def _subpackage(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else None


def _case(name):
    if name in KNOWN_CYCLES:
        return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_CYCLES[name]))
    return name


def test_module_list_covers_every_file():
    """Every .py file of the package is checked (nothing hidden from the graph)."""
    files = {p.resolve() for p in ROOT.rglob("*.py")}
    assert files == {p.resolve() for p in _modules().values()}


@pytest.mark.parametrize("name", [_case(m) for m in _modules()])
def test_no_import_cycle(name):
    """No module sits on a cycle of imports between implementation files."""
    component = _cycles().get(name)
    assert component is None, f"{name} is on an import cycle: {' <-> '.join(component)}"


def test_import_direction():
    """energies <- samplers <- {flows, diffusion}; shared private modules sit below them all."""
    bad = []
    for name, targets in _graph().items():
        own = _subpackage(name)
        if own is None:
            # top-level private modules (_custom_types, _divergence, ...) import no subpackage;
            # driftax/__init__.py and the public top-level modules (plotting) may import anything
            if name.split(".")[-1].startswith("_") and name != "driftax":
                bad += [(name, t) for t in targets if _subpackage(t) is not None]
            continue
        for target in targets:
            other = _subpackage(target)
            if other is not None and other != own and other not in ALLOWED[own]:
                bad.append((name, target))
    assert not bad, "imports against the design's direction:\n" + "\n".join(
        f"  {a} imports {b}" for a, b in sorted(bad)
    )


def test_detector_finds_a_cycle():
    """The detector itself: a loop a -> b -> c -> a is found, a module hanging off it is not."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    found = _strongly_connected(graph)
    assert found == {m: ("a", "b", "c") for m in "abc"}


def test_every_module_imports():
    """Every module imports (in one fresh interpreter, so a broken optional import shows up)."""
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    out = subprocess.run(
        [sys.executable, "-c", code, *_modules()],
        capture_output=True,
        text=True,
        cwd=ROOT.parent,
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_public_modules_import():
    """Sanity in this process: the subpackages resolve to the files the graph read."""
    for sub in ALLOWED:
        module = importlib.import_module(f"driftax.{sub}")
        assert Path(module.__file__).resolve() == (ROOT / sub / "__init__.py").resolve()
