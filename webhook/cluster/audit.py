"""`istio-spiffe-webhook audit`: running pods whose Istio certificates will not rotate.

A pod is a finding when `webhook.rewrite.rewrite()` would change it: the same rule the
webhook applies, so `Result.reasons` says what is wrong and nothing else decides it. Pods
without istio-proxy and pods that opted out are left alone by the rewrite and so are never
findings. Findings are grouped by the workload that owns them (a ReplicaSet's Deployment, a
Job's CronJob) with the command that recreates them through the webhook.

A pod in a namespace that did not opt in and that takes its certificates from istiod (no
Workload API socket is mounted into istio-proxy) is healthy as Istio built it: it is counted
(`podsOnIstiod`), not a finding, unless `--include-istiod` asks for the whole mesh to use the
Workload API.

A finding in a namespace labelled for the webhook that Istio injected
(`sidecar.istio.io/status`) but that lacks the identity label was missed by the webhook: it
was down, installed later, or ran before Istio's injector without reinvocation. Those are
listed apart, because restarting fixes the pods but `doctor` finds the cause.

Exit status: 0 nothing to fix, 1 something to fix, 2 the cluster cannot be reached or
access is denied.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import click

from webhook.cli import config_option, settings_from
from webhook.cluster.client import (
    Cluster,
    Json,
    context_option,
    dump,
    kubeconfig_option,
    load_api_client,
)
from webhook.cluster.pods import (
    OwnerResolver,
    PodNotFound,
    PodSelection,
    namespace_of,
    select_pods,
    takes_certificates_from_istiod,
)
from webhook.config import Settings
from webhook.rewrite import InvalidPod, rewrite

ISTIO_STATUS_ANNOTATION = "sidecar.istio.io/status"
ROLLOUT_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
TABLE_NAMES = 5  # pod names shown per line of the table (JSON and YAML list them all)


@dataclass
class Owner:
    namespace: str
    kind: str
    name: str
    namespace_opted_in: bool
    pods: list[Json] = field(default_factory=list)

    def fix(self, settings: Settings) -> tuple[list[str], str]:
        """The commands that recreate the pods through the webhook, and a note."""
        commands: list[str] = []
        notes: list[str] = []
        if not self.namespace_opted_in:
            commands.append(
                f"kubectl label namespace {self.namespace}"
                f" {settings.inject_label}={settings.inject_enabled_value}"
            )
            notes.append("the namespace is not labelled for the webhook")
        pods = " ".join(p["name"] for p in self.pods)
        if self.kind in ROLLOUT_KINDS:
            commands.append(
                f"kubectl rollout restart {self.kind.lower()}/{self.name} -n {self.namespace}"
            )
        elif self.kind == "Pod":
            commands.append(f"kubectl delete pod {pods} -n {self.namespace}")
            notes.append("a bare pod: create it again from its manifest after deleting it")
        else:
            commands.append(f"kubectl delete pod {pods} -n {self.namespace}")
            if self.kind == "CronJob":
                notes.append("delete the pods: the Job replaces them and later runs are rewritten")
            else:
                notes.append(f"delete the pods: the {self.kind} replaces them")
        return commands, "; ".join(notes)


@click.command("audit")
@click.option("-n", "--namespace", default=None, help="Only this namespace.")
@click.option(
    "-A", "--all-namespaces", "all_namespaces", is_flag=True, help="Every namespace (default)."
)
@click.option("-l", "--selector", default=None, help="Only pods matching this label selector.")
@click.option("--pod", "pod", default=None, help="Only the pod with this name.")
@click.option(
    "--only-opted-in",
    is_flag=True,
    help="Skip namespaces that are not labelled for the webhook.",
)
@click.option(
    "--include-istiod",
    is_flag=True,
    help="Also report pods in namespaces not labelled for the webhook that take their"
    " certificates from istiod (when the whole mesh should use the Workload API).",
)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json", "yaml"]),
    default="table",
    show_default=True,
)
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
    settings: Settings = settings_from(config)
    cluster = Cluster(load_api_client(kubeconfig, context))
    selection = PodSelection(namespace, selector, pod, only_opted_in)
    try:
        report = run_audit(cluster, settings, selection, include_istiod)
    except PodNotFound as error:
        raise click.ClickException(str(error)) from None
    click.echo(dump(report, output) if output != "table" else table(report))
    sys.exit(1 if report["podsToFix"] or report.get("unreadablePods") else 0)


def run_audit(
    cluster: Cluster,
    settings: Settings,
    selection: PodSelection,
    include_istiod: bool = False,
) -> Json:
    """The audit report as a JSON-ready dict."""
    selected = select_pods(cluster, settings, selection)
    opted_in = selected.opted_in
    owners: dict[tuple[str, str, str], Owner] = {}
    resolver = OwnerResolver(cluster)
    checked = on_istiod = 0
    skipped: list[Json] = []
    for pod in selected.pods:
        metadata = pod.get("metadata") or {}
        ns = namespace_of(pod)
        checked += 1
        try:
            result = rewrite(pod, settings)
        except InvalidPod as error:  # not from a real API server, but never a traceback
            skipped.append({"namespace": ns, "name": metadata.get("name"), "error": str(error)})
            continue
        if result.compliant:
            continue
        if (
            ns not in opted_in
            and not include_istiod
            and takes_certificates_from_istiod(pod, settings)
        ):
            on_istiod += 1  # healthy as Istio made it: istiod renews it
            continue
        kind, name = resolver.owner(pod)
        key = (ns, kind, name)
        if key not in owners:
            owners[key] = Owner(ns, kind, name, ns in opted_in)
        labels = metadata.get("labels") or {}
        annotations = metadata.get("annotations") or {}
        owners[key].pods.append(
            {
                "name": str(metadata.get("name")),
                "missedByWebhook": ns in opted_in
                and ISTIO_STATUS_ANNOTATION in annotations
                and labels.get(settings.identity_label) != settings.identity_label_value,
                "reasons": list(dict.fromkeys(result.reasons)),
            }
        )
    groups: list[Json] = []
    for key in sorted(owners):
        owner = owners[key]
        owner.pods.sort(key=lambda p: str(p["name"]))
        commands, note = owner.fix(settings)
        groups.append(
            {
                "namespace": owner.namespace,
                "kind": owner.kind,
                "name": owner.name,
                "namespaceOptedIn": owner.namespace_opted_in,
                "fix": commands,
                "note": note,
                "pods": owner.pods,
            }
        )
    report: Json = {
        "podsChecked": checked,
        "podsToFix": sum(len(g["pods"]) for g in groups),
        "podsOnIstiod": on_istiod,
        "owners": groups,
    }
    if skipped:
        report["unreadablePods"] = skipped
    return report


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
