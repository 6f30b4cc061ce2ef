"""The rewrite contract, case by case: exact ops, exact warnings, applied and re-checked."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import jsonpatch
import pytest
from kubernetes.client import ApiClient, V1Pod

from tests.oracle import (
    Problem,
    all_fixture_pods,
    api_server_problems,
    assert_api_server_accepts,
    assert_rewritten,
    istio_pods,
)
from webhook.config import Settings
from webhook.rewrite import Contract, InvalidPod, Result, rewrite

SETTINGS = Settings()
CONTRACT = Contract.from_settings(SETTINGS)
SOCKET_PATH = "/var/run/secrets/workload-spiffe-uds"
SPIRE_PATH = "/run/secrets/workload-spiffe-uds"  # Istio's documented `spire` template
CA_ADDR = "unix:///var/run/secrets/workload-spiffe-uds/socket"
LABEL = "spiffe.io/spire-managed-identity"
LABEL_PATH = "/metadata/labels/spiffe.io~1spire-managed-identity"
CSI = {"name": "workload-socket", "csi": {"driver": "csi.spiffe.io", "readOnly": True}}
SOCKET_MOUNT = {"name": "workload-socket", "mountPath": SOCKET_PATH, "readOnly": True}
CERTS_MOUNT = {
    "name": "workload-certs",
    "mountPath": "/var/run/secrets/workload-spiffe-credentials",
}
PILOT_OK = {"name": "PILOT_CERT_PROVIDER", "value": "workloadapi"}
CA_OK = {"name": "CA_ADDR", "value": CA_ADDR}
APP = {"name": "app", "image": "app:1"}


def compliant_proxy(**extra: Any) -> dict[str, Any]:
    proxy = {
        "name": "istio-proxy",
        "image": "proxyv2:1.32",
        "env": [{"name": "JWT_POLICY", "value": "third-party-jwt"}, PILOT_OK, CA_OK],
        "volumeMounts": [{"name": "istio-envoy", "mountPath": "/etc/istio/proxy"}, SOCKET_MOUNT],
    }
    proxy.update(extra)
    return copy.deepcopy(proxy)


def istio_proxy(**extra: Any) -> dict[str, Any]:
    """istio-proxy as Istio's sidecar template writes it."""
    proxy = {
        "name": "istio-proxy",
        "image": "proxyv2:1.32",
        "env": [
            {"name": "PILOT_CERT_PROVIDER", "value": "istiod"},
            {"name": "CA_ADDR", "value": "istiod.istio-system.svc:15012"},
        ],
        "volumeMounts": [
            {"name": "workload-socket", "mountPath": SOCKET_PATH},
            CERTS_MOUNT,
        ],
    }
    proxy.update(extra)
    return copy.deepcopy(proxy)


def pod(
    containers: list[Any] | None = None,
    init: list[Any] | None = None,
    volumes: list[Any] | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A compliant pod unless told otherwise."""
    spec: dict[str, Any] = {
        "containers": [APP, compliant_proxy()] if containers is None else containers,
        "volumes": [{"name": "istio-envoy", "emptyDir": {}}, CSI] if volumes is None else volumes,
    }
    if init is not None:
        spec["initContainers"] = init
    return copy.deepcopy(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "labels": {LABEL: "true"} if labels is None else labels},
            "spec": spec,
        }
    )


def check(original: dict[str, Any], settings: Settings = SETTINGS) -> Result:
    """Rewrite, then prove the general properties every case must have."""
    contract = Contract.from_settings(settings)
    before = copy.deepcopy(original)
    result = rewrite(original, contract)
    assert original == before, "rewrite() changed its input"
    assert bool(result.reasons) == bool(result.ops)
    if not result.ops:
        assert result.warnings == []
    patched = jsonpatch.apply_patch(original, result.ops)
    assert_rewritten(original, patched, settings)
    assert rewrite(patched, contract).ops == []
    return result


def to_v1pod(obj: dict[str, Any]) -> V1Pod:
    return ApiClient()._ApiClient__deserialize(obj, "V1Pod")


# --- where istio-proxy is -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("containers", "init", "where"),
    [
        ([APP, istio_proxy()], None, "/spec/containers/1"),
        (
            [APP],
            [{"name": "istio-init", "image": "proxyv2:1.32"}, istio_proxy(restartPolicy="Always")],
            "/spec/initContainers/1",
        ),
    ],
    ids=["classic-container", "native-sidecar-init-container"],
)
def test_istio_injected_proxy_gets_the_whole_contract_in_order(
    containers: list[Any], init: list[Any] | None, where: str
) -> None:
    original = pod(
        containers=containers,
        init=init,
        volumes=[{"name": "workload-socket", "emptyDir": {}}, {"name": "workload-certs"}],
        labels={"app": "p"},
    )
    result = check(original)
    assert result.ops == [
        {"op": "replace", "path": "/spec/volumes/0", "value": CSI},
        {"op": "remove", "path": "/spec/volumes/1"},
        {"op": "add", "path": f"{where}/volumeMounts/0/readOnly", "value": True},
        {"op": "remove", "path": f"{where}/volumeMounts/1"},
        {"op": "replace", "path": f"{where}/env/0", "value": PILOT_OK},
        {"op": "replace", "path": f"{where}/env/1", "value": CA_OK},
        {"op": "add", "path": LABEL_PATH, "value": "true"},
    ]
    assert result.warnings == []
    patched = jsonpatch.apply_patch(original, result.ops)
    assert get(patched, where).get("restartPolicy") == get(original, where).get("restartPolicy")


def get(obj: Any, pointer: str) -> Any:
    for token in pointer.split("/")[1:]:
        obj = obj[int(token)] if isinstance(obj, list) else obj[token]
    return obj


def test_plain_init_container_named_istio_proxy_is_rewritten_too() -> None:
    original = pod(containers=[APP], init=[istio_proxy()], volumes=[CSI])
    result = check(original)
    assert result.ops == [
        {"op": "add", "path": "/spec/initContainers/0/volumeMounts/0/readOnly", "value": True},
        {"op": "remove", "path": "/spec/initContainers/0/volumeMounts/1"},
        {"op": "replace", "path": "/spec/initContainers/0/env/0", "value": PILOT_OK},
        {"op": "replace", "path": "/spec/initContainers/0/env/1", "value": CA_OK},
    ]


def test_istio_proxy_in_both_lists_is_rewritten_in_both() -> None:
    original = istio_pods()["sidecar-spire--0"]
    result = check(original)
    paths = [op["path"] for op in result.ops]
    init_index = [c["name"] for c in original["spec"]["initContainers"]].index("istio-proxy")
    container_index = [c["name"] for c in original["spec"]["containers"]].index("istio-proxy")
    assert f"/spec/initContainers/{init_index}/env/0" in paths
    assert f"/spec/containers/{container_index}/env" in paths  # the stub has no env
    assert f"/spec/initContainers/{init_index}/volumeMounts/0/readOnly" in paths


def test_pod_without_istio_proxy_is_left_alone_even_with_workload_certs() -> None:
    original = pod(
        containers=[{**APP, "volumeMounts": [CERTS_MOUNT]}],
        volumes=[{"name": "workload-certs", "emptyDir": {}}],
        labels={},
    )
    result = check(original)
    assert (result.ops, result.warnings, result.reasons) == ([], [], [])


def test_opted_out_pod_is_left_alone() -> None:
    original = pod(
        containers=[APP, istio_proxy()],
        volumes=[{"name": "workload-certs"}],
        labels={"istio-spiffe-webhook/inject": "disabled"},
    )
    result = check(original)
    assert (result.ops, result.warnings, result.reasons) == ([], [], [])


def test_inject_label_with_another_value_is_no_opt_out() -> None:
    original = pod(labels={"istio-spiffe-webhook/inject": "enabled"})
    assert check(original).ops == [{"op": "add", "path": LABEL_PATH, "value": "true"}]


def test_already_compliant_pod_yields_no_patch() -> None:
    result = check(pod())
    assert (result.ops, result.warnings, result.reasons) == ([], [], [])


# --- the socket volume ----------------------------------------------------------------------


def test_missing_socket_volume_and_mount_are_appended() -> None:
    proxy = compliant_proxy(volumeMounts=[CERTS_MOUNT])
    original = pod(containers=[APP, proxy], volumes=[{"name": "workload-certs"}])
    result = check(original)
    assert result.ops == [
        {"op": "remove", "path": "/spec/volumes/0"},
        {"op": "add", "path": "/spec/volumes/-", "value": CSI},
        {"op": "remove", "path": "/spec/containers/1/volumeMounts/0"},
        {"op": "add", "path": "/spec/containers/1/volumeMounts/-", "value": SOCKET_MOUNT},
    ]
    assert result.warnings == []


@pytest.mark.parametrize(
    "volume",
    [
        {"name": "workload-socket", "emptyDir": {}},
        {"name": "workload-socket", "emptyDir": None},
        {"name": "workload-socket"},
        {"name": "workload-socket", "csi": {"driver": "csi.spiffe.io"}},
        {"name": "workload-socket", "csi": {"driver": "csi.spiffe.io", "readOnly": False}},
    ],
    ids=["emptyDir", "null-source", "no-source", "csi-not-read-only", "csi-read-write"],
)
def test_socket_volume_is_replaced_in_place_without_warning(volume: dict[str, Any]) -> None:
    original = pod(volumes=[{"name": "istio-envoy", "emptyDir": {}}, volume])
    result = check(original)
    assert result.ops == [{"op": "replace", "path": "/spec/volumes/1", "value": CSI}]
    assert result.warnings == []


def test_host_path_socket_volume_is_replaced_with_a_warning() -> None:
    volume = {"name": "workload-socket", "hostPath": {"path": "/run/spire/sockets"}}
    result = check(pod(volumes=[volume]))
    assert result.ops == [{"op": "replace", "path": "/spec/volumes/0", "value": CSI}]
    assert result.warnings == [
        "replaced the hostPath source of volume workload-socket with the CSI driver csi.spiffe.io"
    ]


def test_socket_volume_of_another_csi_driver_is_replaced_with_a_warning() -> None:
    volume = {"name": "workload-socket", "csi": {"driver": "secrets-store.csi.k8s.io"}}
    result = check(pod(volumes=[volume]))
    assert result.ops == [{"op": "replace", "path": "/spec/volumes/0", "value": CSI}]
    assert result.warnings == [
        "replaced the csi source of volume workload-socket with the CSI driver csi.spiffe.io"
    ]


def test_missing_volumes_list_is_created() -> None:
    original = pod()
    del original["spec"]["volumes"]
    assert check(original).ops == [{"op": "add", "path": "/spec/volumes", "value": [CSI]}]


# --- workload-certs mounts ------------------------------------------------------------------


def test_every_workload_certs_mount_is_removed_with_a_warning_per_other_container() -> None:
    worker = {"name": "worker", "volumeMounts": [{"name": "data", "mountPath": "/d"}, CERTS_MOUNT]}
    setup = {"name": "setup", "volumeMounts": [CERTS_MOUNT]}
    proxy = compliant_proxy()
    proxy["volumeMounts"].insert(0, CERTS_MOUNT)
    original = pod(
        containers=[{**APP, "volumeMounts": [CERTS_MOUNT]}, proxy, worker],
        init=[setup],
        volumes=[CSI, {"name": "workload-certs", "emptyDir": {}}],
    )
    result = check(original)
    assert result.ops == [
        {"op": "remove", "path": "/spec/volumes/1"},
        {"op": "remove", "path": "/spec/initContainers/0/volumeMounts/0"},
        {"op": "remove", "path": "/spec/containers/0/volumeMounts/0"},
        {"op": "remove", "path": "/spec/containers/1/volumeMounts/0"},
        {"op": "remove", "path": "/spec/containers/2/volumeMounts/1"},
    ]
    assert result.warnings == [
        "removed the workload-certs mount from container setup",
        "removed the workload-certs mount from container app",
        "removed the workload-certs mount from container worker",
    ]


# --- the proxy's socket mount ---------------------------------------------------------------


def test_socket_mount_not_read_only_is_made_read_only() -> None:
    proxy = compliant_proxy()
    proxy["volumeMounts"][1] = {"name": "workload-socket", "mountPath": SOCKET_PATH}
    result = check(pod(containers=[APP, proxy]))
    assert result.ops == [
        {"op": "add", "path": "/spec/containers/1/volumeMounts/1/readOnly", "value": True}
    ]
    assert result.warnings == []


def test_socket_mount_at_another_path_is_moved_and_made_read_only() -> None:
    proxy = compliant_proxy()
    proxy["volumeMounts"][1] = {
        "name": "workload-socket",
        "mountPath": "/run/spire",
        "readOnly": False,
    }
    result = check(pod(containers=[APP, proxy]))
    assert result.ops == [
        {"op": "add", "path": "/spec/containers/1/volumeMounts/1/mountPath", "value": SOCKET_PATH},
        {"op": "add", "path": "/spec/containers/1/volumeMounts/1/readOnly", "value": True},
    ]


def test_missing_volume_mounts_list_is_created_on_the_proxy() -> None:
    proxy = compliant_proxy()
    del proxy["volumeMounts"]
    assert check(pod(containers=[APP, proxy])).ops == [
        {"op": "add", "path": "/spec/containers/1/volumeMounts", "value": [SOCKET_MOUNT]}
    ]


SPIRE_MOUNT = {"name": "workload-socket", "mountPath": SPIRE_PATH, "readOnly": True}


def proxy_mounts(original: dict[str, Any], result: Result, where: str) -> list[Any]:
    mounts: list[Any] = get(jsonpatch.apply_patch(original, result.ops), where)["volumeMounts"]
    return mounts


def test_spire_mount_before_the_sidecars_keeps_its_path_so_no_two_mounts_share_one() -> None:
    # Istio's documented `sidecar,spire` templates, the spire mount first: the mount already
    # at the socket's path is the socket mount; the other keeps its path (issue 10: moving
    # it made two mounts at one path, and the API server refused every such pod).
    proxy = istio_proxy()
    proxy["volumeMounts"].insert(0, SPIRE_MOUNT)
    original = pod(containers=[APP, proxy], volumes=[CSI, {"name": "workload-certs"}])
    result = check(original)
    assert result.ops == [
        {"op": "remove", "path": "/spec/volumes/1"},
        {"op": "add", "path": "/spec/containers/1/volumeMounts/1/readOnly", "value": True},
        {"op": "remove", "path": "/spec/containers/1/volumeMounts/2"},
        {"op": "replace", "path": "/spec/containers/1/env/0", "value": PILOT_OK},
        {"op": "replace", "path": "/spec/containers/1/env/1", "value": CA_OK},
    ]
    assert result.warnings == []
    assert proxy_mounts(original, result, "/spec/containers/1") == [SPIRE_MOUNT, SOCKET_MOUNT]


def test_spire_mount_after_the_sidecars_keeps_its_path() -> None:
    proxy = istio_proxy()
    proxy["volumeMounts"].append(SPIRE_MOUNT)
    original = pod(containers=[APP, proxy], volumes=[CSI])
    result = check(original)
    assert result.ops[:2] == [
        {"op": "add", "path": "/spec/containers/1/volumeMounts/0/readOnly", "value": True},
        {"op": "remove", "path": "/spec/containers/1/volumeMounts/1"},
    ]
    assert proxy_mounts(original, result, "/spec/containers/1") == [SOCKET_MOUNT, SPIRE_MOUNT]


def test_other_socket_mounts_keep_their_paths_and_are_made_read_only() -> None:
    proxy = compliant_proxy()
    proxy["volumeMounts"] += [
        {"name": "workload-socket", "mountPath": "/a"},
        {"name": "workload-socket", "mountPath": "/b", "readOnly": False, "subPath": "s"},
    ]
    result = check(pod(containers=[APP, proxy]))
    assert result.ops == [
        {"op": "add", "path": "/spec/containers/1/volumeMounts/2/readOnly", "value": True},
        {"op": "add", "path": "/spec/containers/1/volumeMounts/3/readOnly", "value": True},
    ]
    assert result.reasons == ["istio-proxy mounts workload-socket read-write"] * 2
    assert result.warnings == []


def test_mount_of_another_volume_at_the_socket_path_becomes_the_socket_mount() -> None:
    proxy = compliant_proxy()
    proxy["volumeMounts"] = [
        {"name": "workload-socket", "mountPath": "/run/spire"},
        {"name": "spire", "mountPath": SOCKET_PATH, "subPath": "s"},
    ]
    original = pod(containers=[APP, proxy])
    result = check(original)
    assert result.ops == [
        {"op": "add", "path": "/spec/containers/1/volumeMounts/0/readOnly", "value": True},
        {"op": "add", "path": "/spec/containers/1/volumeMounts/1/name", "value": "workload-socket"},
        {"op": "add", "path": "/spec/containers/1/volumeMounts/1/readOnly", "value": True},
    ]
    assert result.warnings == [
        "replaced the mount of volume spire at /var/run/secrets/workload-spiffe-uds"
        " in container istio-proxy with workload-socket"
    ]
    assert proxy_mounts(original, result, "/spec/containers/1") == [
        {"name": "workload-socket", "mountPath": "/run/spire", "readOnly": True},
        {"name": "workload-socket", "mountPath": SOCKET_PATH, "subPath": "s", "readOnly": True},
    ]


def test_certificates_mount_at_the_socket_path_goes_and_the_socket_mount_moves_there() -> None:
    proxy = compliant_proxy()
    proxy["volumeMounts"] = [
        {"name": "workload-certs", "mountPath": SOCKET_PATH},
        {"name": "workload-socket", "mountPath": "/run/spire", "readOnly": True},
    ]
    original = pod(containers=[APP, proxy])
    result = check(original)
    assert result.ops == [
        {"op": "add", "path": "/spec/containers/1/volumeMounts/1/mountPath", "value": SOCKET_PATH},
        {"op": "remove", "path": "/spec/containers/1/volumeMounts/0"},
    ]
    assert result.warnings == []
    assert proxy_mounts(original, result, "/spec/containers/1") == [SOCKET_MOUNT]


def test_only_the_first_of_two_mounts_at_the_socket_path_stays() -> None:
    proxy = compliant_proxy()
    proxy["volumeMounts"] = [
        SOCKET_MOUNT,
        {"name": "data", "mountPath": "/data"},
        {"name": "spire", "mountPath": SOCKET_PATH},
        {"name": "workload-socket", "mountPath": SOCKET_PATH},
    ]
    original = pod(containers=[APP, proxy])
    result = check(original)
    assert result.ops == [
        {"op": "remove", "path": "/spec/containers/1/volumeMounts/3"},
        {"op": "remove", "path": "/spec/containers/1/volumeMounts/2"},
    ]
    assert (
        result.reasons == ["istio-proxy has two mounts at /var/run/secrets/workload-spiffe-uds"] * 2
    )
    assert result.warnings == [
        "removed the second mount at /var/run/secrets/workload-spiffe-uds (volume spire)"
        " from container istio-proxy"
    ]
    assert proxy_mounts(original, result, "/spec/containers/1") == [
        SOCKET_MOUNT,
        {"name": "data", "mountPath": "/data"},
    ]


# --- the proxy's env ------------------------------------------------------------------------


def test_env_values_are_replaced_at_their_index() -> None:
    proxy = compliant_proxy(
        env=[
            {"name": "A", "value": "a"},
            {"name": "CA_ADDR", "value": "istiod:15012"},
            {"name": "B", "value": "b"},
            {"name": "PILOT_CERT_PROVIDER", "value": "istiod"},
        ]
    )
    assert check(pod(containers=[APP, proxy])).ops == [
        {"op": "replace", "path": "/spec/containers/1/env/1", "value": CA_OK},
        {"op": "replace", "path": "/spec/containers/1/env/3", "value": PILOT_OK},
    ]


def test_env_value_from_is_dropped_when_replaced() -> None:
    value_from = {"configMapKeyRef": {"name": "istio", "key": "provider"}}
    proxy = compliant_proxy(
        env=[{"name": "PILOT_CERT_PROVIDER", "valueFrom": value_from}, CA_OK],
    )
    result = check(pod(containers=[APP, proxy]))
    assert result.ops == [{"op": "replace", "path": "/spec/containers/1/env/0", "value": PILOT_OK}]


def test_duplicated_env_entries_beyond_the_first_are_removed() -> None:
    proxy = compliant_proxy(
        env=[
            {"name": "PILOT_CERT_PROVIDER", "value": "istiod"},
            {"name": "X", "value": "x"},
            {"name": "PILOT_CERT_PROVIDER", "value": "workloadapi"},
            CA_OK,
            {"name": "CA_ADDR", "value": "istiod:15012"},
        ]
    )
    result = check(pod(containers=[APP, proxy]))
    assert result.ops == [
        {"op": "replace", "path": "/spec/containers/1/env/0", "value": PILOT_OK},
        {"op": "remove", "path": "/spec/containers/1/env/4"},
        {"op": "remove", "path": "/spec/containers/1/env/2"},
    ]
    patched = jsonpatch.apply_patch(pod(containers=[APP, proxy]), result.ops)
    assert patched["spec"]["containers"][1]["env"] == [PILOT_OK, {"name": "X", "value": "x"}, CA_OK]


def test_absent_env_entries_are_appended_pilot_first() -> None:
    proxy = compliant_proxy(env=[{"name": "X", "value": "x"}])
    assert check(pod(containers=[APP, proxy])).ops == [
        {"op": "add", "path": "/spec/containers/1/env/-", "value": PILOT_OK},
        {"op": "add", "path": "/spec/containers/1/env/-", "value": CA_OK},
    ]


def test_missing_env_list_is_created() -> None:
    proxy = compliant_proxy()
    del proxy["env"]
    assert check(pod(containers=[APP, proxy])).ops == [
        {"op": "add", "path": "/spec/containers/1/env", "value": [PILOT_OK, CA_OK]}
    ]


# --- the label ------------------------------------------------------------------------------


def test_label_key_is_escaped_and_other_labels_kept() -> None:
    original = pod(labels={"app": "p"})
    result = check(original)
    assert result.ops == [{"op": "add", "path": LABEL_PATH, "value": "true"}]
    patched = jsonpatch.apply_patch(original, result.ops)
    assert patched["metadata"]["labels"] == {"app": "p", LABEL: "true"}


def test_label_with_another_value_is_set_to_true() -> None:
    assert check(pod(labels={LABEL: "false"})).ops == [
        {"op": "add", "path": LABEL_PATH, "value": "true"}
    ]


def test_missing_labels_are_created() -> None:
    original = pod()
    del original["metadata"]["labels"]
    assert check(original).ops == [
        {"op": "add", "path": "/metadata/labels", "value": {LABEL: "true"}}
    ]


def test_missing_metadata_is_created() -> None:
    original = pod()
    del original["metadata"]
    assert check(original).ops == [
        {"op": "add", "path": "/metadata", "value": {"labels": {LABEL: "true"}}}
    ]


# --- settings -------------------------------------------------------------------------------


def test_configured_names_and_values_are_honoured() -> None:
    settings = Settings(
        proxy_container="envoy",
        certs_volume="certs",
        socket_volume="spiffe",
        socket_mount_path="/run/spiffe",
        csi_driver="csi.example.org",
        cert_provider_env="CERT_PROVIDER",
        cert_provider="spiffe",
        ca_addr_env="CA",
        identity_label="example.org/spiffe",
        identity_label_value="yes",
        inject_label="example.org/inject",
    )
    envoy = {
        "name": "envoy",
        "env": [{"name": "CA", "value": "x"}],
        "volumeMounts": [{"name": "certs", "mountPath": "/c"}],
    }
    original = pod(
        containers=[APP, envoy, istio_proxy()],
        volumes=[{"name": "certs"}, {"name": "spiffe", "emptyDir": {}}],
        labels={},
    )
    result = check(original, settings)
    assert result.ops == [
        {
            "op": "replace",
            "path": "/spec/volumes/1",
            "value": {"name": "spiffe", "csi": {"driver": "csi.example.org", "readOnly": True}},
        },
        {"op": "remove", "path": "/spec/volumes/0"},
        {"op": "remove", "path": "/spec/containers/1/volumeMounts/0"},
        {
            "op": "add",
            "path": "/spec/containers/1/volumeMounts/-",
            "value": {"name": "spiffe", "mountPath": "/run/spiffe", "readOnly": True},
        },
        {
            "op": "replace",
            "path": "/spec/containers/1/env/0",
            "value": {"name": "CA", "value": "unix:///run/spiffe/socket"},
        },
        {
            "op": "add",
            "path": "/spec/containers/1/env/-",
            "value": {"name": "CERT_PROVIDER", "value": "spiffe"},
        },
        {"op": "add", "path": "/metadata/labels/example.org~1spiffe", "value": "yes"},
    ]
    # istio-proxy is an ordinary container under these settings: its certs mount is
    # not of the configured certs volume, so it is untouched.
    patched = jsonpatch.apply_patch(original, result.ops)
    assert patched["spec"]["containers"][2] == istio_proxy()


def test_configured_opt_out_label_is_honoured() -> None:
    settings = Settings(inject_label="example.org/inject", inject_disabled_value="off")
    original = pod(containers=[APP, istio_proxy()], labels={"example.org/inject": "off"})
    assert check(original, settings).ops == []
    assert check(original).ops != []


# --- the compiled contract ------------------------------------------------------------------

# One changed value for every field of the contract (the Settings fields it holds).
CHANGED = {
    "proxy_container": "envoy-sidecar",
    "certs_volume": "other-certs",
    "socket_volume": "spiffe-socket",
    "socket_mount_path": "/run/spiffe",
    "csi_driver": "csi.example.org",
    "cert_provider_env": "CERT_PROVIDER",
    "cert_provider": "spiffe",
    "ca_addr_env": "CA_ADDRESS",
    "ca_addr": "unix:///run/spiffe/agent.sock",
    "identity_label": "example.org/identity",
    "identity_label_value": "yes",
    "inject_label": "example.org/inject",
    "inject_disabled_value": "off",
}


def test_contract_holds_exactly_the_settings_names_and_values() -> None:
    settings = Settings(**CHANGED)
    contract = Contract.from_settings(settings)
    compared = [f.name for f in dataclasses.fields(Contract) if f.compare]
    assert compared == list(CHANGED)
    assert {name: getattr(contract, name) for name in compared} == CHANGED
    assert contract == Contract.from_settings(Settings(**CHANGED))
    assert hash(contract) == hash(Contract.from_settings(Settings(**CHANGED)))
    assert contract != CONTRACT


def test_contract_is_immutable() -> None:
    contract = Contract.from_settings(SETTINGS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        contract.socket_volume = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        contract.socket_missing = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        contract.env_wrong["CA_ADDR"] = "other"  # type: ignore[index]
    with pytest.raises(TypeError):
        contract.socket_volume_value["csi"]["readOnly"] = False  # type: ignore[index]
    assert contract == CONTRACT
    assert contract.socket_volume_value == CSI


@pytest.mark.parametrize(("name", "value"), CHANGED.items(), ids=list(CHANGED))
def test_contracts_one_field_apart_each_rewrite_by_their_own_settings(
    name: str, value: str
) -> None:
    settings = Settings(**{name: value})
    # Opted out by the default label, so a changed opt-out label or value changes the result.
    labels = {"istio-spiffe-webhook/inject": "disabled"} if name.startswith("inject_") else {}
    original = pod(
        containers=[APP, istio_proxy()],
        volumes=[{"name": "workload-certs", "emptyDir": {}}, {"name": "workload-socket"}],
        labels=labels,
    )
    default, changed = CONTRACT, Contract.from_settings(settings)
    first, second, again, once_more = (rewrite(original, c) for c in (default, changed) * 2)
    assert (again, once_more) == (first, second)
    assert first.ops != second.ops
    assert_rewritten(original, jsonpatch.apply_patch(original, first.ops), SETTINGS)
    assert_rewritten(original, jsonpatch.apply_patch(original, second.ops), settings)


def test_contracts_of_short_lived_settings_never_see_each_others_names() -> None:
    # Each Settings is dropped at once, so its id may be reused by the next one: a cache
    # keyed by id() could hand out the previous names.
    for index in range(20):
        contract = Contract.from_settings(Settings(socket_volume=f"socket-{index}"))
        ops = rewrite(pod(containers=[APP, istio_proxy()], volumes=[]), contract).ops
        assert ops[0] == {
            "op": "add",
            "path": "/spec/volumes/-",
            "value": {
                "name": f"socket-{index}",
                "csi": {"driver": "csi.spiffe.io", "readOnly": True},
            },
        }


# --- fixtures -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(all_fixture_pods()))
def test_every_fixture_is_rewritten_to_the_contract_and_loads_as_v1pod(name: str) -> None:
    original = all_fixture_pods()[name]
    # Valid for the API server's checks before, so check() proves it is valid after.
    assert api_server_problems(original, SETTINGS) == set()
    result = check(original)
    patched = jsonpatch.apply_patch(original, result.ops)
    loaded = to_v1pod(patched)
    assert loaded.metadata.name == original["metadata"].get("name")
    if result.ops:
        volumes = {v.name: v for v in loaded.spec.volumes}
        assert "workload-certs" not in volumes
        assert volumes["workload-socket"].csi.driver == "csi.spiffe.io"
        assert volumes["workload-socket"].csi.read_only is True
        assert loaded.metadata.labels[LABEL] == "true"


def test_fixtures_without_istio_proxy_yield_no_patch() -> None:
    pods = istio_pods()
    for name in ("custom-template--0", "hello-ignore--0"):
        assert rewrite(pods[name], CONTRACT).ops == [], name


def test_grpc_agent_fixture_warns_about_the_app_container_mount() -> None:
    result = check(istio_pods()["grpc-agent--0"])
    assert result.warnings == ["removed the workload-certs mount from container traffic"]


# --- invalid pods ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda p: p.update(spec=[]), "spec: must be a JSON object"),
        (lambda p: p.update(metadata="p"), "metadata: must be a JSON object"),
        (lambda p: p["metadata"].update(labels=["a"]), "metadata.labels: must be a JSON object"),
        (lambda p: p["spec"].update(containers={}), "spec.containers: must be a JSON array"),
        (
            lambda p: p["spec"].update(initContainers="x"),
            "spec.initContainers: must be a JSON array",
        ),
        (
            lambda p: p["spec"]["containers"].insert(0, "app"),
            "spec.containers[0]: must be a JSON object",
        ),
        (lambda p: p["spec"].update(volumes={}), "spec.volumes: must be a JSON array"),
        (
            lambda p: p["spec"]["containers"][1].update(env={}),
            "spec.containers.1.env: must be a JSON array",
        ),
        (
            lambda p: p["spec"]["containers"][1].update(volumeMounts="x"),
            "spec.containers.1.volumeMounts: must be a JSON array",
        ),
        (
            lambda p: p["spec"]["containers"][0].update(volumeMounts=1),
            "spec.containers.0.volumeMounts: must be a JSON array",
        ),
    ],
    ids=[
        "spec",
        "metadata",
        "labels",
        "containers",
        "initContainers",
        "container",
        "volumes",
        "env",
        "proxy-volumeMounts",
        "app-volumeMounts",
    ],
)
def test_wrong_json_types_raise_invalid_pod_naming_the_field(mangle: Any, message: str) -> None:
    original = pod()
    mangle(original)
    with pytest.raises(InvalidPod) as caught:
        rewrite(original, CONTRACT)
    assert str(caught.value) == message


def test_a_pod_that_is_not_an_object_is_invalid() -> None:
    with pytest.raises(InvalidPod) as caught:
        rewrite([], CONTRACT)  # type: ignore[arg-type]
    assert str(caught.value) == "pod: must be a JSON object"


# --- the API server's checks (tests.oracle), on their own -----------------------------------


def test_api_server_check_finds_the_two_mounts_at_one_path_of_the_old_rule() -> None:
    proxy = istio_proxy()
    proxy["volumeMounts"].insert(0, SPIRE_MOUNT)
    original = pod(containers=[APP, proxy], volumes=[CSI, {"name": "workload-certs"}])
    # The rule before issue 10 moved the first socket mount to the socket's path.
    moved = {
        "op": "add",
        "path": "/spec/containers/1/volumeMounts/0/mountPath",
        "value": SOCKET_PATH,
    }
    old_result = jsonpatch.apply_patch(original, [moved])
    assert api_server_problems(original, SETTINGS) == set()
    assert api_server_problems(old_result, SETTINGS) == {
        Problem("mountPath twice", "containers[1]", SOCKET_PATH, owned=True)
    }
    with pytest.raises(AssertionError, match="the rewrite made the pod invalid"):
        assert_api_server_accepts(original, old_result, SETTINGS)


def test_api_server_check_names_each_rule_and_what_the_rewrite_owns() -> None:
    proxy = compliant_proxy()
    proxy["env"] += [PILOT_OK, {"name": "X"}, {"name": "X"}]
    proxy["volumeMounts"] += [{"name": "gone", "mountPath": "/a"}, CERTS_MOUNT]
    app = {**APP, "volumeMounts": [{"name": "data", "mountPath": "/d"}] * 2}
    volumes = [CSI, CSI, {"name": "istio-envoy"}, {"name": "data"}, {"name": "data"}]
    assert api_server_problems(pod(containers=[app, proxy], volumes=volumes), SETTINGS) == {
        Problem("volume name twice", "volumes", "workload-socket", owned=True),
        Problem("volume name twice", "volumes", "data", owned=False),
        Problem("mountPath twice", "containers[0]", "/d", owned=False),
        Problem("mount of no volume", "containers[1]", "gone", owned=False),
        Problem("mount of no volume", "containers[1]", "workload-certs", owned=True),
        Problem("env name twice", "containers[1]", "PILOT_CERT_PROVIDER", owned=True),
        Problem("env name twice", "containers[1]", "X", owned=False),
    }


def test_api_server_check_holds_the_rewrite_to_what_it_owns_on_an_invalid_pod() -> None:
    # Invalid before (a volume name twice): the rewrite need not repair that, but the socket
    # volume it leaves must be there once.
    original = pod(volumes=[CSI, {"name": "data"}, {"name": "data"}])
    assert_api_server_accepts(original, original, SETTINGS)
    twice = copy.deepcopy(original)
    twice["spec"]["volumes"].append(CSI)
    with pytest.raises(AssertionError):
        assert_api_server_accepts(original, twice, SETTINGS)
