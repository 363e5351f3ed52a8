"""`pip install .` installs what the relay runs, nothing only tests use, and
declares every third-party package the relay imports.

The installed packages are found the way setuptools finds them (the
``[tool.setuptools.packages.find]`` include patterns of pyproject.toml over
directories with an ``__init__.py``). Every module in them must be reachable
by imports, static or inside functions, from the ``relayctl`` entry point;
a module that only tests or benchmarks import belongs under tests/ or bench/.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import sys
import tomllib
from fnmatch import fnmatchcase
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def installed_packages() -> list[str]:
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    found = []
    for root, dirs, files in os.walk(REPO):
        # Hidden directories (.venv, .git) and caches hold no packages of ours.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        rel = Path(root).relative_to(REPO)
        if not rel.parts or "__init__.py" not in files:
            continue
        name = ".".join(rel.parts)
        if any(fnmatchcase(name, pattern) for pattern in include):
            found.append(name)
    return found


def module_files() -> dict[str, Path]:
    """Installed module name -> source file (a package is its ``__init__.py``)."""
    files: dict[str, Path] = {}
    packages = set(installed_packages())
    for package in packages:
        for path in (REPO / package.replace(".", "/")).glob("*.py"):
            files[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return files


def imported_names(module: str, path: Path) -> set[str]:
    """Every module name an import statement in the file may refer to."""
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            # `from pkg import mod` imports a submodule when one has that name.
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def reachable_from(entries: list[str], files: dict[str, Path]) -> set[str]:
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        module = todo.pop()
        if module in seen or module not in files:
            continue
        seen.add(module)
        # Importing a.b.c runs a/__init__ and a/b/__init__ first.
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(name for name in imported_names(module, files[module]) if name in files)
    return seen


def entry_modules() -> list[str]:
    return [target.split(":")[0] for target in PYPROJECT["project"]["scripts"].values()]


def test_the_entry_point_is_installed() -> None:
    assert entry_modules() == ["supervisor.cli"]
    assert set(entry_modules()) <= set(module_files())


def test_every_installed_module_is_used_by_the_relay() -> None:
    files = module_files()
    unused = sorted(set(files) - reachable_from(entry_modules(), files))
    assert unused == [], f"installed but never imported by relayctl (move under tests/ or bench/): {unused}"


@pytest.mark.parametrize("name", ["relay.protocol.vector_form", "relay.protocol.quantize"])
def test_test_only_protocol_helpers_are_not_in_the_package(name: str) -> None:
    assert importlib.util.find_spec(name) is None
    assert name not in module_files()


def test_the_reachability_check_can_fail() -> None:
    # A module nobody imports must be reported: the same walk over a set that
    # contains one extra, unimported file.
    files = dict(module_files())
    files["relay.protocol.orphan"] = REPO / "tests" / "vector_form.py"
    assert "relay.protocol.orphan" not in reachable_from(entry_modules(), files)


def _normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def test_every_third_party_import_is_a_declared_dependency() -> None:
    # Declared directly, not left to arrive through another package's pins
    # (pydantic and starlette come with FastAPI, but the REST bridge imports them).
    files = module_files()
    own = {name.split(".")[0] for name in files}
    top_level = {
        name.split(".")[0]
        for module, path in files.items()
        for name in imported_names(module, path)
        if name and not name.startswith(".")
    }
    third_party = sorted(top_level - own - set(sys.stdlib_module_names) - {"__future__"})
    assert {"zmq", "orjson", "fastapi", "pydantic", "starlette"} <= set(third_party)
    declared = {
        _normalise(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0])
        for spec in PYPROJECT["project"]["dependencies"]
    }
    providers = packages_distributions()
    missing = {
        name: providers.get(name)
        for name in third_party
        if not any(_normalise(dist) in declared for dist in providers.get(name, []))
    }
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"
