"""Certificates a SPIFFE provider or istiod would issue, and an Istio proxy's Envoy serving them.

`CA` makes a SPIRE-like CA (root, intermediate that signs) or istiod's self-signed CA
(subject `O=<trust domain>`, `security/pkg/pki/ca/ca.go`) and issues SVIDs: X.509
certificates with one SPIFFE URI SAN. `Envoy` is the admin API of one proxy: it answers
`/certs` (`envoy.admin.v3.Certificates`) and `/config_dump?resource=dynamic_active_secrets`
(`SecretsConfigDump.DynamicSecret` entries) with Envoy's field names, and `pilot_agent` runs
`pilot-agent request GET <path>` against it the way `pilot/cmd/pilot-agent/app/request.go`
does: the body and a newline on stdout; for a status above 399 other than 404, an error on
stderr and exit 1; with no admin listening, a connection error and exit 1.
"""

from __future__ import annotations

import base64
import datetime
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fakeapi import Exited
from webhook.cluster.envoyadmin import envoy_serial

Json = dict[str, Any]
HOUR = datetime.timedelta(hours=1)
REDACTED = base64.b64encode(b"[redacted]").decode()  # Envoy redacts private keys in dumps
_serials = iter(range(0x1000, 1 << 30))


def _name(**attributes: str) -> x509.Name:
    oids = {"C": NameOID.COUNTRY_NAME, "O": NameOID.ORGANIZATION_NAME, "CN": NameOID.COMMON_NAME}
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in attributes.items()])


@dataclass
class Issued:
    """An SVID and the chain Envoy gets with it (leaf first)."""

    leaf: x509.Certificate
    chain: list[x509.Certificate]

    @property
    def serial(self) -> str:
        return envoy_serial(self.leaf.serial_number)

    def pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)


class CA:
    def __init__(self, trust_domain: str, *, istiod: bool = False) -> None:
        self.trust_domain = trust_domain
        start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        root_name = _name(O=trust_domain) if istiod else _name(O="my-company.org", CN="Root CA")
        self.root = self._sign(root_name, root_name, self.root_key, self.root_key, start, 3650,
                               ca=True)  # fmt: skip
        if istiod:  # istiod signs with its self-signed root
            self.signer, self.signer_key, self.intermediates = self.root, self.root_key, []
        else:  # SPIRE signs with an intermediate under the root
            self.signer_key = ec.generate_private_key(ec.SECP256R1())
            self.signer = self._sign(
                _name(C="US", O="SPIFFE"), root_name, self.signer_key, self.root_key, start,
                3650, ca=True, uri=f"spiffe://{trust_domain}",
            )  # fmt: skip
            self.intermediates = [self.signer]

    def issue(
        self,
        path: str,
        not_before: datetime.datetime,
        lifetime: datetime.timedelta = HOUR,
        *,
        trust_domain: str | None = None,
    ) -> Issued:
        """An SVID for spiffe://<trust domain>/<path>, valid from `not_before` for `lifetime`."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(C="US", O="SPIRE") if self.intermediates else x509.Name([])
        uri = f"spiffe://{trust_domain or self.trust_domain}/{path}"
        leaf = self._sign(
            subject, self.signer.subject, key, self.signer_key, not_before, lifetime, uri=uri
        )
        return Issued(leaf, [leaf, *self.intermediates])

    @staticmethod
    def _sign(
        subject: x509.Name,
        issuer: x509.Name,
        key: ec.EllipticCurvePrivateKey,
        signer: ec.EllipticCurvePrivateKey,
        not_before: datetime.datetime,
        lifetime: datetime.timedelta | int,
        *,
        ca: bool = False,
        uri: str | None = None,
    ) -> x509.Certificate:
        if isinstance(lifetime, int):
            lifetime = datetime.timedelta(days=lifetime)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(next(_serials) << 96)  # 16 bytes, as SPIRE and istiod make them
            .not_valid_before(not_before)
            .not_valid_after(not_before + lifetime)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if uri is not None:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                critical=not len(subject),  # RFC 5280: critical when the subject is empty
            )
        return builder.sign(signer, hashes.SHA256())


def _rfc3339(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _data_source(certificates: list[x509.Certificate]) -> Json:
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)
    return {"inline_bytes": base64.b64encode(pem).decode()}


def _details(cert: x509.Certificate, now: datetime.datetime) -> Json:
    """`envoy.admin.v3.CertificateDetails` as /certs prints it (int64 as a JSON string)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    days = (cert.not_valid_after_utc - now).days
    return {
        "path": "<inline>",
        "serial_number": envoy_serial(cert.serial_number),
        "subject_alt_names": [{"uri": u} for u in uris],
        "days_until_expiration": str(max(days, 0)),
        "valid_from": _rfc3339(cert.not_valid_before_utc),
        "expiration_time": _rfc3339(cert.not_valid_after_utc),
    }


@dataclass
class Envoy:
    """One proxy's admin API. `held` is the `default` secret SDS delivered; `served` what the
    TLS contexts use (the same unless a test makes them differ, as was seen in the field)."""

    ca: CA
    held: Issued | None
    served: Issued | None = None
    last_updated: str = "2026-11-20T09:50:00.123Z"
    admin_up: bool = True
    now: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC)
    )  # for days_until_expiration only
    federated: bool = False  # ROOTCA as SPIRE's SDS sends it (SPIFFE validator trust domains)
    requests: list[str] = field(default_factory=list)

    def rotate(self, issued: Issued, last_updated: str) -> None:
        self.held = self.served = issued
        self.last_updated = last_updated

    def certs(self) -> Json:
        roots = [_details(self.ca.root, self.now)]
        serving = self.served if self.served is not None else self.held
        contexts = []
        for _ in range(2):  # an inbound listener and an outbound cluster, as in a sidecar
            chain = [_details(serving.leaf, self.now)] if serving is not None else []
            contexts.append({"ca_cert": roots, "cert_chain": chain})
        return {"certificates": contexts}

    def dynamic_secrets(self) -> list[Json]:
        secrets: list[Json] = []
        if self.held is not None:
            secrets.append(
                {
                    "name": "default",
                    "version_info": self.last_updated,
                    "last_updated": self.last_updated,
                    "secret": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
                        ".Secret",
                        "name": "default",
                        "tls_certificate": {
                            "certificate_chain": _data_source(self.held.chain),
                            "private_key": {"inline_bytes": REDACTED},
                        },
                    },
                }
            )
        if self.federated:
            context: Json = {
                "trusted_ca": {},
                "custom_validator_config": {
                    "name": "envoy.tls.cert_validator.spiffe",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
                        ".SPIFFECertValidatorConfig",
                        "trust_domains": [
                            {
                                "name": self.ca.trust_domain,
                                "trust_bundle": _data_source([self.ca.root]),
                            }
                        ],
                    },
                },
            }
        else:
            context = {"trusted_ca": _data_source([self.ca.root])}
        secrets.append(
            {
                "name": "ROOTCA",
                "version_info": "2026-11-20 09:00:00.000000001 +0000 UTC",
                "last_updated": "2026-11-20T09:00:00.000Z",
                "secret": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                    "name": "ROOTCA",
                    "validation_context": context,
                },
            }
        )
        return secrets

    def config_dump(self, path: str) -> Json:
        """`?resource=dynamic_active_secrets`: each DynamicSecret packed as its own Any;
        `?mask=...` (istioctl's form): one SecretsConfigDump."""
        if "resource=dynamic_active_secrets" in path:
            return {
                "configs": [
                    {
                        "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump"
                        ".DynamicSecret",
                        **s,
                    }
                    for s in self.dynamic_secrets()
                ]
            }
        return {
            "configs": [
                {
                    "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
                    "dynamic_active_secrets": self.dynamic_secrets(),
                }
            ]
        }

    def admin(self, path: str) -> tuple[int, bytes]:
        self.requests.append(path)
        if path == "certs":
            return 200, json.dumps(self.certs(), indent=1).encode()
        if path.startswith("config_dump"):
            return 200, json.dumps(self.config_dump(path), indent=1).encode()
        return 404, b"invalid path. admin commands are:\n"

    def pilot_agent(self, command: list[str]) -> Exited:
        """What `pilot-agent request GET <path>` prints and exits with."""
        if command[:3] != ["pilot-agent", "request", "GET"] or len(command) != 4:
            return Exited(b"", b"Error: unsupported in this fake\n", 1)
        path = command[3].lstrip("/")
        if not self.admin_up:
            return Exited(
                b"",
                f'Error: Get "http://localhost:15000/{path}": dial tcp 127.0.0.1:15000:'
                " connect: connection refused\n".encode(),
                1,
            )
        code, body = self.admin(path)
        if code > 399 and code != 404:
            return Exited(b"", f"Error: received unsuccessful status code {code}: ".encode()
                          + body + b"\n", 1)  # fmt: skip
        return Exited(body + b"\n")
