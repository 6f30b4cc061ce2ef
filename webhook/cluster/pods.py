"""Which pods `audit` and `verify` look at, who owns them, and where their certificates come from.

One selection for both commands: `-n` (one namespace) or every namespace, a label selector,
one pod by name, and only namespaces labelled for the webhook. Pods that finished or are
being deleted are never selected. Owners are resolved the way people restart workloads: a
ReplicaSet's Deployment, a Job's CronJob, the pod itself when bare.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from webhook.cluster.client import Cluster, Json
from webhook.config import Settings

FINISHED_PHASES = ("Succeeded", "Failed")


class PodNotFound(LookupError):
    """`--pod NAME` named a pod that does not exist (or finished) where it was looked for."""


@dataclass(frozen=True)
class PodSelection:
    """What the user asked for: `-n`, `-l`, `--pod` and `--only-opted-in`."""

    namespace: str | None = None
    selector: str | None = None
    pod: str | None = None
    only_opted_in: bool = False


@dataclass
class Selected:
    pods: list[Json]
    opted_in: set[str] = field(default_factory=set)  # namespaces labelled for the webhook


def select_pods(cluster: Cluster, settings: Settings, selection: PodSelection) -> Selected:
    """The live pods the selection names (finished and deleting pods left out).

    Raises PodNotFound when `selection.pod` names no such live pod.
    """
    opted_in = opted_in_namespaces(cluster, settings, selection.namespace)
    pods: list[Json] = []
    for pod in _listed(cluster, selection):
        metadata = pod.get("metadata") or {}
        if selection.pod is not None and metadata.get("name") != selection.pod:
            continue
        phase = (pod.get("status") or {}).get("phase")
        if phase in FINISHED_PHASES or metadata.get("deletionTimestamp"):
            continue
        if selection.only_opted_in and namespace_of(pod) not in opted_in:
            continue
        pods.append(pod)
    if selection.pod is not None and not pods:
        where = f"namespace {selection.namespace}" if selection.namespace else "any namespace"
        extra = " labelled for the webhook" if selection.only_opted_in else ""
        raise PodNotFound(
            f"no running pod {selection.pod} in {where}{extra}"
            + (f" matching {selection.selector}" if selection.selector else "")
        )
    return Selected(pods, opted_in)


def _listed(cluster: Cluster, selection: PodSelection) -> Iterator[Json]:
    ns, name = selection.namespace, selection.pod
    if ns and name and not selection.selector:
        pod = cluster.call(
            f"pod {name} in namespace {ns}",
            cluster.core.read_namespaced_pod,
            name,
            ns,
            missing_ok=True,
        )
        if pod is not None:
            yield pod
    elif ns:
        yield from cluster.items(
            f"pods in namespace {ns}",
            cluster.core.list_namespaced_pod,
            ns,
            label_selector=selection.selector,
        )
    else:
        yield from cluster.items(
            "pods in all namespaces",
            cluster.core.list_pod_for_all_namespaces,
            label_selector=selection.selector,
        )


def namespace_of(pod: Json) -> str:
    return str((pod.get("metadata") or {}).get("namespace") or "")


def name_of(pod: Json) -> str:
    return str((pod.get("metadata") or {}).get("name") or "")


def opted_in_namespaces(cluster: Cluster, settings: Settings, namespace: str | None) -> set[str]:
    """The namespaces labelled for the webhook (only `namespace`'s label when one is given)."""
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


def takes_certificates_from_istiod(pod: Json, settings: Settings) -> bool:
    """True when nothing outside the pod provides a Workload API socket to istio-proxy.

    Istio's agent uses a socket it finds at `workload-spiffe-uds/socket` and otherwise serves
    istiod's certificates on a socket of its own (`pkg/istio-agent/agent.go`, 1.20 to master).
    An outside agent can only put one there through a volume with a source (the SPIFFE CSI
    driver, a hostPath); Istio's own `workload-socket` has none or is an emptyDir.
    """
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        return True
    volumes = {
        v.get("name"): v for v in _dicts(spec.get("volumes")) if isinstance(v.get("name"), str)
    }
    path = settings.socket_mount_path.rstrip("/")
    for list_name in ("initContainers", "containers"):
        for container in _dicts(spec.get(list_name)):
            if container.get("name") != settings.proxy_container:
                continue
            for mount in _dicts(container.get("volumeMounts")):
                if str(mount.get("mountPath") or "").rstrip("/") != path:
                    continue
                volume = volumes.get(mount.get("name")) or {}
                sources = [k for k, v in volume.items() if k != "name" and v is not None]
                if sources and sources != ["emptyDir"]:
                    return False
    return True


def _dicts(value: Any) -> list[Json]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


class OwnerResolver:
    """A pod's top owner: Deployment via ReplicaSet, CronJob via Job, itself when bare."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.cache: dict[tuple[str, str, str], tuple[str, str]] = {}

    def owner(self, pod: Json) -> tuple[str, str]:
        metadata = pod.get("metadata") or {}
        ref = controller_of(metadata)
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
            ref = controller_of((obj or {}).get("metadata") or {})
            if ref is not None and ref.get("kind") == parent:
                self.cache[key] = (parent, str(ref.get("name")))
            else:
                self.cache[key] = (kind, name)
        return self.cache[key]


def controller_of(metadata: Json) -> Json | None:
    for ref in metadata.get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller") is True:
            return ref
    return None
