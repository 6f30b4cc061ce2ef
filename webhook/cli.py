"""The command line's root: `istio-spiffe-webhook` and its subcommands.

Each subcommand lives in `webhook/commands/<name>.py` and is imported only when it runs,
so `--help` stays fast and `serve` never loads the `kubernetes` client.
"""

from __future__ import annotations

import importlib

import click

from webhook import __version__

# name -> (module:attribute of the click command, one-line help shown by --help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("webhook.commands.serve:serve_command", "Serve the admission webhook over TLS."),
    "mutate": ("webhook.commands.mutate:mutate_command", "Rewrite pods and workloads from a file."),
    "certs": ("webhook.commands.certs:certs_command", "Make a CA and a serving certificate."),
    "audit": ("webhook.commands.audit:audit_command", "List running pods that will not rotate."),
    "doctor": ("webhook.commands.doctor:doctor_command", "Check the cluster's set-up."),
    "verify": (
        "webhook.commands.verify:verify_command",
        "Read each proxy's certificate and say if it rotates.",
    ),
    "policy": ("webhook.commands.policy:policy_command", "Print the MutatingAdmissionPolicy form."),
    "template": (
        "webhook.commands.template:template_command",
        "Print the Istio injection template form.",
    ),
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
