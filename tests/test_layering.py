"""The package's import graph has no cycles (lazy imports inside functions count).

The graph is read with :mod:`ast` from the source, not from ``sys.modules``: every
``import`` and ``from ... import`` anywhere in a module (at the top, inside a function,
under ``try``) is an edge; only blocks under ``if TYPE_CHECKING:`` are left out, because
they never run. Kinds and engines a module reaches through a registry of
``"module:function"`` names are not imports, and that is the point of the registry.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "derivcheck"


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    found = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


class _Imports(ast.NodeVisitor):
    def __init__(self) -> None:
        self.found: list[tuple[int, str | None, list[str]]] = []

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.append((0, None, [alias.name for alias in node.names]))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.found.append((node.level, node.module, [alias.name for alias in node.names]))


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    modules = _modules(package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        visitor = _Imports()
        visitor.visit(ast.parse(path.read_text()))
        for level, module, names in visitor.found:
            if level:
                base = package[: len(package) - level + 1] + (module.split(".") if module else [])
                targets = [".".join(base + [n]) for n in names] + [".".join(base)]
            elif module is not None:
                targets = [f"{module}.{n}" for n in names] + [module]
            else:
                targets = names
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
                    break
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_lazy_imports_count_and_type_checking_imports_do_not(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from . import high  # lazy, still an edge\n    return high\n")
    (package / "high.py").write_text("from typing import TYPE_CHECKING\nfrom .low import f\nif TYPE_CHECKING:\n    from . import other\n")
    (package / "other.py").write_text("from .high import f\n")
    graph = import_graph(package)
    assert graph["pkg.low"] == {"pkg.high"} and graph["pkg.high"] == {"pkg.low"}
    assert cycles(graph) == [["pkg.high", "pkg.low"]]


def test_no_module_imports_the_public_api_package():
    """The package's ``__init__`` re-exports the public API; a module inside it that imports
    the package itself reaches up through every layer."""
    graph = import_graph()
    upward = sorted(module for module, targets in graph.items() if "derivcheck" in targets)
    assert not upward, upward


def kind_of(module: str) -> str | None:
    """``derivcheck.kinds.score.engines.symbolic`` -> ``score``; ``None`` for a shared module."""
    parts = module.split(".")
    return parts[2] if parts[:2] == ["derivcheck", "kinds"] and len(parts) > 2 else None


FRONT = {"derivcheck", "derivcheck.__main__", "derivcheck.cli", "derivcheck.pytest_plugin", "derivcheck.strategies"}
"""What users start from: these may import anything (``dc.strategies`` draws score mixtures)."""


def test_shared_modules_import_no_kind_and_kinds_import_no_other_kind():
    """The shared parts -- parser, tolerance model and comparison, values, errors, layers,
    engines, compile cache, loading, running, the parallel runner, reports -- sit below the
    kinds; a kind builds on them and on nothing of another kind."""
    graph = import_graph()
    kinds = {kind_of(module) for module in graph} - {None}
    assert kinds == {"network", "pde", "gan", "score"}
    upward = {
        module: sorted(t for t in targets if kind_of(t))
        for module, targets in graph.items()
        if module not in FRONT and module != "derivcheck.kinds" and kind_of(module) is None and any(kind_of(t) for t in targets)
    }
    assert not upward, upward
    across = {
        module: sorted(t for t in targets if kind_of(t) not in (None, kind_of(module)))
        for module, targets in graph.items()
        if kind_of(module) and any(kind_of(t) not in (None, kind_of(module)) for t in targets)
    }
    assert not across, across


def test_every_registered_kind_lives_in_its_own_package():
    """The registry names each built-in kind's loader, runner, class and explainer inside
    ``derivcheck.kinds.<kind>``: one place a newcomer finds without searching."""
    from derivcheck.case_kinds import KINDS as REGISTERED

    for kind in REGISTERED:
        for target in (kind.load, kind.run, kind.case_type, kind.explain):
            if target:
                assert target.startswith(f"derivcheck.kinds.{kind.name}."), (kind.name, target)
