"""`webhook.certs` and `istio-spiffe-webhook certs`: chain, SANs, modes, overwrite, patch."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from webhook.certs import (
    CertificateFiles,
    CertificatesExist,
    certificate_expiry,
    general_name,
    make_ca,
    make_serving_certificate,
    service_names,
    write_certificates,
)
from webhook.cli import main

SERVICE_NAMES = [
    "istio-spiffe-webhook",
    "istio-spiffe-webhook.istio-spiffe-webhook",
    "istio-spiffe-webhook.istio-spiffe-webhook.svc",
    "istio-spiffe-webhook.istio-spiffe-webhook.svc.cluster.local",
]


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(certificate: x509.Certificate) -> list[x509.GeneralName]:
    return list(certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["certs", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def test_the_ca_signs_the_serving_certificate_for_every_service_name_and_extra_san(
    tmp_path: Path,
) -> None:
    files = write_certificates(
        tmp_path,
        service="istio-spiffe-webhook",
        namespace="istio-spiffe-webhook",
        extra_sans=["127.0.0.1", "localhost"],
    )
    ca, leaf = load(files.ca_cert), load(files.cert)
    store = Store([ca])
    for name in [*SERVICE_NAMES, "localhost"]:
        verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name))
        chain = verifier.verify(leaf, [])
        assert chain == [leaf, ca]
    verifier = (
        PolicyBuilder()
        .store(store)
        .build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    )
    assert verifier.verify(leaf, []) == [leaf, ca]


def test_a_name_that_is_not_a_san_does_not_verify(tmp_path: Path) -> None:
    files = write_certificates(tmp_path, service="hook", namespace="ns")
    verifier = (
        PolicyBuilder()
        .store(Store([load(files.ca_cert)]))
        .build_server_verifier(x509.DNSName("hook.other.svc"))
    )
    with pytest.raises(x509.verification.VerificationError):
        verifier.verify(load(files.cert), [])


def test_sans_are_the_four_service_names_then_the_extra_ones_ip_as_ip_and_dns_as_dns() -> None:
    ca_key, ca = make_ca()
    _, leaf = make_serving_certificate(
        ca_key,
        ca,
        service="istio-spiffe-webhook",
        namespace="istio-spiffe-webhook",
        extra_sans=["127.0.0.1", "localhost", "::1", "webhook.example.com", "localhost"],
    )
    assert sans(leaf) == [
        *(x509.DNSName(name) for name in SERVICE_NAMES),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("::1")),
        x509.DNSName("webhook.example.com"),
    ]


def test_the_ca_may_sign_leaves_only_and_the_leaf_is_a_tls_server_certificate() -> None:
    ca_key, ca = make_ca()
    _, leaf = make_serving_certificate(ca_key, ca, service="s", namespace="n")
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert (constraints.critical, constraints.value.ca, constraints.value.path_length) == (
        True,
        True,
        0,
    )
    assert ca.subject == ca.issuer
    leaf_constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert leaf_constraints.ca is False
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert leaf.issuer == ca.subject
    assert leaf.subject.rfc4514_string() == "CN=s.n.svc"


def test_keys_are_0600_and_certificates_0644(tmp_path: Path) -> None:
    files = write_certificates(tmp_path / "out", service="s", namespace="n")
    modes = {
        path.name: stat.S_IMODE(path.stat().st_mode)
        for path in (files.ca_cert, files.ca_key, files.cert, files.key, files.ca_bundle_patch)
    }
    assert modes == {
        "ca.crt": 0o644,
        "ca.key": 0o600,
        "tls.crt": 0o644,
        "tls.key": 0o600,
        "ca-bundle-patch.yaml": 0o644,
    }
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(modes)


def test_validity_is_the_given_days_from_five_minutes_ago(tmp_path: Path) -> None:
    files = write_certificates(tmp_path, service="s", namespace="n", valid_days=30)
    leaf = load(files.cert)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == datetime.timedelta(
        days=30, minutes=5
    )
    assert certificate_expiry(files.cert) == leaf.not_valid_after_utc


def test_certificate_expiry_of_a_file_without_a_certificate_is_a_clear_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "garbage.crt"
    path.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=r"garbage\.crt: no PEM certificate found"):
        certificate_expiry(path)


def test_the_patch_sets_the_ca_bundle_of_the_configured_webhook_configuration(
    tmp_path: Path,
) -> None:
    code, _, stderr = run(
        "--out", str(tmp_path), env={"ISTIO_SPIFFE_WEBHOOK_WEBHOOK_CONFIGURATION": "my-hook"}
    )
    assert (code, stderr) == (0, "")
    text = (tmp_path / "ca-bundle-patch.yaml").read_text()
    bundle = base64.b64encode((tmp_path / "ca.crt").read_bytes()).decode()
    assert yaml.safe_load(text) == [
        {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": bundle}
    ]
    assert "#       target: {kind: MutatingWebhookConfiguration, name: my-hook}\n" in text


def test_kustomize_applies_the_patch_to_the_webhook_configuration(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is part of the development machine (README); it is missing"
    write_certificates(tmp_path, service="istio-spiffe-webhook", namespace="ns")
    (tmp_path / "webhook.yaml").write_text(
        "apiVersion: admissionregistration.k8s.io/v1\n"
        "kind: MutatingWebhookConfiguration\n"
        "metadata: {name: istio-spiffe-webhook}\n"
        "webhooks:\n"
        "  - name: pods.istio-spiffe-webhook.io\n"
        "    clientConfig: {service: {name: istio-spiffe-webhook, namespace: ns}}\n"
    )
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [webhook.yaml]\n"
        "patches:\n"
        "  - path: ca-bundle-patch.yaml\n"
        "    target: {kind: MutatingWebhookConfiguration, name: istio-spiffe-webhook}\n"
    )
    rendered = subprocess.run(
        [kubectl, "kustomize", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    webhook = yaml.safe_load(rendered)["webhooks"][0]
    assert (
        base64.b64decode(webhook["clientConfig"]["caBundle"]) == (tmp_path / "ca.crt").read_bytes()
    )


def test_the_writer_returns_the_paths_it_wrote_and_refuses_to_overwrite_without_force(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    files = write_certificates(out, service="s", namespace="n")
    five = (
        out / "ca.crt",
        out / "ca.key",
        out / "tls.crt",
        out / "tls.key",
        out / "ca-bundle-patch.yaml",
    )
    assert files == CertificateFiles(
        directory=out,
        ca_cert=five[0],
        ca_key=five[1],
        cert=five[2],
        key=five[3],
        ca_bundle_patch=five[4],
        written=five,
        warnings=(),
    )
    written = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(written) == ["ca-bundle-patch.yaml", "ca.crt", "ca.key", "tls.crt", "tls.key"]
    with pytest.raises(CertificatesExist) as caught:
        write_certificates(out, service="s", namespace="n", extra_sans=["localhost"])
    assert str(caught.value) == (
        f"{out / 'ca.crt'}, {out / 'ca.key'}, {out / 'tls.crt'}, {out / 'tls.key'},"
        f" {out / 'ca-bundle-patch.yaml'} already exist (use --force to overwrite)"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == written
    assert write_certificates(out, service="s", namespace="n", force=True) == files
    assert (out / "tls.crt").read_bytes() != written["tls.crt"]


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("10.0.0.7", x509.IPAddress(ipaddress.ip_address("10.0.0.7"))),
        ("::1", x509.IPAddress(ipaddress.ip_address("::1"))),
        ("Hook.Example.org", x509.DNSName("hook.example.org")),
        ("*.example.org", x509.DNSName("*.example.org")),
    ],
)
def test_general_name_makes_ip_addresses_ip_sans_and_the_rest_dns_names(
    value: str, name: x509.GeneralName
) -> None:
    assert general_name(value) == name


def test_general_name_refuses_what_is_neither() -> None:
    with pytest.raises(ValueError) as caught:
        general_name("bad name")
    assert str(caught.value) == "not an IP address or a DNS name: 'bad name'"


def test_the_command_writes_the_five_files_with_service_and_namespace_from_options(
    tmp_path: Path,
) -> None:
    out = tmp_path / "certs"
    code, stdout, stderr = run(
        "--out", str(out), "--service", "hook", "--namespace", "infra", "--san", "10.0.0.7"
    )
    assert (code, stderr) == (0, "")
    assert stdout.splitlines() == [
        f"wrote {out / name}"
        for name in ("ca.crt", "ca.key", "tls.crt", "tls.key", "ca-bundle-patch.yaml")
    ]
    assert sans(load(out / "tls.crt")) == [
        x509.DNSName("hook"),
        x509.DNSName("hook.infra"),
        x509.DNSName("hook.infra.svc"),
        x509.DNSName("hook.infra.svc.cluster.local"),
        x509.IPAddress(ipaddress.ip_address("10.0.0.7")),
    ]


def test_service_and_namespace_default_from_settings(tmp_path: Path) -> None:
    code, _, _ = run(
        "--out",
        str(tmp_path),
        env={
            "ISTIO_SPIFFE_WEBHOOK_SERVICE_NAME": "svc",
            "ISTIO_SPIFFE_WEBHOOK_NAMESPACE": "space",
        },
    )
    assert code == 0
    assert sans(load(tmp_path / "tls.crt"))[:2] == [
        x509.DNSName("svc"),
        x509.DNSName("svc.space"),
    ]


def test_existing_files_are_not_overwritten_without_force(tmp_path: Path) -> None:
    assert run("--out", str(tmp_path))[0] == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code, stdout, stderr = run("--out", str(tmp_path), "--san", "localhost")
    names = ", ".join(
        str(tmp_path / n)
        for n in ("ca.crt", "ca.key", "tls.crt", "tls.key", "ca-bundle-patch.yaml")
    )
    assert (code, stdout, stderr) == (
        1,
        "",
        f"Error: {names} already exist (use --force to overwrite)\n",
    )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_one_existing_file_is_enough_to_refuse(tmp_path: Path) -> None:
    (tmp_path / "tls.key").write_text("someone's key\n")
    code, _, stderr = run("--out", str(tmp_path))
    assert (code, stderr) == (
        1,
        f"Error: {tmp_path / 'tls.key'} already exists (use --force to overwrite)\n",
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tls.key"]


def test_force_overwrites_with_a_new_ca_and_certificate(tmp_path: Path) -> None:
    assert run("--out", str(tmp_path))[0] == 0
    old_ca, old_leaf = load(tmp_path / "ca.crt"), load(tmp_path / "tls.crt")
    code, _, stderr = run("--out", str(tmp_path), "--force", "--san", "localhost")
    assert (code, stderr) == (0, "")
    new_ca, new_leaf = load(tmp_path / "ca.crt"), load(tmp_path / "tls.crt")
    assert new_ca.serial_number != old_ca.serial_number
    assert new_leaf.serial_number != old_leaf.serial_number
    assert sans(new_leaf)[-1] == x509.DNSName("localhost")
    assert stat.S_IMODE((tmp_path / "tls.key").stat().st_mode) == 0o600


@pytest.mark.parametrize("san", ["", "bad name", "-leading.dash", "a..b", "ünïcode.example"])
def test_a_san_that_is_neither_ip_nor_dns_name_is_a_usage_error(tmp_path: Path, san: str) -> None:
    code, stdout, stderr = run("--out", str(tmp_path), "--san", san)
    assert (code, stdout) == (2, "")
    assert stderr.splitlines()[-1] == (
        f"Error: Invalid value for --san: not an IP address or a DNS name: {san!r}"
    )
    assert not tmp_path.joinpath("tls.crt").exists()


def test_days_must_be_positive(tmp_path: Path) -> None:
    code, _, stderr = run("--out", str(tmp_path), "--days", "0")
    assert code == 2
    assert "Invalid value for '--days': 0 is not in the range 1<=x<=3650." in stderr


NAME_RULE = (
    "(at most 63 lower case letters, digits and '-', starting and ending with a letter or digit)"
)


@pytest.mark.parametrize(
    ("option", "value", "what"),
    [
        ("--service", "a b", "Service name"),
        ("--service", "Hook", "Service name"),
        ("--service", "-hook", "Service name"),
        ("--service", "", "Service name"),
        ("--service", "h" * 64, "Service name"),
        ("--namespace", "a b", "namespace"),
        ("--namespace", "infra.prod", "namespace"),
        ("--namespace", "infra-", "namespace"),
    ],
)
def test_a_service_or_namespace_kubernetes_would_refuse_is_a_usage_error(
    tmp_path: Path, option: str, value: str, what: str
) -> None:
    code, stdout, stderr = run("--out", str(tmp_path / "out"), option, value)
    assert (code, stdout) == (2, "")
    assert stderr.splitlines()[-1] == (
        f"Error: Invalid value for {option}: not a valid {what}: {value!r} {NAME_RULE}"
    )
    assert "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_a_bad_service_name_setting_is_a_one_line_error_exit_1(tmp_path: Path) -> None:
    code, stdout, stderr = run(
        "--out", str(tmp_path / "out"), env={"ISTIO_SPIFFE_WEBHOOK_SERVICE_NAME": "my hook"}
    )
    assert (code, stdout, stderr) == (
        1,
        "",
        f"Error: setting service_name: not a valid Service name: 'my hook' {NAME_RULE}\n",
    )
    assert not (tmp_path / "out").exists()


def test_service_and_namespace_of_63_characters_are_in_the_sans_and_the_cn_is_cut_to_64(
    tmp_path: Path,
) -> None:
    service, namespace = "h" * 63, "0" + "n" * 62  # a namespace may start with a digit
    code, _, stderr = run("--out", str(tmp_path), "--service", service, "--namespace", namespace)
    assert (code, stderr) == (0, "")
    leaf, ca = load(tmp_path / "tls.crt"), load(tmp_path / "ca.crt")
    assert sans(leaf) == [x509.DNSName(name) for name in service_names(service, namespace)]
    assert leaf.subject.rfc4514_string() == f"CN={service}"  # the dot after it cut too
    assert ca.subject.rfc4514_string() == f"CN={service}"


def test_the_writer_refuses_a_bad_service_or_namespace_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as caught:
        write_certificates(tmp_path / "out", service="hook", namespace="a b")
    assert str(caught.value) == f"not a valid namespace: 'a b' {NAME_RULE}"
    assert not (tmp_path / "out").exists()
