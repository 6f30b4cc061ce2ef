"""`istio-spiffe-webhook certs`: write a CA and a serving certificate, say what was written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from webhook.certs import (
    CertificatesExist,
    check_namespace,
    check_service_name,
    general_name,
    write_certificates,
)
from webhook.commands.options import config_option, settings_default, settings_from


@click.command("certs")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("certs"),
    show_default=True,
    help="Directory to write ca.crt, ca.key, tls.crt, tls.key and ca-bundle-patch.yaml to.",
)
@click.option(
    "--service",
    default=None,
    help=f"Service name (setting service_name) [default: {settings_default('service_name')}].",
)
@click.option(
    "--namespace",
    default=None,
    help=f"Its namespace (setting namespace) [default: {settings_default('namespace')}].",
)
@click.option(
    "--san",
    "sans",
    multiple=True,
    metavar="NAME",
    help="Extra subject alternative name, repeatable: an IP address or a DNS name.",
)
@click.option(
    "--days",
    type=click.IntRange(min=1, max=3650),
    default=365,
    show_default=True,
    help="Validity of the CA and the serving certificate.",
)
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@config_option
def certs_command(
    out: Path,
    service: str | None,
    namespace: str | None,
    sans: tuple[str, ...],
    days: int,
    force: bool,
    config: str | None,
) -> None:
    """Make a CA and a serving certificate for the webhook's Service."""
    settings = settings_from(config)
    service = _checked(
        service, "--service", settings.service_name, "service_name", check_service_name
    )
    namespace = _checked(namespace, "--namespace", settings.namespace, "namespace", check_namespace)
    for san in sans:
        try:
            general_name(san)
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--san") from None
    try:
        files = write_certificates(
            out,
            service=service,
            namespace=namespace,
            extra_sans=sans,
            valid_days=days,
            force=force,
            webhook_configuration=settings.webhook_configuration,
        )
    except CertificatesExist as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"cannot write to {out}: {error.strerror or error}") from None
    for path in (files.ca_cert, files.ca_key, files.cert, files.key, files.ca_bundle_patch):
        click.echo(f"wrote {path}")


def _checked(
    given: str | None, option: str, setting: str, name: str, check: Callable[[str], None]
) -> str:
    """The option's value, else the setting's; a usage error for a bad option value, a
    one-line error (exit status 1, as for any bad setting) for a bad setting."""
    try:
        check(setting if given is None else given)
    except ValueError as error:
        if given is None:
            raise click.ClickException(f"setting {name}: {error}") from None
        raise click.BadParameter(str(error), param_hint=option) from None
    return setting if given is None else given
