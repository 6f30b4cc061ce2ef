"""Property tests: `rewrite()` cannot damage a pod.

For every generated pod (any mix of containers, init containers, native sidecars, volume
sources, mounts, env, odd label keys, istio-proxy anywhere or nowhere, missing fields, the
opt-out label), with the default and with non-default Settings:
- the patch applies with `jsonpatch`;
- the result is exactly `tests.oracle.expected(pod)`, so nothing off the contract changed;
- `rewrite()` did not touch the pod it was given;
- a second pass yields no operations;
- the result loads into a `kubernetes.client.V1Pod`;
- the API server's checks the rewrite can affect pass (`tests.oracle.api_server_problems`:
  generated pods are often invalid before the rewrite, so it must add no problem and leave
  none on the names and paths it sets).
Istio's documented `sidecar,spire` shape (a second socket mount, before or after the
sidecar's own) is among the generated pods, classic and native.
And every fixture pod, with its containers, init containers and volumes reordered, gets the
same rewrite as the original (modulo that order).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from kubernetes.client import ApiClient, V1Pod

from tests.oracle import LISTS, all_fixture_pods, assert_rewritten, expected, in_scope
from tests.shapes import ORDERS, SPIRE_MOUNT_PATH, add_spire_mount
from webhook.config import Settings
from webhook.rewrite import Contract, escape, rewrite

DEFAULT = Settings()
DEFAULT_CONTRACT = Contract.from_settings(DEFAULT)
# Every contract name and value changed; label keys that need JSON Pointer escaping.
CUSTOM = Settings(
    proxy_container="envoy-sidecar",
    certs_volume="istio-certs",
    socket_volume="spiffe-socket",
    socket_mount_path="/run/spiffe/sockets",
    csi_driver="csi.example.org",
    cert_provider_env="CERT_PROVIDER",
    cert_provider="spiffe",
    ca_addr_env="CA_ENDPOINT",
    identity_label="example.org/identity~managed",
    identity_label_value="yes",
    inject_label="example.org/inject",
    inject_enabled_value="on",
    inject_disabled_value="off",
)
CUSTOM_CONTRACT = Contract.from_settings(CUSTOM)

_API = ApiClient()
ODD_KEYS = ["a/b", "~", "~1", "~0", "/", "a~1b/c", "ключ", "🐙/x", "", "app", "x.y/z"]
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=12)


def to_v1pod(pod: dict[str, Any]) -> V1Pod:
    """Load a pod dict the way the kubernetes client loads an API response."""
    loaded = _API._ApiClient__deserialize(pod, "V1Pod")  # type: ignore[attr-defined]
    assert isinstance(loaded, V1Pod)
    return loaded


def volume_sources(s: Settings) -> st.SearchStrategy[dict[str, Any]]:
    """Any volume source the API knows, Istio's raw `null` and none at all."""
    return st.one_of(
        st.just({}),
        st.just({"emptyDir": None}),
        st.just({"emptyDir": {}}),
        st.just({"emptyDir": {"medium": "Memory"}}),
        st.builds(lambda p: {"hostPath": {"path": "/" + p}}, _text),
        st.just({"csi": {"driver": s.csi_driver, "readOnly": True}}),
        st.just({"csi": {"driver": s.csi_driver}}),
        st.just({"csi": {"driver": s.csi_driver, "readOnly": False}}),
        st.builds(lambda d: {"csi": {"driver": "other." + d, "readOnly": True}}, _text),
        st.builds(lambda n: {"configMap": {"name": n}}, _text),
        st.just({"secret": {"secretName": "istio-certs"}}),
        st.just({"persistentVolumeClaim": {"claimName": "data"}}),
        st.just({"downwardAPI": {"items": [{"path": "l", "fieldRef": {"fieldPath": "x"}}]}}),
    )


def volume_names(s: Settings) -> st.SearchStrategy[str]:
    contract = st.sampled_from([s.certs_volume, s.socket_volume])
    others = st.sampled_from(["istio-envoy", "credential-socket", "istio-data"])
    return st.one_of(contract, contract, others, _text.filter(bool))


def volumes(s: Settings) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda name, source: {"name": name, **source}, volume_names(s), volume_sources(s)
    )


def mounts(s: Settings) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"name": volume_names(s), "mountPath": st.builds(lambda p: "/" + p, _text)},
        optional={
            "readOnly": st.sampled_from([True, False, None]),
            "subPath": _text,
            "mountPropagation": st.just("None"),
        },
    )


def env_vars(s: Settings) -> st.SearchStrategy[dict[str, Any]]:
    contract = st.sampled_from([s.cert_provider_env, s.ca_addr_env])
    names = st.one_of(
        contract, contract, st.sampled_from(["ISTIO_META_X", "JWT_POLICY"]), _text.filter(bool)
    )
    value_from = st.sampled_from(
        [
            {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
            {"secretKeyRef": {"name": "s", "key": "k"}},
            {"configMapKeyRef": {"name": "c", "key": "k", "optional": True}},
        ]
    )
    return st.one_of(
        st.builds(lambda n, v: {"name": n, "value": v}, names, _text),
        st.builds(lambda n: {"name": n}, names),
        st.builds(lambda n, f: {"name": n, "valueFrom": f}, names, value_from),
        st.builds(
            lambda n, v, f: {"name": n, "value": v, "valueFrom": f}, names, _text, value_from
        ),
        # Already what the contract wants (a compliant proxy must be left alone).
        st.sampled_from(
            [
                {"name": s.cert_provider_env, "value": s.cert_provider},
                {"name": s.ca_addr_env, "value": s.ca_addr},
            ]
        ),
    )


ABSENT = object()


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the value; sometimes null; sometimes the key is left out (ABSENT)."""
    return st.one_of(strategy, strategy, strategy, st.none(), st.just(ABSENT))


@st.composite
def containers(draw: st.DrawFn, s: Settings, init: bool) -> dict[str, Any]:
    """A container; absent, null and empty `volumeMounts`/`env` all occur."""
    name = draw(
        st.one_of(
            st.sampled_from([s.proxy_container, "istio-init", "app", s.proxy_container]),
            _text.filter(bool),
        )
    )
    fields: dict[str, Any] = {
        "image": draw(maybe(st.sampled_from(["docker.io/istio/proxyv2:1.32", "app:1"]))),
        "args": draw(maybe(st.lists(_text, max_size=3))),
        "volumeMounts": draw(maybe(st.lists(mounts(s), max_size=4))),
        "env": draw(maybe(st.lists(env_vars(s), max_size=5))),
        "resources": draw(maybe(st.just({"limits": {"cpu": "2"}, "requests": {"cpu": "1"}}))),
        "securityContext": draw(maybe(st.just({"runAsUser": 1337, "runAsNonRoot": True}))),
        "ports": draw(maybe(st.just([{"containerPort": 15090, "name": "http-envoy-prom"}]))),
    }
    if init:
        fields["restartPolicy"] = draw(maybe(st.just("Always")))
    keys = draw(st.permutations(list(fields)))
    return {"name": name, **{k: fields[k] for k in keys if fields[k] is not ABSENT}}


def labels(s: Settings) -> st.SearchStrategy[dict[str, str]]:
    keys = st.one_of(st.sampled_from([*ODD_KEYS, s.inject_label, s.identity_label]), _text)
    values = st.one_of(
        st.sampled_from(
            [s.inject_disabled_value, s.inject_enabled_value, s.identity_label_value, ""]
        ),
        _text,
    )
    return st.dictionaries(keys, values, max_size=5)


@st.composite
def pods(draw: st.DrawFn, s: Settings) -> dict[str, Any]:
    """A pod as Istio, the API server or a user could hand it over, fields missing or not."""
    spec: dict[str, Any] = {"containers": draw(st.lists(containers(s, False), max_size=4))}
    init = draw(st.one_of(st.none(), st.lists(containers(s, True), max_size=3)))
    if init is not None or draw(st.booleans()):
        spec["initContainers"] = init
    if draw(st.integers(0, 3)) == 0:
        # Istio's documented `sidecar,spire` shape: two socket mounts in istio-proxy.
        order = draw(st.sampled_from(ORDERS))
        for name in LISTS:
            for container in spec.get(name) or []:
                if container["name"] == s.proxy_container:
                    add_spire_mount(container, order, s)
    vols = draw(st.one_of(st.none(), st.lists(volumes(s), max_size=5)))
    if vols is not None:
        # Istio's volumes in most pods, in any place among the others.
        for name in (s.certs_volume, s.socket_volume):
            if draw(st.integers(0, 3)):
                vols.append({"name": name, **draw(volume_sources(s))})
        vols = draw(st.permutations(vols))
    if vols is not None or draw(st.booleans()):
        spec["volumes"] = vols
    if draw(st.booleans()):
        spec["dnsPolicy"] = "ClusterFirst"
        spec["securityContext"] = {
            "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]
        }
    pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "spec": spec}
    shape = draw(st.sampled_from(["missing", "null", "empty", "full", "full", "full"]))
    if shape == "null":
        pod["metadata"] = None
    elif shape == "empty":
        pod["metadata"] = {}
    elif shape == "full":
        metadata: dict[str, Any] = {"name": draw(_text), "namespace": "default"}
        for key in ("labels", "annotations"):
            kind = draw(st.sampled_from(["missing", "null", "dict", "dict"]))
            if kind == "null":
                metadata[key] = None
            elif kind == "dict":
                metadata[key] = draw(labels(s))
        if metadata.get("labels") is not None and draw(st.integers(0, 3)) == 0:
            metadata["labels"][s.inject_label] = s.inject_disabled_value
        pod["metadata"] = metadata
    if draw(st.booleans()):
        pod["status"] = {}
    return pod


def contract_path(path: str, pod: dict[str, Any], s: Settings) -> bool:
    """Whether the contract may change the pod at this JSON Pointer (of a diff)."""
    parts = path.split("/")[1:]
    if parts[0] == "metadata":
        metadata = pod.get("metadata")
        if len(parts) == 1:
            return metadata is None
        if len(parts) == 2:
            return parts[1] == "labels" and metadata.get("labels") is None
        return parts[1:] == ["labels", escape(s.identity_label)]
    if parts[:2] == ["spec", "volumes"]:
        return True
    if parts[0] == "spec" and parts[1] in LISTS and len(parts) >= 4:
        container = pod["spec"][parts[1]][int(parts[2])]
        is_proxy = container["name"] == s.proxy_container
        return parts[3] == "volumeMounts" or (parts[3] == "env" and is_proxy)
    return False


def check_rewrite(pod: dict[str, Any], s: Settings) -> dict[str, Any]:
    """Every property of one rewrite; returns the patched pod."""
    contract = Contract.from_settings(s)
    before = copy.deepcopy(pod)
    result = rewrite(pod, contract)
    ops = result.ops
    assert pod == before, "rewrite() changed its input"
    assert not result.warnings or ops, "a warning without a patch"
    # The ops must survive a JSON round trip (the webhook sends them as JSON).
    patched = jsonpatch.apply_patch(pod, json.loads(json.dumps(ops)))
    assert pod == before, "applying the patch changed the input"
    assert_rewritten(before, patched, s)
    assert (ops == []) == (patched == before)
    # On its own (not through the oracle): the diff touches only the contract's paths.
    for op in jsonpatch.make_patch(before, patched):
        for key in ("path", "from"):
            assert key not in op or contract_path(op[key], before, s), op
    assert rewrite(patched, contract).ops == []
    to_v1pod(patched)
    return patched


FAST = hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(pods(DEFAULT))
def test_any_pod_is_patched_to_exactly_the_contract_with_default_settings(
    pod: dict[str, Any],
) -> None:
    check_rewrite(pod, DEFAULT)


@FAST
@given(pods(CUSTOM))
def test_any_pod_is_patched_to_exactly_the_contract_with_custom_settings(
    pod: dict[str, Any],
) -> None:
    check_rewrite(pod, CUSTOM)


@hsettings(max_examples=60, deadline=None)
@given(pods(DEFAULT))
def test_default_names_mean_nothing_under_custom_settings(pod: dict[str, Any]) -> None:
    """A pod built with the default names is judged by the configured names only."""
    patched = check_rewrite(pod, CUSTOM)
    if not in_scope(pod, CUSTOM):
        assert patched == pod


@hsettings(max_examples=80, deadline=None)
@given(pods(DEFAULT))
def test_opted_out_pod_gets_no_patch(pod: dict[str, Any]) -> None:
    metadata = pod.get("metadata") or {}
    pod["metadata"] = {
        **metadata,
        "labels": {**(metadata.get("labels") or {}), DEFAULT.inject_label: "disabled"},
    }
    assert rewrite(pod, DEFAULT_CONTRACT).ops == []


@hsettings(max_examples=80, deadline=None)
@given(pods(DEFAULT))
def test_pod_without_proxy_gets_no_patch(pod: dict[str, Any]) -> None:
    for name in LISTS:
        for container in pod["spec"].get(name) or []:
            if container["name"] == DEFAULT.proxy_container:
                container["name"] = "not-the-proxy"
    assert rewrite(pod, DEFAULT_CONTRACT).ops == []


def test_generated_pods_cover_the_interesting_shapes() -> None:
    """The strategy really produces in-scope pods, opted-out ones, proxies in both lists and
    Istio's documented spire shape in both orders, classic and native."""
    seen: set[str] = set()

    @hsettings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(pods(DEFAULT))
    def sample(pod: dict[str, Any]) -> None:
        spec = pod["spec"]
        where = {
            name
            for name in LISTS
            for c in spec.get(name) or []
            if c["name"] == DEFAULT.proxy_container
        }
        if where == set(LISTS):
            seen.add("proxy-in-both")
        if in_scope(pod, DEFAULT):
            seen.add("in-scope")
            names = [v["name"] for v in spec.get("volumes") or []]
            if DEFAULT.certs_volume in names and DEFAULT.socket_volume in names:
                seen.add("both-volumes")
        labels_ = (pod.get("metadata") or {}).get("labels") or {}
        if labels_.get(DEFAULT.inject_label) == DEFAULT.inject_disabled_value:
            seen.add("opted-out")
        if "metadata" not in pod:
            seen.add("no-metadata")
        for name in LISTS:
            for container in spec.get(name) or []:
                if container["name"] != DEFAULT.proxy_container:
                    continue
                paths = [
                    m["mountPath"]
                    for m in container.get("volumeMounts") or []
                    if m["name"] == DEFAULT.socket_volume
                ]
                for order, pair in (
                    ("before", [SPIRE_MOUNT_PATH, DEFAULT.socket_mount_path]),
                    ("after", [DEFAULT.socket_mount_path, SPIRE_MOUNT_PATH]),
                ):
                    if paths == pair:
                        seen.add(f"spire-{order}-{name}")

    sample()
    assert seen == {
        "proxy-in-both",
        "in-scope",
        "both-volumes",
        "opted-out",
        "no-metadata",
        "spire-before-containers",
        "spire-after-containers",
        "spire-before-initContainers",
        "spire-after-initContainers",
    }


# --- Fixture pods, reordered ---------------------------------------------------------

FIXTURES = all_fixture_pods()


def canonical(pod: dict[str, Any]) -> str:
    """The pod as JSON with its container, init container and volume lists sorted."""
    out = copy.deepcopy(pod)
    spec = out.get("spec") or {}
    for key in (*LISTS, "volumes"):
        if spec.get(key):
            spec[key] = sorted(spec[key], key=lambda item: json.dumps(item, sort_keys=True))
    return json.dumps(out, sort_keys=True)


@st.composite
def reordered(draw: st.DrawFn, pod: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(pod)
    spec = out["spec"]
    for key in (*LISTS, "volumes"):
        if spec.get(key):
            spec[key] = draw(st.permutations(spec[key]))
    return out


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_pod_reordered_gets_the_same_rewrite(name: str) -> None:
    original = FIXTURES[name]
    reference = canonical(check_rewrite(original, DEFAULT))

    @hsettings(max_examples=10, deadline=None, database=None)
    @given(reordered(original))
    def run(pod: dict[str, Any]) -> None:
        patched = check_rewrite(pod, DEFAULT)
        assert patched == expected(pod, DEFAULT)
        assert canonical(patched) == reference

    run()
