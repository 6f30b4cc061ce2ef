"""The audit: running pods whose Istio certificates will not rotate (`run_audit`).

A pod is a finding when `webhook.rewrite.rewrite()` would change it: the same rule the
webhook applies, so `Result.reasons` says what is wrong and nothing else decides it. Pods
without istio-proxy and pods that opted out are left alone by the rewrite and so are never
findings. Findings are grouped by the workload that owns them (a ReplicaSet's Deployment, a
Job's CronJob) with the command that recreates them through the webhook.

A finding in a namespace labelled for the webhook that Istio injected
(`sidecar.istio.io/status`) but that lacks the identity label was missed by the webhook: it
was down, installed later, or ran before Istio's injector without reinvocation. Those are
listed apart, because restarting fixes the pods but `doctor` finds the cause.

`webhook.commands.audit` prints the report and sets the exit status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from webhook.cluster.client import Cluster, Json
from webhook.config import Settings
from webhook.rewrite import InvalidPod, rewrite

ISTIO_STATUS_ANNOTATION = "sidecar.istio.io/status"
ROLLOUT_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
FINISHED_PHASES = ("Succeeded", "Failed")


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
    namespace: str | None,
    selector: str | None,
    only_opted_in: bool = False,
) -> Json:
    """The audit report as a JSON-ready dict."""
    opted_in = _opted_in_namespaces(cluster, settings, namespace)
    if namespace:
        pods = cluster.items(
            f"pods in namespace {namespace}",
            cluster.core.list_namespaced_pod,
            namespace,
            label_selector=selector,
        )
    else:
        pods = cluster.items(
            "pods in all namespaces",
            cluster.core.list_pod_for_all_namespaces,
            label_selector=selector,
        )
    owners: dict[tuple[str, str, str], Owner] = {}
    resolver = _OwnerResolver(cluster)
    checked = 0
    skipped: list[Json] = []
    for pod in pods:
        metadata = pod.get("metadata") or {}
        phase = (pod.get("status") or {}).get("phase")
        if phase in FINISHED_PHASES or metadata.get("deletionTimestamp"):
            continue
        ns = str(metadata.get("namespace") or "")
        if only_opted_in and ns not in opted_in:
            continue
        checked += 1
        try:
            result = rewrite(pod, settings)
        except InvalidPod as error:  # not from a real API server, but never a traceback
            skipped.append({"namespace": ns, "name": metadata.get("name"), "error": str(error)})
            continue
        if result.compliant:
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
        "owners": groups,
    }
    if skipped:
        report["unreadablePods"] = skipped
    return report


def _opted_in_namespaces(cluster: Cluster, settings: Settings, namespace: str | None) -> set[str]:
    key, value = settings.inject_label, settings.inject_enabled_value
    if namespace:
        ns = cluster.call(
            f"namespace {namespace}", cluster.core.read_namespace, namespace, missing_ok=True
        )
        labels = ((ns or {}).get("metadata") or {}).get("labels") or {}
        return {namespace} if labels.get(key) == value else set()
    return {
        str((item.get("metadata") or {}).get("name"))
        for item in cluster.items(
            "namespaces", cluster.core.list_namespace, label_selector=f"{key}={value}"
        )
    }


class _OwnerResolver:
    """A pod's top owner: Deployment via ReplicaSet, CronJob via Job, itself when bare."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.cache: dict[tuple[str, str, str], tuple[str, str]] = {}

    def owner(self, pod: Json) -> tuple[str, str]:
        metadata = pod.get("metadata") or {}
        ref = _controller(metadata)
        if ref is None:
            return "Pod", str(metadata.get("name"))
        kind, name = str(ref.get("kind")), str(ref.get("name"))
        ns = str(metadata.get("namespace") or "")
        group = str(ref.get("apiVersion") or "").split("/")[0]
        if (kind, group) == ("ReplicaSet", "apps"):
            return self._parent(
                ns, kind, name, "Deployment", self.cluster.apps.read_namespaced_replica_set
            )
        if (kind, group) == ("Job", "batch"):
            return self._parent(ns, kind, name, "CronJob", self.cluster.batch.read_namespaced_job)
        return kind, name

    def _parent(self, ns: str, kind: str, name: str, parent: str, read: Any) -> tuple[str, str]:
        key = (ns, kind, name)
        if key not in self.cache:
            obj = self.cluster.call(
                f"{kind.lower()} {name} in namespace {ns}", read, name, ns, missing_ok=True
            )
            ref = _controller((obj or {}).get("metadata") or {})
            if ref is not None and ref.get("kind") == parent:
                self.cache[key] = (parent, str(ref.get("name")))
            else:
                self.cache[key] = (kind, name)
        return self.cache[key]


def _controller(metadata: Json) -> Json | None:
    for ref in metadata.get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller") is True:
            return ref
    return None
