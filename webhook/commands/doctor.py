"""`istio-spiffe-webhook doctor`: the doctor's checks as a table or JSON.

Exit status: 0 no fail (warnings allowed), 1 a check failed, 2 the cluster cannot be
reached or access is denied.
"""

from __future__ import annotations

import sys

import click

from webhook.cluster.client import Cluster, Json, load_api_client
from webhook.cluster.doctor import FAIL, PASS, TLS_SECRET, WARN, Doctor
from webhook.commands.options import (
    cluster_errors,
    config_option,
    context_option,
    kubeconfig_option,
    settings_from,
)
from webhook.commands.output import output_option, render
from webhook.policy import POLICY_NAME


@click.command("doctor")
@click.option(
    "--trust-domain",
    default=None,
    help="Expected SPIFFE trust domain; checked against Istio's mesh config.",
)
@click.option(
    "--istio-namespace",
    default="istio-system",
    show_default=True,
    help="Where Istio's mesh config ConfigMap lives.",
)
@click.option(
    "--tls-secret",
    default=TLS_SECRET,
    show_default=True,
    help="Secret (in the webhook's namespace) holding the serving certificate as tls.crt.",
)
@click.option(
    "--policy-name",
    default=POLICY_NAME,
    show_default=True,
    help="Name of the MutatingAdmissionPolicy (as given to `policy --name`).",
)
@output_option(("table", "json"))
@kubeconfig_option
@context_option
@config_option
def doctor_command(
    trust_domain: str | None,
    istio_namespace: str,
    tls_secret: str,
    policy_name: str,
    output: str,
    kubeconfig: str | None,
    context: str | None,
    config: str | None,
) -> None:
    """Check the cluster's set-up: CSI driver, webhook or policy, certificates, ordering.

    Exit status: 0 no check failed, 1 a check failed, 2 the cluster cannot be reached or
    access is denied.
    """
    settings = settings_from(config)
    with cluster_errors():
        cluster = Cluster(load_api_client(kubeconfig, context))
        doctor = Doctor(cluster, settings, tls_secret, istio_namespace, policy_name)
        report = doctor.run(trust_domain)
    click.echo(render(report, output, table))
    sys.exit(1 if report["summary"][FAIL] else 0)


def table(report: Json) -> str:
    """The checks for people: status, name, message and the fix of each, then a summary."""
    width = max(len(ch["name"]) for ch in report["checks"])
    lines = []
    for ch in report["checks"]:
        lines.append(f"{ch['status'].upper():<4}  {ch['name']:<{width}}  {ch['message']}")
        if ch["fix"] and ch["status"] != PASS:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {ch['fix']}")
    summary = report["summary"]
    lines.append("")
    lines.append(
        f"form: {report['form'] or 'none installed'}; {summary[PASS]} pass,"
        f" {summary[WARN]} warn, {summary[FAIL]} fail"
    )
    return "\n".join(lines)
