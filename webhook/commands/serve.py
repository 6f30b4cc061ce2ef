"""`istio-spiffe-webhook serve`: the admission webhook over TLS (webhook/server.py)."""

from __future__ import annotations

from pathlib import Path

import click

from webhook.commands.options import config_option, settings_default, settings_from


@click.command("serve")
@click.option(
    "--host", default=None, help=f"Address to listen on [default: {settings_default('host')}]."
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help=f"TLS port [default: {settings_default('port')}].",
)
@click.option(
    "--cert",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Serving certificate (PEM) [default: {settings_default('tls_cert_file')}].",
)
@click.option(
    "--key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help=f"Its private key (PEM, unencrypted) [default: {settings_default('tls_key_file')}].",
)
@config_option
def serve_command(
    host: str | None, port: int | None, cert: Path | None, key: Path | None, config: str | None
) -> None:
    """Serve the admission webhook over TLS."""
    settings = settings_from(config, host=host, port=port, tls_cert_file=cert, tls_key_file=key)
    try:
        # Here, not at the top: `--help` needs none of it, and an unsupported uvicorn
        # (webhook/uvicorn_adapter.py refuses it at import) is one line, not a traceback.
        from webhook.server import StartupError, serve
    except ImportError as error:
        raise click.ClickException(str(error)) from None
    try:
        serve(settings)
    except StartupError as error:
        raise click.ClickException(str(error)) from None
