"""The hashed lock files pin every dependency pyproject.toml declares."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def pinned(lock: str) -> set[str]:
    text = (ROOT / "requirements" / lock).read_text()
    return {normalized(m.group(1)) for m in re.finditer(r"^([A-Za-z0-9_.-]+)==", text, re.M)}


def names(requirements: list[str]) -> set[str]:
    return {normalized(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in requirements}


@pytest.mark.parametrize(
    ("lock", "declared"),
    [
        ("runtime.lock", PYPROJECT["project"]["dependencies"]),
        (
            "dev.lock",
            PYPROJECT["project"]["dependencies"]
            + PYPROJECT["project"]["optional-dependencies"]["dev"],
        ),
    ],
)
def test_every_declared_dependency_is_pinned_in_the_lock(lock: str, declared: list[str]) -> None:
    # The serving image installs runtime.lock only: a dependency missing there is a
    # ModuleNotFoundError in production (jsonpatch was, for `mutate`).
    assert names(declared) - pinned(lock) == set()


def imported_modules(package: Path) -> set[str]:
    modules: set[str] = set()
    for source in package.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules


def test_every_library_the_product_imports_is_in_the_runtime_lock() -> None:
    distributions = importlib.metadata.packages_distributions()
    third_party = {
        module
        for module in imported_modules(ROOT / "webhook")
        if module not in sys.stdlib_module_names and module not in ("webhook", "__future__")
    }
    assert "jsonpatch" in third_party  # the scan sees imports at all
    missing = {
        module: distributions.get(module)
        for module in third_party
        if not {normalized(d) for d in distributions.get(module, [module])} & pinned("runtime.lock")
    }
    assert missing == {}
