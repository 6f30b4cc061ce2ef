"""The rewrite contract: an Istio-injected pod in, the JSON Patch that fixes it out.

For a pod with an `istio-proxy` container or init container (any restartPolicy), unless
the pod carries the opt-out label:
1. remove the `workload-certs` volume and every mount of it, in every container;
2. make `workload-socket` exactly `{name, csi: {driver: csi.spiffe.io, readOnly: true}}`
   (in place; appended when absent);
3. mount it read-only in `istio-proxy` at /var/run/secrets/workload-spiffe-uds: a mount
   already at that path becomes the socket mount (a warning if it was of another volume,
   and any further mount at the path goes); else the first mount of the socket volume moves
   there; else one is appended. Other mounts of the socket volume (Istio's documented `spire`
   template adds one at /run/secrets/workload-spiffe-uds) stay where they are, read-only;
4. on `istio-proxy` set `PILOT_CERT_PROVIDER=workloadapi` and
   `CA_ADDR=unix:///var/run/secrets/workload-spiffe-uds/socket` (replaced at the index
   of the first entry, `valueFrom` dropped, later duplicates removed; appended if absent);
5. label the pod `spiffe.io/spire-managed-identity: "true"`.
Nothing else changes, and a compliant pod yields no patch, so a second pass is a no-op.
Whatever the input, the rewrite adds nothing the API server refuses: the socket's path is
mounted once in istio-proxy, the socket volume exists once, the certificates volume and its
mounts are gone, and each env variable it sets is set once.

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
    # Why the contract does not apply: "opted-out", "no-proxy", or "" when it does.
    skipped: str = ""

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


class _Names:
    """A Settings' names and values, and the reasons that depend on nothing else.

    Made once per Settings (which is frozen): every pod creation runs `rewrite`, and
    building these strings for each one cost more than the checks themselves.
    """

    def __init__(self, s: Settings) -> None:
        self.proxy = s.proxy_container
        self.certs = s.certs_volume
        self.socket = s.socket_volume
        self.mount_path = s.socket_mount_path
        self.driver = s.csi_driver
        self.cert_provider_env, self.cert_provider = s.cert_provider_env, s.cert_provider
        self.ca_addr_env, self.ca_addr = s.ca_addr_env, s.ca_addr
        self.label_key, self.label_value = s.identity_label, s.identity_label_value
        self.label_path = f"/metadata/labels/{escape(s.identity_label)}"
        # Compared with, never put in an op (ops get fresh objects: callers may edit them).
        self.wanted_volume = {"name": self.socket, "csi": {"driver": self.driver, "readOnly": True}}
        self.volume_certs = f"has the {self.certs} volume"
        self.socket_missing = f"volume {self.socket} is missing"
        self.proxy_no_mount = f"{self.proxy} does not mount {self.socket}"
        self.proxy_mounts_certs = f"{self.proxy} mounts {self.certs}"
        self.read_write = f"{self.proxy} mounts {self.socket} read-write"
        self.path_twice = f"{self.proxy} has two mounts at {self.mount_path}"
        wanted = {self.cert_provider_env: self.cert_provider, self.ca_addr_env: self.ca_addr}
        self.no_env = f"{self.proxy} has no {' or '.join(wanted)}"
        self.env_twice = {n: f"{self.proxy} sets {n} twice" for n in wanted}
        self.env_wrong = {n: f"{self.proxy} has {n} not set to {v}" for n, v in wanted.items()}
        self.env_missing = {n: f"{self.proxy} has no {n}" for n in wanted}
        self.label_missing = f"label {self.label_key}={self.label_value} is missing"


_NAMES: dict[int, tuple[Settings, _Names]] = {}


def _names(settings: Settings) -> _Names:
    entry = _NAMES.get(id(settings))
    if entry is not None and entry[0] is settings:
        return entry[1]
    if len(_NAMES) >= 64:  # tests make many Settings; a server has one
        _NAMES.clear()
    names = _Names(settings)
    _NAMES[id(settings)] = (settings, names)
    return names


def rewrite(pod: dict[str, Any], settings: Settings) -> Result:
    """The patch (RFC 6902 ops, in order) that makes `pod` follow the contract."""
    result = Result()
    if not isinstance(pod, dict):
        raise InvalidPod("pod: must be a JSON object")
    if opted_out(pod, settings):
        result.skipped = "opted-out"
        return result
    if not has_proxy(pod, settings):
        result.skipped = "no-proxy"
        return result
    names = _names(settings)
    spec = _dict(pod, "spec", "spec")
    _volumes(spec, names, result)
    proxy = names.proxy
    for list_name in _LISTS:
        for index, container in enumerate(_list(spec, list_name, f"spec.{list_name}")):
            if not isinstance(container, dict):
                raise InvalidPod(f"spec.{list_name}[{index}]: must be a JSON object")
            where = f"/spec/{list_name}/{index}"
            if container.get("name") == proxy:
                _proxy_mounts(container, where, names, result)
                _proxy_env(container, where, names, result)
            else:
                _other_mounts(container, where, names, result)
    _label(pod, names, result)
    return result


def _volumes(spec: dict[str, Any], n: _Names, result: Result) -> None:
    volumes = spec.get("volumes")
    if volumes is None:
        result.ops.append(
            {
                "op": "add",
                "path": "/spec/volumes",
                "value": [{"name": n.socket, "csi": {"driver": n.driver, "readOnly": True}}],
            }
        )
        result.reasons.append(n.socket_missing)
        return
    if not isinstance(volumes, list):
        raise InvalidPod("spec.volumes: must be a JSON array")
    ops, reasons = result.ops, result.reasons
    certs, socket = n.certs, n.socket
    removed: list[int] = []
    socket_seen = False
    for index, volume in enumerate(volumes):
        name = volume.get("name") if isinstance(volume, dict) else None
        if name == certs:
            removed.append(index)
            reasons.append(n.volume_certs)
        elif name != socket:
            continue
        elif socket_seen:
            removed.append(index)  # a duplicate; the API server would reject the pod
        else:
            socket_seen = True
            if volume != n.wanted_volume:
                ops.append(
                    {
                        "op": "replace",
                        "path": f"/spec/volumes/{index}",
                        "value": {"name": socket, "csi": {"driver": n.driver, "readOnly": True}},
                    }
                )
                source = _source(volume)
                reasons.append(
                    f"volume {socket} is {source or 'without a source'},"
                    f" not a read-only CSI volume of {n.driver}"
                )
                csi = volume.get("csi")
                driver = csi.get("driver") if isinstance(csi, dict) else None
                if source not in (None, "emptyDir", "csi") or (
                    source == "csi" and driver != n.driver
                ):
                    result.warnings.append(
                        f"replaced the {source} source of volume {socket}"
                        f" with the CSI driver {n.driver}"
                    )
    for index in reversed(removed):
        ops.append({"op": "remove", "path": f"/spec/volumes/{index}"})
    if not socket_seen:
        ops.append(
            {
                "op": "add",
                "path": "/spec/volumes/-",
                "value": {"name": socket, "csi": {"driver": n.driver, "readOnly": True}},
            }
        )
        reasons.append(n.socket_missing)


def _source(volume: dict[str, Any]) -> str | None:
    """The volume's source type (emptyDir, hostPath, csi, ...), None for Istio's raw null."""
    for key, value in volume.items():
        if key != "name" and value is not None:
            return key
    return None


def _field_list(container: dict[str, Any], key: str, where: str) -> list[Any] | None:
    value = container.get(key)
    if value is None or isinstance(value, list):
        return value
    raise InvalidPod(f"{where[1:].replace('/', '.')}.{key}: must be a JSON array")


def _other_mounts(container: dict[str, Any], where: str, n: _Names, result: Result) -> None:
    mounts = _field_list(container, "volumeMounts", where)
    if not mounts:
        return
    certs = n.certs
    removed = [i for i, m in enumerate(mounts) if isinstance(m, dict) and m.get("name") == certs]
    if removed:
        name = container.get("name")
        result.warnings.append(f"removed the {certs} mount from container {name}")
        result.reasons.append(f"container {name} mounts {certs}")
        for i in reversed(removed):
            result.ops.append({"op": "remove", "path": f"{where}/volumeMounts/{i}"})


def _proxy_mounts(container: dict[str, Any], where: str, n: _Names, result: Result) -> None:
    mounts = _field_list(container, "volumeMounts", where)
    ops, reasons = result.ops, result.reasons
    if mounts is None:
        ops.append(
            {
                "op": "add",
                "path": f"{where}/volumeMounts",
                "value": [{"name": n.socket, "mountPath": n.mount_path, "readOnly": True}],
            }
        )
        reasons.append(n.proxy_no_mount)
        return
    certs, socket, mount_path = n.certs, n.socket, n.mount_path
    chosen = _socket_mount(mounts, n)
    removed: list[int] = []
    for index, mount in enumerate(mounts):
        if not isinstance(mount, dict):
            continue
        name = mount.get("name")
        path = f"{where}/volumeMounts/{index}"
        if name == certs:
            removed.append(index)
            reasons.append(n.proxy_mounts_certs)
            continue
        if index == chosen:
            if name != socket:
                ops.append({"op": "add", "path": f"{path}/name", "value": socket})
                reasons.append(f"{n.proxy} mounts {name} at {mount_path}")
                result.warnings.append(
                    f"replaced the mount of volume {name} at {mount_path}"
                    f" in container {n.proxy} with {socket}"
                )
            if mount.get("mountPath") != mount_path:
                ops.append({"op": "add", "path": f"{path}/mountPath", "value": mount_path})
                reasons.append(f"{n.proxy} mounts {socket} at {mount.get('mountPath')}")
        elif mount.get("mountPath") == mount_path:
            # A second mount at the socket's path: the API server refuses duplicate paths.
            removed.append(index)
            reasons.append(n.path_twice)
            if name != socket:
                result.warnings.append(
                    f"removed the second mount at {mount_path} (volume {name})"
                    f" from container {n.proxy}"
                )
            continue
        elif name != socket:
            continue
        if mount.get("readOnly") is not True:
            ops.append({"op": "add", "path": f"{path}/readOnly", "value": True})
            reasons.append(n.read_write)
    for index in reversed(removed):
        ops.append({"op": "remove", "path": f"{where}/volumeMounts/{index}"})
    if chosen is None:
        ops.append(
            {
                "op": "add",
                "path": f"{where}/volumeMounts/-",
                "value": {"name": socket, "mountPath": mount_path, "readOnly": True},
            }
        )
        reasons.append(n.proxy_no_mount)


def _socket_mount(mounts: list[Any], n: _Names) -> int | None:
    """Which mount becomes the socket mount: the first at the socket's path (mounts of the
    certificates volume go anyway), else the first of the socket volume, else none."""
    first_of_socket = None
    for index, mount in enumerate(mounts):
        if not isinstance(mount, dict) or mount.get("name") == n.certs:
            continue
        if mount.get("mountPath") == n.mount_path:
            return index
        if first_of_socket is None and mount.get("name") == n.socket:
            first_of_socket = index
    return first_of_socket


def _proxy_env(container: dict[str, Any], where: str, n: _Names, result: Result) -> None:
    env = _field_list(container, "env", where)
    ops, reasons = result.ops, result.reasons
    first, second = n.cert_provider_env, n.ca_addr_env
    if env is None:
        ops.append(
            {
                "op": "add",
                "path": f"{where}/env",
                "value": [
                    {"name": first, "value": n.cert_provider},
                    {"name": second, "value": n.ca_addr},
                ],
            }
        )
        reasons.append(n.no_env)
        return
    # The (usually two) entries that set our variables, found in one pass over the env.
    hits = [
        (index, var)
        for index, var in enumerate(env)
        if isinstance(var, dict) and ((name := var.get("name")) == first or name == second)
    ]
    seen: set[str] = set()
    removed: list[int] = []
    for index, var in hits:
        name = var["name"]
        if name in seen:
            removed.append(index)
            reasons.append(n.env_twice[name])
            continue
        seen.add(name)
        value = n.cert_provider if name == first else n.ca_addr
        if var != {"name": name, "value": value}:
            ops.append(
                {
                    "op": "replace",
                    "path": f"{where}/env/{index}",
                    "value": {"name": name, "value": value},
                }
            )
            reasons.append(n.env_wrong[name])
    for index in reversed(removed):
        ops.append({"op": "remove", "path": f"{where}/env/{index}"})
    for name, value in ((first, n.cert_provider), (second, n.ca_addr)):
        if name not in seen:
            ops.append(
                {"op": "add", "path": f"{where}/env/-", "value": {"name": name, "value": value}}
            )
            reasons.append(n.env_missing[name])


def _label(pod: dict[str, Any], n: _Names, result: Result) -> None:
    key, value = n.label_key, n.label_value
    metadata = pod.get("metadata")
    if metadata is None:
        result.ops.append({"op": "add", "path": "/metadata", "value": {"labels": {key: value}}})
    elif metadata.get("labels") is None:
        result.ops.append({"op": "add", "path": "/metadata/labels", "value": {key: value}})
    elif metadata["labels"].get(key) != value:
        result.ops.append({"op": "add", "path": n.label_path, "value": value})
    else:
        return
    result.reasons.append(n.label_missing)


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
