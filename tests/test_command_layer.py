"""The command line is one layer: only webhook/cli.py and webhook/commands/ know click.

Domain modules (rewrite, policy, certs, mutate, cluster/*, ...) take Settings and plain
arguments and return data; the commands call them. Checked two ways: the imports written
in every module of webhook/ (ast), and what importing each domain module really loads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from webhook.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "webhook"
COMMAND_LAYER = ("webhook.cli", "webhook.commands")
FORBIDDEN = ("click", *COMMAND_LAYER)
DOMAIN_MODULES = [
    "webhook.rewrite",
    "webhook.policy",
    "webhook.template",
    "webhook.certs",
    "webhook.mutate",
    "webhook.cluster.client",
    "webhook.cluster.audit",
    "webhook.cluster.doctor",
]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path) -> set[str]:
    """Every module an `import` or `from ... import` in `path` names, relative ones
    resolved, and `from a import b` counted as both `a` and `a.b` (b may be a module)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                parent = ".".join([*base, *([node.module] if node.module else [])])
            else:
                parent = node.module or ""
            found.add(parent)
            found.update(f"{parent}.{alias.name}" for alias in node.names)
    return found


def layer_violations(root: Path) -> dict[str, list[str]]:
    """module -> the forbidden modules it imports, for modules outside the command layer."""
    violations: dict[str, list[str]] = {}
    for path in sorted((root / "webhook").rglob("*.py")):
        name = module_name(path, root)
        if name.startswith(COMMAND_LAYER):
            continue
        bad = sorted(
            imported
            for imported in imported_modules(path, root)
            if any(imported == f or imported.startswith(f"{f}.") for f in FORBIDDEN)
        )
        if bad:
            violations[name] = bad
    return violations


def test_no_module_outside_the_command_layer_imports_click_or_the_cli() -> None:
    violations = layer_violations(ROOT)
    assert violations == {}


def test_the_scan_finds_every_way_of_importing_the_command_layer(tmp_path: Path) -> None:
    package = tmp_path / "webhook"
    (package / "cluster").mkdir(parents=True)
    (package / "commands").mkdir()
    for init in ("__init__.py", "cluster/__init__.py", "commands/__init__.py"):
        (package / init).write_text("")
    sources = {
        "a.py": "import click\n",
        "b.py": "from click.testing import CliRunner\n",
        "c.py": "from webhook.cli import config_option\n",
        "d.py": "from webhook import cli\n",
        "e.py": "import webhook.commands.options\n",
        "f.py": "from .commands import output\n",
        "cluster/g.py": "from .. import cli\n",
        "cluster/h.py": "def late() -> None:\n    from webhook.commands.options import x\n",
        "fine.py": "import json\nfrom webhook.config import Settings\nimport clickhouse\n",
        "commands/own.py": "import click\nfrom webhook.cli import main\n",
        "cli.py": "import click\n",
    }
    for name, text in sources.items():
        (package / name).write_text(text)
    assert layer_violations(tmp_path) == {
        "webhook.a": ["click"],
        "webhook.b": ["click.testing", "click.testing.CliRunner"],
        "webhook.c": ["webhook.cli", "webhook.cli.config_option"],
        "webhook.d": ["webhook.cli"],
        "webhook.e": ["webhook.commands.options"],
        "webhook.f": ["webhook.commands", "webhook.commands.output"],
        "webhook.cluster.g": ["webhook.cli"],
        "webhook.cluster.h": ["webhook.commands.options", "webhook.commands.options.x"],
    }


def test_importing_the_domain_modules_loads_neither_click_nor_the_cli() -> None:
    # One interpreter, modules imported in turn: each line says what that import added.
    code = (
        "import importlib, sys\n"
        f"for module in {DOMAIN_MODULES!r}:\n"
        "    importlib.import_module(module)\n"
        "    print(module, sorted(m for m in sys.modules if m.split('.')[0] == 'click'"
        " or m.startswith(('webhook.cli', 'webhook.commands'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines() == [f"{module} []" for module in DOMAIN_MODULES]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_lives_in_its_own_module_of_webhook_commands(name: str) -> None:
    target, _ = COMMANDS[name]
    assert target == f"webhook.commands.{name}:{name}_command"
    assert (PACKAGE / "commands" / f"{name}.py").is_file()
