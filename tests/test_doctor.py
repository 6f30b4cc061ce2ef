"""`doctor` through the real `kubernetes` client against tests/fakeapi.py.

Every check has a passing case (the healthy cluster) and a failing or warning case, each
asserted exactly, with the exit status: 0 when nothing fails, 1 on a fail, 2 when the
cluster cannot be reached or access is denied.
"""

from __future__ import annotations

import base64
import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tests import fakeapi as f
from webhook.certs import certificate_pem, make_ca, make_serving_certificate
from webhook.cli import main
from webhook.cluster.client import Cluster, ClusterError, load_api_client
from webhook.cluster.doctor import Doctor
from webhook.config import Settings
from webhook.policy import render_policy

NS = "istio-spiffe-webhook"
SVC = "istio-spiffe-webhook"
INJECT = "istio-spiffe-webhook/inject"


def serving(valid_days: int = 365, service: str = SVC) -> tuple[bytes, bytes]:
    """(CA PEM, serving certificate PEM) made by the project's own certs module."""
    ca_key, ca_cert = make_ca(valid_days=valid_days)
    _, cert = make_serving_certificate(
        ca_key, ca_cert, service=service, namespace=NS, valid_days=valid_days
    )
    return certificate_pem(ca_cert), certificate_pem(cert)


CA_PEM, CERT_PEM = serving()


def expiry_text(cert_pem: bytes) -> tuple[str, str]:
    from cryptography import x509

    after = x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
    days = (after - datetime.datetime.now(datetime.UTC)).total_seconds() / 86400
    return after.strftime("%Y-%m-%dT%H:%M:%SZ"), f"{days:.0f}"


def healthy(fake: f.FakeAPI) -> None:
    """A cluster set up right for the webhook form."""
    fake.add(
        f.csidriver("csi.spiffe.io"),
        f.webhook_configuration("istio-revision-tag-default", None, webhook_name="rev.istio.io"),
        f.webhook_configuration("istio-sidecar-injector", None, webhook_name="sidecar.istio.io"),
        f.webhook_configuration(SVC, CA_PEM),
        f.tls_secret("istio-spiffe-webhook-tls", NS, CERT_PEM, b"not a real key"),
        f.service(SVC, NS),
        f.endpoint_slice(SVC, NS, [True, None]),
        f.namespace("shop", {INJECT: "enabled", "istio-injection": "enabled"}),
        f.namespace("payments", {INJECT: "enabled", "istio.io/rev": "1-28"}),
        f.namespace("plain"),
        f.configmap("istio", "istio-system", {"mesh": "trustDomain: example.org\n"}),
    )


def doctor(kubeconfig: Path, *args: str) -> tuple[int, Any, str]:
    result = CliRunner().invoke(
        main, ["doctor", "--kubeconfig", str(kubeconfig), "-o", "json", *args]
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    body = json.loads(result.stdout) if result.stdout.strip() else None
    return result.exit_code, body, result.stderr


def by_name(report: Any) -> dict[str, dict[str, str]]:
    return {c["name"]: {k: v for k, v in c.items() if k != "name"} for c in report["checks"]}


def healthy_checks() -> list[dict[str, str]]:
    when, days = expiry_text(CERT_PEM)
    return [
        {
            "name": "admission-forms",
            "status": "pass",
            "message": "API server v1.36.2: both forms work; the MutatingAdmissionPolicy form"
            " is served as admissionregistration.k8s.io/v1",
            "fix": "",
        },
        {
            "name": "csi-driver",
            "status": "pass",
            "message": "CSIDriver csi.spiffe.io is installed",
            "fix": "",
        },
        {
            "name": "webhook-configuration",
            "status": "pass",
            "message": "MutatingWebhookConfiguration istio-spiffe-webhook is installed"
            " (pods.istio-spiffe-webhook.io)",
            "fix": "",
        },
        {
            "name": "reinvocation-policy",
            "status": "pass",
            "message": "reinvocationPolicy is IfNeeded",
            "fix": "",
        },
        {"name": "side-effects", "status": "pass", "message": "sideEffects is None", "fix": ""},
        {
            "name": "ca-bundle",
            "status": "pass",
            "message": "the caBundle verifies the serving certificate in Secret"
            " istio-spiffe-webhook/istio-spiffe-webhook-tls",
            "fix": "",
        },
        {
            "name": "serving-certificate",
            "status": "pass",
            "message": "the serving certificate names istio-spiffe-webhook.istio-spiffe-webhook"
            f".svc and expires at {when}, in {days} days",
            "fix": "",
        },
        {
            "name": "service-endpoints",
            "status": "pass",
            "message": "Service istio-spiffe-webhook/istio-spiffe-webhook has 2 ready endpoints",
            "fix": "",
        },
        {
            "name": "ordering",
            "status": "pass",
            "message": "istio-spiffe-webhook sorts after every Istio injector configuration"
            " (istio-revision-tag-default, istio-sidecar-injector)",
            "fix": "",
        },
        {
            "name": "namespaces",
            "status": "pass",
            "message": "every namespace labelled istio-spiffe-webhook/inject=enabled has Istio"
            " injection enabled: payments, shop",
            "fix": "",
        },
    ]


RENEW = (
    "with cert-manager: kubectl -n istio-spiffe-webhook describe certificate; self-managed:"
    " istio-spiffe-webhook certs --force && kubectl apply -k certs/"
)


def test_a_healthy_cluster_passes_every_check_and_exits_0(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    healthy(fake)
    code, report, stderr = doctor(kubeconfig)
    assert (code, stderr) == (0, "")
    assert report == {
        "form": "webhook",
        "checks": healthy_checks(),
        "summary": {"pass": 10, "warn": 0, "fail": 0},
    }


def test_the_doctors_checks_are_returned_as_data(fake: f.FakeAPI, kubeconfig: Path) -> None:
    healthy(fake)
    fake.remove(f.csidriver("csi.spiffe.io"))
    doctor = Doctor(Cluster(load_api_client(str(kubeconfig))), Settings())
    report = doctor.run(trust_domain="example.org")
    checks = healthy_checks()
    checks[1] = {
        "name": "csi-driver",
        "status": "fail",
        "message": "CSIDriver csi.spiffe.io is not installed: rewritten pods cannot start"
        " (their workload-socket volume cannot be mounted)",
        "fix": "install the SPIFFE CSI driver (for SPIRE: the spiffe-csi-driver chart or"
        " manifests) or set csi_driver to the driver you run",
    }
    trust_domain = {
        "name": "trust-domain",
        "status": "pass",
        "message": "Istio's mesh config has trustDomain example.org",
        "fix": "",
    }
    assert report == {
        "form": "webhook",
        "checks": [*checks, trust_domain],
        "summary": {"pass": 10, "warn": 0, "fail": 1},
    }


def test_the_doctor_raises_cluster_error_when_access_is_denied(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    healthy(fake)
    fake.deny("csidrivers")
    doctor = Doctor(Cluster(load_api_client(str(kubeconfig))), Settings())
    with pytest.raises(ClusterError) as caught:
        doctor.run()
    assert str(caught.value) == (
        'access denied while reading CSIDriver csi.spiffe.io: csidrivers "csi.spiffe.io" is'
        ' forbidden: User "system:serviceaccount:default:auditor" cannot get resource'
        ' "csidrivers" in API group "storage.k8s.io" at the cluster scope'
    )


def test_the_table_prints_each_check_its_status_and_a_summary(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    healthy(fake)
    fake.remove(f.csidriver("csi.spiffe.io"))
    result = CliRunner().invoke(main, ["doctor", "--kubeconfig", str(kubeconfig)])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[1] == (
        "FAIL  csi-driver             CSIDriver csi.spiffe.io is not installed: rewritten pods"
        " cannot start (their workload-socket volume cannot be mounted)"
    )
    assert lines[2] == (
        "                             fix: install the SPIFFE CSI driver (for SPIRE: the"
        " spiffe-csi-driver chart or manifests) or set csi_driver to the driver you run"
    )
    assert lines[3].startswith("PASS  webhook-configuration  MutatingWebhookConfiguration")
    assert lines[-1] == "form: webhook; 9 pass, 0 warn, 1 fail"


def _other_ca(fake: f.FakeAPI) -> None:
    other_ca, _ = serving()
    fake.add(f.webhook_configuration(SVC, other_ca))


def _wrong_name(fake: f.FakeAPI) -> None:
    ca, cert = serving(service="someone-else")
    fake.add(f.webhook_configuration(SVC, ca), f.tls_secret("istio-spiffe-webhook-tls", NS, cert))


CA_FIX = (
    "with cert-manager: check the cert-manager.io/inject-ca-from annotation and cainjector's"
    " logs; self-managed: kubectl apply -k certs/ (it sets both)"
)
DEBUG_FIX = (
    "kubectl -n istio-spiffe-webhook get pods -l app.kubernetes.io/name=istio-spiffe-webhook;"
    " kubectl -n istio-spiffe-webhook describe deployment istio-spiffe-webhook"
)

# (what breaks, how, the check that reports it, exactly as reported)
BROKEN: list[tuple[str, Callable[[f.FakeAPI], None], str, dict[str, str]]] = [
    (
        "no CSI driver",
        lambda fake: fake.remove(f.csidriver("csi.spiffe.io")),
        "csi-driver",
        {
            "status": "fail",
            "message": "CSIDriver csi.spiffe.io is not installed: rewritten pods cannot start"
            " (their workload-socket volume cannot be mounted)",
            "fix": "install the SPIFFE CSI driver (for SPIRE: the spiffe-csi-driver chart or"
            " manifests) or set csi_driver to the driver you run",
        },
    ),
    (
        "reinvocation Never",
        lambda fake: fake.add(f.webhook_configuration(SVC, CA_PEM, reinvocation="Never")),
        "reinvocation-policy",
        {
            "status": "fail",
            "message": "reinvocationPolicy is Never, not IfNeeded: a pod reaching the webhook"
            " before Istio's injector keeps its 1-hour certificates",
            "fix": "kubectl patch mutatingwebhookconfiguration istio-spiffe-webhook --type=json"
            ' -p \'[{"op":"add","path":"/webhooks/0/reinvocationPolicy","value":"IfNeeded"}]\'',
        },
    ),
    (
        "side effects",
        lambda fake: fake.add(f.webhook_configuration(SVC, CA_PEM, side_effects="Some")),
        "side-effects",
        {
            "status": "fail",
            "message": "sideEffects is Some, not None: dry-run requests (kubectl"
            " --dry-run=server) are refused",
            "fix": "kubectl patch mutatingwebhookconfiguration istio-spiffe-webhook --type=json"
            ' -p \'[{"op":"replace","path":"/webhooks/0/sideEffects","value":"None"}]\'',
        },
    ),
    (
        "caBundle of another CA",
        _other_ca,
        "ca-bundle",
        {
            "status": "fail",
            "message": "the caBundle does not verify the serving certificate in Secret"
            " istio-spiffe-webhook/istio-spiffe-webhook-tls: pods.istio-spiffe-webhook.io: no"
            " certificate in it signed CN=istio-spiffe-webhook CA (the API server cannot call"
            " the webhook)",
            "fix": CA_FIX,
        },
    ),
    (
        "empty caBundle",
        lambda fake: fake.add(f.webhook_configuration(SVC, None)),
        "ca-bundle",
        {
            "status": "fail",
            "message": "the caBundle does not verify the serving certificate in Secret"
            " istio-spiffe-webhook/istio-spiffe-webhook-tls: pods.istio-spiffe-webhook.io: the"
            " caBundle is empty (the API server cannot call the webhook)",
            "fix": CA_FIX,
        },
    ),
    (
        "no serving certificate Secret",
        lambda fake: fake.remove(f.tls_secret("istio-spiffe-webhook-tls", NS, b"")),
        "serving-certificate",
        {
            "status": "fail",
            "message": "Secret istio-spiffe-webhook/istio-spiffe-webhook-tls is missing",
            "fix": RENEW,
        },
    ),
    (
        "certificate for another Service",
        _wrong_name,
        "serving-certificate",
        {
            "status": "fail",
            "message": "the serving certificate does not name"
            " istio-spiffe-webhook.istio-spiffe-webhook.svc (it names someone-else,"
            " someone-else.istio-spiffe-webhook, someone-else.istio-spiffe-webhook.svc,"
            " someone-else.istio-spiffe-webhook.svc.cluster.local): the API server's TLS"
            " check fails",
            "fix": RENEW,
        },
    ),
    (
        "no ready endpoints",
        lambda fake: fake.add(f.endpoint_slice(SVC, NS, [False, False])),
        "service-endpoints",
        {
            "status": "fail",
            "message": "Service istio-spiffe-webhook/istio-spiffe-webhook has no ready endpoints:"
            " pod creation in opted-in namespaces fails (failurePolicy Fail)",
            "fix": DEBUG_FIX,
        },
    ),
    (
        "no Service",
        lambda fake: fake.remove(f.service(SVC, NS)),
        "service-endpoints",
        {
            "status": "fail",
            "message": "Service istio-spiffe-webhook/istio-spiffe-webhook is missing: the API"
            " server cannot call the webhook",
            "fix": "kubectl apply -k manifests/overlays/cert-manager (or certs/)",
        },
    ),
    (
        "Istio injection disabled in an opted-in namespace",
        lambda fake: fake.add(
            f.namespace("shop", {INJECT: "enabled", "istio-injection": "disabled"})
        ),
        "namespaces",
        {
            "status": "fail",
            "message": "labelled istio-spiffe-webhook/inject=enabled but Istio injection is"
            " disabled: shop",
            "fix": "kubectl label namespace shop istio-injection=enabled --overwrite",
        },
    ),
    (
        "tls.crt is not a certificate",
        lambda fake: fake.add(
            f.tls_secret("istio-spiffe-webhook-tls", NS, b"-----BEGIN CERTIFICATE-----\nnope\n")
        ),
        "serving-certificate",
        {
            "status": "fail",
            "message": "Secret istio-spiffe-webhook/istio-spiffe-webhook-tls: tls.crt is not a"
            " PEM certificate",
            "fix": RENEW,
        },
    ),
    (
        "a webhook configuration without webhooks",
        lambda fake: fake.add(
            {**f.webhook_configuration(SVC, CA_PEM), "webhooks": []}  # kubectl edit, say
        ),
        "webhook-configuration",
        {
            "status": "fail",
            "message": "MutatingWebhookConfiguration istio-spiffe-webhook has no webhooks",
            "fix": "kubectl apply -k manifests/overlays/cert-manager (or certs/)",
        },
    ),
    (
        "no webhook and no policy",
        lambda fake: fake.remove(f.webhook_configuration(SVC, None)),
        "installed",
        {
            "status": "fail",
            "message": "neither the MutatingWebhookConfiguration istio-spiffe-webhook nor a"
            " MutatingAdmissionPolicy istio-spiffe-webhook is installed: new pods are not"
            " rewritten",
            "fix": "install it: kubectl apply -k manifests/overlays/cert-manager (or certs/ with"
            " self-managed certificates, or manifests/overlays/policy on Kubernetes 1.36+)",
        },
    ),
]


@pytest.mark.parametrize(
    ("breakage", "check", "expected"),
    [(how, check, expected) for _, how, check, expected in BROKEN],
    ids=[name for name, *_ in BROKEN],
)
def test_each_broken_setting_fails_its_check_with_the_fix_and_exits_1(
    fake: f.FakeAPI,
    kubeconfig: Path,
    breakage: Callable[[f.FakeAPI], None],
    check: str,
    expected: dict[str, str],
) -> None:
    healthy(fake)
    breakage(fake)
    code, report, _ = doctor(kubeconfig)
    assert code == 1
    assert by_name(report)[check] == expected


def test_a_certificate_expiring_within_14_days_fails(fake: f.FakeAPI, kubeconfig: Path) -> None:
    healthy(fake)
    ca, cert = serving(valid_days=10)
    fake.add(f.webhook_configuration(SVC, ca), f.tls_secret("istio-spiffe-webhook-tls", NS, cert))
    when, days = expiry_text(cert)
    code, report, _ = doctor(kubeconfig)
    assert (code, days) == (1, "10")
    assert by_name(report)["serving-certificate"] == {
        "status": "fail",
        "message": f"the serving certificate expires at {when}, in 10 days (less than 14):"
        " renewal is not working",
        "fix": RENEW,
    }
    assert by_name(report)["ca-bundle"]["status"] == "pass"


AAA_ORDERING = {
    "IfNeeded": (
        0,
        {
            "status": "warn",
            "message": "aaa-spiffe sorts before istio-revision-tag-default, istio-sidecar-injector;"
            " reinvocationPolicy IfNeeded makes the API server call it again after Istio's"
            " injector (one more call per pod)",
            "fix": "nothing is broken; to save the second call, name the configuration so it"
            " sorts after istio-sidecar-injector (setting webhook_configuration)",
        },
    ),
    "Never": (
        1,
        {
            "status": "fail",
            "message": "aaa-spiffe sorts before istio-revision-tag-default,"
            " istio-sidecar-injector and is not reinvoked: it sees pods before Istio adds"
            " istio-proxy and leaves them with 1-hour certificates",
            "fix": "set reinvocationPolicy: IfNeeded on aaa-spiffe",
        },
    ),
}


@pytest.mark.parametrize("reinvocation", sorted(AAA_ORDERING))
def test_a_name_sorting_before_istios_injector_warns_if_reinvoked_and_fails_if_not(
    fake: f.FakeAPI, tmp_path: Path, reinvocation: str
) -> None:
    healthy(fake)
    fake.add(f.webhook_configuration("aaa-spiffe", CA_PEM, reinvocation=reinvocation))
    config = tmp_path / "config.yaml"
    config.write_text("webhook_configuration: aaa-spiffe\n")
    code, report, _ = doctor(fake.kubeconfig(tmp_path), "--config", str(config))
    assert (code, by_name(report)["ordering"]) == AAA_ORDERING[reinvocation]


def test_no_istio_injector_configuration_warns(fake: f.FakeAPI, kubeconfig: Path) -> None:
    healthy(fake)
    fake.remove(f.webhook_configuration("istio-sidecar-injector", None))
    fake.remove(f.webhook_configuration("istio-revision-tag-default", None))
    code, report, _ = doctor(kubeconfig)
    assert code == 0
    assert by_name(report)["ordering"] == {
        "status": "warn",
        "message": "no Istio injector configuration found (istio-sidecar-injector*,"
        " istio-revision-tag-*): is Istio's sidecar injector installed?",
        "fix": "install Istio with its sidecar injector",
    }


def test_opted_in_namespaces_without_istio_labels_and_none_at_all_warn(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    healthy(fake)
    fake.add(f.namespace("shop", {INJECT: "enabled"}))
    code, report, _ = doctor(kubeconfig)
    assert code == 0
    assert by_name(report)["namespaces"] == {
        "status": "warn",
        "message": "labelled istio-spiffe-webhook/inject=enabled without istio-injection=enabled"
        " or istio.io/rev: shop (only pods labelled sidecar.istio.io/inject=true get a sidecar"
        " there)",
        "fix": "kubectl label namespace shop istio-injection=enabled",
    }
    fake.add(f.namespace("shop"), f.namespace("payments"))
    code, report, _ = doctor(kubeconfig)
    assert code == 0
    assert by_name(report)["namespaces"] == {
        "status": "warn",
        "message": "no namespace is labelled istio-spiffe-webhook/inject=enabled: the webhook"
        " rewrites nothing",
        "fix": "kubectl label namespace <namespace> istio-spiffe-webhook/inject=enabled",
    }


def test_the_trust_domain_matches_istios_mesh_config(fake: f.FakeAPI, kubeconfig: Path) -> None:
    healthy(fake)
    code, report, _ = doctor(kubeconfig, "--trust-domain", "example.org")
    assert code == 0
    assert by_name(report)["trust-domain"] == {
        "status": "pass",
        "message": "Istio's mesh config has trustDomain example.org",
        "fix": "",
    }


def test_a_different_trust_domain_fails_and_an_unset_one_is_cluster_local(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    healthy(fake)
    fake.add(f.configmap("istio-1-28", "istio-system", {"mesh": "defaultConfig: {}\n"}))
    code, report, _ = doctor(kubeconfig, "--trust-domain", "example.org")
    assert code == 1
    assert by_name(report)["trust-domain"] == {
        "status": "fail",
        "message": "istio-system/istio-1-28 has trustDomain cluster.local, not example.org:"
        " workloads whose SVIDs come from example.org fail mTLS with Istio's expectations",
        "fix": "set meshConfig.trustDomain: example.org in Istio's install (for example istioctl"
        " install --set meshConfig.trustDomain=example.org) and restart the workloads",
    }


def test_a_missing_mesh_config_fails_the_trust_domain_check(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    healthy(fake)
    fake.remove(f.configmap("istio", "istio-system", {}))
    code, report, _ = doctor(kubeconfig, "--trust-domain", "example.org")
    assert code == 1
    assert by_name(report)["trust-domain"] == {
        "status": "fail",
        "message": "Istio's mesh config (ConfigMap istio-system/istio, key mesh) was not found",
        "fix": "install Istio, or pass --istio-namespace where it lives",
    }


def test_no_access_to_istios_config_maps_fails_the_trust_domain_check_with_the_grant(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    """The base install grants nothing in Istio's namespace: doctor still runs every other
    check, and says how to allow the one it could not do."""
    healthy(fake)
    fake.deny("configmaps")
    code, report, stderr = doctor(kubeconfig, "--trust-domain", "example.org")
    assert (code, stderr) == (1, "")
    assert report["checks"][:-1] == healthy_checks()
    assert report["checks"][-1] == {
        "name": "trust-domain",
        "status": "fail",
        "message": "not checked: access denied while reading ConfigMaps in namespace"
        ' istio-system: configmaps is forbidden: User "system:serviceaccount:default:auditor"'
        ' cannot list resource "configmaps" in API group "" in the namespace "istio-system"',
        "fix": "allow get and list on configmaps in namespace istio-system: for the"
        " istio-spiffe-webhook ServiceAccount, add the kustomize component"
        " manifests/components/istio-mesh-config-reader (its comment says how to change the"
        " namespace); or run doctor without --trust-domain",
    }


@pytest.mark.parametrize(
    ("minor", "versions", "message"),
    [
        (
            35,
            ("v1beta1",),
            "API server v1.35.2: both forms work; the MutatingAdmissionPolicy form only as"
            " admissionregistration.k8s.io/v1beta1 (render it with `istio-spiffe-webhook policy"
            " --api-version v1beta1`)",
        ),
        (
            33,
            (),
            "API server v1.33.2: only the webhook form works; the MutatingAdmissionPolicy form"
            " needs Kubernetes 1.36+, or 1.34-1.35 with the MutatingAdmissionPolicy feature gate"
            " and admissionregistration.k8s.io/v1beta1 enabled",
        ),
    ],
)
def test_the_admission_forms_the_api_server_serves_are_named(
    tmp_path: Path, minor: int, versions: tuple[str, ...], message: str
) -> None:
    fake = f.FakeAPI(minor=minor, policy_versions=versions)
    with f.running(fake):
        healthy(fake)
        code, report, _ = doctor(fake.kubeconfig(tmp_path))
    assert code == 0
    assert by_name(report)["admission-forms"] == {"status": "pass", "message": message, "fix": ""}


def policy_objects(api_version: str = "v1", **changes: Any) -> list[dict[str, Any]]:
    """The policy and binding as `istio-spiffe-webhook policy` renders them, stored."""
    objects = []
    for obj in render_policy(Settings(), api_version):  # type: ignore[arg-type]
        obj = json.loads(json.dumps(obj))
        obj["metadata"].update({"uid": f.uid(), "creationTimestamp": f.TIMESTAMP})
        if obj["kind"] == "MutatingAdmissionPolicy":
            obj["spec"].update(changes)
        objects.append(obj)
    return objects


def policy_cluster(fake: f.FakeAPI) -> None:
    healthy(fake)
    fake.remove(f.webhook_configuration(SVC, None))
    fake.add(*policy_objects())


POLICY_FIX = "istio-spiffe-webhook policy | kubectl apply -f -"


def test_the_policy_form_is_checked_instead_of_the_webhook(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    policy_cluster(fake)
    code, report, _ = doctor(kubeconfig)
    assert code == 0
    assert report["form"] == "policy"
    assert [(c["name"], c["status"]) for c in report["checks"]] == [
        ("admission-forms", "pass"),
        ("csi-driver", "pass"),
        ("policy", "pass"),
        ("reinvocation-policy", "pass"),
        ("policy-binding", "pass"),
        ("policy-settings", "pass"),
        ("namespaces", "pass"),
    ]
    assert by_name(report)["policy-binding"]["message"] == (
        "MutatingAdmissionPolicyBinding istio-spiffe-webhook binds istio-spiffe-webhook"
    )


def test_a_policy_without_binding_or_reinvocation_fails(fake: f.FakeAPI, kubeconfig: Path) -> None:
    healthy(fake)
    fake.remove(f.webhook_configuration(SVC, None))
    policy, _binding = policy_objects(reinvocationPolicy="Never")
    fake.add(policy)
    code, report, _ = doctor(kubeconfig)
    assert code == 1
    checks = by_name(report)
    assert checks["policy-binding"] == {
        "status": "fail",
        "message": "no MutatingAdmissionPolicyBinding binds istio-spiffe-webhook: the policy"
        " does nothing",
        "fix": POLICY_FIX,
    }
    assert checks["reinvocation-policy"] == {
        "status": "fail",
        "message": "reinvocationPolicy is Never, not IfNeeded: policies run before Istio's"
        " injector, so without it no pod is rewritten",
        "fix": POLICY_FIX,
    }


def test_a_policy_rendered_from_other_settings_warns(fake: f.FakeAPI, kubeconfig: Path) -> None:
    healthy(fake)
    fake.remove(f.webhook_configuration(SVC, None))
    other = Settings(csi_driver="csi.example.com")
    objects = [json.loads(json.dumps(o)) for o in render_policy(other)]
    fake.add(*objects)
    code, report, _ = doctor(kubeconfig)
    assert code == 0
    assert by_name(report)["policy-settings"] == {
        "status": "warn",
        "message": "the policy's variables or mutations differ from what `istio-spiffe-webhook"
        " policy` renders with these settings (another version or other settings?)",
        "fix": POLICY_FIX,
    }


def test_the_v1beta1_policy_form_on_1_35_is_checked_with_its_own_fix(tmp_path: Path) -> None:
    fake = f.FakeAPI(minor=35, policy_versions=("v1beta1",))
    with f.running(fake):
        healthy(fake)
        fake.remove(f.webhook_configuration(SVC, None))
        policy, _binding = policy_objects("v1beta1")
        fake.add(policy)
        code, report, _ = doctor(fake.kubeconfig(tmp_path))
    assert (code, report["form"]) == (1, "policy")
    assert by_name(report)["policy"]["message"] == (
        "MutatingAdmissionPolicy istio-spiffe-webhook is installed"
        " (admissionregistration.k8s.io/v1beta1)"
    )
    assert by_name(report)["policy-settings"]["status"] == "pass"
    assert by_name(report)["policy-binding"] == {
        "status": "fail",
        "message": "no MutatingAdmissionPolicyBinding binds istio-spiffe-webhook: the policy"
        " does nothing",
        "fix": "istio-spiffe-webhook policy --api-version v1beta1 | kubectl apply -f -",
    }


def test_both_forms_installed_warns(fake: f.FakeAPI, kubeconfig: Path) -> None:
    healthy(fake)
    fake.add(*policy_objects())
    code, report, _ = doctor(kubeconfig)
    assert code == 0
    assert report["form"] == "webhook"
    assert by_name(report)["one-form"] == {
        "status": "warn",
        "message": "both the webhook and the MutatingAdmissionPolicy istio-spiffe-webhook are"
        " installed: they agree, but each pod is rewritten twice",
        "fix": "remove one: kubectl delete mutatingadmissionpolicy/istio-spiffe-webhook"
        " mutatingadmissionpolicybinding/istio-spiffe-webhook, or kubectl delete"
        " mutatingwebhookconfiguration/istio-spiffe-webhook",
    }


def test_access_denied_exits_2_with_the_api_servers_message(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    healthy(fake)
    fake.deny("secrets")
    code, report, stderr = doctor(kubeconfig)
    assert (code, report) == (2, None)
    assert stderr == (
        "Error: access denied while reading Secret istio-spiffe-webhook-tls in namespace"
        ' istio-spiffe-webhook: secrets "istio-spiffe-webhook-tls" is forbidden: User'
        ' "system:serviceaccount:default:auditor" cannot get resource "secrets" in API group ""'
        ' in the namespace "istio-spiffe-webhook"\n'
    )


def test_an_unreachable_cluster_exits_2_with_one_line(fake: f.FakeAPI, tmp_path: Path) -> None:
    port = f.closed_port()
    kubeconfig = fake.kubeconfig(tmp_path, server=f"http://127.0.0.1:{port}")
    code, report, stderr = doctor(kubeconfig)
    assert (code, report) == (2, None)
    assert stderr == (
        f"Error: cannot reach the Kubernetes API at http://127.0.0.1:{port}: connection refused\n"
    )


def test_doctor_runs_as_a_command(fake: f.FakeAPI, kubeconfig: Path) -> None:
    healthy(fake)
    done = f.run_command(kubeconfig, "doctor", "-o", "json", "--trust-domain", "example.org")
    assert (done.returncode, done.stderr) == (0, "")
    report = json.loads(done.stdout)
    assert report["summary"] == {"pass": 11, "warn": 0, "fail": 0}
    assert yaml.safe_load(done.stdout) == report  # plain JSON, nothing else on stdout


def test_the_ca_bundle_check_accepts_only_the_signing_ca() -> None:
    from webhook.cluster.doctor import _verify_bundle

    ca_key, ca_cert = make_ca("root", valid_days=30)
    _, other_ca = make_ca("other", valid_days=30)
    _, leaf = make_serving_certificate(ca_key, ca_cert, service=SVC, namespace=NS)
    bundle = base64.b64encode(certificate_pem(ca_cert)).decode()
    other = base64.b64encode(certificate_pem(other_ca)).decode()
    assert _verify_bundle(bundle, [leaf]) == ""
    assert _verify_bundle(other, [leaf]) == "no certificate in it signed CN=root"
    assert _verify_bundle("not base64!", [leaf]) == "the caBundle is not base64 of PEM certificates"


def test_the_fake_apis_answers_deserialize_into_the_clients_own_models(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    """The fake serves Kubernetes' shapes: the client's typed models accept every answer."""
    from kubernetes import client

    from tests.oracle import admission_reviews
    from webhook.cluster.client import load_api_client

    healthy(fake)
    pod = admission_reviews()["hello-native"]["request"]["object"]
    fake.add(f.running_pod(pod, "hello-1", "shop"), *policy_objects())
    api = load_api_client(str(kubeconfig))
    core, admission = client.CoreV1Api(api), client.AdmissionregistrationV1Api(api)
    pods = core.list_pod_for_all_namespaces(limit=1)
    names = [c.name for c in pods.items[0].spec.init_containers + pods.items[0].spec.containers]
    assert type(pods).__name__ == "V1PodList"
    assert names == [c["name"] for c in pod["spec"]["initContainers"] + pod["spec"]["containers"]]
    assert set(api.sanitize_for_serialization(pods.metadata)) == {"resourceVersion"}  # no continue
    assert [n.metadata.name for n in core.list_namespace().items] == ["payments", "plain", "shop"]
    secret = core.read_namespaced_secret("istio-spiffe-webhook-tls", NS)
    assert base64.b64decode(secret.data["tls.crt"]) == CERT_PEM
    slices = client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(NS)
    assert [e.conditions.ready for e in slices.items[0].endpoints] == [True, None]
    webhooks = admission.list_mutating_webhook_configuration().items
    assert [w.webhooks[0].reinvocation_policy for w in webhooks] == ["IfNeeded"] * 3
    assert admission.read_mutating_admission_policy(
        "istio-spiffe-webhook"
    ).spec.reinvocation_policy == ("IfNeeded")
    driver = client.StorageV1Api(api).read_csi_driver("csi.spiffe.io")
    assert driver.spec.volume_lifecycle_modes == ["Ephemeral"]
    assert client.VersionApi(api).get_code().git_version == "v1.36.2"
    groups = client.ApisApi(api).get_api_versions().groups
    assert "admissionregistration.k8s.io" in [g.name for g in groups]
    resources = admission.get_api_resources().resources
    assert "mutatingadmissionpolicies" in [r.name for r in resources]
