"""`istio-spiffe-webhook audit`: the audit's report as a table, JSON or YAML.

Exit status: 0 nothing to fix, 1 something to fix, 2 the cluster cannot be reached or
access is denied.
"""

from __future__ import annotations

import sys

import click

from webhook.cluster.audit import run_audit
from webhook.cluster.client import Cluster, Json, load_api_client
from webhook.cluster.pods import PodNotFound, PodSelection
from webhook.commands.options import (
    cluster_errors,
    config_option,
    context_option,
    kubeconfig_option,
    pod_selection_options,
    settings_from,
)
from webhook.commands.output import output_option, render

TABLE_NAMES = 5  # pod names shown per line of the table (JSON and YAML list them all)


@click.command("audit")
@pod_selection_options
@click.option(
    "--include-istiod",
    is_flag=True,
    help="Also report pods in namespaces not labelled for the webhook that take their"
    " certificates from istiod (when the whole mesh should use the Workload API).",
)
@output_option(("table", "json", "yaml"), show_default=True)
@kubeconfig_option
@context_option
@config_option
def audit_command(
    namespace: str | None,
    all_namespaces: bool,
    selector: str | None,
    pod: str | None,
    only_opted_in: bool,
    include_istiod: bool,
    output: str,
    kubeconfig: str | None,
    context: str | None,
    config: str | None,
) -> None:
    """List running pods with istio-proxy whose certificates will not rotate.

    Exit status: 0 nothing to fix, 1 something to fix, 2 the cluster cannot be reached or
    access is denied.
    """
    if namespace is not None and all_namespaces:
        raise click.UsageError("use either --namespace or --all-namespaces")
    settings = settings_from(config)
    selection = PodSelection(namespace, selector, pod, only_opted_in)
    with cluster_errors():
        cluster = Cluster(load_api_client(kubeconfig, context))
        try:
            report = run_audit(cluster, settings, selection, include_istiod)
        except PodNotFound as error:
            raise click.ClickException(str(error)) from None
    click.echo(render(report, output, table))
    sys.exit(1 if report["podsToFix"] or report.get("unreadablePods") else 0)


def table(report: Json) -> str:
    """The report for people: one block per owner, its fix, then the missed pods."""
    on_istiod = ""
    if report["podsOnIstiod"]:
        on_istiod = (
            f"{report['podsOnIstiod']} pods in namespaces not labelled for the webhook take their"
            " certificates from istiod, which renews them: not findings (--include-istiod"
            " lists them when the whole mesh should use the Workload API)."
        )
    if not report["podsToFix"] and not report.get("unreadablePods"):
        return "\n".join(
            [
                f"All good: none of the {report['podsChecked']} running pods checked needs a"
                " restart to rotate its certificates.",
                *([on_istiod] if on_istiod else []),
            ]
        )
    lines = [
        f"{report['podsToFix']} of {report['podsChecked']} running pods run istio-proxy with"
        " certificates that will not rotate:",
        "",
    ]
    missed: list[str] = []
    for group in report["owners"]:
        lines.append(f"{group['namespace']}  {group['kind']}/{group['name']}")
        # Replicas share their reasons: say them once per set of pods.
        by_reasons: dict[tuple[str, ...], list[str]] = {}
        for pod in group["pods"]:
            by_reasons.setdefault(tuple(pod["reasons"]), []).append(pod["name"])
            if pod["missedByWebhook"]:
                missed.append(f"  {group['namespace']}/{pod['name']}")
        for reasons, names in by_reasons.items():
            shown = ", ".join(names[:TABLE_NAMES])
            more = f" and {len(names) - TABLE_NAMES} more" if len(names) > TABLE_NAMES else ""
            lines.append(f"  pod{'s' if len(names) > 1 else ''} {shown}{more}")
            lines.extend(f"    - {reason}" for reason in reasons)
        for command in group["fix"]:
            lines.append(f"  fix: {command}")
        if group["note"]:
            lines.append(f"  note: {group['note']}")
        lines.append("")
    if missed:
        lines.append(
            "Missed by the webhook (Istio injected them in a namespace labelled for the webhook,"
            " but they lack the identity label):"
        )
        lines.extend(missed)
        lines.append("  find out why with: istio-spiffe-webhook doctor")
        lines.append("")
    for pod in report.get("unreadablePods", []):
        lines.append(f"skipped {pod['namespace']}/{pod['name']}: {pod['error']}")
    if on_istiod:
        lines.append(on_istiod)
    return "\n".join(lines).rstrip("\n")
