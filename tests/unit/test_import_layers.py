"""The import graph of ``pictofs``: no cycles, and arrows point down the layers only.

Every ``import`` in ``pictofs/**/*.py`` counts, at module level or inside a function (a lazy
import still ties the two modules together), except those under ``if TYPE_CHECKING:``.
``from pictofs.a import b`` is an edge to the module ``pictofs.a.b`` when that is a module,
else to ``pictofs.a``. Importing a submodule also runs its package's ``__init__``; that is
not counted as an edge (Python finishes a package before its submodules).

``python tests/unit/test_import_layers.py`` prints the cycles and the layer violations.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pictofs"

# Known back-edges (importer, imported) that close a cycle in code being reworked elsewhere;
# each must go. Remove an entry as soon as its cycle is gone (test_allowed_cycles_still_exist
# says when). Empty: core/cache/entry.py -> store.py and core/tree/local_names.py -> writes.py
# close their cycles only under ``if TYPE_CHECKING:``, which does not count.
ALLOWED_BACK_EDGES: frozenset[tuple[str, str]] = frozenset()

# Lower layers must not reach up into these.
LOWER = ("pictofs.core", "pictofs.remote", "pictofs.api")
UPPER = ("pictofs.fs", "pictofs.mirror", "pictofs.cli", "pictofs.mounting",
         "pictofs.mirroring", "pictofs.fstab")
# Libraries the core never imports (FUSE, HTTP client, web server).
CORE_FORBIDDEN_LIBRARIES = ("mfusepy", "fuse", "requests", "fastapi", "starlette", "uvicorn")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, skipping the bodies of ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _imports(name: str, path: Path) -> list[tuple[str, str | None]]:
    """(module, imported name) of each import in ``name``'s file, relative ones made
    absolute: ``import a.b`` is ("a.b", None), ``from a import b`` is ("a", "b")."""
    is_package = path.name == "__init__.py"
    found: list[tuple[str, str | None]] = []
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
            continue
        base = node.module or ""
        if node.level:
            parts = name.split(".") if is_package else name.split(".")[:-1]
            parts = parts[:len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        found += [(base, alias.name) for alias in node.names]
    return found


def _imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """What ``name`` imports, as modules: ``from a import b`` is a.b when that is a pictofs
    module, else a (a foreign library stays as written: ``requests``, ``mfusepy``...)."""
    found = set()
    for module, member in _imports(name, path):
        sub = f"{module}.{member}"
        found.add(sub if member is not None and sub in modules else module)
    return found


def import_graph() -> dict[str, set[str]]:
    """pictofs module → the pictofs modules it imports."""
    modules = all_modules()
    return {name: {t for t in _imported_modules(name, path, modules)
                   if t in modules and t != name}
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def strongconnect(start: str) -> None:  # iterative: no recursion limit to worry about
        nonlocal counter
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
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

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)
    return sorted(found)


def without_allowed(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {src: {dst for dst in dsts if (src, dst) not in ALLOWED_BACK_EDGES}
            for src, dsts in graph.items()}


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def layer_violations() -> list[str]:
    """Imports from a lower layer up, and from the core to a forbidden library."""
    modules = all_modules()
    problems: list[str] = []
    for name, path in modules.items():
        if not _in(name, LOWER):
            continue
        for imported in sorted(_imported_modules(name, path, modules)):
            if _in(imported, UPPER) or (_in(name, ("pictofs.core",))
                                        and _in(imported, CORE_FORBIDDEN_LIBRARIES)):
                problems.append(f"{name} imports {imported}")
    return problems


# ---------------------------------------------------------------------------------- tests


def test_no_import_cycles() -> None:
    found = cycles(without_allowed(import_graph()))
    assert not found, "import cycles among pictofs modules:\n" + "\n".join(
        " <-> ".join(c) for c in found)


def test_allowed_cycles_still_exist() -> None:
    graph = import_graph()
    components = cycles(graph)
    stale = sorted(edge for edge in ALLOWED_BACK_EDGES
                   if edge[1] not in graph.get(edge[0], set())
                   or not any(edge[0] in c and edge[1] in c for c in components))
    assert not stale, f"these cycles are gone: remove them from ALLOWED_BACK_EDGES: {stale}"


def test_lower_layers_do_not_import_upper_layers_or_foreign_libraries() -> None:
    problems = layer_violations()
    assert not problems, "\n".join(problems)


def test_the_checker_sees_function_level_imports_and_skips_type_checking(tmp_path) -> None:
    source = ("from typing import TYPE_CHECKING\n"
              "import pictofs.a\n"
              "if TYPE_CHECKING:\n    from pictofs import b\n"
              "def f():\n    from pictofs.c import d\n")
    tree = ast.parse(source)
    names = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        else:
            names.update(f"{node.module}.{a.name}" for a in node.names)
    assert names == {"typing.TYPE_CHECKING", "pictofs.a", "pictofs.c.d"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


if __name__ == "__main__":  # pragma: no cover - a report for people
    graph = import_graph()
    for component in cycles(graph):
        print(f"cycle ({len(component)} modules): " + ", ".join(component))
        members = set(component)
        for src in component:
            for dst in sorted(graph[src] & members):
                print(f"    {src} -> {dst}")
    for problem in layer_violations():
        print("layer:", problem)
    sys.exit(0)
