"""The command line. Each subcommand lives in the module that owns its work and is
imported only when it runs, so `serve` never loads the `kubernetes` client."""

from __future__ import annotations

import importlib
from typing import Any

import click

from webhook import __version__

# name -> (module:attribute of the click command, one-line help shown by --help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("webhook.server:serve_command", "Serve the admission webhook over TLS."),
    "mutate": ("webhook.mutate:mutate_command", "Rewrite pods and workloads from a file."),
    "certs": ("webhook.certs:certs_command", "Make a CA and a serving certificate."),
    "audit": ("webhook.cluster.audit:audit_command", "List running pods that will not rotate."),
    "doctor": ("webhook.cluster.doctor:doctor_command", "Check the cluster's set-up."),
    "verify": (
        "webhook.commands.verify:verify_command",
        "Read each proxy's certificate and say if it rotates.",
    ),
    "policy": ("webhook.policy:policy_command", "Print the MutatingAdmissionPolicy form."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        target, _ = COMMANDS[cmd_name]
        module_name, attribute = target.split(":")
        command: click.Command = getattr(importlib.import_module(module_name), attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, text) in COMMANDS.items()])


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="istio-spiffe-webhook")
def main() -> None:
    """Make Istio sidecars take rotating certificates from a SPIFFE Workload API."""


def settings_from(config: str | None, **overrides: Any) -> Any:
    """Settings for a command, or a one-line error and exit status 1."""
    from webhook.config import ConfigError, load_settings

    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as error:
        raise click.ClickException(str(error)) from None


config_option = click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="ISTIO_SPIFFE_WEBHOOK_CONFIG",
    help="YAML config file (environment variables ISTIO_SPIFFE_WEBHOOK_* override it).",
)
