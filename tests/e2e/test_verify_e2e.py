"""The opt-in `manifests/components/verify` and `verify` itself on a real API server.

Run with `E2E=1 KUBECONFIG=/path/to/kubeconfig .venv/bin/pytest -m e2e tests/e2e/test_verify_e2e.py`
(cluster-admin on a test cluster; `../shared/kube-harness` is enough: no node is needed).

What it proves: the component applies (with the shared base) and gives `pods/exec` to its
own ServiceAccount only, with both verbs the API server checks on a WebSocket exec; the
CronJob's pod passes the namespace's `restricted` Pod Security admission; and `verify`,
authenticated as that ServiceAccount, lists, resolves and reaches the exec of a pod whose
status says Running (the exec then fails where a kubelet would answer: the API server's
reason is the verdict's), while the webhook's own ServiceAccount is refused (exit 2).
What the component created is deleted at the end (the whole base too, when it was not
there before) unless E2E_KEEP=1.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("E2E") != "1" or not os.environ.get("KUBECONFIG"):
    pytest.skip(
        "end-to-end test: set E2E=1 and KUBECONFIG to a test cluster", allow_module_level=True
    )

import yaml

from tests.e2e.conftest import cli, kubectl
from tests.oracle import admission_reviews, expected
from webhook.config import Settings

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

NAMESPACE = "istio-spiffe-webhook"
VERIFY = "istio-spiffe-webhook-verify"
WEBHOOK = "istio-spiffe-webhook"
COMPONENT_OBJECTS = [
    ("cronjob", VERIFY, NAMESPACE),
    ("serviceaccount", VERIFY, NAMESPACE),
    ("clusterrolebinding", VERIFY, None),
    ("clusterrole", VERIFY, None),
]


@pytest.fixture(scope="module")
def component(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = tmp_path_factory.mktemp("verify")
    shutil.copytree(ROOT / "manifests", work / "manifests")
    mine = work / "mine"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": ["../manifests/base"],
                "components": ["../manifests/components/verify"],
                "images": [
                    {
                        "name": "istio-spiffe-webhook",
                        "newName": "ghcr.io/istio-spiffe-webhook/istio-spiffe-webhook",
                        "newTag": "0.1.0",
                    }
                ],
            }
        )
    )
    base_was_there = kubectl("get", "namespace", NAMESPACE, check=False).returncode == 0
    istio_was_there = kubectl("get", "namespace", "istio-system", check=False).returncode == 0
    if not istio_was_there:
        kubectl("create", "namespace", "istio-system")  # the base has a Role there
    kubectl("apply", "-k", str(mine))
    try:
        yield work
    finally:
        if os.environ.get("E2E_KEEP") != "1":
            if base_was_there:
                for kind, name, ns in COMPONENT_OBJECTS:
                    where = ["-n", ns] if ns else []
                    kubectl("delete", kind, name, *where, "--ignore-not-found", check=False)
            else:
                kubectl("delete", "-k", str(mine), "--ignore-not-found", "--wait=false",
                        check=False)  # fmt: skip
            if not istio_was_there:
                kubectl("delete", "namespace", "istio-system", "--wait=false", check=False)


def can(account: str, verb: str, resource: str, subresource: str = "") -> bool:
    args = [
        "auth",
        "can-i",
        verb,
        resource,
        "-A",
        f"--as=system:serviceaccount:{NAMESPACE}:{account}",
    ]
    if subresource:
        args.append(f"--subresource={subresource}")
    return kubectl(*args, check=False).stdout.strip() == "yes"


def test_only_the_verify_account_may_exec_with_both_verbs_and_nothing_more(
    component: Path,
) -> None:
    assert can(VERIFY, "get", "pods", "exec") and can(VERIFY, "create", "pods", "exec")
    assert can(VERIFY, "list", "pods") and can(VERIFY, "list", "namespaces")
    assert can(VERIFY, "get", "replicasets.apps") and can(VERIFY, "get", "jobs.batch")
    assert not can(VERIFY, "create", "pods", "portforward")
    assert not can(VERIFY, "delete", "pods") and not can(VERIFY, "get", "secrets")
    assert not can(WEBHOOK, "get", "pods", "exec") and not can(WEBHOOK, "create", "pods", "exec")


def test_the_cronjobs_pod_passes_restricted_pod_security(component: Path) -> None:
    cronjob = json.loads(kubectl("get", "cronjob", VERIFY, "-n", NAMESPACE, "-o", "json").stdout)
    template = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"verify-psa-{secrets.token_hex(3)}",
            "namespace": NAMESPACE,
            "labels": template["metadata"]["labels"],
        },
        "spec": template["spec"],
    }
    done = kubectl("create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod), check=False)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr


def kubeconfig_for(account: str, directory: Path) -> Path:
    """A kubeconfig for the current cluster that authenticates as `account`'s token."""
    token = kubectl("create", "token", account, "-n", NAMESPACE, "--duration=10m").stdout.strip()
    current = json.loads(kubectl("config", "view", "--minify", "--raw", "-o", "json").stdout)
    cluster = current["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": cluster["name"], "user": account}}],
        "current-context": account,
    }
    path = directory / f"{account}.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def verify_as(account: str, directory: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    done = cli("verify", "--kubeconfig", str(kubeconfig_for(account, directory)), *args)
    report = json.loads(done.stdout) if done.stdout.strip() else {}
    return done.returncode, report, done.stderr


def test_verify_reaches_the_exec_of_a_running_pod_as_its_account_and_not_as_the_webhooks(
    component: Path,
    make_namespace: Callable[[dict[str, str]], str],
    tmp_path: Path,
) -> None:
    settings = Settings()
    namespace = make_namespace({settings.inject_label: settings.inject_enabled_value})
    pod = expected(admission_reviews()["hello-native"]["request"]["object"], settings)
    metadata = pod["metadata"]
    for key in ("generateName", "uid", "creationTimestamp", "resourceVersion", "ownerReferences"):
        metadata.pop(key, None)
    metadata.update({"name": "web", "namespace": namespace})
    pod["spec"]["nodeName"] = f"isw-e2e-absent-{secrets.token_hex(3)}"  # no kubelet answers
    pod.pop("status", None)
    kubectl("create", "-f", "-", stdin=json.dumps(pod))
    kubectl("patch", "pod", "web", "-n", namespace, "--subresource=status", "--type=merge",
            "-p", '{"status": {"phase": "Running"}}')  # fmt: skip

    code, report, stderr = verify_as(
        VERIFY, tmp_path, "-n", namespace, "--pod", "web", "-o", "json"
    )
    assert (code, stderr) == (1, ""), stderr
    (owner,) = report["owners"]
    (entry,) = owner["pods"]
    assert (owner["kind"], entry["verdict"], report["apiProblems"]) == ("Pod", "unreachable", 0)
    assert "forbidden" not in entry["reason"] and entry["reason"].endswith(")")

    code, report, stderr = verify_as(
        WEBHOOK, tmp_path, "-n", namespace, "--pod", "web", "-o", "json"
    )
    assert code == 2, stderr
    (entry,) = report["owners"][0]["pods"]
    assert entry["verdict"] == "unreachable"
    denied = f'access denied: pods "web" is forbidden: User "system:serviceaccount:{NAMESPACE}:'
    assert entry["reason"].startswith(f'{denied}{WEBHOOK}"')
