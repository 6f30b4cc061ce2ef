"""The rewrite contract: an Istio-injected pod in, the JSON Patch that fixes it out.

For a pod with an `istio-proxy` container or init container (any restartPolicy), unless
the pod carries the opt-out label:
1. remove the `workload-certs` volume and every mount of it, in every container;
2. make `workload-socket` exactly `{name, csi: {driver: csi.spiffe.io, readOnly: true}}`
   (in place; appended when absent);
3. mount it read-only in `istio-proxy` at /var/run/secrets/workload-spiffe-uds (an
   existing mount of it gets that path and readOnly; otherwise one is appended);
4. on `istio-proxy` set `PILOT_CERT_PROVIDER=workloadapi` and
   `CA_ADDR=unix:///var/run/secrets/workload-spiffe-uds/socket` (replaced at the index
   of the first entry, `valueFrom` dropped, later duplicates removed; appended if absent);
5. label the pod `spiffe.io/spire-managed-identity: "true"`.
Nothing else changes, and a compliant pod yields no patch, so a second pass is a no-op.

Why: Istio's agent serves file-mounted certificates whenever cert files exist under the
`workload-certs` mount and never rotates them from the SPIFFE socket; without the volume
it uses the Workload API socket and rotates. Names and values come from `Settings`.

`rewrite()` is pure: no I/O, and the pod is only read, never copied or changed. The same
result says why a pod is not compliant (`Result.reasons`), for the webhook, `mutate` and
`audit` alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from webhook.config import Settings

Op = dict[str, Any]
_LISTS = ("initContainers", "containers")


class InvalidPod(ValueError):
    """The pod has the wrong JSON type where the rewrite must read; says which field."""


@dataclass(slots=True)
class Result:
    ops: list[Op] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def compliant(self) -> bool:
        return not self.ops


def escape(key: str) -> str:
    """RFC 6901 escaping of one JSON Pointer token."""
    return key.replace("~", "~0").replace("/", "~1")


def has_proxy(pod: dict[str, Any], settings: Settings) -> bool:
    spec = _dict(pod, "spec", "spec")
    return any(
        isinstance(c, dict) and c.get("name") == settings.proxy_container
        for name in _LISTS
        for c in _list(spec, name, f"spec.{name}")
    )


def opted_out(pod: dict[str, Any], settings: Settings) -> bool:
    labels = _dict(_dict(pod, "metadata", "metadata"), "labels", "metadata.labels")
    return labels.get(settings.inject_label) == settings.inject_disabled_value


def rewrite(pod: dict[str, Any], settings: Settings) -> Result:
    """The patch (RFC 6902 ops, in order) that makes `pod` follow the contract."""
    result = Result()
    if not isinstance(pod, dict):
        raise InvalidPod("pod: must be a JSON object")
    if opted_out(pod, settings) or not has_proxy(pod, settings):
        return result
    spec = _dict(pod, "spec", "spec")
    _volumes(spec, settings, result)
    for list_name in _LISTS:
        for index, container in enumerate(_list(spec, list_name, f"spec.{list_name}")):
            where = f"/spec/{list_name}/{index}"
            if not isinstance(container, dict):
                raise InvalidPod(f"spec.{list_name}[{index}]: must be a JSON object")
            if container.get("name") == settings.proxy_container:
                _proxy_mounts(container, where, settings, result)
                _proxy_env(container, where, settings, result)
            else:
                _other_mounts(container, where, settings, result)
    _label(pod, settings, result)
    return result


def _volumes(spec: dict[str, Any], settings: Settings, result: Result) -> None:
    wanted = {
        "name": settings.socket_volume,
        "csi": {"driver": settings.csi_driver, "readOnly": True},
    }
    volumes = _list(spec, "volumes", "spec.volumes")
    if spec.get("volumes") is None:
        result.ops.append({"op": "add", "path": "/spec/volumes", "value": [wanted]})
        result.reasons.append(f"volume {settings.socket_volume} is missing")
        return
    removed: list[int] = []
    socket_seen = False
    for index, volume in enumerate(volumes):
        name = volume.get("name") if isinstance(volume, dict) else None
        if name == settings.certs_volume:
            removed.append(index)
            result.reasons.append(f"has the {settings.certs_volume} volume")
        elif name == settings.socket_volume and socket_seen:
            removed.append(index)  # a duplicate; the API server would reject the pod
        elif name == settings.socket_volume:
            socket_seen = True
            if volume != wanted:
                result.ops.append(
                    {"op": "replace", "path": f"/spec/volumes/{index}", "value": wanted}
                )
                source = _source(volume)
                result.reasons.append(
                    f"volume {settings.socket_volume} is {source or 'without a source'},"
                    f" not a read-only CSI volume of {settings.csi_driver}"
                )
                csi = volume.get("csi")
                driver = csi.get("driver") if isinstance(csi, dict) else None
                if source not in (None, "emptyDir", "csi") or (
                    source == "csi" and driver != settings.csi_driver
                ):
                    result.warnings.append(
                        f"replaced the {source} source of volume {settings.socket_volume}"
                        f" with the CSI driver {settings.csi_driver}"
                    )
    result.ops.extend({"op": "remove", "path": f"/spec/volumes/{i}"} for i in reversed(removed))
    if not socket_seen:
        result.ops.append({"op": "add", "path": "/spec/volumes/-", "value": wanted})
        result.reasons.append(f"volume {settings.socket_volume} is missing")


def _source(volume: dict[str, Any]) -> str | None:
    """The volume's source type (emptyDir, hostPath, csi, ...), None for Istio's raw null."""
    for key, value in volume.items():
        if key != "name" and value is not None:
            return key
    return None


def _mounts(container: dict[str, Any], where: str) -> list[Any]:
    return _list(container, "volumeMounts", where[1:].replace("/", ".") + ".volumeMounts")


def _other_mounts(
    container: dict[str, Any], where: str, settings: Settings, result: Result
) -> None:
    removed = [
        i
        for i, m in enumerate(_mounts(container, where))
        if isinstance(m, dict) and m.get("name") == settings.certs_volume
    ]
    if removed:
        name = container.get("name")
        result.warnings.append(f"removed the {settings.certs_volume} mount from container {name}")
        result.reasons.append(f"container {name} mounts {settings.certs_volume}")
    result.ops.extend(
        {"op": "remove", "path": f"{where}/volumeMounts/{i}"} for i in reversed(removed)
    )


def _proxy_mounts(
    container: dict[str, Any], where: str, settings: Settings, result: Result
) -> None:
    mounts = _mounts(container, where)
    wanted = {
        "name": settings.socket_volume,
        "mountPath": settings.socket_mount_path,
        "readOnly": True,
    }
    if container.get("volumeMounts") is None:
        result.ops.append({"op": "add", "path": f"{where}/volumeMounts", "value": [wanted]})
        result.reasons.append(f"{settings.proxy_container} does not mount {settings.socket_volume}")
        return
    removed: list[int] = []
    socket_seen = False
    for index, mount in enumerate(mounts):
        name = mount.get("name") if isinstance(mount, dict) else None
        if name == settings.certs_volume:
            removed.append(index)
            result.reasons.append(f"{settings.proxy_container} mounts {settings.certs_volume}")
        elif name == settings.socket_volume:
            path = f"{where}/volumeMounts/{index}"
            if not socket_seen and mount.get("mountPath") != settings.socket_mount_path:
                result.ops.append(
                    {"op": "add", "path": f"{path}/mountPath", "value": settings.socket_mount_path}
                )
                result.reasons.append(
                    f"{settings.proxy_container} mounts {settings.socket_volume}"
                    f" at {mount.get('mountPath')}"
                )
            if mount.get("readOnly") is not True:
                result.ops.append({"op": "add", "path": f"{path}/readOnly", "value": True})
                result.reasons.append(
                    f"{settings.proxy_container} mounts {settings.socket_volume} read-write"
                )
            socket_seen = True
    result.ops.extend(
        {"op": "remove", "path": f"{where}/volumeMounts/{i}"} for i in reversed(removed)
    )
    if not socket_seen:
        result.ops.append({"op": "add", "path": f"{where}/volumeMounts/-", "value": wanted})
        result.reasons.append(f"{settings.proxy_container} does not mount {settings.socket_volume}")


def _proxy_env(container: dict[str, Any], where: str, settings: Settings, result: Result) -> None:
    wanted = {
        settings.cert_provider_env: settings.cert_provider,
        settings.ca_addr_env: settings.ca_addr,
    }
    env = _list(container, "env", where[1:].replace("/", ".") + ".env")
    if container.get("env") is None:
        result.ops.append(
            {
                "op": "add",
                "path": f"{where}/env",
                "value": [{"name": n, "value": v} for n, v in wanted.items()],
            }
        )
        result.reasons.append(f"{settings.proxy_container} has no {' or '.join(wanted)}")
        return
    seen: set[str] = set()
    removed: list[int] = []
    for index, var in enumerate(env):
        name = var.get("name") if isinstance(var, dict) else None
        if name not in wanted:
            continue
        if name in seen:
            removed.append(index)
            result.reasons.append(f"{settings.proxy_container} sets {name} twice")
            continue
        seen.add(name)
        entry = {"name": name, "value": wanted[name]}
        if var != entry:
            result.ops.append({"op": "replace", "path": f"{where}/env/{index}", "value": entry})
            result.reasons.append(
                f"{settings.proxy_container} has {name} not set to {wanted[name]}"
            )
    result.ops.extend({"op": "remove", "path": f"{where}/env/{i}"} for i in reversed(removed))
    for name, value in wanted.items():
        if name not in seen:
            result.ops.append(
                {"op": "add", "path": f"{where}/env/-", "value": {"name": name, "value": value}}
            )
            result.reasons.append(f"{settings.proxy_container} has no {name}")


def _label(pod: dict[str, Any], settings: Settings, result: Result) -> None:
    key, value = settings.identity_label, settings.identity_label_value
    metadata = _dict(pod, "metadata", "metadata")
    if pod.get("metadata") is None:
        result.ops.append({"op": "add", "path": "/metadata", "value": {"labels": {key: value}}})
    elif metadata.get("labels") is None:
        result.ops.append({"op": "add", "path": "/metadata/labels", "value": {key: value}})
    elif metadata["labels"].get(key) != value:
        result.ops.append({"op": "add", "path": f"/metadata/labels/{escape(key)}", "value": value})
    else:
        return
    result.reasons.append(f"label {key}={value} is missing")


def _dict(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidPod(f"{where}: must be a JSON object")
    return value


def _list(parent: dict[str, Any], key: str, where: str) -> list[Any]:
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidPod(f"{where}: must be a JSON array")
    return value
