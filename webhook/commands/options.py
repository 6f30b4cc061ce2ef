"""What several commands share: the config file option, settings from it and their defaults
as --help shows them, the cluster's kubeconfig and context, and cluster errors as click
errors with exit status 2."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

Decorated = TypeVar("Decorated", bound=Callable[..., Any])

if TYPE_CHECKING:
    from webhook.config import Settings

EXIT_CLUSTER = 2  # the cluster cannot be reached or access is denied

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


def settings_default(field: str) -> str:
    """A setting's built-in default as text, for the help of an option that defaults to
    the setting (`default=None`, so the environment and the config file still apply):
    `help=f"... [default: {settings_default('host')}]."` shows `[default: 0.0.0.0]`."""
    from webhook.config import Settings

    return str(Settings.model_fields[field].get_default(call_default_factory=True))


kubeconfig_option = click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False),
    default=None,
    help="kubeconfig file (default: $KUBECONFIG, in-cluster, then ~/.kube/config).",
)
context_option = click.option(
    "--context", default=None, help="kubeconfig context (default: the current context)."
)


class ClusterFailure(click.ClickException):
    """A `ClusterError` as click prints it: `Error: <message>`, exit status 2."""

    exit_code = EXIT_CLUSTER


@contextmanager
def cluster_errors() -> Iterator[None]:
    """Turn a `ClusterError` raised inside the block into a `ClusterFailure`."""
    from webhook.cluster.client import ClusterError

    try:
        yield
    except ClusterError as error:
        raise ClusterFailure(str(error)) from None


def pod_selection_options(command: Decorated) -> Decorated:
    """`-n`, `-A`, `-l`, `--pod` and `--only-opted-in`: which running pods audit and verify
    read (`webhook.cluster.pods.PodSelection`)."""
    for option in reversed(
        [
            click.option("-n", "--namespace", default=None, help="Only this namespace."),
            click.option(
                "-A",
                "--all-namespaces",
                "all_namespaces",
                is_flag=True,
                help="Every namespace (default).",
            ),
            click.option(
                "-l", "--selector", default=None, help="Only pods matching this label selector."
            ),
            click.option("--pod", "pod", default=None, help="Only the pod with this name."),
            click.option(
                "--only-opted-in",
                is_flag=True,
                help="Skip namespaces that are not labelled for the webhook.",
            ),
        ]
    ):
        command = option(command)
    return command
