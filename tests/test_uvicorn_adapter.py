"""The uvicorn adapter: its version check, and that no other module uses uvicorn's or
uvloop's internals.

"Internals" here, checked on the source of every Python file of the repository except
webhook/uvicorn_adapter.py (`internals_used`):
- importing any submodule (`uvicorn.protocols...`, `uvicorn.server`, `uvloop.loop`, ...):
  only the packages' top level is public;
- a top-level name outside the package's `__all__` (for uvloop also `Loop`, the
  documented type of its loops), through `from uvicorn import name` or `uvicorn.name`:
  this covers every name starting with `_` except module metadata (`__version__`);
- a dotted module path to one of those in a string (`importlib.import_module(...)`),
  except uvicorn's documented logger names (`"uvicorn.error"`, `"uvicorn.access"`);
- subclassing any class of uvicorn or uvloop: overriding methods relies on how the
  library calls them, which no public API promises.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import uvicorn
import uvloop

from tests.serving import server_env
from webhook.uvicorn_adapter import (
    UVICORN_REQUIREMENT,
    UnsupportedVersion,
    check_uvicorn_version,
)

ROOT = Path(__file__).resolve().parents[1]
ADAPTER = ROOT / "webhook" / "uvicorn_adapter.py"
PUBLIC = {"uvicorn": set(uvicorn.__all__), "uvloop": {*uvloop.__all__, "Loop"}}
SCANNED = ("webhook", "bench", "fuzz", "scripts", "tests")
DUNDER = re.compile(r"__\w+__")  # module metadata (`__version__`, `__all__`): public
LOGGERS = {"uvicorn.error", "uvicorn.access"}  # uvicorn's documented logger names
MODULE_PATH = re.compile(r"((?:uvicorn|uvloop)(?:\.\w+)+)(?::\w+)?")  # "module.path:attribute"


def internals_used(source: str) -> list[str]:
    """Each use of a uvicorn or uvloop internal in `source`, as `line: what`."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}  # local name -> "package" or "package.name"
    found: list[str] = []

    def private(dotted: str) -> bool:
        package, _, rest = dotted.partition(".")
        if package not in PUBLIC or rest == "" or DUNDER.fullmatch(rest):
            return False
        return "." in rest or rest not in PUBLIC[package]

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                package = alias.name.split(".")[0]
                if package in PUBLIC:
                    if alias.name != package:
                        found.append(f"{node.lineno}: import {alias.name}")
                    aliases[alias.asname or package] = alias.name if alias.asname else package
        elif isinstance(node, ast.ImportFrom) and node.module:
            package = node.module.split(".")[0]
            if package not in PUBLIC:
                continue
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                if private(dotted):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
                aliases[alias.asname or alias.name] = dotted
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            target = aliases.get(node.value.id)
            if target in PUBLIC and private(f"{target}.{node.attr}"):
                found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            path = MODULE_PATH.fullmatch(node.value)
            if path and path.group(1) not in LOGGERS and private(path.group(1)):
                found.append(f"{node.lineno}: {node.value!r}")
        elif isinstance(node, ast.ClassDef):
            for base in node.bases:
                root = base
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in aliases:
                    found.append(f"{node.lineno}: class {node.name}({ast.unparse(base)})")
    return sorted(found, key=lambda line: int(line.split(":")[0]))


def python_files() -> list[Path]:
    files = [path for folder in SCANNED for path in sorted((ROOT / folder).rglob("*.py"))]
    return [path for path in files if path != ADAPTER]


def test_no_module_outside_the_adapter_uses_uvicorn_or_uvloop_internals() -> None:
    files = python_files()
    assert ROOT / "webhook" / "server.py" in files
    used = {
        str(path.relative_to(ROOT)): internals_used(path.read_text(encoding="utf-8"))
        for path in files
    }
    assert {path: lines for path, lines in used.items() if lines} == {}


def test_the_scan_finds_each_kind_of_internal() -> None:
    source = (
        "import uvicorn\n"
        "import uvloop as loops\n"
        "import uvicorn.server\n"
        "from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol\n"
        "from uvicorn import Config, _types\n"
        "x = uvicorn.Config, uvicorn.config, loops.new_event_loop, loops._noop\n"
        "importlib.import_module('uvicorn.protocols.utils')\n"
        "class A(uvicorn.Server): pass\n"
        "class B(loops.Loop): pass\n"
        "class C(HttpToolsProtocol): pass\n"
        "class D(dict): pass\n"
        "'uvicorn.Config and words'\n"
        "logging.getLogger('uvicorn.error'), uvicorn.__version__\n"
    )
    assert internals_used(source) == [
        "3: import uvicorn.server",
        "4: from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol",
        "5: from uvicorn import _types",
        "6: uvicorn.config",
        "6: loops._noop",
        "7: 'uvicorn.protocols.utils'",
        "8: class A(uvicorn.Server)",
        "9: class B(loops.Loop)",
        "10: class C(HttpToolsProtocol)",
    ]


def test_the_scan_sees_the_internals_the_adapter_uses() -> None:
    # A new internal in the adapter belongs in its docstring's list too.
    used = internals_used(ADAPTER.read_text(encoding="utf-8"))
    assert [line.split(": ", 1)[1] for line in used] == [
        "from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol",
        "class LimitedHttpToolsProtocol(HttpToolsProtocol)",
        "class Server(uvicorn.Server)",
        "class HandshakeDeadlineLoop(uvloop.Loop)",
    ]


# --- The version check ----------------------------------------------------------------


def test_the_supported_range_is_the_one_pyproject_declares() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [declared] = [d for d in project["dependencies"] if d.startswith("uvicorn")]
    assert declared == UVICORN_REQUIREMENT == "uvicorn>=0.53,<0.55"


@pytest.mark.parametrize("version", ["0.53.0", "0.53.0rc1", "0.54.0", "0.54.12"])
def test_a_version_in_the_range_is_accepted(version: str) -> None:
    check_uvicorn_version(version)


@pytest.mark.parametrize(
    "version", ["0.30.6", "0.47.0", "0.52.1", "0.55.0", "0.55.0rc1", "1.0", "dev"]
)
def test_a_version_outside_the_range_is_refused_with_what_is_needed(version: str) -> None:
    with pytest.raises(UnsupportedVersion) as refused:
        check_uvicorn_version(version)
    assert str(refused.value) == (
        f"uvicorn {version} is installed, but istio-spiffe-webhook needs uvicorn>=0.53,<0.55"
        " (webhook/uvicorn_adapter.py uses its internals); install the versions of"
        " requirements/runtime.lock"
    )


def test_the_installed_uvicorn_is_checked_at_import() -> None:
    code = "import uvicorn\nuvicorn.__version__ = '0.46.0'\nimport webhook.uvicorn_adapter\n"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "webhook.uvicorn_adapter.UnsupportedVersion: uvicorn 0.46.0 is installed, but"
        " istio-spiffe-webhook needs uvicorn>=0.53,<0.55 (webhook/uvicorn_adapter.py uses"
        " its internals); install the versions of requirements/runtime.lock"
    )


def test_serve_with_an_unsupported_uvicorn_is_one_line_and_exit_1(tmp_path: Path) -> None:
    code = "import uvicorn\nuvicorn.__version__ = '0.55.0'\nfrom webhook.cli import main\nmain()\n"
    done = subprocess.run(
        [sys.executable, "-c", code, "serve"],
        cwd=tmp_path,
        env=server_env({"metrics_port": 0}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        "Error: uvicorn 0.55.0 is installed, but istio-spiffe-webhook needs"
        " uvicorn>=0.53,<0.55 (webhook/uvicorn_adapter.py uses its internals); install the"
        " versions of requirements/runtime.lock\n"
    )
