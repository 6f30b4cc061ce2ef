"""The webhook form on a real API server: every shared fixture and its documented `spire`
shapes, injected by (a replay of) Istio's injector or created already injected, dry-run and
real creates; opt-out; a namespace that did not opt in; doctor and audit.

`make e2e` runs this on ../shared/kube-harness (E2E_INSTALL=local: the webhook served on
this machine, registered by URL). By hand, against a test cluster where you are
cluster-admin: `E2E=1 KUBECONFIG=... .venv/bin/pytest -m e2e tests/e2e/test_webhook_e2e.py`
(see tests/e2e/conftest.py for E2E_INSTALL, E2E_IMAGE, E2E_KEEP). The tests that go through
Istio's injector need the harness's replay (pods labelled `fixture=NAME`); without
`E2E_REPLAY_FIXTURES` they are skipped.

What it proves: through the real API server, with its defaulting, webhook ordering and
reinvocation, a pod created in a namespace that opted in is stored exactly as the oracle
(`tests.oracle.expected`) rewrites the same pod as stored in a namespace that did not opt in,
and the API server accepts it; a pod the API server refuses without the webhook (Istio's
`sidecar-spire` output has istio-proxy twice) is refused with it too.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
from typing import Any

import pytest

if os.environ.get("E2E") != "1" or not os.environ.get("KUBECONFIG"):
    pytest.skip(
        "end-to-end test: set E2E=1 and KUBECONFIG to a test cluster",
        allow_module_level=True,
    )

from tests.e2e.shapes import e2e_pods, plain_pod, refused_fields
from tests.oracle import assert_contract_holds, expected, in_scope
from webhook.config import Settings

pytestmark = pytest.mark.e2e

SETTINGS = Settings()
OPT_IN = {SETTINGS.inject_label: SETTINGS.inject_enabled_value}
PODS = e2e_pods(SETTINGS)
REPLAYED = bool(os.environ.get("E2E_REPLAY_FIXTURES"))
SERVER_FIELDS = ("name", "generateName", "uid", "creationTimestamp", "resourceVersion")


def normalized(pod: dict[str, Any]) -> dict[str, Any]:
    """Without what differs between two creates of one pod: generated name, uid, times,
    namespace and the random suffix of the service account token volume."""
    pod = copy.deepcopy(pod)
    for key in (*SERVER_FIELDS, "namespace", "managedFields"):
        pod["metadata"].pop(key, None)
    result: dict[str, Any] = json.loads(
        re.sub(r"kube-api-access-[a-z0-9]{5}", "kube-api-access-*", json.dumps(pod))
    )
    return result


class Namespaces:
    def __init__(self, tools: Any, opted_in: str, plain: str) -> None:
        self.tools, self.opted_in, self.plain = tools, opted_in, plain
        self.cache: dict[tuple[str, str], dict[str, Any] | str] = {}

    def without_webhook(self, source: str, name: str) -> dict[str, Any] | str:
        """The pod as stored in the namespace that did not opt in (or its refusal)."""
        key = (source, name)
        if key not in self.cache:
            self.cache[key] = self.tools.create_pod(pod_of(source, name), self.plain, dry_run=True)
        return self.cache[key]

    def oracle(self, source: str, name: str) -> dict[str, Any] | str:
        """The oracle's rewrite of that pod, as the API server stores it (or its refusal)."""
        key = (source, f"oracle:{name}")
        if key not in self.cache:
            stored = self.without_webhook(source, name)
            self.cache[key] = (
                stored
                if isinstance(stored, str)
                else self.tools.create_pod(expected(stored, SETTINGS), self.plain, dry_run=True)
            )
        return self.cache[key]


def pod_of(source: str, name: str) -> dict[str, Any]:
    """`injector`: a plain pod Istio's (replayed) injector fills in; `injected`: the
    injector's output itself, created as it is."""
    return plain_pod(name) if source == "injector" else PODS[name]


@pytest.fixture(scope="module")
def namespaces(installed: Any, tools: Any, make_namespace_module: Any) -> Namespaces:
    opted_in, plain = make_namespace_module(OPT_IN), make_namespace_module({})
    state = Namespaces(tools, opted_in, plain)
    wait_until_rewriting(tools, opted_in)
    return state


def wait_until_rewriting(tools: Any, namespace: str) -> None:
    """The webhook configuration settles within seconds (bounded wait)."""
    probe: dict[str, Any] | str = ""
    for _ in range(60):
        probe = tools.create_pod(PODS["hello--0"], namespace, dry_run=True)
        if isinstance(probe, dict):
            labels = probe["metadata"].get("labels") or {}
            if labels.get(SETTINGS.identity_label) == SETTINGS.identity_label_value:
                return
        time.sleep(2)
    pytest.fail(f"the webhook did not rewrite a probe pod within 120 s: {probe}")


def check(namespaces: Namespaces, tools: Any, source: str, name: str, *, dry_run: bool) -> None:
    want = namespaces.oracle(source, name)
    got = tools.create_pod(pod_of(source, name), namespaces.opted_in, dry_run=dry_run)
    if isinstance(want, str):
        # Refused without the webhook: it must be refused with it too, for the same field.
        assert isinstance(got, str), f"{name}: accepted with the webhook, refused without: {want}"
        assert refused_fields(got) == refused_fields(want)
        return
    assert isinstance(got, dict), got
    assert normalized(got) == normalized(want)
    if in_scope(got, SETTINGS):
        assert_contract_holds(got, SETTINGS)


SOURCES = ["injector", "injected"]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", sorted(PODS))
def test_a_dry_run_create_in_an_opted_in_namespace_is_stored_as_the_oracle_says(
    namespaces: Namespaces, tools: Any, tally: Any, name: str, source: str
) -> None:
    if source == "injector" and not REPLAYED:
        pytest.skip("needs the harness's replay of Istio's injector (make e2e)")
    with tally.case("webhook", f"{name} ({source}, dry-run)"):
        check(namespaces, tools, source, name, dry_run=True)


@pytest.mark.parametrize("name", sorted(PODS))
def test_a_real_create_through_istios_injector_is_stored_as_the_oracle_says(
    namespaces: Namespaces, tools: Any, tally: Any, name: str
) -> None:
    if not REPLAYED:
        pytest.skip("needs the harness's replay of Istio's injector (make e2e)")
    with tally.case("webhook", f"{name} (injector, real create)"):
        check(namespaces, tools, "injector", name, dry_run=False)


@pytest.mark.parametrize("source", SOURCES)
def test_an_opted_out_pod_is_stored_as_without_the_webhook(
    namespaces: Namespaces, tools: Any, tally: Any, source: str
) -> None:
    if source == "injector" and not REPLAYED:
        pytest.skip("needs the harness's replay of Istio's injector (make e2e)")
    with tally.case("webhook", f"opted-out ({source})"):
        pod = copy.deepcopy(pod_of(source, "hello--0"))
        pod["metadata"].setdefault("labels", {})[SETTINGS.inject_label] = (
            SETTINGS.inject_disabled_value
        )
        in_opted_in = tools.create_pod(pod, namespaces.opted_in, dry_run=True)
        in_plain = tools.create_pod(pod, namespaces.plain, dry_run=True)
        assert isinstance(in_opted_in, dict) and isinstance(in_plain, dict)
        assert normalized(in_opted_in) == normalized(in_plain)
        assert SETTINGS.identity_label not in in_opted_in["metadata"]["labels"]


def test_a_namespace_that_did_not_opt_in_is_left_alone(
    namespaces: Namespaces, tools: Any, tally: Any
) -> None:
    with tally.case("webhook", "not opted in"):
        stored = namespaces.without_webhook("injected", "hello--0")
        assert isinstance(stored, dict), stored
        assert SETTINGS.identity_label not in stored["metadata"]["labels"]
        assert SETTINGS.certs_volume in [v["name"] for v in stored["spec"]["volumes"]]


def test_audit_finds_only_the_pod_created_around_the_webhook(
    namespaces: Namespaces, tools: Any
) -> None:
    created = tools.create_pod(PODS["hello--0"], namespaces.opted_in, dry_run=False)
    assert isinstance(created, dict), created
    audited = tools.cli("audit", "-n", namespaces.opted_in, "-o", "json")
    assert audited.returncode == 0, audited.stdout + audited.stderr
    report = json.loads(audited.stdout)
    assert report["podsToFix"] == 0 and report["podsChecked"] >= 1

    around = tools.create_pod(PODS["hello--0"], namespaces.plain, dry_run=False)
    assert isinstance(around, dict), around
    name = around["metadata"]["name"]
    # Istio's pod in a namespace that did not opt in takes its certificate from istiod: no
    # finding by default, one with --include-istiod.
    audited = tools.cli("audit", "-n", namespaces.plain, "-o", "json")
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert json.loads(audited.stdout)["podsOnIstiod"] >= 1
    audited = tools.cli("audit", "-n", namespaces.plain, "--include-istiod", "-o", "json")
    assert audited.returncode == 1, audited.stdout + audited.stderr
    report = json.loads(audited.stdout)
    assert [(o["kind"], o["name"]) for o in report["owners"]] == [("Pod", name)]


def test_doctor_passes_the_webhook_checks_that_a_local_install_can_pass(
    namespaces: Namespaces, tools: Any
) -> None:
    done = tools.cli("doctor", "-o", "json")
    report = json.loads(done.stdout)
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert report["form"] == "webhook"
    for name in ("webhook-configuration", "reinvocation-policy", "side-effects"):
        assert statuses[name] == "pass", report
    if os.environ.get("E2E_INSTALL") == "local":
        # Registered by URL from this machine: no Service, no Secret in the cluster.
        assert statuses["service-endpoints"] != "pass", report
    else:
        for name in ("ca-bundle", "serving-certificate", "service-endpoints"):
            assert statuses[name] == "pass", report
    assert done.returncode == (1 if report["summary"]["fail"] else 0)
