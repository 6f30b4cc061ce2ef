"""The MutatingAdmissionPolicy form on a real API server (Kubernetes 1.36+, or 1.34-1.35
with the MutatingAdmissionPolicy feature gate and the v1beta1 API).

`make e2e` runs it on ../shared/kube-harness. By hand: `E2E=1 KUBECONFIG=... .venv/bin/pytest
-m e2e tests/e2e/test_policy_e2e.py` against a test cluster (cluster-admin: it creates a
cluster-wide policy and binding and two namespaces, and deletes them at the end). Pods go
through `kubectl create --dry-run=server`, and each shared pod also through a real create
after the harness's replay of Istio's injector (skipped without `E2E_REPLAY_FIXTURES`).

What it proves: with `istio-spiffe-webhook policy` applied by `kubectl apply`, every shared
fixture pod and its documented `spire` shapes, injected by the replayed injector or created
already injected, comes back exactly as the webhook's `rewrite()` leaves the same pod after
the API server defaulted it (that pod is got from a namespace that did not opt in); a pod
the API server refuses without the policy is refused with it, for the same fields. The
policy is rendered with a unique opt-in label, so an installed webhook or policy, or
another test run, cannot touch these namespaces, and this policy touches no other namespace.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

if os.environ.get("E2E") != "1" or not os.environ.get("KUBECONFIG"):
    pytest.skip(
        "end-to-end test: set E2E=1 and KUBECONFIG to a Kubernetes 1.36+ test cluster",
        allow_module_level=True,
    )

from tests.e2e.shapes import e2e_pods, plain_pod, refused_fields
from tests.oracle import LISTS
from webhook.config import Settings
from webhook.rewrite import Contract, rewrite

pytestmark = pytest.mark.e2e

KUBECTL_TIMEOUT = 60
# Istio's `sidecar-spire` output has `istio-proxy` twice (an init container and a stub
# container without an image): the API server rejects it, which is its call, not ours.
REJECTED_FIXTURES = {
    "sidecar-spire--0",
    # Istio's own test input: an absolute configMap item path and a mount of a volume that
    # is not there.
    "user-volume--0",
}
SERVER_FIELDS = ("name", "uid", "creationTimestamp", "resourceVersion", "generation")
FIXTURES = e2e_pods()
REPLAYED = bool(os.environ.get("E2E_REPLAY_FIXTURES"))
SOURCES = ["injector", "injected"]
# A pod the API server refuses without any rewrite is refused with it too.
EXPECTED_REJECTED = {n for n in FIXTURES if n.split(".")[0] in REJECTED_FIXTURES}


def pod_of(source: str, name: str) -> dict[str, Any]:
    """`injector`: a plain pod Istio's (replayed) injector fills in; `injected`: the
    injector's output itself."""
    return plain_pod(name) if source == "injector" else FIXTURES[name]


def kubectl(
    *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("kubectl")
    assert binary, "kubectl is needed for the end-to-end tests"
    done = subprocess.run(
        [binary, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=KUBECTL_TIMEOUT,
    )
    if check:
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr.strip()}"
    return done


@dataclass
class Cluster:
    settings: Settings
    api_version: str
    policy_name: str
    opted_in: str
    plain: str
    results: dict[tuple[str, str], dict[str, Any] | str] = field(default_factory=dict)

    def dry_run(
        self, pod: dict[str, Any], namespace: str, *, real: bool = False
    ) -> dict[str, Any] | str:
        """The pod the API server would store (or stores, when `real`), or its error
        message when it refuses it."""
        manifest = copy.deepcopy(pod)
        metadata = manifest.setdefault("metadata", {})
        name = metadata.pop("name", None)
        metadata.setdefault("generateName", f"{name or 'pod'}-")
        metadata["namespace"] = namespace
        for key in SERVER_FIELDS[1:]:
            metadata.pop(key, None)
        manifest.pop("status", None)
        dry = [] if real else ["--dry-run=server"]
        done = kubectl(
            "create", *dry, "-o", "json", "-f", "-", stdin=json.dumps(manifest), check=False
        )
        if done.returncode != 0:
            return done.stderr.strip()
        created = json.loads(done.stdout)
        assert isinstance(created, dict)
        return created

    def outcome(
        self, fixture: str, namespace: str, source: str = "injected"
    ) -> dict[str, Any] | str:
        key = (f"{source}:{fixture}", namespace)
        if key not in self.results:
            self.results[key] = self.dry_run(pod_of(source, fixture), namespace)
        return self.results[key]


def served_api_version() -> str:
    reached = kubectl("version", "-o", "json", check=False)
    if reached.returncode != 0 or "serverVersion" not in reached.stdout:
        pytest.fail(f"cannot reach the cluster of KUBECONFIG: {reached.stderr.strip()}")
    for version in ("v1", "v1beta1"):
        done = kubectl("get", "--raw", f"/apis/admissionregistration.k8s.io/{version}", check=False)
        if done.returncode == 0:
            resources = {r["name"] for r in json.loads(done.stdout)["resources"]}
            if "mutatingadmissionpolicies" in resources:
                return version
    pytest.fail(
        "the cluster serves no MutatingAdmissionPolicy API: it needs Kubernetes 1.36+, or "
        "1.34-1.35 with the MutatingAdmissionPolicy feature gate and "
        "--runtime-config=admissionregistration.k8s.io/v1beta1=true"
    )


def wait_for_default_service_account(namespace: str) -> None:
    """Pods need the namespace's `default` ServiceAccount; make it if no controller does."""
    for _ in range(30):
        if (
            kubectl("get", "serviceaccount", "default", "-n", namespace, check=False).returncode
            == 0
        ):
            return
        time.sleep(1)
    done = kubectl("create", "serviceaccount", "default", "-n", namespace, check=False)
    assert done.returncode == 0 or "AlreadyExists" in done.stderr, done.stderr


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    suffix = secrets.token_hex(3)
    settings = Settings(inject_label=f"istio-spiffe-webhook-e2e-{suffix}/inject")
    state = Cluster(
        settings=settings,
        api_version=served_api_version(),
        policy_name=f"istio-spiffe-webhook-e2e-{suffix}",
        opted_in=f"isw-policy-e2e-{suffix}",
        plain=f"isw-policy-e2e-plain-{suffix}",
    )
    cli = Path(sys.executable).with_name("istio-spiffe-webhook")
    try:
        for namespace in (state.opted_in, state.plain):
            kubectl("create", "namespace", namespace)
            # Istio's pods need NET_ADMIN (istio-init): keep a cluster-wide Pod Security
            # default from rejecting them in one namespace or both.
            kubectl(
                "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=privileged"
            )
        kubectl(
            "label",
            "namespace",
            state.opted_in,
            f"{settings.inject_label}={settings.inject_enabled_value}",
        )
        for namespace in (state.opted_in, state.plain):
            wait_for_default_service_account(namespace)
        rendered = subprocess.run(
            [str(cli), "policy", "--api-version", state.api_version, "--name", state.policy_name],
            capture_output=True,
            text=True,
            timeout=KUBECTL_TIMEOUT,
            env={**os.environ, "ISTIO_SPIFFE_WEBHOOK_INJECT_LABEL": settings.inject_label},
        )
        assert rendered.returncode == 0, rendered.stderr
        kubectl("apply", "-f", "-", stdin=rendered.stdout)
        # The API server picks new policies up within seconds: wait until a probe pod is
        # rewritten (bounded).
        for _ in range(90):
            probe = state.dry_run(FIXTURES["hello--0"], state.opted_in)
            if isinstance(probe, str):  # refused: waiting longer would not help
                pytest.fail(f"the API server refused a probe pod under the policy: {probe}")
            labels = probe.get("metadata", {}).get("labels", {}) if isinstance(probe, dict) else {}
            if labels.get(settings.identity_label) == settings.identity_label_value:
                break
            time.sleep(1)
        else:
            pytest.fail(f"the policy {state.policy_name} did not take effect within 90 s: {probe}")
        yield state
    finally:
        for kind in ("mutatingadmissionpolicybinding", "mutatingadmissionpolicy"):
            kubectl("delete", kind, state.policy_name, "--ignore-not-found", check=False)
        for namespace in (state.opted_in, state.plain):
            kubectl(
                "delete", "namespace", namespace, "--ignore-not-found", "--wait=false", check=False
            )


def normalized(pod: dict[str, Any]) -> dict[str, Any]:
    """Without what differs between two creates of one pod: generated name, uid, times,
    namespace and the random suffix of the service account token volume."""
    pod = copy.deepcopy(pod)
    for key in (*SERVER_FIELDS, "namespace", "managedFields"):
        pod["metadata"].pop(key, None)
    text = re.sub(r"kube-api-access-[a-z0-9]{5}", "kube-api-access-*", json.dumps(pod))
    result = json.loads(text)
    assert isinstance(result, dict)
    return result


def contract_entries_last(pod: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The pod with the entries the contract replaces or adds moved to the end of their
    lists (in a fixed order), so two pods can be compared regardless of their positions."""
    pod = copy.deepcopy(pod)
    spec = pod["spec"]

    def last(items: list[dict[str, Any]], names: tuple[str, ...]) -> list[dict[str, Any]]:
        kept = [item for item in items if item.get("name") not in names]
        moved = [item for name in names for item in items if item.get("name") == name]
        return kept + moved

    spec["volumes"] = last(spec.get("volumes", []), (settings.socket_volume,))
    for list_name in LISTS:
        for container in spec.get(list_name, []):
            if container["name"] != settings.proxy_container:
                continue
            container["volumeMounts"] = last(
                container.get("volumeMounts", []), (settings.socket_volume,)
            )
            container["env"] = last(
                container.get("env", []), (settings.cert_provider_env, settings.ca_addr_env)
            )
    return pod


def webhook_result(cluster: Cluster, fixture: str, source: str = "injected") -> dict[str, Any]:
    """The webhook's rewrite of the API-server-defaulted pod, stored by the API server."""
    key = (f"{source}:{fixture}", "webhook")
    if key not in cluster.results:
        defaulted = cluster.outcome(fixture, cluster.plain, source)
        assert isinstance(defaulted, dict), defaulted
        ops = rewrite(defaulted, Contract.from_settings(cluster.settings)).ops
        cluster.results[key] = cluster.dry_run(jsonpatch.apply_patch(defaulted, ops), cluster.plain)
    result = cluster.results[key]
    assert isinstance(result, dict), result
    return result


def policy_result(cluster: Cluster, fixture: str, source: str = "injected") -> dict[str, Any]:
    outcome = cluster.outcome(fixture, cluster.opted_in, source)
    assert isinstance(outcome, dict), outcome
    return outcome


def skip_unless_replayed(source: str) -> None:
    if source == "injector" and not REPLAYED:
        pytest.skip("needs the harness's replay of Istio's injector (make e2e)")


def test_api_server_rejects_exactly_the_expected_fixtures(cluster: Cluster) -> None:
    for namespace in (cluster.plain, cluster.opted_in):
        rejected = {
            name: outcome
            for name in FIXTURES
            if isinstance(outcome := cluster.outcome(name, namespace), str)
        }
        assert set(rejected) == EXPECTED_REJECTED, (namespace, rejected)


def test_namespace_that_did_not_opt_in_is_left_alone(cluster: Cluster, tally: Any) -> None:
    with tally.case("policy", "not opted in"):
        plain = cluster.outcome("hello--0", cluster.plain)
        assert isinstance(plain, dict), plain
        assert cluster.settings.identity_label not in plain["metadata"].get("labels", {})
        assert cluster.settings.certs_volume in [v["name"] for v in plain["spec"]["volumes"]]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_policy_stores_exactly_the_webhooks_result(
    cluster: Cluster, tally: Any, fixture: str, source: str
) -> None:
    skip_unless_replayed(source)
    with tally.case("policy", f"{fixture} ({source}, dry-run)"):
        if fixture in EXPECTED_REJECTED:
            outcome = cluster.outcome(fixture, cluster.opted_in, source)
            without = cluster.outcome(fixture, cluster.plain, source)
            assert isinstance(outcome, str), "accepted with the policy, refused without"
            assert isinstance(without, str), without
            assert refused_fields(outcome) == refused_fields(without)
            return
        by_policy = normalized(policy_result(cluster, fixture, source))
        by_webhook = normalized(webhook_result(cluster, fixture, source))
        # First modulo the positions of the contract's entries (the clearer failure),
        # then exactly.
        assert contract_entries_last(by_policy, cluster.settings) == contract_entries_last(
            by_webhook, cluster.settings
        )
        assert by_policy == by_webhook


@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_a_real_create_through_istios_injector_stores_the_webhooks_result(
    cluster: Cluster, tally: Any, fixture: str
) -> None:
    skip_unless_replayed("injector")
    with tally.case("policy", f"{fixture} (injector, real create)"):
        created = cluster.dry_run(pod_of("injector", fixture), cluster.opted_in, real=True)
        if fixture in EXPECTED_REJECTED:
            assert isinstance(created, str), "accepted with the policy, refused without"
            return
        assert isinstance(created, dict), created
        assert normalized(created) == normalized(webhook_result(cluster, fixture, "injector"))


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("fixture", ["hello--0", "hello-old-version--0", "gateway--0"])
def test_opted_out_pod_is_left_alone(
    cluster: Cluster, tally: Any, fixture: str, source: str
) -> None:
    skip_unless_replayed(source)
    with tally.case("policy", f"opted-out {fixture} ({source})"):
        opted_out_pod_is_left_alone(cluster, fixture, source)


def opted_out_pod_is_left_alone(cluster: Cluster, fixture: str, source: str) -> None:
    pod = copy.deepcopy(pod_of(source, fixture))
    pod["metadata"].setdefault("labels", {})[cluster.settings.inject_label] = (
        cluster.settings.inject_disabled_value
    )
    in_opted_in = cluster.dry_run(pod, cluster.opted_in)
    in_plain = cluster.dry_run(pod, cluster.plain)
    assert isinstance(in_opted_in, dict) and isinstance(in_plain, dict)
    assert normalized(in_opted_in) == normalized(in_plain)
    assert cluster.settings.identity_label not in in_opted_in["metadata"].get("labels", {})
