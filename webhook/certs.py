"""A CA and a serving certificate for the webhook, made with `cryptography`.

`write_certificates` (behind `istio-spiffe-webhook certs`) writes, into `certs/` by default:

- `ca.crt`, `ca.key`: a self-signed CA (CA:true, pathlen 0), ECDSA P-256;
- `tls.crt`, `tls.key`: the serving certificate it signs, ECDSA P-256, for
  `<service>`, `<service>.<namespace>`, `<service>.<namespace>.svc`,
  `<service>.<namespace>.svc.cluster.local` and every `--san` (IP addresses become IP SANs,
  anything else a DNS name);
- `ca-bundle-patch.yaml`: a kustomize JSON6902 patch (a YAML list of operations) that sets
  `caBundle` (base64 of `ca.crt`) on the first webhook of the MutatingWebhookConfiguration
  named by `Settings.webhook_configuration`. `certs/kustomization.yaml` applies it with
  `patches: [{path: ca-bundle-patch.yaml, target: {kind: MutatingWebhookConfiguration,
  name: <webhook_configuration>}}]` and makes the Secret from `tls.crt`/`tls.key`.

Keys are written 0600, certificates 0644, each file atomically (a temporary file renamed
into place), so a running server that reloads its certificate never reads half a file.
Existing files are never overwritten without `force`.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
CA_BUNDLE_PATCH = "ca-bundle-patch.yaml"

# Backdate validity a little: a node whose clock runs behind must still accept the pair.
_CLOCK_SKEW = datetime.timedelta(minutes=5)
_MAX_COMMON_NAME = 64  # RFC 5280's ub-common-name
_DNS_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"^(\*\.)?{_DNS_LABEL}(\.{_DNS_LABEL})*$")
# Namespaces and Services are named by lower-case RFC 1123 labels (clusters without KEP-5311's
# relaxed Service name validation also want a letter first; the certificate does not care).
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class CertificatesExist(Exception):
    """A file `write_certificates` would write is already there and `force` is off."""


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """Paths of the files `write_certificates` wrote."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    ca_bundle_patch: Path


def service_names(service: str, namespace: str) -> list[str]:
    """The DNS names the API server may use to reach the webhook's Service."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def check_service_name(name: str) -> None:
    """Raises ValueError unless `name` can be a Service's name."""
    _check_object_name(name, "Service name")


def check_namespace(name: str) -> None:
    """Raises ValueError unless `name` can be a namespace's name."""
    _check_object_name(name, "namespace")


def _check_object_name(name: str, what: str) -> None:
    if not _OBJECT_NAME.match(name):
        raise ValueError(
            f"not a valid {what}: {name!r} (at most 63 lower case letters, digits and '-',"
            " starting and ending with a letter or digit)"
        )


def subject_alternative_names(
    service: str, namespace: str, extra_sans: Sequence[str] = ()
) -> list[x509.GeneralName]:
    """The Service's DNS names, then each extra SAN (IP or DNS), without repeats.

    Raises ValueError naming a service or namespace that Kubernetes would not accept, or an
    extra SAN that is neither an IP address nor a DNS name.
    """
    check_service_name(service)
    check_namespace(namespace)
    names: list[x509.GeneralName] = []
    for value in [*service_names(service, namespace), *extra_sans]:
        name = general_name(value)
        if name not in names:
            names.append(name)
    return names


def general_name(value: str) -> x509.GeneralName:
    """An IP address SAN for an IP address, else a DNS name SAN (lower case).

    Raises ValueError naming a value that is neither.
    """
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    if len(value) > 253 or not _DNS_NAME.match(value):
        raise ValueError(f"not an IP address or a DNS name: {value!r}")
    return x509.DNSName(value.lower())


def _builder(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey, valid_days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=valid_days))
    )


def _common_name(text: str) -> x509.Name:
    """CN=text, cut to X.509's 64 characters: long Service and namespace names fit in SANs
    but not in a CN, which is only a label (clients match the SANs)."""
    cut = text[:_MAX_COMMON_NAME].rstrip(" .")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cut)])


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(
    common_name: str = "istio-spiffe-webhook CA", *, valid_days: int = 365
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign end-entity certificates only (pathlen 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _common_name(common_name)
    public = key.public_key()
    certificate = (
        _builder(name, name, public, valid_days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def make_serving_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    service: str,
    namespace: str,
    extra_sans: Sequence[str] = (),
    valid_days: int = 365,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate for the webhook's Service, signed by the CA."""
    sans = subject_alternative_names(service, namespace, extra_sans)
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    subject = _common_name(f"{service}.{namespace}.svc")
    certificate = (
        _builder(subject, ca_cert.subject, public, valid_days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, certificate


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ca_bundle_patch(ca_pem: bytes, webhook_configuration: str) -> str:
    """The kustomize JSON6902 patch that puts the CA into the webhook configuration."""
    bundle = base64.b64encode(ca_pem).decode()
    return (
        f"# Written by `istio-spiffe-webhook certs`: do not edit, run it again.\n"
        f"# A kustomize JSON6902 patch for MutatingWebhookConfiguration"
        f" {webhook_configuration}:\n"
        f"# sets caBundle (base64 of ca.crt) on its webhook. certs/kustomization.yaml uses it:\n"
        f"#   patches:\n"
        f"#     - path: {CA_BUNDLE_PATCH}\n"
        f"#       target: {{kind: MutatingWebhookConfiguration, name: {webhook_configuration}}}\n"
        f"- op: add\n"
        f"  path: /webhooks/0/clientConfig/caBundle\n"
        f"  value: {bundle}\n"
    )


def certificate_expiry(path: str | os.PathLike[str]) -> datetime.datetime:
    """When the first certificate in a PEM file expires (timezone-aware, UTC).

    Raises ValueError when the file holds no PEM certificate.
    """
    data = Path(path).read_bytes()
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{path}: no PEM certificate found") from None
    return certificates[0].not_valid_after_utc


def write_certificates(
    directory: Path,
    *,
    service: str,
    namespace: str,
    extra_sans: Sequence[str] = (),
    valid_days: int = 365,
    force: bool = False,
    webhook_configuration: str | None = None,
) -> CertificateFiles:
    """Make a CA and a serving certificate and write them, with the caBundle patch.

    Raises CertificatesExist (nothing written) when a file is there and `force` is off,
    ValueError (nothing written) on a bad service, namespace, SAN or validity.
    """
    if valid_days < 1:
        raise ValueError(f"valid_days must be at least 1, got {valid_days}")
    directory = Path(directory)
    files = CertificateFiles(
        directory=directory,
        ca_cert=directory / CA_CERT,
        ca_key=directory / CA_KEY,
        cert=directory / TLS_CERT,
        key=directory / TLS_KEY,
        ca_bundle_patch=directory / CA_BUNDLE_PATCH,
    )
    targets = [files.ca_cert, files.ca_key, files.cert, files.key, files.ca_bundle_patch]
    if not force:
        existing = [str(path) for path in targets if path.exists()]
        if existing:
            raise CertificatesExist(
                f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}"
                " (use --force to overwrite)"
            )
    ca_key, ca_cert = make_ca(f"{service} CA", valid_days=valid_days)
    key, cert = make_serving_certificate(
        ca_key,
        ca_cert,
        service=service,
        namespace=namespace,
        extra_sans=extra_sans,
        valid_days=valid_days,
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_pem = certificate_pem(ca_cert)
    _write(files.ca_key, private_key_pem(ca_key), 0o600)
    _write(files.ca_cert, ca_pem, 0o644)
    # Key before certificate: a server reloading in between sees a mismatched pair, which
    # it refuses (keeping the old one) until the certificate follows.
    _write(files.key, private_key_pem(key), 0o600)
    _write(files.cert, certificate_pem(cert), 0o644)
    configuration = webhook_configuration or service
    _write(files.ca_bundle_patch, ca_bundle_patch(ca_pem, configuration).encode(), 0o644)
    return files


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically with `mode` from the start (the key is never world-readable)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
