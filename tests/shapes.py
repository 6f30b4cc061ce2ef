"""Pod shapes that Istio's documented setups produce, derived from injected pods.

Istio's SPIRE integration guide (istio.io, Operations > Integrations > SPIRE) defines an
injection template `spire`, used as `inject.istio.io/templates: sidecar,spire`. It gives
the `istio-proxy` container a mount of `workload-socket` at
/run/secrets/workload-spiffe-uds (readOnly), makes `workload-socket` the CSI volume
`{driver: csi.spiffe.io, readOnly: true}`, and in recent versions of the guide labels the
pod `spiffe.io/spire-managed-identity: "true"`.

Istio merges templates with a strategic merge patch (`pkg/kube/inject/webhook.go`), and
volumeMounts merge by `mountPath`: the template's mount is a second mount of the socket
volume next to the sidecar template's own at /var/run/secrets/workload-spiffe-uds. A
strategic merge appends it ("after"); a user's own istio-proxy or another template can put
it first ("before"). The API server must accept both once rewritten (issue 10).
"""

from __future__ import annotations

import copy
from typing import Any

from webhook.config import Settings

LISTS = ("initContainers", "containers")
# The spire template's mount path: Istio's documentation, not a setting of ours.
SPIRE_MOUNT_PATH = "/run/secrets/workload-spiffe-uds"
ORDERS = ("before", "after")


def spire_mount(settings: Settings) -> dict[str, Any]:
    return {"name": settings.socket_volume, "mountPath": SPIRE_MOUNT_PATH, "readOnly": True}


def add_spire_mount(container: dict[str, Any], order: str, settings: Settings) -> None:
    """Make `container` (an istio-proxy) mount the socket volume as `sidecar,spire` does.

    The sidecar template's mount at the socket's path is added (last) when the container has
    no mount there; the spire template's mount goes before the first socket mount (first
    when there is none) or after every mount, as `order` says.
    """
    mounts = container.get("volumeMounts")
    if mounts is None:
        mounts = container["volumeMounts"] = []
    if not any(
        isinstance(m, dict) and m.get("mountPath") == settings.socket_mount_path for m in mounts
    ):
        mounts.append({"name": settings.socket_volume, "mountPath": settings.socket_mount_path})
    if order == "after":
        mounts.append(spire_mount(settings))
        return
    socket_mounts = [
        i
        for i, m in enumerate(mounts)
        if isinstance(m, dict) and m.get("name") == settings.socket_volume
    ]
    mounts.insert(socket_mounts[0] if socket_mounts else 0, spire_mount(settings))


def spire_variants(
    pod: dict[str, Any], settings: Settings | None = None
) -> dict[str, dict[str, Any]]:
    """The injected `pod` as `sidecar,spire` would make it, the spire mount in both orders.

    Keys are "spire-before" and "spire-after". Every istio-proxy (container or native-sidecar
    init container) gets the second socket mount; the socket volume becomes the template's
    CSI volume at its place (appended when absent); the pod gets the template's label. Names
    come from `settings` (Istio's, as in the template, by default). The input is not changed.
    """
    settings = settings or Settings()
    variants: dict[str, dict[str, Any]] = {}
    for order in ORDERS:
        out = copy.deepcopy(pod)
        spec = out.setdefault("spec", {})
        for list_name in LISTS:
            for container in spec.get(list_name) or []:
                if container.get("name") == settings.proxy_container:
                    add_spire_mount(container, order, settings)
        csi = {
            "name": settings.socket_volume,
            "csi": {"driver": settings.csi_driver, "readOnly": True},
        }
        volumes = spec.get("volumes") or []
        names = [v.get("name") for v in volumes]
        if settings.socket_volume in names:
            volumes[names.index(settings.socket_volume)] = csi
        else:
            volumes.append(csi)
        spec["volumes"] = volumes
        metadata = out.get("metadata") or {}
        out["metadata"] = metadata
        labels = metadata.get("labels") or {}
        metadata["labels"] = {**labels, settings.identity_label: settings.identity_label_value}
        variants[f"spire-{order}"] = out
    return variants


# Every setting the rewrite contract reads, in one place for the tests of each form.
CONTRACT_FIELDS = (
    "proxy_container",
    "certs_volume",
    "socket_volume",
    "socket_mount_path",
    "csi_driver",
    "cert_provider_env",
    "cert_provider",
    "ca_addr_env",
    "ca_addr",
    "identity_label",
    "identity_label_value",
    "inject_label",
    "inject_disabled_value",
)
# The names a pod carries that change with the settings (to rename a fixture).
RENAMED_FIELDS = (
    "proxy_container",
    "certs_volume",
    "socket_volume",
    "cert_provider_env",
    "ca_addr_env",
    "socket_mount_path",
    "inject_label",
)


def renames(default: Settings, custom: Settings) -> dict[str, str]:
    """Each name of `default` that a pod carries, mapped to `custom`'s."""
    return {getattr(default, name): getattr(custom, name) for name in RENAMED_FIELDS}


def renamed(value: Any, names: dict[str, str]) -> Any:
    """`value` with every string equal to a default contract value replaced."""
    if isinstance(value, dict):
        return {names.get(k, k): renamed(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [renamed(v, names) for v in value]
    return names.get(value, value) if isinstance(value, str) else value
