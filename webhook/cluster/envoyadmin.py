"""What an Istio proxy's Envoy holds and serves, read from its admin API's JSON.

Two answers, with Envoy's field names (`api/envoy/admin/v3/` in envoyproxy/envoy):

- `/config_dump?resource=dynamic_active_secrets`: a `ConfigDump` whose `configs` are each a
  `SecretsConfigDump.DynamicSecret` (`name`, `version_info`, `last_updated`, `secret`, an
  `envoy.extensions.transport_sockets.tls.v3.Secret`). The whole `/config_dump`, or its
  `?mask=dynamic_active_secrets,...` that `istioctl proxy-config secret` asks for, holds one
  `SecretsConfigDump` with those secrets in `dynamic_active_secrets`; both shapes are read.
  A secret's certificate chain is `tls_certificate.certificate_chain.inline_bytes` (base64 of
  PEM, leaf first); a trust bundle is `validation_context.trusted_ca`, or, as SPIRE's SDS
  sends it, the `trust_domains` of a `SPIFFECertValidatorConfig` in
  `validation_context.custom_validator_config.typed_config`.
- `/certs`: `envoy.admin.v3.Certificates`, the certificates Envoy's TLS contexts actually
  use: per context `ca_cert` and `cert_chain`, each with `serial_number` (lowercase hex, as
  BoringSSL's BN_bn2hex prints it), `subject_alt_names`, `valid_from`, `expiration_time`.

Istio names the workload's secret `default` and its trust bundle `ROOTCA`. Nothing here does
I/O; a document that is not what Envoy sends raises `AdminFormatError`.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from dataclasses import dataclass
from typing import Any, TypeGuard

from cryptography import x509

Json = dict[str, Any]
DEFAULT_SECRET = "default"
ROOT_SECRET = "ROOTCA"
_DYNAMIC_SECRET = "type.googleapis.com/envoy.admin.v3.SecretsConfigDump.DynamicSecret"
_SECRETS_DUMP = "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"


class AdminFormatError(ValueError):
    """The admin API answered something that is not the JSON Envoy sends."""


@dataclass(frozen=True)
class Certificate:
    serial: str  # lowercase hex, as Envoy's /certs prints it
    spiffe_id: str | None  # the first spiffe:// URI SAN
    subject: str  # RFC 4514
    issuer: str  # RFC 4514
    not_before: datetime.datetime
    not_after: datetime.datetime

    @property
    def trust_domain(self) -> str | None:
        if self.spiffe_id is None:
            return None
        return self.spiffe_id.removeprefix("spiffe://").split("/", 1)[0]


@dataclass(frozen=True)
class Root:
    trust_domain: str | None  # the SPIFFE validator's trust domain, None for trusted_ca
    certificate: Certificate


@dataclass(frozen=True)
class Secret:
    name: str
    last_updated: str | None
    chain: tuple[Certificate, ...]  # tls_certificate's chain, leaf first
    roots: tuple[Root, ...]  # validation_context's trust bundles
    problem: str = ""  # why the chain or the bundles could not be read, "" when they could


@dataclass(frozen=True)
class Served:
    """A certificate of a TLS context, as /certs lists it."""

    serial: str
    spiffe_ids: tuple[str, ...]
    valid_from: str | None
    expiration: str | None


def read_secrets(document: str | bytes) -> dict[str, Secret]:
    """The active dynamic secrets of a /config_dump answer, by name."""
    dump = _object(document, "/config_dump")
    configs = dump.get("configs")
    if not isinstance(configs, list):
        raise AdminFormatError("/config_dump: no configs list")
    entries: list[Json] = []
    for config in configs:
        if not isinstance(config, dict):
            continue
        kind = config.get("@type")
        if kind == _DYNAMIC_SECRET:
            entries.append(config)
        elif kind == _SECRETS_DUMP:
            entries.extend(s for s in config.get("dynamic_active_secrets") or [] if _is(s))
    secrets: dict[str, Secret] = {}
    for entry in entries:
        name = entry.get("name")
        if isinstance(name, str) and name not in secrets:
            secrets[name] = _secret(name, entry)
    return secrets


def read_served(document: str | bytes) -> list[Served]:
    """Every certificate chain entry of every TLS context in a /certs answer."""
    certs = _object(document, "/certs")
    contexts = certs.get("certificates")
    if contexts is not None and not isinstance(contexts, list):
        raise AdminFormatError("/certs: certificates is not a list")
    served: list[Served] = []
    for context in contexts or []:
        for detail in (context.get("cert_chain") or []) if _is(context) else []:
            if not _is(detail) or not isinstance(detail.get("serial_number"), str):
                continue
            uris = tuple(
                str(san["uri"])
                for san in detail.get("subject_alt_names") or []
                if _is(san) and str(san.get("uri", "")).startswith("spiffe://")
            )
            served.append(
                Served(
                    detail["serial_number"].lower(),
                    uris,
                    _str_or_none(detail.get("valid_from")),
                    _str_or_none(detail.get("expiration_time")),
                )
            )
    return served


def certificate(cert: x509.Certificate) -> Certificate:
    spiffe_id = None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        spiffe_id = next((u for u in uris if u.startswith("spiffe://")), None)
    except x509.ExtensionNotFound:
        pass
    return Certificate(
        serial=envoy_serial(cert.serial_number),
        spiffe_id=spiffe_id,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def envoy_serial(number: int) -> str:
    """A serial as Envoy prints it: lowercase hex, whole bytes (BoringSSL's BN_bn2hex)."""
    text = format(number, "x")
    return text.zfill(len(text) + len(text) % 2)


def same_serial(a: str, b: str) -> bool:
    try:
        return int(a, 16) == int(b, 16)
    except ValueError:
        return a.lower() == b.lower()


def _secret(name: str, entry: Json) -> Secret:
    last_updated = _str_or_none(entry.get("last_updated"))
    body = entry.get("secret")
    if not _is(body):
        return Secret(name, last_updated, (), (), "the secret has no content")
    chain: tuple[Certificate, ...] = ()
    problems: list[str] = []
    tls = body.get("tls_certificate")
    if _is(tls):
        try:
            chain = tuple(_certificates(tls.get("certificate_chain"), "certificate_chain"))
        except AdminFormatError as error:
            problems.append(str(error))
    roots: list[Root] = []
    context = body.get("validation_context")
    if _is(context):
        try:
            roots.extend(_roots(context))
        except AdminFormatError as error:
            problems.append(str(error))
    return Secret(name, last_updated, chain, tuple(roots), "; ".join(problems))


def _roots(context: Json) -> list[Root]:
    roots: list[Root] = []
    trusted = context.get("trusted_ca")
    if _is(trusted) and trusted:
        roots.extend(Root(None, c) for c in _certificates(trusted, "trusted_ca"))
    validator = context.get("custom_validator_config")
    typed = validator.get("typed_config") if _is(validator) else None
    for domain in (typed.get("trust_domains") or []) if _is(typed) else []:
        if not _is(domain):
            continue
        name = _str_or_none(domain.get("name"))
        bundle = _certificates(domain.get("trust_bundle"), f"trust bundle of {name}")
        roots.extend(Root(name, c) for c in bundle)
    return roots


def _certificates(source: Any, what: str) -> list[Certificate]:
    """The certificates of an Envoy DataSource (`inline_bytes` or `inline_string` PEM)."""
    if not _is(source):
        raise AdminFormatError(f"{what} is missing")
    if isinstance(source.get("inline_bytes"), str):
        try:
            pem = base64.b64decode(source["inline_bytes"], validate=True)
        except (binascii.Error, ValueError):
            raise AdminFormatError(f"{what}: inline_bytes is not base64") from None
    elif isinstance(source.get("inline_string"), str):
        pem = source["inline_string"].encode()
    elif isinstance(source.get("filename"), str):
        raise AdminFormatError(f"{what} is read from the file {source['filename']}")
    else:
        raise AdminFormatError(f"{what} holds no certificate")
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise AdminFormatError(f"{what} is not PEM certificates") from None
    return [certificate(c) for c in certificates]


def _object(document: str | bytes, what: str) -> Json:
    try:
        body = json.loads(document)
    except ValueError:
        text = document.decode("utf-8", "replace") if isinstance(document, bytes) else document
        first = " ".join(text.split())[:120]
        raise AdminFormatError(f"{what} answered something that is not JSON: {first!r}") from None
    if not isinstance(body, dict):
        raise AdminFormatError(f"{what} answered JSON that is not an object")
    return body


def _is(value: Any) -> TypeGuard[Json]:
    return isinstance(value, dict)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
