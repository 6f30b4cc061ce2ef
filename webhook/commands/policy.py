"""`istio-spiffe-webhook policy`: print the MutatingAdmissionPolicy form as YAML."""

from __future__ import annotations

import re
import sys

import click

from webhook.commands.options import config_option, settings_from
from webhook.policy import API_VERSIONS, POLICY_NAME, ApiVersion, render_policy, to_yaml

# What Kubernetes accepts as an object name here (RFC 1123 subdomain, at most 253 chars).
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@click.command("policy")
@config_option
@click.option(
    "--api-version",
    type=click.Choice(API_VERSIONS),
    default="v1",
    show_default=True,
    help="v1 for Kubernetes 1.36+; v1beta1 for 1.34-1.35 with the MutatingAdmissionPolicy "
    "feature gate and the admissionregistration.k8s.io/v1beta1 API turned on.",
)
@click.option(
    "--name",
    default=POLICY_NAME,
    show_default=True,
    help="Name of the policy and of its binding.",
)
def policy_command(config: str | None, api_version: ApiVersion, name: str) -> None:
    """Print the MutatingAdmissionPolicy and its binding (YAML, for `kubectl apply -f -`).

    They carry out the same rewrite as the webhook, from the same settings, inside the API
    server: nothing to run, no certificates.
    """
    if len(name) > 253 or not DNS_SUBDOMAIN.fullmatch(name):
        raise click.BadParameter(
            f"{name!r} is not a DNS subdomain name (lower case letters, digits, '-' and '.')",
            param_hint="--name",
        )
    settings = settings_from(config)
    sys.stdout.write(to_yaml(render_policy(settings, api_version, name)))
