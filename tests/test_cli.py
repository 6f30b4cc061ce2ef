"""The top-level command line: version, help, unknown commands, lazy subcommands."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from webhook import __version__
from webhook.cli import COMMANDS, LazyGroup, main

SUBCOMMANDS = ["serve", "mutate", "certs", "audit", "doctor", "verify", "policy"]


def test_version_prints_name_and_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert (result.exit_code, result.output) == (
        0,
        f"istio-spiffe-webhook, version {__version__}\n",
    )


def test_help_lists_the_seven_subcommands_in_order() -> None:
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
