"""Reading Envoy's admin answers: the real captures in ../shared/fixtures/envoy-admin (both
shapes of the secrets dump), the fake Envoy's answers, and what is not Envoy's JSON."""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any

import pytest

from tests.fakeenvoy import CA, Envoy
from tests.oracle import SHARED
from webhook.cluster.envoyadmin import (
    AdminFormatError,
    Certificate,
    Root,
    Secret,
    Served,
    envoy_serial,
    read_secrets,
    read_served,
    same_serial,
)

ENVOY_ADMIN = SHARED / "envoy-admin"
UTC = datetime.UTC


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def fixture(name: str) -> str:
    return (ENVOY_ADMIN / f"{name}-secrets-config_dump.json").read_text()


def test_the_spire_capture_reads_as_istioctl_reads_it() -> None:
    """The values of the fixtures' README (istioctl's expected output for these captures)."""
    secrets = read_secrets(fixture("spire"))
    assert set(secrets) == {"default", "ROOTCA"}
    default = secrets["default"]
    assert (default.last_updated, default.problem, default.roots) == (
        "2024-10-25T13:26:36.591Z", "", ()
    )  # fmt: skip
    leaf, intermediate = default.chain
    assert leaf == Certificate(
        serial="cd4902e499169b11ec171dad1668adbb",
        spiffe_id="spiffe://east.local/ns/istio-system/sa/federation-ingress-gateway-service-account",
        subject="2.5.4.45=7273d2843f917af1709acf61c680cc2c,O=SPIRE,C=US",
        issuer="O=SPIFFE,C=US",
        not_before=at("2024-10-27T21:44:27Z"),
        not_after=at("2024-10-27T22:44:37Z"),
    )
    assert leaf.trust_domain == "east.local"
    assert intermediate.subject == leaf.issuer
    roots = secrets["ROOTCA"].roots
    assert [(r.trust_domain, r.certificate.serial, r.certificate.not_before,
             r.certificate.not_after) for r in roots] == [
        ("east.local", "529cbbaf623611d057b517d4ffe341e4e8035037", at("2024-10-25T13:23:05Z"),
         at("2034-10-23T13:23:05Z")),
        ("west.local", "6726e5fad145f8ca9a711f0550297ced839ee37f", at("2024-10-25T13:23:05Z"),
         at("2034-10-23T13:23:05Z")),
    ]  # fmt: skip
    assert secrets["ROOTCA"].chain == ()


def test_the_istiod_capture_reads_as_istioctl_reads_it() -> None:
    secrets = read_secrets(fixture("istio"))
    assert set(secrets) == {"default", "ROOTCA"}  # the warming configmap:// secret is not active
    leaf, root = secrets["default"].chain
    assert (leaf.serial, leaf.not_before, leaf.not_after) == (
        "6fbee254c22900615cb1f74e3d2f1713", at("2023-05-15T01:30:52Z"), at("2023-05-16T01:32:52Z")
    )  # fmt: skip
    assert (leaf.spiffe_id, leaf.subject, leaf.issuer) == (
        "spiffe://cluster.local/ns/ambient/sa/namespace-istio-waypoint", "", "O=cluster.local"
    )  # fmt: skip
    assert secrets["ROOTCA"].roots == (Root(None, root),)
    assert (root.serial, root.subject, root.not_after) == (
        "0193a543fe2b0d9cd4847675394dfc54", "O=cluster.local", at("2033-05-02T03:41:33Z")
    )  # fmt: skip


def shape(value: Any, path: str = "") -> set[str]:
    """Every key path of a JSON document, list items merged."""
    if isinstance(value, dict):
        return {p for k, v in value.items() for p in {f"{path}.{k}"} | shape(v, f"{path}.{k}")}
    if isinstance(value, list):
        return {p for item in value for p in shape(item, f"{path}[]")}
    return set()


def test_the_fake_envoys_dump_has_the_captures_shape() -> None:
    """What the fake serves has exactly the real key paths (istioctl's mask form), for the
    istiod capture (trusted_ca) and the SPIRE one (SPIFFE validator trust domains)."""
    ca = CA("east.local")
    now = datetime.datetime.now(UTC)
    for name, federated in (("istio", False), ("spire", True)):
        real = json.loads(fixture(name))
        real["configs"][0].pop("dynamic_warming_secrets", None)
        envoy = Envoy(ca, ca.issue("ns/a/sa/b", now), federated=federated)
        fake = envoy.config_dump("config_dump?mask=dynamic_active_secrets")
        # the captures have no version_info; Envoy prints it when set (config_dump.proto)
        assert shape(fake) - shape(real) == {".configs[].dynamic_active_secrets[].version_info"}, (
            name
        )
        assert shape(real) <= shape(fake), name


def test_resource_and_mask_answers_read_the_same() -> None:
    ca = CA("example.org")
    now = datetime.datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    issued = ca.issue("ns/shop/sa/web", now)
    envoy = Envoy(ca, issued, last_updated="2026-11-20T10:00:01.500Z")
    by_resource = read_secrets(
        json.dumps(envoy.config_dump("config_dump?resource=dynamic_active_secrets"))
    )
    by_mask = read_secrets(json.dumps(envoy.config_dump("config_dump?mask=dynamic_active_secrets")))
    assert by_resource == by_mask
    default = by_resource["default"]
    assert default.last_updated == "2026-11-20T10:00:01.500Z"
    assert [c.serial for c in default.chain] == [
        issued.serial,
        envoy_serial(ca.signer.serial_number),
    ]
    assert default.chain[0].spiffe_id == "spiffe://example.org/ns/shop/sa/web"


def test_certs_lists_every_contexts_chain_with_its_spiffe_ids() -> None:
    ca = CA("example.org")
    now = datetime.datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    issued = ca.issue("ns/shop/sa/web", now)
    envoy = Envoy(ca, issued, now=now)
    served = read_served(json.dumps(envoy.certs()))
    expected = Served(
        issued.serial, ("spiffe://example.org/ns/shop/sa/web",), "2026-11-20T10:00:00Z",
        "2026-11-20T11:00:00Z",
    )  # fmt: skip
    assert served == [expected, expected]
    assert read_served('{"certificates": [{"ca_cert": [], "cert_chain": []}]}') == []
    assert read_served("{}") == []


def test_serials_print_as_envoy_prints_them() -> None:
    assert envoy_serial(0x0193A543) == "0193a543"
    assert envoy_serial(0xCD49) == "cd49"
    assert envoy_serial(0x1) == "01"
    assert same_serial("0193a543", "193A543")
    assert not same_serial("0193a543", "0193a544")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            "invalid path. admin commands are:",
            "/config_dump answered something that is not JSON: 'invalid path. admin commands are:'",
        ),
        ("[]", "/config_dump answered JSON that is not an object"),
        ('{"configuration": []}', "/config_dump: no configs list"),
    ],
)
def test_what_is_not_envoys_json_is_a_format_error(document: str, message: str) -> None:
    with pytest.raises(AdminFormatError) as caught:
        read_secrets(document)
    assert str(caught.value) == message


def dump_with(secret: dict[str, Any]) -> str:
    entry = {"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump.DynamicSecret",
             "name": "default", "last_updated": "2026-11-20T10:00:00Z", **secret}  # fmt: skip
    return json.dumps({"configs": [entry]})


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ({}, "the secret has no content"),
        ({"secret": {"tls_certificate": {}}}, "certificate_chain is missing"),
        (
            {"secret": {"tls_certificate": {"certificate_chain": {"inline_bytes": "@@"}}}},
            "certificate_chain: inline_bytes is not base64",
        ),
        (
            {"secret": {"tls_certificate": {"certificate_chain": {
                "inline_bytes": base64.b64encode(b"not pem").decode()}}}},
            "certificate_chain is not PEM certificates",
        ),
        (
            {"secret": {"tls_certificate": {"certificate_chain": {"filename": "/etc/certs/a"}}}},
            "certificate_chain is read from the file /etc/certs/a",
        ),
    ],
)  # fmt: skip
def test_a_default_secret_without_a_readable_chain_says_why(
    secret: dict[str, Any], problem: str
) -> None:
    assert read_secrets(dump_with(secret))["default"] == Secret(
        "default", "2026-11-20T10:00:00Z", (), (), problem
    )
