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

from dataclasses import dataclass, field

from webhook.cluster.client import Cluster, Json
from webhook.cluster.pods import (
    OwnerResolver,
    PodSelection,
    namespace_of,
    select_pods,
    takes_certificates_from_istiod,
)
from webhook.config import Settings
from webhook.rewrite import Contract, InvalidPod, rewrite

ISTIO_STATUS_ANNOTATION = "sidecar.istio.io/status"
ROLLOUT_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


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


def run_audit(
    cluster: Cluster,
    settings: Settings,
    selection: PodSelection,
    include_istiod: bool = False,
) -> Json:
    """The audit report as a JSON-ready dict."""
    contract = Contract.from_settings(settings)
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
            result = rewrite(pod, contract)
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
