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
    "runtime": {"tidings.domain", "tidings.ports", "tidings.runtime", "tidings.adapters.registry"},
}


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
    allowed = ALLOWED.get(layer)
    if allowed is None:  # the edges (cli, testing, the package root) may use everything
        return
    for name in _tidings_imports(path):
        if name == "tidings.errors":
            continue
        assert any(name == a or name.startswith(a + ".") for a in allowed), (
            f"{path.relative_to(PACKAGE)} ({layer}) imports {name}"
        )


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
