"""The opt-in `manifests/components/verify`: rendered for real with `kubectl kustomize` inside
a kustomization of the kind docs/verify.md tells users to write (an install overlay, the
component, `images:`), validated against the strict Kubernetes schemas, and held to granting
`verify` exactly what it calls. No install in the repository includes it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.test_manifests import IMAGE, MANIFESTS, ROOT, SCHEMA_VERSIONS, Objects, kustomize, one
from webhook.cli import COMMANDS
from webhook.config import Settings

COMPONENT = MANIFESTS / "components" / "verify"
DOCS = ROOT / "docs" / "verify.md"
ACCOUNT = {"kind": "ServiceAccount", "name": "istio-spiffe-webhook-verify",
           "namespace": "istio-spiffe-webhook"}  # fmt: skip


def with_component(root: Path, overlay: str) -> Objects:
    """`overlay` plus the component, as a user's own kustomization next to the repo's."""
    mine = root / f"with-verify-{overlay}"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [f"../manifests/overlays/{overlay}"],
                "components": ["../manifests/components/verify"],
                "images": [
                    {
                        "name": "istio-spiffe-webhook",
                        "newName": IMAGE.rsplit(":", 1)[0],
                        "newTag": IMAGE.rsplit(":", 1)[1],
                    }
                ],
            }
        )
    )
    return kustomize(mine)


@pytest.fixture(scope="module")
def installs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Objects]:
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(MANIFESTS, root / "manifests")
    return {
        "cert-manager": with_component(root, "cert-manager"),
        "policy": with_component(root, "policy"),
    }


def added(objs: Objects) -> Objects:
    """What the component adds."""
    return [o for o in objs if o["metadata"]["name"] == "istio-spiffe-webhook-verify"]


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("install", ["cert-manager", "policy"])
def test_the_component_validates_against_the_strict_schemas(
    installs: dict[str, Objects], install: str, version: str
) -> None:
    objs = added(installs[install])
    for obj in objs:
        kubernetes_validate.validate(obj, version, strict=True)
    assert sorted(o["kind"] for o in objs) == [
        "ClusterRole", "ClusterRoleBinding", "CronJob", "ServiceAccount",
    ]  # fmt: skip


def test_no_install_in_the_repository_grants_exec_or_runs_verify() -> None:
    for overlay in ("base", "overlays/cert-manager", "overlays/self-signed", "overlays/policy"):
        for obj in kustomize(MANIFESTS / overlay):
            assert obj["kind"] != "CronJob", overlay
            for rule in obj.get("rules") or []:
                assert not {"pods/exec", "pods/portforward", "*"} & set(rule["resources"]), (
                    overlay,
                    obj["metadata"]["name"],
                )
    including = [
        str(p.parent.relative_to(ROOT))
        for p in [*MANIFESTS.rglob("kustomization.yaml"), *(ROOT / "certs").glob("*.yaml")]
        if p.parent != COMPONENT and "components/verify" in p.read_text()
    ]
    assert including == []  # no kustomization in the repo includes it


def test_the_cronjob_runs_verify_every_15_minutes_and_fails_its_job_on_any_finding(
    installs: dict[str, Objects],
) -> None:
    cronjob = one(installs["cert-manager"], "CronJob")
    spec = cronjob["spec"]
    assert (spec["schedule"], spec["concurrencyPolicy"]) == ("*/15 * * * *", "Forbid")
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0  # the first failure fails the Job
    pod = job["template"]["spec"]
    (main,) = pod["containers"]
    assert main["args"] == ["verify", "-A", "--only-opted-in", "-o", "json"]
    assert main["args"][0] in COMMANDS
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == ACCOUNT["name"]
    assert pod["automountServiceAccountToken"] is True
    assert cronjob["metadata"]["namespace"] == Settings().namespace


@pytest.mark.parametrize("install", ["cert-manager", "policy"])
def test_the_cronjob_uses_the_installs_image(installs: dict[str, Objects], install: str) -> None:
    pod = one(installs[install], "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == IMAGE
    if install == "cert-manager":
        deployment = one(installs[install], "Deployment")["spec"]["template"]["spec"]
        assert deployment["containers"][0]["image"] == IMAGE


def test_the_cronjobs_pod_meets_the_restricted_pod_security_standard(
    installs: dict[str, Objects],
) -> None:
    template = one(installs["cert-manager"], "CronJob")["spec"]["jobTemplate"]["spec"]["template"]
    spec = template["spec"]
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert spec["containers"][0]["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert "volumes" not in spec and "hostNetwork" not in spec
    # Never rewritten by the webhook nor given a sidecar.
    assert template["metadata"]["labels"]["istio-spiffe-webhook/inject"] == "disabled"
    assert template["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"


def rules(objs: Objects) -> set[tuple[str, str, str]]:
    role = one(objs, "ClusterRole", "istio-spiffe-webhook-verify")
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_only_the_verify_account_gains_exec_and_only_what_verify_calls(
    installs: dict[str, Objects],
) -> None:
    objs = installs["cert-manager"]
    assert rules(objs) == {
        ("", "pods", "get"), ("", "pods", "list"),
        ("", "namespaces", "get"), ("", "namespaces", "list"),
        ("", "pods/exec", "get"), ("", "pods/exec", "create"),
        ("apps", "replicasets", "get"), ("batch", "jobs", "get"),
    }  # fmt: skip
    binding = one(objs, "ClusterRoleBinding", "istio-spiffe-webhook-verify")
    assert binding["subjects"] == [ACCOUNT]
    assert binding["roleRef"]["name"] == "istio-spiffe-webhook-verify"
    one(objs, "ServiceAccount", ACCOUNT["name"])
    exec_holders = [
        o["metadata"]["name"]
        for o in objs
        if o["kind"] in ("Role", "ClusterRole")
        and any("pods/exec" in r["resources"] for r in o["rules"])
    ]
    assert exec_holders == ["istio-spiffe-webhook-verify"]
    bound_to_verify = {
        o["roleRef"]["name"]
        for o in objs
        if o["kind"] in ("RoleBinding", "ClusterRoleBinding") and ACCOUNT in o["subjects"]
    }
    assert bound_to_verify == {"istio-spiffe-webhook-verify"}


def test_the_role_allows_every_api_call_verify_makes(installs: dict[str, Objects]) -> None:
    """Every `read_*`/`list_*` call of the modules verify runs, and exec."""
    calls: set[tuple[str, str]] = set()
    for module in ("verify", "pods", "podexec"):
        source = (ROOT / "webhook" / "cluster" / f"{module}.py").read_text()
        calls.update(
            re.findall(
                r"\b(?:core|apps|batch)\.(read|list)_(?:namespaced_)?([a-z_]+?)"
                r"(?:_for_all_namespaces)?\b",
                source,
            )
        )
    assert ("list", "pod") in calls and ("read", "replica_set") in calls
    granted = rules(installs["cert-manager"])
    for method, kind in calls:
        word = kind.replace("_", "")
        resource = word[:-1] + "ies" if word.endswith("y") else word + "s"
        verb = {"read": "get", "list": "list"}[method]
        assert any(r == resource and v == verb for _, r, v in granted), (method, kind)
    assert "connect_get_namespaced_pod_exec" in (ROOT / "webhook/cluster/podexec.py").read_text()


def test_the_kustomization_the_docs_show_renders_with_the_installs_image(
    tmp_path: Path,
) -> None:
    block = re.search(r"```yaml\n# kustomization\.yaml\n(.*?)```", DOCS.read_text(), re.S)
    assert block, "docs/verify.md shows the user's kustomization"
    shutil.copytree(MANIFESTS, tmp_path / "manifests")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(block.group(1).replace("<path to this repo>", ".."))
    objs = kustomize(mine)
    assert (
        one(objs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0][
            "image"
        ]
        == IMAGE
    )
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE
    one(objs, "ClusterRoleBinding", "istio-spiffe-webhook-verify")
