"""`istio-spiffe-webhook mutate`: the webhook's rewrite on a file or stdin.

    istioctl kube-inject -f app.yaml | istio-spiffe-webhook mutate - > app.injected.yaml

Warnings go to stderr as `warning: ...`; bad input is one line `Error: ...` and exit
status 1.
"""

from __future__ import annotations

import click

from webhook.commands.options import config_option
from webhook.config import ConfigError, load_settings
from webhook.mutate import BadInput, mutate_text, read_source


@click.command("mutate")
@click.argument("source", metavar="[FILE|-]", default="-", required=False)
@click.option(
    "--patch",
    is_flag=True,
    help="Print the JSON Patch (one JSON array; [] when nothing to do) instead of the objects.",
)
@config_option
def mutate_command(source: str, patch: bool, config: str | None) -> None:
    """Rewrite Pods, workloads' pod templates and AdmissionReviews from FILE (or stdin).

    Reads JSON or YAML (several documents, kind: List); writes the rewritten objects in the
    same format, or with --patch one JSON array of RFC 6902 operations. Warnings go to
    stderr. Exit status: 0 done, 1 bad input.
    """
    name = "stdin" if source == "-" else source
    try:
        # Not settings_from(): here a config error is joined onto one line like bad input.
        settings = load_settings(config)
        mutation = mutate_text(read_source(source), name, settings, patch=patch)
    except (BadInput, ConfigError) as error:
        raise click.ClickException(" ".join(str(error).split())) from None
    except RecursionError:
        raise click.ClickException(f"{name}: nested too deeply") from None
    for warning in mutation.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(mutation.text, nl=False)
