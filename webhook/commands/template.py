"""`istio-spiffe-webhook template`: print the Istio injection template form, or the values
that install it into istiod."""

from __future__ import annotations

import sys

import click

from webhook.commands.options import config_option, settings_from
from webhook.template import (
    DNS_LABEL,
    GATEWAY_SUFFIX,
    ISTIO_CERTS_MOUNT_PATH,
    TEMPLATE_NAME,
    VALUES_FORMS,
    TemplateError,
    ValuesForm,
    render_template,
    render_values,
)


def _dns_label(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    # A template NAME comes with NAME-gateway, which must be a DNS label too.
    longest = 63 - len(GATEWAY_SUFFIX) if param.name == "name" else 63
    if len(value) > longest or not DNS_LABEL.fullmatch(value):
        raise click.BadParameter(
            f"{value!r} is not a DNS label of at most {longest} characters"
            " (lower case letters, digits and '-')"
        )
    return value


@click.command("template")
@config_option
@click.option(
    "--values",
    "form",
    type=click.Choice(VALUES_FORMS),
    default=None,
    help="Print istiod's Helm values (helm) or an IstioOperator (istio-operator) that add the "
    "template for sidecars (NAME) and the one for gateways (NAME-gateway) and, unless "
    "--no-default-templates, make NAME a default template after `sidecar`.",
)
@click.option(
    "--name",
    default=None,
    callback=_dns_label,
    help=f"With --values: the template's name in istiod's config  [default: {TEMPLATE_NAME}]",
)
@click.option(
    "--revision",
    default=None,
    callback=_dns_label,
    help="With --values: install into the istiod of this revision only, which injects the "
    "namespaces labelled istio.io/rev=REVISION.",
)
@click.option(
    "--default-templates/--no-default-templates",
    default=None,
    help="With --values: make the template a default for every injected pod (the default), "
    "or leave it to pods that ask for it with inject.istio.io/templates.",
)
@click.option(
    "--gateway",
    is_flag=True,
    help="Print the variant for Istio's gateway and grpc-agent templates, which keep "
    "istio-proxy under containers even where sidecars are native.",
)
@click.option(
    "--certs-mount-path",
    default=ISTIO_CERTS_MOUNT_PATH,
    show_default=True,
    help="Where Istio's templates mount the certificates volume; the mount there is deleted.",
)
def template_command(
    config: str | None,
    form: ValuesForm | None,
    name: str | None,
    revision: str | None,
    default_templates: bool | None,
    gateway: bool,
    certs_mount_path: str,
) -> None:
    """Print the Istio injection template (Go template text for istiod's
    sidecarInjectorWebhook.templates), or with --values the settings that install it.

    Listed after `sidecar`, it makes istiod itself carry out the webhook's rewrite, from the
    same settings: nothing to run. See docs/template.md for what it cannot do.
    """
    if form is None:
        for option, value in (
            ("--name", name),
            ("--revision", revision),
            ("--default-templates", default_templates),
        ):
            if value is not None:
                raise click.UsageError(f"{option} only applies with --values")
    elif gateway:
        raise click.UsageError("--gateway prints one template; --values includes both")
    settings = settings_from(config)
    try:
        if form is None:
            text = render_template(settings, "containers" if gateway else "auto", certs_mount_path)
        else:
            text = render_values(
                settings,
                form,
                name if name is not None else TEMPLATE_NAME,
                revision,
                default_templates is not False,
                certs_mount_path,
            )
    except TemplateError as error:
        raise click.ClickException(str(error)) from None
    sys.stdout.write(text)
