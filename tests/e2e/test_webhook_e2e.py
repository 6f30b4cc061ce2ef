"""The webhook form on a real cluster: install, rewrite on dry-run and real creates, doctor,
audit.

Run with
`E2E=1 KUBECONFIG=/path/to/kubeconfig .venv/bin/pytest -m e2e tests/e2e/test_webhook_e2e.py`
against a test cluster where you are cluster-admin (see tests/e2e/conftest.py for
E2E_INSTALL, E2E_IMAGE and E2E_KEEP). The server image must be pullable by the cluster
(`E2E_IMAGE`). The pods are Istio's injector output (the shared fixtures), already injected,
so Istio's injector leaves them alone if it runs at all; their images need not exist (the
tests read what the API server stored, they do not wait for the pods to run).

What it proves: through the real API server, with its defaulting, ordering and
reinvocation, a pod created in a namespace that opted in comes back exactly as the oracle
(`tests.oracle.expected`) rewrites the same API-server-defaulted pod; a namespace that did
not opt in and an opted-out pod are left alone; `doctor` passes the webhook's checks on the
installed webhook; `audit` finds the pod that was created around the webhook and not the
rewritten one.
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

from tests.oracle import assert_contract_holds, expected, istio_pods
from webhook.config import Settings

pytestmark = pytest.mark.e2e

SETTINGS = Settings()
OPT_IN = {SETTINGS.inject_label: SETTINGS.inject_enabled_value}
FIXTURES = istio_pods()
PODS = ["hello--0", "hello-old-version--0", "gateway--0"]
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


def stored(tools: Any, pod: dict[str, Any], namespace: str, dry_run: bool) -> dict[str, Any]:
    created = tools.create_pod(pod, namespace, dry_run=dry_run)
    assert isinstance(created, dict), created
    return created


def oracle_result(tools: Any, fixture: str, plain: str) -> dict[str, Any]:
    """The oracle's rewrite of the API-server-defaulted pod, as the API server stores it."""
    defaulted = stored(tools, FIXTURES[fixture], plain, dry_run=True)
    return stored(tools, expected(defaulted, SETTINGS), plain, dry_run=True)


def wait_until_rewriting(tools: Any, namespace: str) -> None:
    """Endpoints and the webhook configuration settle within seconds (bounded wait)."""
    probe: dict[str, Any] | str = ""
    for _ in range(60):
        probe = tools.create_pod(FIXTURES["hello--0"], namespace, dry_run=True)
        if isinstance(probe, dict):
            labels = probe["metadata"].get("labels") or {}
            if labels.get(SETTINGS.identity_label) == SETTINGS.identity_label_value:
                return
        time.sleep(2)
    pytest.fail(f"the webhook did not rewrite a probe pod within 120 s: {probe}")


@pytest.mark.parametrize("fixture", PODS)
def test_a_dry_run_create_in_an_opted_in_namespace_is_rewritten_as_the_oracle_says(
    installed: Any, make_namespace: Any, tools: Any, fixture: str
) -> None:
    opted_in, plain = make_namespace(OPT_IN), make_namespace({})
    wait_until_rewriting(tools, opted_in)
    result = stored(tools, FIXTURES[fixture], opted_in, dry_run=True)
    assert normalized(result) == normalized(oracle_result(tools, fixture, plain))
    assert_contract_holds(result, SETTINGS)


def test_a_real_create_is_rewritten_and_audit_finds_only_the_pod_that_went_around_it(
    installed: Any, make_namespace: Any, tools: Any
) -> None:
    opted_in, plain = make_namespace(OPT_IN), make_namespace({})
    wait_until_rewriting(tools, opted_in)
    created = stored(tools, FIXTURES["hello--0"], opted_in, dry_run=False)
    # As stored at creation (the scheduler adds nodeName later, nothing else changes).
    assert normalized(created) == normalized(oracle_result(tools, "hello--0", plain))
    got = tools.kubectl("get", "pod", created["metadata"]["name"], "-n", opted_in, "-o", "json")
    assert_contract_holds(json.loads(got.stdout), SETTINGS)

    audited = tools.cli("audit", "-n", opted_in, "-o", "json")
    assert (audited.returncode, audited.stderr) == (0, "")
    assert json.loads(audited.stdout) == {"podsChecked": 1, "podsToFix": 0, "owners": []}

    # The same pod in a namespace that did not opt in is stored as Istio left it.
    around = stored(tools, FIXTURES["hello--0"], plain, dry_run=False)
    name = around["metadata"]["name"]
    assert SETTINGS.identity_label not in (around["metadata"].get("labels") or {})
    audited = tools.cli("audit", "-n", plain, "-o", "json")
    assert (audited.returncode, audited.stderr) == (1, "")
    report = json.loads(audited.stdout)
    assert report["podsToFix"] == 1
    assert [(o["kind"], o["name"], o["namespaceOptedIn"]) for o in report["owners"]] == [
        ("Pod", name, False)
    ]
    assert report["owners"][0]["fix"] == [
        f"kubectl label namespace {plain} {SETTINGS.inject_label}={SETTINGS.inject_enabled_value}",
        f"kubectl delete pod {name} -n {plain}",
    ]


def test_an_opted_out_pod_is_stored_unchanged(
    installed: Any, make_namespace: Any, tools: Any
) -> None:
    opted_in, plain = make_namespace(OPT_IN), make_namespace({})
    wait_until_rewriting(tools, opted_in)
    pod = copy.deepcopy(FIXTURES["hello--0"])
    pod["metadata"].setdefault("labels", {})[SETTINGS.inject_label] = SETTINGS.inject_disabled_value
    assert normalized(stored(tools, pod, opted_in, dry_run=True)) == normalized(
        stored(tools, pod, plain, dry_run=True)
    )


def test_doctor_passes_the_webhook_checks_of_the_installed_webhook(
    installed: Any, make_namespace: Any, tools: Any
) -> None:
    make_namespace({**OPT_IN, "istio-injection": "enabled"})
    done = tools.cli("doctor", "-o", "json")
    assert done.stderr == ""
    report = json.loads(done.stdout)
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert report["form"] == "webhook"
    for check in (
        "webhook-configuration",
        "reinvocation-policy",
        "side-effects",
        "ca-bundle",
        "serving-certificate",
        "service-endpoints",
    ):
        assert statuses[check] == "pass", report
    # The CSI driver, Istio and other namespaces belong to the cluster: whatever doctor
    # found there, its exit status says whether something failed.
    assert done.returncode == (1 if report["summary"]["fail"] else 0)
