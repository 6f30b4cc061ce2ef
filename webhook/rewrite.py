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

Why: pods with both of Istio's volumes were seen to stop rotating where this project
started, and pods with only the CSI socket rotated; this is that second shape. Istio's agent
(`pkg/istio-agent/agent.go`) uses the socket whenever it exists, and `PILOT_CERT_PROVIDER` /
`CA_ADDR` are set because users' runbooks ask for them (README, "Why it exists"); only
`verify` shows whether a pod's certificate rotates. Names and values come from `Settings`,
compiled once into an immutable `Contract` (`Contract.from_settings`) that every call takes.

`rewrite(pod, contract)` is pure: no I/O, no state, and the pod is only read, never copied
or changed. The same result says why a pod is not compliant (`Result.reasons`), for the
webhook, `mutate` and `audit` alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from webhook.config import Settings

Op = dict[str, Any]
# The container lists and their paths in errors, made once rather than on every walk.
_LISTS = (("initContainers", "spec.initContainers"), ("containers", "spec.containers"))


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Contract:
    """A `Settings`' names and values for the rewrite, compiled once: what `rewrite` takes.

    Made by `Contract.from_settings` where the settings are known (the webhook's app at
    startup, `mutate` and `audit` once per run) and passed to every call. Every pod creation
    runs `rewrite`, and building the reason strings for each one cost more than the checks
    themselves, so they are made here too. Immutable (frozen, its mappings read-only): one
    contract serves every request and always says what the settings it came from say.
    """

    # The Settings fields of the same names.
    proxy_container: str
    certs_volume: str
    socket_volume: str
    socket_mount_path: str
    csi_driver: str
    cert_provider_env: str
    cert_provider: str
    ca_addr_env: str
    ca_addr: str
    identity_label: str
    identity_label_value: str
    inject_label: str
    inject_disabled_value: str
    # Made from the fields above by `from_settings`, so left out of ==, hash and repr.
    label_path: str = field(compare=False, repr=False)
    # Compared with, never put in an op (ops get fresh objects: callers may edit them).
    socket_volume_value: Mapping[str, Any] = field(compare=False, repr=False)
    # The reasons that depend on nothing but the names.
    has_certs_volume: str = field(compare=False, repr=False)
    socket_missing: str = field(compare=False, repr=False)
    proxy_no_mount: str = field(compare=False, repr=False)
    proxy_mounts_certs: str = field(compare=False, repr=False)
    read_write: str = field(compare=False, repr=False)
    path_twice: str = field(compare=False, repr=False)
    no_env: str = field(compare=False, repr=False)
    env_twice: Mapping[str, str] = field(compare=False, repr=False)
    env_wrong: Mapping[str, str] = field(compare=False, repr=False)
    env_missing: Mapping[str, str] = field(compare=False, repr=False)
    label_missing: str = field(compare=False, repr=False)

    @classmethod
    def from_settings(cls, s: Settings) -> Contract:
        proxy, certs, socket = s.proxy_container, s.certs_volume, s.socket_volume
        wanted = {s.cert_provider_env: s.cert_provider, s.ca_addr_env: s.ca_addr}
        return cls(
            proxy_container=proxy,
            certs_volume=certs,
            socket_volume=socket,
            socket_mount_path=s.socket_mount_path,
            csi_driver=s.csi_driver,
            cert_provider_env=s.cert_provider_env,
            cert_provider=s.cert_provider,
            ca_addr_env=s.ca_addr_env,
            ca_addr=s.ca_addr,
            identity_label=s.identity_label,
            identity_label_value=s.identity_label_value,
            inject_label=s.inject_label,
            inject_disabled_value=s.inject_disabled_value,
            label_path=f"/metadata/labels/{escape(s.identity_label)}",
            socket_volume_value=MappingProxyType(
                {
                    "name": socket,
                    "csi": MappingProxyType({"driver": s.csi_driver, "readOnly": True}),
                }
            ),
            has_certs_volume=f"has the {certs} volume",
            socket_missing=f"volume {socket} is missing",
            proxy_no_mount=f"{proxy} does not mount {socket}",
            proxy_mounts_certs=f"{proxy} mounts {certs}",
            read_write=f"{proxy} mounts {socket} read-write",
            path_twice=f"{proxy} has two mounts at {s.socket_mount_path}",
            no_env=f"{proxy} has no {' or '.join(wanted)}",
            env_twice=MappingProxyType({n: f"{proxy} sets {n} twice" for n in wanted}),
            env_wrong=MappingProxyType(
                {n: f"{proxy} has {n} not set to {v}" for n, v in wanted.items()}
            ),
            env_missing=MappingProxyType({n: f"{proxy} has no {n}" for n in wanted}),
            label_missing=f"label {s.identity_label}={s.identity_label_value} is missing",
        )


def has_proxy(pod: dict[str, Any], contract: Contract) -> bool:
    spec = _dict(pod, "spec", "spec")
    proxy = contract.proxy_container
    # A plain loop: any() over a generator took over twice as long.
    for name, path in _LISTS:
        for container in _list(spec, name, path):
            if isinstance(container, dict) and container.get("name") == proxy:
                return True
    return False


def opted_out(pod: dict[str, Any], contract: Contract) -> bool:
    labels = _dict(_dict(pod, "metadata", "metadata"), "labels", "metadata.labels")
    return labels.get(contract.inject_label) == contract.inject_disabled_value


def rewrite(pod: dict[str, Any], contract: Contract) -> Result:
    """The patch (RFC 6902 ops, in order) that makes `pod` follow the contract."""
    result = Result()
    if not isinstance(pod, dict):
        raise InvalidPod("pod: must be a JSON object")
    if opted_out(pod, contract):
        result.skipped = "opted-out"
        return result
    if not has_proxy(pod, contract):
        result.skipped = "no-proxy"
        return result
    spec = _dict(pod, "spec", "spec")
    _volumes(spec, contract, result)
    proxy = contract.proxy_container
    for list_name, list_path in _LISTS:
        for index, container in enumerate(_list(spec, list_name, list_path)):
            if not isinstance(container, dict):
                raise InvalidPod(f"{list_path}[{index}]: must be a JSON object")
            if container.get("name") == proxy:
                where = f"/spec/{list_name}/{index}"
                _proxy_mounts(container, where, contract, result)
                _proxy_env(container, where, contract, result)
            elif container.get("volumeMounts") is not None:  # else none to remove (istio-init)
                _other_mounts(container, f"/spec/{list_name}/{index}", contract, result)
    _label(pod, contract, result)
    return result


def _volumes(spec: dict[str, Any], c: Contract, result: Result) -> None:
    volumes = spec.get("volumes")
    if volumes is None:
        result.ops.append(
            {
                "op": "add",
                "path": "/spec/volumes",
                "value": [
                    {"name": c.socket_volume, "csi": {"driver": c.csi_driver, "readOnly": True}}
                ],
            }
        )
        result.reasons.append(c.socket_missing)
        return
    if not isinstance(volumes, list):
        raise InvalidPod("spec.volumes: must be a JSON array")
    ops, reasons = result.ops, result.reasons
    certs, socket = c.certs_volume, c.socket_volume
    removed: list[int] = []
    socket_seen = False
    for index, volume in enumerate(volumes):
        name = volume.get("name") if isinstance(volume, dict) else None
        if name == certs:
            removed.append(index)
            reasons.append(c.has_certs_volume)
        elif name != socket:
            continue
        elif socket_seen:
            removed.append(index)  # a duplicate; the API server would reject the pod
        else:
            socket_seen = True
            if volume != c.socket_volume_value:
                ops.append(
                    {
                        "op": "replace",
                        "path": f"/spec/volumes/{index}",
                        "value": {
                            "name": socket,
                            "csi": {"driver": c.csi_driver, "readOnly": True},
                        },
                    }
                )
                source = _source(volume)
                reasons.append(
                    f"volume {socket} is {source or 'without a source'},"
                    f" not a read-only CSI volume of {c.csi_driver}"
                )
                csi = volume.get("csi")
                driver = csi.get("driver") if isinstance(csi, dict) else None
                if source not in (None, "emptyDir", "csi") or (
                    source == "csi" and driver != c.csi_driver
                ):
                    result.warnings.append(
                        f"replaced the {source} source of volume {socket}"
                        f" with the CSI driver {c.csi_driver}"
                    )
    for index in reversed(removed):
        ops.append({"op": "remove", "path": f"/spec/volumes/{index}"})
    if not socket_seen:
        ops.append(
            {
                "op": "add",
                "path": "/spec/volumes/-",
                "value": {"name": socket, "csi": {"driver": c.csi_driver, "readOnly": True}},
            }
        )
        reasons.append(c.socket_missing)


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


def _other_mounts(container: dict[str, Any], where: str, c: Contract, result: Result) -> None:
    mounts = _field_list(container, "volumeMounts", where)
    if not mounts:
        return
    certs = c.certs_volume
    removed = [i for i, m in enumerate(mounts) if isinstance(m, dict) and m.get("name") == certs]
    if removed:
        name = container.get("name")
        result.warnings.append(f"removed the {certs} mount from container {name}")
        result.reasons.append(f"container {name} mounts {certs}")
        for i in reversed(removed):
            result.ops.append({"op": "remove", "path": f"{where}/volumeMounts/{i}"})


def _proxy_mounts(container: dict[str, Any], where: str, c: Contract, result: Result) -> None:
    mounts = _field_list(container, "volumeMounts", where)
    ops, reasons = result.ops, result.reasons
    if mounts is None:
        ops.append(
            {
                "op": "add",
                "path": f"{where}/volumeMounts",
                "value": [
                    {"name": c.socket_volume, "mountPath": c.socket_mount_path, "readOnly": True}
                ],
            }
        )
        reasons.append(c.proxy_no_mount)
        return
    certs, socket, mount_path = c.certs_volume, c.socket_volume, c.socket_mount_path
    chosen = _socket_mount(mounts, c)
    removed: list[int] = []
    for index, mount in enumerate(mounts):
        if not isinstance(mount, dict):
            continue
        name = mount.get("name")
        if name == certs:
            removed.append(index)
            reasons.append(c.proxy_mounts_certs)
            continue
        if index != chosen:
            if mount.get("mountPath") == mount_path:
                # A second mount at the socket's path: the API server refuses duplicate paths.
                removed.append(index)
                reasons.append(c.path_twice)
                if name != socket:
                    result.warnings.append(
                        f"removed the second mount at {mount_path} (volume {name})"
                        f" from container {c.proxy_container}"
                    )
                continue
            if name != socket:
                continue
        # The socket mount or another of the socket volume: only these need their path.
        path = f"{where}/volumeMounts/{index}"
        if index == chosen:
            if name != socket:
                ops.append({"op": "add", "path": f"{path}/name", "value": socket})
                reasons.append(f"{c.proxy_container} mounts {name} at {mount_path}")
                result.warnings.append(
                    f"replaced the mount of volume {name} at {mount_path}"
                    f" in container {c.proxy_container} with {socket}"
                )
            if mount.get("mountPath") != mount_path:
                ops.append({"op": "add", "path": f"{path}/mountPath", "value": mount_path})
                reasons.append(f"{c.proxy_container} mounts {socket} at {mount.get('mountPath')}")
        if mount.get("readOnly") is not True:
            ops.append({"op": "add", "path": f"{path}/readOnly", "value": True})
            reasons.append(c.read_write)
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
        reasons.append(c.proxy_no_mount)


def _socket_mount(mounts: list[Any], c: Contract) -> int | None:
    """Which mount becomes the socket mount: the first at the socket's path (mounts of the
    certificates volume go anyway), else the first of the socket volume, else none."""
    first_of_socket = None
    for index, mount in enumerate(mounts):
        if not isinstance(mount, dict) or mount.get("name") == c.certs_volume:
            continue
        if mount.get("mountPath") == c.socket_mount_path:
            return index
        if first_of_socket is None and mount.get("name") == c.socket_volume:
            first_of_socket = index
    return first_of_socket


def _proxy_env(container: dict[str, Any], where: str, c: Contract, result: Result) -> None:
    env = _field_list(container, "env", where)
    ops, reasons = result.ops, result.reasons
    first, second = c.cert_provider_env, c.ca_addr_env
    if env is None:
        ops.append(
            {
                "op": "add",
                "path": f"{where}/env",
                "value": [
                    {"name": first, "value": c.cert_provider},
                    {"name": second, "value": c.ca_addr},
                ],
            }
        )
        reasons.append(c.no_env)
        return
    seen: set[str] = set()
    removed: list[int] = []
    for index, var in enumerate(env):
        if not isinstance(var, dict) or ((name := var.get("name")) != first and name != second):
            continue
        if name in seen:
            removed.append(index)
            reasons.append(c.env_twice[name])
            continue
        seen.add(name)
        value = c.cert_provider if name == first else c.ca_addr
        # Compliant is exactly {"name": name, "value": value}, and `name` is known to be there.
        if len(var) != 2 or var.get("value") != value:
            ops.append(
                {
                    "op": "replace",
                    "path": f"{where}/env/{index}",
                    "value": {"name": name, "value": value},
                }
            )
            reasons.append(c.env_wrong[name])
    for index in reversed(removed):
        ops.append({"op": "remove", "path": f"{where}/env/{index}"})
    if len(seen) == 2:
        return  # both are set (most pods)
    for name, value in ((first, c.cert_provider), (second, c.ca_addr)):
        if name not in seen:
            ops.append(
                {"op": "add", "path": f"{where}/env/-", "value": {"name": name, "value": value}}
            )
            reasons.append(c.env_missing[name])


def _label(pod: dict[str, Any], c: Contract, result: Result) -> None:
    key, value = c.identity_label, c.identity_label_value
    metadata = pod.get("metadata")
    if metadata is None:
        result.ops.append({"op": "add", "path": "/metadata", "value": {"labels": {key: value}}})
    elif metadata.get("labels") is None:
        result.ops.append({"op": "add", "path": "/metadata/labels", "value": {key: value}})
    elif metadata["labels"].get(key) != value:
        result.ops.append({"op": "add", "path": c.label_path, "value": value})
    else:
        return
    result.reasons.append(c.label_missing)


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
