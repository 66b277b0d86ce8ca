"""The layers' import rules and the public namespace, checked."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tidings

PACKAGE = Path(tidings.__file__).parent

# What each layer may import from tidings (besides itself and tidings.errors).
ALLOWED = {
    "domain": {"tidings.domain"},
    "ports": {"tidings.domain", "tidings.ports"},
    "adapters": {"tidings.domain", "tidings.ports", "tidings.adapters"},
    "runtime": {"tidings.domain", "tidings.ports", "tidings.runtime"},
    # Starts the runtime's workers for the App: the runtime's room, one floor up.
    "workers": {"tidings.domain", "tidings.ports", "tidings.runtime"},
    # Serves a running App's metrics and probes over HTTP: the runtime's monitor, one floor up.
    "endpoints": {"tidings.runtime"},
    "errors": set(),
}
# The edges, which may use everything: the package's face, the CLI, the test kit, and the
# composition root. A module anywhere else must be given its rules above.
EDGES = {"__init__", "__main__", "cli", "testing", "app", "wiring"}
# The composition root: the only modules that build adapters (the CLI opens stores through it).
COMPOSITION_ROOT = {"app", "wiring"}
REGISTRY = "tidings.adapters.registry"


def _layer(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _tidings_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return [name for name in names if name == "tidings" or name.startswith("tidings.")]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layers_import_only_downwards(path: Path) -> None:
    layer = _layer(path)
    if layer in EDGES:
        return
    assert layer in ALLOWED, f"{path.relative_to(PACKAGE)}: a room with no import rules (ALLOWED or EDGES)"
    allowed = ALLOWED[layer]
    for name in _tidings_imports(path):
        if name == "tidings.errors":
            continue
        assert any(name == a or name.startswith(a + ".") for a in allowed), (
            f"{path.relative_to(PACKAGE)} ({layer}) imports {name}"
        )


def test_only_the_composition_root_builds_adapters() -> None:
    """One wiring site: the registry that builds adapters from URLs is imported by the
    composition root (and ``tidings.testing``, whose fixtures open stores and buses bare), so
    that no other module opens a store a second way, without its keys or its sealing."""
    modules = _module_names(PACKAGE, "tidings")
    importers = sorted(
        name
        for name, path in modules.items()
        if REGISTRY in _imported_modules(name, path, modules)
        and _layer(path) not in COMPOSITION_ROOT | {"testing"}
    )
    assert not importers, f"only {sorted(COMPOSITION_ROOT)} may import {REGISTRY}; so do {importers}"


def test_the_cli_does_not_seal_stores_itself() -> None:
    """The CLI sees a store as the App does (keys, sealing) because it opens it through the
    composition root; building its own ``SealedStore`` or keyring would be a second wiring."""
    for path in (PACKAGE / "cli").rglob("*.py"):
        imported = _tidings_imports(path)
        assert "tidings.runtime.sealed_store" not in imported, f"cli/{path.name} seals a store itself"
        assert ".keyring(" not in path.read_text(), f"cli/{path.name} builds a keyring itself"


def test_domain_does_no_io() -> None:
    forbidden = {"asyncio", "sqlite3", "psycopg", "socket", "subprocess", "os"}
    for path in (PACKAGE / "domain").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            # ids.py reads the OS's randomness; that is all the I/O the domain may do.
            bad = roots & forbidden - ({"os"} if path.name == "ids.py" else set())
            assert not bad, f"{path.name} imports {bad}"


def test_public_names_exist_are_sorted_and_documented() -> None:
    # Sorted as ruff's RUF022 keeps it: constants first, then the rest, each alphabetically.
    assert tidings.__all__ == sorted(tidings.__all__, key=lambda name: (not name.isupper(), name))
    assert len(set(tidings.__all__)) == len(tidings.__all__)
    for name in tidings.__all__:
        value = getattr(tidings, name)
        if isinstance(value, str):  # constants such as ANY
            continue
        assert (value.__doc__ or "").strip(), f"tidings.{name} has no docstring"


# -- import circles ------------------------------------------------------------------------------
# A circle ties its modules into one: none can be read, tested or replaced alone (issue 12 found
# seven runtime modules in one). An import under ``TYPE_CHECKING`` counts: it is still a
# dependency, only hidden from the interpreter. A package's ``__init__`` run on the way to a
# submodule does not count (``tidings/__init__.py`` re-exports the public names of every layer).


def _module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module under ``root`` (the directory of ``package``) by its dotted name."""
    modules: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((package, *parts))] = path
    return modules


def _imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that the module ``name`` imports, in any form and anywhere."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: ``from . import x``, ``from ..y import z``
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"  # ``from package import module``
                if submodule in modules:
                    found.add(submodule)
                elif source in modules:
                    found.add(source)
    found.discard(name)
    return found


def _import_circles(root: Path, package: str) -> list[tuple[list[str], list[str]]]:
    """The import circles among the modules of ``package``: each group of modules that import
    each other (a strongly connected component), sorted, with one circle through its first."""
    modules = _module_names(root, package)
    graph = {name: _imported_modules(name, path, modules) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def connect(module: str) -> None:  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            connect(module)
    return [(component, _circle_through(component, graph)) for component in sorted(components)]


def _circle_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest way from the component's first module back to itself, within the component."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for module in frontier:
            for target in sorted(graph[module] & members):
                if target == start:
                    path = [module]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if target not in came_from:
                    came_from[target] = module
                    following.append(target)
        frontier = following
    raise AssertionError(f"no circle through {start}")  # a component always has one


def test_no_import_circles() -> None:
    circles = _import_circles(PACKAGE, "tidings")
    said = [f"{' -> '.join(circle)} (tied together: {', '.join(members)})" for members, circle in circles]
    assert not circles, "import circles:\n" + "\n".join(said)


def test_import_circles_are_found_in_every_form_of_import(tmp_path: Path) -> None:
    """The check itself: each form of import closes a circle that it names."""
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "sub" / "__init__.py").write_text("")
    (root / "a.py").write_text("from pkg.sub import b\n")  # ``from package import module``
    (root / "sub" / "b.py").write_text("from ..c import thing\n")  # relative, two levels up
    (root / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\nthing = 1\n"
    )
    (root / "d.py").write_text("from . import e\n")  # relative ``from . import module``
    (root / "e.py").write_text("def later() -> None:\n    from pkg.d import later\n")
    (root / "f.py").write_text("import pkg.c\n")  # imports a circle, is not in one
    assert _import_circles(root, "pkg") == [
        (["pkg.a", "pkg.c", "pkg.sub.b"], ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]),
        (["pkg.d", "pkg.e"], ["pkg.d", "pkg.e", "pkg.d"]),
    ]
