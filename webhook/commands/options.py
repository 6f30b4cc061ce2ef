"""What several commands share: the config file option and settings from it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from webhook.config import Settings

config_option = click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    default=None,
    envvar="ISTIO_SPIFFE_WEBHOOK_CONFIG",
    help="YAML config file (environment variables ISTIO_SPIFFE_WEBHOOK_* override it).",
)


def settings_from(config: str | None, **overrides: Any) -> Settings:
    """Settings for a command, or a one-line error and exit status 1."""
    from webhook.config import ConfigError, load_settings

    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
