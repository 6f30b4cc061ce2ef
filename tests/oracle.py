"""An independent, obviously-correct statement of the contract, for tests.

`expected(pod, settings)` deep-copies the pod and applies the contract by plain mutation,
the slow and simple way (the product builds patch operations instead and never copies).
`assert_rewritten(original, patched, settings)` checks a patched pod against it exactly,
then checks the contract's properties on their own, so a bug shared by both
implementations still has to get past the second check, and last the API server's checks
that the rewrite can affect (`api_server_problems`), so a rule that agrees with itself but
makes pods the API server refuses (two mounts at one path, issue 10) cannot pass either.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, NamedTuple

from webhook.config import Settings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
ISTIO_INJECTED = SHARED / "istio-injected"
ADMISSION_REVIEWS = SHARED / "admission-reviews"
LISTS = ("initContainers", "containers")


def istio_pods() -> dict[str, dict[str, Any]]:
    """Every pod of ../shared/fixtures/istio-injected, by file stem."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(ISTIO_INJECTED.glob("*.json"))}


def admission_reviews() -> dict[str, dict[str, Any]]:
    """Every AdmissionReview of ../shared/fixtures/admission-reviews, by file stem."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(ADMISSION_REVIEWS.glob("*.json"))}


def all_fixture_pods() -> dict[str, dict[str, Any]]:
    """Both shapes: Istio's raw output and the API-server-defaulted pods of the reviews."""
    pods = dict(istio_pods())
    pods.update({f"review:{k}": v["request"]["object"] for k, v in admission_reviews().items()})
    return pods


def proxies(pod: dict[str, Any], settings: Settings) -> list[dict[str, Any]]:
    spec = pod.get("spec") or {}
    return [
        c
        for name in LISTS
        for c in spec.get(name) or []
        if c.get("name") == settings.proxy_container
    ]


def in_scope(pod: dict[str, Any], settings: Settings) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    opted_out = labels.get(settings.inject_label) == settings.inject_disabled_value
    return bool(proxies(pod, settings)) and not opted_out


def expected(pod: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The pod as the contract says it must come out."""
    if not in_scope(pod, settings):
        return pod
    out = copy.deepcopy(pod)
    spec = out["spec"]
    socket = {
        "name": settings.socket_volume,
        "csi": {"driver": settings.csi_driver, "readOnly": True},
    }
    volumes: list[Any] = []
    for volume in spec.get("volumes") or []:
        name = volume.get("name") if isinstance(volume, dict) else None
        if name == settings.certs_volume:
            continue
        if name == settings.socket_volume:
            if any(
                isinstance(v, dict) and v.get("name") == settings.socket_volume for v in volumes
            ):
                continue
            volume = socket
        volumes.append(volume)
    if not any(isinstance(v, dict) and v.get("name") == settings.socket_volume for v in volumes):
        volumes.append(socket)
    spec["volumes"] = volumes

    for list_name in LISTS:
        for container in spec.get(list_name) or []:
            if "volumeMounts" in container and container["volumeMounts"] is not None:
                container["volumeMounts"] = [
                    m
                    for m in container["volumeMounts"]
                    if not (isinstance(m, dict) and m.get("name") == settings.certs_volume)
                ]
            if container.get("name") != settings.proxy_container:
                continue
            # The certificates mounts are gone already. The first mount at the socket's path
            # becomes the socket mount, and later ones at that path go; else the first socket
            # mount moves there; else one is added. Every socket mount is read-only.
            mounts = container.get("volumeMounts") or []
            at_path = [
                m
                for m in mounts
                if isinstance(m, dict) and m.get("mountPath") == settings.socket_mount_path
            ]
            of_socket = [
                m for m in mounts if isinstance(m, dict) and m.get("name") == settings.socket_volume
            ]
            if at_path:
                at_path[0]["name"] = settings.socket_volume
                dropped = [id(m) for m in at_path[1:]]
                mounts = [m for m in mounts if id(m) not in dropped]
            elif of_socket:
                of_socket[0]["mountPath"] = settings.socket_mount_path
            else:
                mounts.append(
                    {"name": settings.socket_volume, "mountPath": settings.socket_mount_path}
                )
            for mount in mounts:
                if isinstance(mount, dict) and mount.get("name") == settings.socket_volume:
                    mount["readOnly"] = True
            container["volumeMounts"] = mounts

            wanted = {
                settings.cert_provider_env: settings.cert_provider,
                settings.ca_addr_env: settings.ca_addr,
            }
            env: list[Any] = []
            seen: set[str] = set()
            for var in container.get("env") or []:
                name = var.get("name") if isinstance(var, dict) else None
                if isinstance(name, str) and name in wanted:
                    if name in seen:
                        continue
                    seen.add(name)
                    var = {"name": name, "value": wanted[name]}
                env.append(var)
            env.extend({"name": n, "value": v} for n, v in wanted.items() if n not in seen)
            container["env"] = env

    metadata = out.get("metadata")
    if metadata is None:
        metadata = out["metadata"] = {}
    if metadata.get("labels") is None:
        metadata["labels"] = {}
    metadata["labels"][settings.identity_label] = settings.identity_label_value
    return out


def assert_contract_holds(pod: dict[str, Any], settings: Settings) -> None:
    """The contract's properties, checked on a rewritten pod without the oracle."""
    spec = pod["spec"]
    volumes = spec["volumes"]
    assert [v for v in volumes if v.get("name") == settings.certs_volume] == []
    assert [v for v in volumes if v.get("name") == settings.socket_volume] == [
        {"name": settings.socket_volume, "csi": {"driver": settings.csi_driver, "readOnly": True}}
    ]
    for list_name in LISTS:
        for container in spec.get(list_name) or []:
            names = [m.get("name") for m in container.get("volumeMounts") or []]
            assert settings.certs_volume not in names, container.get("name")
    for proxy in proxies(pod, settings):
        mounts = proxy["volumeMounts"]
        at_path = [m for m in mounts if m.get("mountPath") == settings.socket_mount_path]
        assert [m.get("name") for m in at_path] == [settings.socket_volume]
        socket_mounts = [m for m in mounts if m.get("name") == settings.socket_volume]
        assert all(m["readOnly"] is True for m in socket_mounts)
        for name, value in (
            (settings.cert_provider_env, settings.cert_provider),
            (settings.ca_addr_env, settings.ca_addr),
        ):
            assert [e for e in proxy["env"] if e.get("name") == name] == [
                {"name": name, "value": value}
            ]
    assert pod["metadata"]["labels"][settings.identity_label] == settings.identity_label_value


# --- What the API server refuses ---------------------------------------------------------


class Problem(NamedTuple):
    """One reason the API server's validation would refuse a pod."""

    rule: str
    where: str  # "volumes", or the container: "containers[1]"
    name: str  # the duplicated or missing name, or the duplicated mountPath
    # About a name or path the rewrite sets (the socket, the certificates volume, the env
    # variables, the socket's path in istio-proxy): the rewrite must leave none of these.
    owned: bool


def api_server_problems(pod: dict[str, Any], settings: Settings) -> set[Problem]:
    """The pod's violations of the API server's checks that the rewrite can affect.

    Those checks (`ValidatePod` in kubernetes/pkg/apis/core/validation): volume names unique;
    every volumeMount names a volume of the pod; mountPaths unique within a container; and,
    as the DECISIONS ask, env names unique in istio-proxy (the API server only warns there).
    Entries that are not JSON objects are skipped: the API server would refuse the pod at
    decoding already, and the rewrite leaves them alone.
    """
    spec = pod.get("spec") or {}
    found: set[Problem] = set()
    contract_volumes = (settings.socket_volume, settings.certs_volume)
    volume_names = [v.get("name") for v in spec.get("volumes") or [] if isinstance(v, dict)]
    for name in _twice(volume_names):
        found.add(Problem("volume name twice", "volumes", str(name), name in contract_volumes))
    for list_name in LISTS:
        for index, container in enumerate(spec.get(list_name) or []):
            if not isinstance(container, dict):
                continue
            where = f"{list_name}[{index}]"
            is_proxy = container.get("name") == settings.proxy_container
            mounts = [m for m in container.get("volumeMounts") or [] if isinstance(m, dict)]
            for path in _twice([m.get("mountPath") for m in mounts]):
                owned = is_proxy and path == settings.socket_mount_path
                found.add(Problem("mountPath twice", where, str(path), owned))
            for mount in mounts:
                name = mount.get("name")
                if name not in volume_names:
                    owned = name in contract_volumes
                    found.add(Problem("mount of no volume", where, str(name), owned))
            if is_proxy:
                env_names = [
                    e.get("name") for e in container.get("env") or [] if isinstance(e, dict)
                ]
                for name in _twice(env_names):
                    owned = name in (settings.cert_provider_env, settings.ca_addr_env)
                    found.add(Problem("env name twice", where, str(name), owned))
    return found


def _twice(values: list[Any]) -> set[Any]:
    """The values that occur more than once."""
    seen: set[Any] = set()
    again: set[Any] = set()
    for value in values:
        (again if value in seen else seen).add(value)
    return again


def assert_api_server_accepts(
    original: dict[str, Any], patched: dict[str, Any], settings: Settings
) -> None:
    """The rewrite added no problem the API server refuses, and left none it owns.

    Generated pods are often invalid before the rewrite (a volume name twice, two containers
    with one mount path twice): the rewrite is not asked to repair what it does not touch,
    only never to make it worse. What it owns it must leave valid whatever the input: the
    socket's path mounted once in every istio-proxy, the socket volume once, no mount of the
    certificates volume, each env variable it sets once. For a valid input (every fixture)
    this is the whole check: the result has no problem at all.
    """
    before = api_server_problems(original, settings)
    after = api_server_problems(patched, settings)
    assert after <= before, f"the rewrite made the pod invalid: {sorted(after - before)}"
    if in_scope(original, settings):
        assert {p for p in after if p.owned} == set()


def assert_rewritten(original: dict[str, Any], patched: dict[str, Any], settings: Settings) -> None:
    """`patched` is exactly the contract applied to `original`, nothing else changed, and
    the API server would not refuse it for anything the rewrite did."""
    assert patched == expected(original, settings)
    if in_scope(original, settings):
        assert_contract_holds(patched, settings)
    assert_api_server_accepts(original, patched, settings)
