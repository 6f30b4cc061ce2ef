"""The install manifests, the certs/ kustomization and the Dockerfile.

Every kustomization is rendered for real with `kubectl kustomize`; every rendered object is
validated against the strict Kubernetes JSON schemas of `kubernetes_validate` (1.30, the
oldest release with the native preStop sleep the Deployment uses, 1.36, and the newest the
package ships). cert-manager's Issuer and Certificate are custom resources that those
schemas do not hold: they get a small hand-written check of the fields cert-manager needs
(`check_cert_manager`). The certs/ install is rendered from a temporary copy of the repo's
`manifests/` and `certs/kustomization.yaml` next to files made by the real
`istio-spiffe-webhook certs`. docker cannot run here, so the Dockerfile and .dockerignore
are checked statically.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from webhook.certs import service_names
from webhook.cli import COMMANDS
from webhook.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
MESH_CONFIG_READER = MANIFESTS / "components" / "istio-mesh-config-reader"
KUBECTL = shutil.which("kubectl")
CLI = Path(sys.executable).with_name("istio-spiffe-webhook")
SCHEMA_VERSIONS = ("1.30", "1.36", kubernetes_validate.latest_version())
IMAGE = "ghcr.io/istio-spiffe-webhook/istio-spiffe-webhook:0.1.0"
TLS_SECRET = "istio-spiffe-webhook-tls"
TLS_MOUNT = "/etc/istio-spiffe-webhook/tls"
WEBHOOK_POD = {
    "app.kubernetes.io/name": "istio-spiffe-webhook",
    "app.kubernetes.io/component": "webhook",
}
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass",
    "MutatingWebhookConfiguration", "MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding",
}  # fmt: skip

Objects = list[dict[str, Any]]


# --- rendering ---------------------------------------------------------------------------


def kustomize(directory: Path) -> Objects:
    if KUBECTL is None:
        pytest.fail("kubectl is not on PATH: these tests render the manifests with it")
    done = subprocess.run(
        [KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def clean_env() -> dict[str, str]:
    """The environment without any ISTIO_SPIFFE_WEBHOOK_* setting: the CLI's defaults."""
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}


@pytest.fixture(scope="module")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed certs/kustomization.yaml and a copy of manifests/, side by side as in
    the repo, with the files written by the real `istio-spiffe-webhook certs --out`."""
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(MANIFESTS, root / "manifests")
    (root / "certs").mkdir()
    shutil.copy2(ROOT / "certs" / "kustomization.yaml", root / "certs" / "kustomization.yaml")
    done = subprocess.run(
        [str(CLI), "certs", "--out", str(root / "certs")],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        cwd=root,
    )
    assert done.returncode == 0, done.stderr
    return root / "certs"


@pytest.fixture(scope="module")
def renders(certs_dir: Path) -> dict[str, Objects]:
    return {
        "cert-manager": kustomize(MANIFESTS / "overlays" / "cert-manager"),
        "self-signed": kustomize(MANIFESTS / "overlays" / "self-signed"),
        "base": kustomize(MANIFESTS / "base"),
        "certs": kustomize(certs_dir),
        "policy": kustomize(MANIFESTS / "overlays" / "policy"),
        "mesh-config-reader": kustomize(MESH_CONFIG_READER),
    }


@pytest.fixture(scope="module")
def objects(renders: dict[str, Objects]) -> Objects:
    """The cert-manager install: the webhook form's objects are the same in every overlay
    (test_every_webhook_install_shares_the_same_objects proves it)."""
    return renders["cert-manager"]


def one(objs: Objects, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def webhook_of(objs: Objects) -> dict[str, Any]:
    configuration = one(objs, "MutatingWebhookConfiguration")
    assert len(configuration["webhooks"]) == 1
    hook: dict[str, Any] = configuration["webhooks"][0]
    return hook


def pod_spec(objs: Objects) -> dict[str, Any]:
    spec: dict[str, Any] = one(objs, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(objs: Objects) -> dict[str, Any]:
    containers = pod_spec(objs)["containers"]
    assert len(containers) == 1
    main: dict[str, Any] = containers[0]
    return main


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels AND matchExpressions) against labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def namespace_labels(name: str, labels: dict[str, str]) -> dict[str, str]:
    """A namespace's labels as the API server keeps them (it adds the name label)."""
    return {**labels, "kubernetes.io/metadata.name": name}


# --- schemas -----------------------------------------------------------------------------

CERT_MANAGER_CERTIFICATE_FIELDS = {
    "secretName", "issuerRef", "commonName", "dnsNames", "ipAddresses", "uris", "duration",
    "renewBefore", "isCA", "privateKey", "usages", "subject", "secretTemplate",
    "revisionHistoryLimit", "emailAddresses", "keystores", "additionalOutputFormats",
}  # fmt: skip
CERT_MANAGER_USAGES = {
    "digital signature", "key encipherment", "server auth", "client auth", "cert sign",
}  # fmt: skip


def check_cert_manager(obj: dict[str, Any]) -> None:
    """What cert-manager.io/v1 requires of the Issuer and Certificate we use (a hand-written
    subset of its CRD schemas, which kubernetes_validate does not ship)."""
    assert obj["apiVersion"] == "cert-manager.io/v1"
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    assert isinstance(obj["metadata"]["name"], str) and obj["metadata"]["namespace"]
    spec = obj["spec"]
    if obj["kind"] == "Issuer":
        assert len(spec) == 1, "an Issuer has exactly one issuer type"
        (issuer_type,) = spec
        assert issuer_type in {"selfSigned", "ca"}
        if issuer_type == "ca":
            assert set(spec["ca"]) == {"secretName"} and isinstance(spec["ca"]["secretName"], str)
        else:
            assert spec["selfSigned"] == {}
    else:
        assert obj["kind"] == "Certificate"
        assert set(spec) <= CERT_MANAGER_CERTIFICATE_FIELDS, (
            set(spec) - CERT_MANAGER_CERTIFICATE_FIELDS
        )
        assert isinstance(spec["secretName"], str)
        assert set(spec["issuerRef"]) == {"group", "kind", "name"}
        assert spec["issuerRef"]["group"] == "cert-manager.io"
        assert spec["issuerRef"]["kind"] in {"Issuer", "ClusterIssuer"}
        assert spec.get("commonName") or spec.get("dnsNames")
        assert set(spec.get("usages", [])) <= CERT_MANAGER_USAGES
        for field in ("duration", "renewBefore"):
            if field in spec:
                assert re.fullmatch(r"\d+h", spec[field]), f"{field}: {spec[field]}"
        key = spec.get("privateKey", {})
        assert set(key) <= {"algorithm", "size", "rotationPolicy", "encoding"}
        assert key.get("algorithm", "RSA") in {"RSA", "ECDSA", "Ed25519"}
        assert key.get("rotationPolicy", "Always") in {"Always", "Never"}


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize(
    "install", ["cert-manager", "self-signed", "certs", "base", "mesh-config-reader"]
)
def test_every_rendered_object_validates_against_the_strict_kubernetes_schemas(
    renders: dict[str, Objects], install: str, version: str
) -> None:
    checked = []
    for obj in renders[install]:
        if obj["apiVersion"].startswith("cert-manager.io/"):
            check_cert_manager(obj)
        else:
            # Raises ValidationError (or SchemaNotFoundError for an unknown kind): both fail.
            kubernetes_validate.validate(obj, version, strict=True)
        checked.append(obj["kind"])
    # The base is what the policy form shares: no server, no certificates.
    base = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ]
    webhook = [
        "PriorityClass", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy",
        "MutatingWebhookConfiguration",
    ]  # fmt: skip
    expected = {
        "cert-manager": [*base, *webhook, "Issuer", "Issuer", "Certificate", "Certificate"],
        "self-signed": [*base, *webhook],
        "certs": [*base, *webhook, "Secret"],
        "base": base,
        "mesh-config-reader": ["Role", "RoleBinding"],
    }[install]
    assert sorted(checked) == sorted(expected)


def test_the_schema_check_rejects_a_misspelled_field() -> None:
    """The strict schemas catch what kubectl would reject: the validation above can fail."""
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"portz": []},
    }  # fmt: skip
    with pytest.raises(kubernetes_validate.ValidationError, match="'portz' was unexpected"):
        kubernetes_validate.validate(service, "1.36", strict=True)


def test_the_cert_manager_check_rejects_a_certificate_without_issuer() -> None:
    certificate = {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": "x", "namespace": "y"},
        "spec": {"secretName": "x", "dnsNames": ["x"]},
    }
    with pytest.raises(KeyError, match="issuerRef"):
        check_cert_manager(certificate)


# --- the MutatingWebhookConfiguration ----------------------------------------------------


def test_webhook_intercepts_pod_creates_only(objects: Objects) -> None:
    hook = webhook_of(objects)
    assert hook["name"] == "pods.istio-spiffe-webhook.io"
    assert hook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert hook["matchPolicy"] == "Equivalent"
    assert hook["admissionReviewVersions"] == ["v1"]


def test_webhook_fails_closed_has_no_side_effects_and_is_reinvoked(objects: Objects) -> None:
    hook = webhook_of(objects)
    assert hook["failurePolicy"] == "Fail"
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["sideEffects"] == "None"
    assert hook["timeoutSeconds"] == 5


def test_webhook_selects_opted_in_namespaces_except_kube_system_and_its_own(
    objects: Objects, settings: Settings
) -> None:
    selector = webhook_of(objects)["namespaceSelector"]
    assert selector == {
        "matchLabels": {settings.inject_label: settings.inject_enabled_value},
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": ["kube-system", settings.namespace],
            }
        ],
    }
    enabled = {settings.inject_label: settings.inject_enabled_value}
    assert selects(selector, namespace_labels("shop", enabled))
    assert not selects(selector, namespace_labels("shop", {}))
    assert not selects(selector, namespace_labels("shop", {settings.inject_label: "disabled"}))
    assert not selects(selector, namespace_labels("kube-system", enabled))
    assert not selects(selector, namespace_labels(settings.namespace, enabled))
    own = one(objects, "Namespace")
    assert not selects(selector, namespace_labels(settings.namespace, own["metadata"]["labels"]))


def test_webhook_lets_a_pod_opt_out_and_never_sees_its_own_pods(
    objects: Objects, settings: Settings
) -> None:
    selector = webhook_of(objects)["objectSelector"]
    assert selector == {
        "matchExpressions": [
            {
                "key": settings.inject_label,
                "operator": "NotIn",
                "values": [settings.inject_disabled_value],
            }
        ]
    }
    assert selects(selector, {})
    assert selects(selector, {"app": "shop", settings.inject_label: "enabled"})
    assert not selects(selector, {"app": "shop", settings.inject_label: "disabled"})
    own_pod = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert not selects(selector, own_pod)
    assert own_pod["sidecar.istio.io/inject"] == "false"


def test_webhook_calls_the_service_port_that_reaches_the_server(
    objects: Objects, settings: Settings
) -> None:
    client = webhook_of(objects)["clientConfig"]
    assert client["service"] == {
        "name": settings.service_name,
        "namespace": settings.namespace,
        "path": "/mutate",
        "port": 443,
    }
    service = one(objects, "Service", settings.service_name)
    (https,) = [p for p in service["spec"]["ports"] if p["port"] == 443]
    assert https == {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}
    ports = {p["name"]: p["containerPort"] for p in container(objects)["ports"]}
    assert ports == {"https": settings.port, "metrics": settings.metrics_port}
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(objects))


def test_webhook_configuration_sorts_after_istio_injector_configurations(
    objects: Objects,
) -> None:
    name = one(objects, "MutatingWebhookConfiguration")["metadata"]["name"]
    istio_names = [
        "istio-sidecar-injector",
        "istio-sidecar-injector-canary",
        "istio-revision-tag-x",
    ]
    for istio in istio_names:
        assert sorted([istio, name])[-1] == name


# --- the Deployment ----------------------------------------------------------------------


def pod_labels(objs: Objects) -> dict[str, str]:
    labels: dict[str, str] = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def test_deployment_runs_two_replicas_of_serve_from_the_overlay_image(objects: Objects) -> None:
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"] == {"matchLabels": WEBHOOK_POD}
    assert selects(deployment["spec"]["selector"], pod_labels(objects))
    assert container(objects)["image"] == IMAGE
    assert container(objects)["args"] == ["serve"]
    assert "command" not in container(objects)


def test_deployment_meets_the_restricted_pod_security_standard(objects: Objects) -> None:
    spec = pod_spec(objects)
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container(objects)["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert spec["automountServiceAccountToken"] is False
    assert "hostNetwork" not in spec and "hostPID" not in spec
    # The server writes nothing: its only volume is the read-only Secret.
    assert [v["name"] for v in spec["volumes"]] == ["tls"]
    namespace = one(objects, "Namespace")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "restricted"


def test_deployment_probes_health_and_readiness_over_https(objects: Objects) -> None:
    main = container(objects)
    https = {"port": "https", "scheme": "HTTPS"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", **https}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", **https}


def test_deployment_requests_resources_and_limits_memory(objects: Objects) -> None:
    assert container(objects)["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "128Mi"},
    }


def test_deployment_spreads_replicas_across_nodes(objects: Objects) -> None:
    spec = pod_spec(objects)
    by_key = {c["topologyKey"]: c for c in spec["topologySpreadConstraints"]}
    assert set(by_key) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for constraint in by_key.values():
        assert constraint["maxSkew"] == 1
        assert constraint["labelSelector"] == {"matchLabels": WEBHOOK_POD}
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"] == {
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": WEBHOOK_POD},
    }


def test_deployment_drains_endpoints_before_the_server_shuts_down(objects: Objects) -> None:
    spec = pod_spec(objects)
    pause = container(objects)["lifecycle"]["preStop"]
    assert pause == {"sleep": {"seconds": 5}}
    grace = manifest_settings(objects).shutdown_grace_seconds
    assert grace == 20
    assert spec["terminationGracePeriodSeconds"] == 30
    assert spec["terminationGracePeriodSeconds"] >= pause["sleep"]["seconds"] + grace
    strategy = one(objects, "Deployment")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def manifest_env(objs: Objects) -> dict[str, str]:
    env = container(objs)["env"]
    assert all(set(e) == {"name", "value"} for e in env)
    return {e["name"]: e["value"] for e in env}


def manifest_settings(objs: Objects) -> Settings:
    """The Settings the server builds from the Deployment's environment."""
    env = manifest_env(objs)
    saved = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    try:
        for key in saved:
            del os.environ[key]
        os.environ.update(env)
        return Settings()
    finally:
        for key in env:
            del os.environ[key]
        os.environ.update(saved)


def test_deployment_environment_is_settings_the_server_accepts(objects: Objects) -> None:
    fields = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert set(manifest_env(objects)) <= fields
    settings = manifest_settings(objects)
    assert settings.tls_cert_file == Path(TLS_MOUNT) / "tls.crt"
    assert settings.tls_key_file == Path(TLS_MOUNT) / "tls.key"
    assert settings.port == 8443
    assert settings.metrics_port == 9090
    assert settings.log_level == "info"


def test_deployment_reads_its_certificate_from_the_tls_secret(objects: Objects) -> None:
    assert container(objects)["volumeMounts"] == [
        {"name": "tls", "mountPath": TLS_MOUNT, "readOnly": True}
    ]
    assert pod_spec(objects)["volumes"] == [
        {"name": "tls", "secret": {"secretName": TLS_SECRET, "defaultMode": 0o440}}
    ]


def test_deployment_has_a_priority_class_of_its_own(objects: Objects) -> None:
    name = pod_spec(objects)["priorityClassName"]
    assert name == "istio-spiffe-webhook-critical"
    priority = one(objects, "PriorityClass", name)
    assert priority["value"] == 1_000_000
    assert priority["globalDefault"] is False
    assert priority["preemptionPolicy"] == "PreemptLowerPriority"


def test_pod_disruption_budget_keeps_one_replica_through_a_drain(objects: Objects) -> None:
    budget = one(objects, "PodDisruptionBudget")
    assert budget["spec"] == {
        "minAvailable": 1,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
        "selector": {"matchLabels": WEBHOOK_POD},
    }
    assert budget["metadata"]["namespace"] == one(objects, "Deployment")["metadata"]["namespace"]
    assert selects(budget["spec"]["selector"], pod_labels(objects))
    assert budget["spec"]["minAvailable"] < one(objects, "Deployment")["spec"]["replicas"]


def test_network_policy_admits_any_source_to_the_webhook_and_metrics_ports_only(
    objects: Objects, settings: Settings
) -> None:
    policy = one(objects, "NetworkPolicy")["spec"]
    assert policy == {
        "podSelector": {"matchLabels": WEBHOOK_POD},
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [
            {"ports": [{"port": settings.port, "protocol": "TCP"}]},
            {"ports": [{"port": settings.metrics_port, "protocol": "TCP"}]},
        ],
        "egress": [],
    }
    assert selects(policy["podSelector"], pod_labels(objects))


def test_rbac_gives_audit_and_doctor_read_access_and_nothing_more(objects: Objects) -> None:
    role = one(objects, "ClusterRole", "istio-spiffe-webhook-reader")
    granted = {
        (group, resource)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert granted == {
        ("", "pods"), ("", "namespaces"), ("", "services"), ("", "endpoints"),
        ("apps", "replicasets"), ("apps", "deployments"), ("apps", "statefulsets"),
        ("apps", "daemonsets"), ("batch", "jobs"), ("batch", "cronjobs"),
        ("discovery.k8s.io", "endpointslices"), ("storage.k8s.io", "csidrivers"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
        ("admissionregistration.k8s.io", "mutatingadmissionpolicies"),
        ("admissionregistration.k8s.io", "mutatingadmissionpolicybindings"),
    }  # fmt: skip
    roles = [o for o in objects if o["kind"] in ("Role", "ClusterRole")]
    for r in roles:
        for rule in r["rules"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, r["metadata"]["name"]
    secrets = one(objects, "Role", "istio-spiffe-webhook-tls-reader")
    assert secrets["metadata"]["namespace"] == "istio-spiffe-webhook"
    assert secrets["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [TLS_SECRET],
            "verbs": ["get"],
        }
    ]
    service_account = one(objects, "ServiceAccount")["metadata"]
    subject = {"kind": "ServiceAccount", **{k: service_account[k] for k in ("name", "namespace")}}
    for binding in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        assert binding["subjects"] == [subject]
        one(objects, binding["roleRef"]["kind"], binding["roleRef"]["name"])
    assert pod_spec(objects)["serviceAccountName"] == service_account["name"]


def test_the_mesh_config_reader_component_reads_configmaps_in_istios_namespace_only(
    renders: dict[str, Objects], objects: Objects
) -> None:
    component = renders["mesh-config-reader"]
    role = one(component, "Role", "istio-spiffe-webhook-mesh-config-reader")
    binding = one(component, "RoleBinding", "istio-spiffe-webhook-mesh-config-reader")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "istio-system"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}
    ]
    service_account = one(objects, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", **{k: service_account[k] for k in ("name", "namespace")}}
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert role["metadata"]["labels"] == one(objects, "ClusterRole")["metadata"]["labels"]


def commented_yaml(path: Path, first_line: str) -> Any:
    """The YAML example in the comment of `path` that starts with `first_line`."""
    lines = [line[1:] for line in path.read_text().splitlines() if line.startswith("#")]
    start = lines.index(f"   {first_line}")
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("     "):
            break
        block.append(line)
    return yaml.safe_load("\n".join(block))


def test_the_mesh_config_reader_component_works_as_its_comment_says(tmp_path: Path) -> None:
    """Added to an install from a kustomization of one's own, and moved to another
    namespace by the patch its comment gives."""
    shutil.copytree(MANIFESTS, tmp_path / "manifests")
    comment = MESH_CONFIG_READER / "kustomization.yaml"
    mine = tmp_path / "mine"
    mine.mkdir()
    usage = {
        **commented_yaml(comment, "resources:"),
        **commented_yaml(comment, "components:"),
        **commented_yaml(comment, "patches:"),
    }
    assert usage["components"] == ["../manifests/components/istio-mesh-config-reader"]
    (mine / "kustomization.yaml").write_text(yaml.safe_dump(usage))
    rendered = kustomize(mine)
    install = kustomize(MANIFESTS / "overlays" / "cert-manager")
    assert [o for o in rendered if "mesh-config-reader" not in o["metadata"]["name"]] == install
    moved = [o for o in rendered if "mesh-config-reader" in o["metadata"]["name"]]
    assert sorted(o["kind"] for o in moved) == ["Role", "RoleBinding"]
    assert {o["metadata"]["namespace"] for o in moved} == {"my-istio-namespace"}


def granted_verbs(objs: Objects) -> dict[str, set[str]]:
    """resource -> verbs, over every ClusterRole and Role bound to the ServiceAccount."""
    verbs: dict[str, set[str]] = {}
    for role in (o for o in objs if o["kind"] in ("Role", "ClusterRole")):
        for rule in role["rules"]:
            for resource in rule["resources"]:
                verbs.setdefault(resource, set()).update(rule["verbs"])
    return verbs


def test_rbac_allows_every_api_call_of_audit_and_doctor(
    objects: Objects, renders: dict[str, Objects]
) -> None:
    """Each `read_*` / `list_*` method of the kubernetes client's API objects that
    webhook/cluster/ uses (e.g. `core.list_namespaced_config_map`) needs get / list on its
    resource (`configmaps`): granted by the install, except Istio's ConfigMaps, granted by
    the optional component. Only calls on the API objects count: an exec session's
    `read_stdout` is no API call."""
    calls = set()
    for source in sorted((ROOT / "webhook" / "cluster").glob("*.py")):
        calls.update(
            re.findall(
                r"\b(?:core|apps|batch|storage|discovery|admission|admission_beta|api)"
                r"\.(read|list)_(?:namespaced_)?([a-z_]+?)(?:_for_all_namespaces)?\b",
                source.read_text(),
            )
        )
    assert ("list", "pod") in calls  # the scan finds the calls at all
    assert ("list", "config_map") in calls
    installed, optional = granted_verbs(objects), granted_verbs(renders["mesh-config-reader"])
    for method, kind in sorted(calls):
        word = kind.replace("_", "")
        resource = word[:-1] + "ies" if word.endswith("y") else word + "s"
        verb = {"read": "get", "list": "list"}[method]
        granted = optional if resource == "configmaps" else installed
        assert verb in granted.get(resource, set()), f"{method}_{kind}: no {verb} on {resource}"
    assert "configmaps" not in installed


def test_settings_defaults_agree_with_the_manifests(objects: Objects, settings: Settings) -> None:
    assert one(objects, "Namespace")["metadata"]["name"] == settings.namespace
    assert one(objects, "Service")["metadata"]["name"] == settings.service_name
    configuration = one(objects, "MutatingWebhookConfiguration")
    assert configuration["metadata"]["name"] == settings.webhook_configuration
    assert settings.port == 8443 and settings.metrics_port == 9090
    served = manifest_settings(objects)
    assert (served.port, served.metrics_port) == (settings.port, settings.metrics_port)
    assert pod_labels(objects)[settings.inject_label] == settings.inject_disabled_value
    assert served.model_dump(exclude={"tls_cert_file", "tls_key_file"}) == settings.model_dump(
        exclude={"tls_cert_file", "tls_key_file"}
    )


# --- the installs --------------------------------------------------------------------------


@pytest.mark.parametrize("install", ["base", "cert-manager", "self-signed", "certs", "policy"])
def test_an_install_puts_nothing_outside_the_webhooks_namespace_but_cluster_objects(
    renders: dict[str, Objects], install: str, settings: Settings
) -> None:
    """`kubectl apply -k` fails as a whole when one object's namespace does not exist."""
    for obj in renders[install]:
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in obj["metadata"], obj["metadata"]["name"]
        else:
            assert obj["metadata"]["namespace"] == settings.namespace, obj["metadata"]["name"]


def without(objs: Objects, *kinds: str) -> Objects:
    return [o for o in objs if o["kind"] not in kinds]


def test_every_webhook_install_shares_the_same_objects(renders: dict[str, Objects]) -> None:
    """The overlays differ only in where the certificate comes from."""
    self_signed = renders["self-signed"]
    cert_manager = without(renders["cert-manager"], "Issuer", "Certificate")
    certs = without(renders["certs"], "Secret")
    for objs in (cert_manager, certs):
        assert without(objs, "MutatingWebhookConfiguration") == without(
            self_signed, "MutatingWebhookConfiguration"
        )
        configuration = one(objs, "MutatingWebhookConfiguration")
        plain = one(self_signed, "MutatingWebhookConfiguration")
        assert configuration["metadata"]["name"] == plain["metadata"]["name"]
        hook = dict(configuration["webhooks"][0])
        hook["clientConfig"] = {"service": hook["clientConfig"]["service"]}
        assert hook == plain["webhooks"][0]


def test_self_signed_overlay_has_no_certificate_source(renders: dict[str, Objects]) -> None:
    objs = renders["self-signed"]
    assert not [o for o in objs if o["kind"] in ("Secret", "Certificate", "Issuer")]
    assert "caBundle" not in webhook_of(objs)["clientConfig"]
    assert container(objs)["image"] == IMAGE


def test_cert_manager_overlay_issues_the_serving_certificate_and_injects_its_ca(
    renders: dict[str, Objects], settings: Settings
) -> None:
    objs = renders["cert-manager"]
    configuration = one(objs, "MutatingWebhookConfiguration")
    assert configuration["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": f"{settings.namespace}/{TLS_SECRET}"
    }
    assert "caBundle" not in webhook_of(objs)["clientConfig"]
    serving = one(objs, "Certificate", TLS_SECRET)["spec"]
    assert serving["secretName"] == TLS_SECRET
    assert serving["dnsNames"] == service_names(settings.service_name, settings.namespace)
    assert serving["usages"] == ["digital signature", "server auth"]
    # The chain: self-signed Issuer -> CA Certificate -> CA Issuer -> serving Certificate.
    ca_issuer = one(objs, "Issuer", serving["issuerRef"]["name"])
    ca_certificate = one(objs, "Certificate", "istio-spiffe-webhook-ca")["spec"]
    assert ca_certificate["isCA"] is True
    assert ca_issuer["spec"] == {"ca": {"secretName": ca_certificate["secretName"]}}
    root = one(objs, "Issuer", ca_certificate["issuerRef"]["name"])
    assert root["spec"] == {"selfSigned": {}}


def test_certs_install_carries_the_generated_ca_and_serving_pair(
    renders: dict[str, Objects], certs_dir: Path, settings: Settings
) -> None:
    objs = renders["certs"]
    bundle = webhook_of(objs)["clientConfig"]["caBundle"]
    assert bundle == base64.b64encode((certs_dir / "ca.crt").read_bytes()).decode()
    secret = one(objs, "Secret", TLS_SECRET)
    assert secret["metadata"]["namespace"] == settings.namespace
    assert secret["type"] == "kubernetes.io/tls"
    # kustomize wraps the base64 lines; what the API server stores is the decoded bytes.
    data = {key: base64.b64decode(value) for key, value in secret["data"].items()}
    assert data == {
        "tls.crt": (certs_dir / "tls.crt").read_bytes(),
        "tls.key": (certs_dir / "tls.key").read_bytes(),
    }
    mounted = pod_spec(objs)["volumes"][0]["secret"]["secretName"]
    assert mounted == secret["metadata"]["name"]
    assert container(objs)["image"] == IMAGE


def test_certs_kustomization_in_the_repo_is_the_one_rendered(certs_dir: Path) -> None:
    committed = (ROOT / "certs" / "kustomization.yaml").read_text()
    assert (certs_dir / "kustomization.yaml").read_text() == committed
    assert yaml.safe_load(committed)["resources"] == ["../manifests/overlays/self-signed"]


def test_certs_install_fails_clearly_before_certificates_exist(tmp_path: Path) -> None:
    shutil.copytree(MANIFESTS, tmp_path / "manifests")
    (tmp_path / "certs").mkdir()
    shutil.copy2(ROOT / "certs" / "kustomization.yaml", tmp_path / "certs")
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "kustomize", str(tmp_path / "certs")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "tls.crt" in done.stderr or "ca-bundle-patch.yaml" in done.stderr


def test_gitignore_keeps_generated_keys_out_and_the_kustomization_in() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.fail("these tests run in a git checkout")
    paths = ["certs/tls.key", "certs/ca.key", "certs/tls.crt", "certs/ca-bundle-patch.yaml"]
    done = subprocess.run(
        [
            "git",
            "check-ignore",
            "--no-index",
            *paths,
            "certs/kustomization.yaml",
            "certs/README.md",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert done.stdout.split() == paths


# --- the Dockerfile ----------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, rest = whole.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def stages() -> list[list[tuple[str, str]]]:
    """The build stages, each starting with its FROM, ARGs before the first FROM resolved."""
    args: dict[str, str] = {}
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile():
        if keyword == "ARG" and not result:
            name, _, default = rest.partition("=")
            args[name] = default
            continue
        if keyword == "FROM":
            rest = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest)
            result.append([])
        result[-1].append((keyword, rest))
    return result


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for part in shlex.split(rest):
                key, _, value = part.partition("=")
                env[key] = value
    return env


def test_dockerfile_builds_in_two_stages_from_python_3_11_slim() -> None:
    froms = [stage[0][1] for stage in stages()]
    assert froms == ["python:3.11-slim AS build", "python:3.11-slim"]


def test_dockerfile_installs_the_locked_dependencies_with_hashes_then_the_package() -> None:
    build = stages()[0]
    runs = [rest for keyword, rest in build if keyword == "RUN"]
    installs = [shlex.split(r) for r in runs if "pip install" in r]
    assert len(installs) == 2
    locked, package = installs
    assert "--require-hashes" in locked
    assert locked[locked.index("-r") + 1].endswith("requirements/runtime.lock")
    assert "--no-deps" in package and package[-1] == "/src"


def test_dockerfile_copies_only_what_the_package_needs() -> None:
    build, runtime = stages()
    sources = set()
    for keyword, rest in build:
        if keyword == "COPY":
            *src, _dest = shlex.split(rest)
            sources.update(src)
    assert sources == {"requirements/runtime.lock", "pyproject.toml", "README.md", "webhook"}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert pyproject["readme"] in sources  # the wheel's metadata reads it
    for source in sources:
        assert (ROOT / source).exists(), source
    assert [rest for keyword, rest in runtime if keyword == "COPY"] == [
        "--from=build /opt/venv /opt/venv"
    ]


def test_dockerfile_runs_serve_as_the_non_root_user_of_the_deployment(objects: Objects) -> None:
    runtime = stages()[-1]
    (user,) = [rest for keyword, rest in runtime if keyword == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit() and int(gid) != 0
    assert int(uid) == pod_spec(objects)["securityContext"]["runAsUser"]
    assert int(gid) == pod_spec(objects)["securityContext"]["runAsGroup"]
    assert [keyword for keyword, _ in runtime][-2:] == ["ENTRYPOINT", "CMD"]
    entrypoint = json.loads(dict(runtime)["ENTRYPOINT"])
    command = json.loads(dict(runtime)["CMD"])
    assert entrypoint == ["istio-spiffe-webhook"]
    assert command == ["serve"] == container(objects)["args"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[entrypoint[0]] == "webhook.cli:main"
    assert command[0] in COMMANDS


def test_dockerfile_suits_a_read_only_root_and_exposes_the_settings_ports(
    settings: Settings,
) -> None:
    runtime = stages()[-1]
    env = env_of(runtime)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith("/opt/venv/bin:")
    (exposed,) = [rest for keyword, rest in runtime if keyword == "EXPOSE"]
    assert sorted(int(p) for p in exposed.split()) == [settings.port, settings.metrics_port]


def test_runtime_lock_pins_every_dependency_with_hashes() -> None:
    text = (ROOT / "requirements" / "runtime.lock").read_text()
    pins: dict[str, int] = {}
    for block in re.split(r"\n(?=\S)", text):
        first = block.split("\\")[0].strip()
        if not first or first.startswith("#"):
            continue
        name, _, version = first.partition("==")
        assert version, f"not pinned with ==: {first}"
        pins[re.sub(r"[-_.]+", "-", name.lower())] = block.count("--hash=sha256:")
    assert all(count >= 1 for count in pins.values()), pins
    wanted = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in wanted:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
        assert re.sub(r"[-_.]+", "-", name.lower()) in pins, name


_GLOB = {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}


def dockerignored(path: str) -> bool:
    """Whether the build context leaves `path` out: the last matching .dockerignore pattern
    wins, `!` re-includes, and a pattern that matches a parent directory matches the path
    (Docker's rules: `*` does not cross `/`, `**` matches any number of directories)."""
    ignored = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = "".join(
            _GLOB.get(part, re.escape(part)) for part in re.split(r"(\*\*/|\*\*|\*|\?)", pattern)
        )
        parts = path.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, c) for c in candidates):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(
    "path",
    ["certs/tls.key", "certs/ca.key", ".venv/bin/python", "tests/test_manifests.py", ".git/HEAD",
     "manifests/base/kustomization.yaml", "webhook/__pycache__/app.cpython-311.pyc"],
)  # fmt: skip
def test_dockerignore_keeps_keys_virtualenvs_and_tests_out_of_the_build(path: str) -> None:
    assert dockerignored(path)


def test_dockerignore_sends_every_file_the_dockerfile_copies() -> None:
    sources = [
        path.relative_to(ROOT).as_posix()
        for source in ("requirements/runtime.lock", "pyproject.toml", "README.md", "webhook")
        for path in _files(ROOT / source)
        if "__pycache__" not in path.parts
    ]
    assert "webhook/cli.py" in sources
    assert [s for s in sources if dockerignored(s)] == []


def _files(path: Path) -> Iterator[Path]:
    if path.is_file():
        yield path
    else:
        yield from (p for p in sorted(path.rglob("*")) if p.is_file())


# --- the documentation ---------------------------------------------------------------------


def test_every_kustomization_the_docs_apply_exists() -> None:
    pages = [ROOT / name for name in ("README.md", "certs/README.md", "Dockerfile")]
    docs = "\n".join(page.read_text() for page in [*pages, *sorted(ROOT.glob("docs/*.md"))])
    paths = set(re.findall(r"kubectl (?:apply|delete) -k (\S+?)/?(?=[\s`)]|$)", docs, re.M))
    assert {"manifests/overlays/cert-manager", "certs", "manifests/overlays/policy"} <= paths
    for path in paths:
        assert (ROOT / path / "kustomization.yaml").is_file(), path
