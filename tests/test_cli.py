"""The top-level command line: version, help, unknown commands, lazy subcommands."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from webhook import __version__
from webhook.cli import COMMANDS, LazyGroup, main
from webhook.commands.options import settings_default

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["serve", "mutate", "certs", "audit", "doctor", "verify", "policy", "template"]


def test_version_prints_name_and_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert (result.exit_code, result.output) == (
        0,
        f"istio-spiffe-webhook, version {__version__}\n",
    )


def test_help_lists_the_subcommands_in_order() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    section = result.output.split("Commands:\n", 1)[1]
    listed = [line.split()[0] for line in section.splitlines() if line.strip()]
    assert listed == SUBCOMMANDS
    for name, (_, text) in COMMANDS.items():
        assert f"  {name}" in section and text in section


def test_unknown_command_exits_2_with_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["frobnicate"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == "Error: No such command 'frobnicate'."


def test_no_command_shows_the_help() -> None:
    result = CliRunner().invoke(main, [])
    assert result.exit_code == 2
    assert "Commands:" in result.output


def test_unknown_name_resolves_to_no_command() -> None:
    group = main
    assert isinstance(group, LazyGroup)
    with click.Context(group) as ctx:
        assert group.get_command(ctx, "frobnicate") is None
        assert group.list_commands(ctx) == SUBCOMMANDS


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_resolves_to_a_click_command_named_after_it(name: str) -> None:
    with click.Context(main) as ctx:
        command = main.get_command(ctx, name)
    assert isinstance(command, click.Command)
    result = CliRunner().invoke(main, [name, "--help"], prog_name="istio-spiffe-webhook")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: istio-spiffe-webhook {name} ")
    assert "  --config FILE " in result.output  # the README promises it for every subcommand


def help_text(*args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--help"], terminal_width=1000)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_no_help_shows_a_settings_field_name_where_its_default_value_belongs(name: str) -> None:
    assert "Settings." not in help_text(name)


def test_certs_help_shows_the_built_in_service_and_namespace() -> None:
    lines = help_text("certs").splitlines()
    assert [
        line.split(None, 2)[2] for line in lines if line.startswith(("  --serv", "  --name"))
    ] == [
        "Service name (setting service_name) [default: istio-spiffe-webhook].",
        "Its namespace (setting namespace) [default: istio-spiffe-webhook].",
    ]


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("host", "0.0.0.0"),
        ("port", "8443"),
        ("tls_cert_file", "certs/tls.crt"),
        ("service_name", "istio-spiffe-webhook"),
        ("log_level", "info"),
    ],
)
def test_settings_default_is_the_fields_built_in_default_as_text(field: str, text: str) -> None:
    assert settings_default(field) == text


def test_help_and_mutate_never_import_the_kubernetes_client() -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from webhook.cli import main\n"
        "assert CliRunner().invoke(main, ['--help']).exit_code == 0\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('webhook.'))\n"
        "assert CliRunner().invoke(main, ['mutate', '--help']).exit_code == 0\n"
        "print(loaded, 'webhook.mutate' in sys.modules, 'kubernetes' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout == "['webhook.cli'] True False\n"


SERVING_MODULES = [
    "server",
    "tls",
    "uvicorn_adapter",
    "write_coalescing",
    "app",
    "review",
    "observability",
]


@pytest.mark.parametrize("module", SERVING_MODULES)
def test_the_serving_modules_import_neither_click_nor_the_command_line(module: str) -> None:
    tree = ast.parse((ROOT / "webhook" / f"{module}.py").read_text(encoding="utf-8"))
    imported = {
        name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
        )
    }
    assert {name for name in imported if name.split(".")[0] == "click"} == set()
    assert {
        name for name in imported if name.startswith(("webhook.cli", "webhook.commands"))
    } == set()


def test_serve_help_shows_the_built_in_host_port_and_pair() -> None:
    text = " ".join(help_text("serve").split())
    for expected in (
        "Address to listen on [default: 0.0.0.0].",
        "TLS port [default: 8443].",
        "Serving certificate (PEM) [default: certs/tls.crt].",
        "Its private key (PEM, unencrypted) [default: certs/tls.key].",
    ):
        assert expected in text
