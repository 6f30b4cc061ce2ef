"""`istio-spiffe-webhook certs`: write a CA (or take an existing one) and a serving
certificate, say what was written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from webhook.certs import (
    CertificatesExist,
    UnusableCA,
    check_namespace,
    check_service_name,
    general_name,
    load_certificate_authority,
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
    help="Directory to write ca.crt, ca.key, tls.crt, tls.key and ca-bundle-patch.yaml to"
    " (with --ca-cert all but ca.key).",
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
    help="Validity of the CA and the serving certificate (with --ca-cert: of the serving"
    " certificate, ending with the CA's at the latest).",
)
@click.option(
    "--ca-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Sign with this existing CA (PEM) instead of making one: it becomes ca.crt and the"
    " caBundle byte for byte, so the webhook configuration stays as it is. Needs --ca-key.",
)
@click.option(
    "--ca-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The existing CA's private key (PEM, unencrypted); read, never copied.",
)
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@config_option
def certs_command(
    out: Path,
    service: str | None,
    namespace: str | None,
    sans: tuple[str, ...],
    days: int,
    ca_cert: Path | None,
    ca_key: Path | None,
    force: bool,
    config: str | None,
) -> None:
    """Make a CA and a serving certificate for the webhook's Service.

    To renew the serving certificate without changing the caBundle, sign it with the CA
    made before:

    \b
        istio-spiffe-webhook certs --force --ca-cert certs/ca.crt --ca-key certs/ca.key

    Exit status: 0 written; 1 a file in the way, an unusable CA or a bad setting; 2 bad
    usage.
    """
    if (ca_cert is None) != (ca_key is None):
        raise click.UsageError("--ca-cert and --ca-key go together")
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
    ca = None
    if ca_cert is not None and ca_key is not None:
        try:
            ca = load_certificate_authority(ca_cert, ca_key)
        except UnusableCA as error:
            raise click.ClickException(str(error)) from None
    try:
        files = write_certificates(
            out,
            service=service,
            namespace=namespace,
            extra_sans=sans,
            valid_days=days,
            force=force,
            webhook_configuration=settings.webhook_configuration,
            ca=ca,
        )
    except CertificatesExist as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"cannot write to {out}: {error.strerror or error}") from None
    for path in files.written:
        click.echo(f"wrote {path}")
    for warning in files.warnings:
        click.echo(f"warning: {warning}", err=True)


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
