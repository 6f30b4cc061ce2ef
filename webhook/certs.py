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

Given an existing CA (`load_certificate_authority`, behind `--ca-cert`/`--ca-key`), the
serving certificate is signed by it instead: `ca.crt` and the caBundle are the given
certificate file byte for byte, so the webhook configuration does not change (a renewal),
and the CA's key is read where it is, never copied into the directory.

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
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
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


# The key types a CA may sign with here: those Go's crypto/x509 (the API server) verifies.
CAKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
_PRIVATE_KEY_PEM = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")


class CertificatesExist(Exception):
    """A file `write_certificates` would write is already there and `force` is off, or the
    directory holds the key of another CA than the one given."""


class UnusableCA(Exception):
    """The given CA cannot sign: the message names the file and says why."""


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    """An existing CA to sign with: its certificate file as given (`ca.crt` and the
    caBundle, byte for byte), the certificate in it that the key belongs to, and the key."""

    pem: bytes
    certificate: x509.Certificate
    key: CAKey
    key_file: Path


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """Where the CA and the serving certificate are; from `write_certificates` also the files
    it wrote (not `ca_key` when the CA was given) and warnings for the user."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    ca_bundle_patch: Path
    written: tuple[Path, ...] = ()
    warnings: tuple[str, ...] = ()


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
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey,
    valid_days: int,
    latest_end: datetime.datetime | None = None,
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    end = now + datetime.timedelta(days=valid_days)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(end if latest_end is None else min(end, latest_end))
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
    ca_key: CAKey,
    ca_cert: x509.Certificate,
    *,
    service: str,
    namespace: str,
    extra_sans: Sequence[str] = (),
    valid_days: int = 365,
    latest_end: datetime.datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate for the webhook's Service, signed by the CA; valid for
    `valid_days`, or until `latest_end` if that comes first."""
    sans = subject_alternative_names(service, namespace, extra_sans)
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    subject = _common_name(f"{service}.{namespace}.svc")
    certificate = (
        _builder(subject, ca_cert.subject, public, valid_days, latest_end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(_authority_key_identifier(ca_key, ca_cert), critical=False)
        .sign(ca_key, None if isinstance(ca_key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    )
    return key, certificate


def _authority_key_identifier(
    ca_key: CAKey, ca_cert: x509.Certificate
) -> x509.AuthorityKeyIdentifier:
    """The CA's subject key identifier, or (a CA made without one) its key's hash."""
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def load_certificate_authority(cert_file: Path, key_file: Path) -> CertificateAuthority:
    """The CA in `cert_file` (PEM; one certificate or a bundle) whose key is in `key_file`
    (PEM, unencrypted), checked to be a CA that may sign now.

    Raises UnusableCA naming the file and the problem: unreadable, no certificate, a
    private key in the certificate file (it would end up in the caBundle), no or an
    encrypted or unsupported key, a key that belongs to no certificate of the file, a
    certificate that is not a CA, expired or not yet valid.
    """
    pem = _read(cert_file)
    if _PRIVATE_KEY_PEM.search(pem):
        raise UnusableCA(
            f"{cert_file}: holds a private key; give a file with only the CA certificate"
            " (it becomes the caBundle)"
        )
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise UnusableCA(f"{cert_file}: no PEM certificate found") from None
    try:
        key = serialization.load_pem_private_key(_read(key_file), password=None)
    except TypeError:
        raise UnusableCA(f"{key_file}: the key is encrypted; give it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise UnusableCA(f"{key_file}: no PEM private key found") from None
    if not isinstance(key, CAKey):
        raise UnusableCA(
            f"{key_file}: a CA key must be ECDSA, RSA or Ed25519, not {_key_type(key)}"
        )
    public = _public_key_info(key.public_key())
    signer = next((c for c in certificates if _certificate_key_info(c) == public), None)
    if signer is None:
        which = "the certificate" if len(certificates) == 1 else "any certificate"
        raise UnusableCA(f"{key_file} is not the key of {which} in {cert_file}")
    _check_may_sign(signer, cert_file)
    return CertificateAuthority(pem=pem, certificate=signer, key=key, key_file=key_file)


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise UnusableCA(f"{path}: cannot read: {error.strerror or error}") from None


def _key_type(key: object) -> str:
    return type(key).__name__.removesuffix("PrivateKey")


def _public_key_info(public: PublicKeyTypes) -> bytes:
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _certificate_key_info(certificate: x509.Certificate) -> bytes | None:
    try:
        return _public_key_info(certificate.public_key())
    except (ValueError, UnsupportedAlgorithm):
        return None  # a key type cryptography cannot read is not the given key either


def _check_may_sign(certificate: x509.Certificate, cert_file: Path) -> None:
    """Raises UnusableCA unless `certificate` is a CA that may sign certificates now."""
    subject = certificate.subject.rfc4514_string()
    try:
        extensions = certificate.extensions
    except (ValueError, x509.DuplicateExtension) as error:
        raise UnusableCA(f"{cert_file}: {subject}: unreadable extensions: {error}") from None
    constraints = _extension(extensions, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise UnusableCA(f"{cert_file}: {subject} is not a CA (basicConstraints CA:TRUE missing)")
    usage = _extension(extensions, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        raise UnusableCA(
            f"{cert_file}: {subject} may not sign certificates (keyUsage without keyCertSign)"
        )
    now = datetime.datetime.now(datetime.UTC)
    if certificate.not_valid_after_utc <= now:
        raise UnusableCA(
            f"{cert_file}: {subject} expired on {_when(certificate.not_valid_after_utc)}"
        )
    if certificate.not_valid_before_utc > now:
        raise UnusableCA(
            f"{cert_file}: {subject} is not valid before {_when(certificate.not_valid_before_utc)}"
        )


ExtensionValue = TypeVar("ExtensionValue", bound=x509.ExtensionType)


def _extension(extensions: x509.Extensions, kind: type[ExtensionValue]) -> ExtensionValue | None:
    try:
        return extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _when(moment: datetime.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: CAKey) -> bytes:
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
    ca: CertificateAuthority | None = None,
) -> CertificateFiles:
    """Make a CA, or take the given one, and a serving certificate it signs, and write them
    with the caBundle patch.

    With `ca`: `ca.crt` is its certificate file byte for byte (an identical `ca.crt` already
    there needs no `force`), `ca.key` is not written, and the serving certificate ends when
    the CA does if that comes first (a warning says so when that is a day or more short).
    Raises CertificatesExist (nothing written) when a file is there and `force` is off, or
    when the directory's `ca.key` is another CA's; ValueError (nothing written) on a bad
    service, namespace, SAN or validity.
    """
    if valid_days < 1:
        raise ValueError(f"valid_days must be at least 1, got {valid_days}")
    directory = Path(directory)
    ca_cert_path, ca_key_path = directory / CA_CERT, directory / CA_KEY
    cert_path, key_path = directory / TLS_CERT, directory / TLS_KEY
    patch_path = directory / CA_BUNDLE_PATCH
    written: tuple[Path, ...]
    if ca is None:
        written = (ca_cert_path, ca_key_path, cert_path, key_path, patch_path)
    else:
        written = (ca_cert_path, cert_path, key_path, patch_path)
        _check_no_other_ca_key(ca_key_path, ca)
    if not force:
        existing = [
            str(path)
            for path in written
            if path.exists()
            and not (ca is not None and path == ca_cert_path and path.read_bytes() == ca.pem)
        ]
        if existing:
            raise CertificatesExist(
                f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}"
                " (use --force to overwrite)"
            )
    ca_key: CAKey
    if ca is None:
        ca_key, ca_cert = make_ca(f"{service} CA", valid_days=valid_days)
        ca_pem, latest_end = certificate_pem(ca_cert), None
    else:
        ca_key, ca_cert = ca.key, ca.certificate
        ca_pem, latest_end = ca.pem, ca.certificate.not_valid_after_utc
    key, cert = make_serving_certificate(
        ca_key,
        ca_cert,
        service=service,
        namespace=namespace,
        extra_sans=extra_sans,
        valid_days=valid_days,
        latest_end=latest_end,
    )
    # A CA that ends a day or more before the serving certificate would is worth a word;
    # the seconds between making a CA and renewing from it are not.
    asked_end = cert.not_valid_before_utc + _CLOCK_SKEW + datetime.timedelta(days=valid_days)
    short = asked_end - cert.not_valid_after_utc
    warnings: tuple[str, ...] = ()
    if short >= datetime.timedelta(days=1):
        warnings = (
            f"the serving certificate ends with the CA on {_when(cert.not_valid_after_utc)},"
            f" {short.days} days short of the {valid_days} asked for",
        )
    directory.mkdir(parents=True, exist_ok=True)
    if ca is None:
        _write(ca_key_path, private_key_pem(ca_key), 0o600)
    _write(ca_cert_path, ca_pem, 0o644)
    # Key before certificate: a server reloading in between sees a mismatched pair, which
    # it refuses (keeping the old one) until the certificate follows.
    _write(key_path, private_key_pem(key), 0o600)
    _write(cert_path, certificate_pem(cert), 0o644)
    configuration = webhook_configuration or service
    _write(patch_path, ca_bundle_patch(ca_pem, configuration).encode(), 0o644)
    return CertificateFiles(
        directory=directory,
        ca_cert=ca_cert_path,
        ca_key=ca_key_path if ca is None else ca.key_file,
        cert=cert_path,
        key=key_path,
        ca_bundle_patch=patch_path,
        written=written,
        warnings=warnings,
    )


def _check_no_other_ca_key(path: Path, ca: CertificateAuthority) -> None:
    """Raises CertificatesExist when `path` holds a key other than the given CA's: left
    there, it would sit next to a `ca.crt` it does not belong to."""
    if not path.exists():
        return
    try:
        found = serialization.load_pem_private_key(path.read_bytes(), password=None)
        same = _public_key_info(found.public_key()) == _public_key_info(ca.key.public_key())
    except (TypeError, ValueError, UnsupportedAlgorithm):
        same = False
    if not same:
        raise CertificatesExist(
            f"{path} is not the key of the given CA ({ca.key_file}): move it away first"
            " (the given CA's key is never copied, and --force does not delete keys)"
        )


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
