"""The shipped manifests, accepted by a real API server.

Every installable kustomization (`certs/` with certificates made by `certs`, the policy
overlay, and the base with each opt-in component) is rendered with `kubectl kustomize` and
sent with `kubectl apply --dry-run=server`, so the API server's validation, defaulting and
admission judge each object. Opt-in components, which change nothing that the other e2e
tests rely on, are also applied for real and deleted again. The cert-manager overlay needs
cert-manager's CRDs and is checked only where they exist.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

if os.environ.get("E2E") != "1" or not os.environ.get("KUBECONFIG"):
    pytest.skip(
        "end-to-end test: set E2E=1 and KUBECONFIG to a test cluster",
        allow_module_level=True,
    )

from tests.e2e.conftest import ROOT, cli, kubectl

pytestmark = pytest.mark.e2e

NAMESPACE = "istio-spiffe-webhook"
# Components that a user adds to an install on purpose (not part of the default one).
OPT_IN_COMPONENTS = sorted(
    p.name
    for p in (ROOT / "manifests" / "components").iterdir()
    if p.is_dir() and p.name not in ("webhook", "policy")
)


@pytest.fixture(scope="module")
def namespace() -> str:
    """Namespaced objects can be dry-run only into a namespace that exists."""
    done = kubectl("create", "namespace", NAMESPACE, check=False)
    assert done.returncode == 0 or "AlreadyExists" in done.stderr, done.stderr
    return NAMESPACE


def rendered(directory: Path) -> str:
    return kubectl("kustomize", str(directory)).stdout


def dry_run(manifests: str) -> list[str]:
    done = kubectl("apply", "--dry-run=server", "-f", "-", stdin=manifests, check=False)
    assert done.returncode == 0, done.stderr
    return sorted(line.split()[0] for line in done.stdout.splitlines() if line)


def objects(manifests: str) -> list[str]:
    kinds = {
        "ClusterRole": "clusterrole.rbac.authorization.k8s.io",
        "ClusterRoleBinding": "clusterrolebinding.rbac.authorization.k8s.io",
    }
    out = []
    for doc in yaml.safe_load_all(manifests):
        if doc:
            kind = kinds.get(doc["kind"], f"{doc['kind'].lower()}")
            out.append(f"{kind}/{doc['metadata']['name']}")
    return out


def overlay(tmp_path: Path, component: str) -> Path:
    """The base plus one opt-in component, as a user's kustomization would add it."""
    shutil.copytree(ROOT / "manifests", tmp_path / "manifests")
    target = tmp_path / "overlay"
    target.mkdir()
    (target / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["../manifests/base"],
                "components": [f"../manifests/components/{component}"],
            }
        )
    )
    return target


def test_the_self_signed_install_is_accepted(namespace: str, tmp_path: Path, tally: Any) -> None:
    with tally.case("manifests", "certs/ (self-signed)"):
        self_signed_install_is_accepted(tmp_path)


def self_signed_install_is_accepted(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "manifests", tmp_path / "manifests")
    (tmp_path / "certs").mkdir()
    shutil.copy(ROOT / "certs" / "kustomization.yaml", tmp_path / "certs")
    made = cli("certs", "--out", str(tmp_path / "certs"))
    assert made.returncode == 0, made.stderr
    manifests = rendered(tmp_path / "certs")
    applied = dry_run(manifests)
    assert len(applied) == len(objects(manifests))


def test_the_policy_install_is_accepted(namespace: str, tally: Any) -> None:
    with tally.case("manifests", "overlays/policy"):
        manifests = rendered(ROOT / "manifests" / "overlays" / "policy")
        applied = dry_run(manifests)
        assert len(applied) == len(objects(manifests))


def test_the_cert_manager_install_is_accepted_where_cert_manager_is(namespace: str) -> None:
    crds = kubectl("get", "crd", "certificates.cert-manager.io", check=False)
    if crds.returncode != 0:
        pytest.skip("cert-manager's CRDs are not installed on this cluster")
    manifests = rendered(ROOT / "manifests" / "overlays" / "cert-manager")
    assert len(dry_run(manifests)) == len(objects(manifests))


@pytest.mark.parametrize("component", OPT_IN_COMPONENTS)
def test_an_opt_in_component_is_applied_and_deleted(
    namespace: str, tmp_path: Path, component: str, tally: Any, request: pytest.FixtureRequest
) -> None:
    with tally.case("manifests", f"component {component}"):
        manifests = rendered(overlay(tmp_path, component))
        docs = [d for d in yaml.safe_load_all(manifests) if d]
        # A component may grant something in Istio's namespace: it exists where Istio does.
        created = []
        for other in sorted({d["metadata"].get("namespace") for d in docs} - {None, namespace}):
            if kubectl("get", "namespace", other, check=False).returncode != 0:
                kubectl("create", "namespace", other)
                created.append(other)
        request.addfinalizer(
            lambda: [
                kubectl("delete", "namespace", n, "--wait=false", check=False) for n in created
            ]
        )
        dry_run(manifests)
        # The namespace and ServiceAccount are the install's; everything else is removed.
        own = yaml.safe_dump_all(
            [d for d in yaml.safe_load_all(manifests) if d and d["kind"] != "Namespace"]
        )
        try:
            kubectl("apply", "-f", "-", stdin=own)
            got = kubectl("get", "-f", "-", "-o", "name", stdin=own).stdout.split()
            assert len(got) == len(objects(own)), got
        finally:
            kubectl("delete", "--ignore-not-found", "-f", "-", stdin=own, check=False)
