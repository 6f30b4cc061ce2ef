"""`webhook.x509_fields` reads serial and notAfter exactly as `cryptography` does, refuses
truncated or garbage DER with a clear error, and `serve` loads its pair without
`cryptography` (it is not even imported)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from webhook.certs import make_ca, make_serving_certificate, write_certificates
from webhook.tls import CertificateError, load_pair
from webhook.x509_fields import CertificateFormatError, read_fields

UTC = datetime.UTC
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def certificate(
    key: PrivateKey,
    *,
    serial: int,
    not_after: datetime.datetime,
    not_before: datetime.datetime = datetime.datetime(2020, 1, 1, tzinfo=UTC),
    issuer_cn: str = "issuer",
) -> x509.Certificate:
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "subject")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, algorithm)
    )


def der_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def assert_reads_like_cryptography(cert: x509.Certificate) -> None:
    fields = read_fields(der_of(cert))
    assert fields.serial == cert.serial_number
    assert fields.not_after == cert.not_valid_after_utc


# --- Exactly cryptography's reading ------------------------------------------------------

# Serials of every DER length, high bit set or not (a set high bit adds a 0x00 octet).
SERIALS = [1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 2**63, 2**64 - 1, 2**159 - 1] + [
    (1 << (8 * n - 1)) | n for n in range(1, 20)
]

# cryptography writes UTCTime through 2049 and GeneralizedTime from 2050 (RFC 5280).
NOT_AFTERS = [
    datetime.datetime(1950, 1, 1, tzinfo=UTC),
    datetime.datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime.datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC),
    datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime.datetime(2050, 1, 1, tzinfo=UTC),
    datetime.datetime(2126, 2, 28, 12, 30, 45, tzinfo=UTC),
    datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
]


@pytest.mark.parametrize("serial", SERIALS, ids=lambda s: f"{s.bit_length()}bits")
def test_serials_of_every_length_read_like_cryptography_with_rsa_and_ec(
    serial: int, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    not_after = datetime.datetime(2030, 6, 1, tzinfo=UTC)
    for key in (rsa_key, ec_key):
        cert = certificate(key, serial=serial, not_after=not_after)
        assert read_fields(der_of(cert)).serial == serial
        assert_reads_like_cryptography(cert)


@pytest.mark.parametrize("not_after", NOT_AFTERS, ids=lambda d: d.strftime("%Y%m%d%H%M%S"))
def test_utctime_and_generalizedtime_not_after_read_like_cryptography(
    not_after: datetime.datetime, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    not_before = datetime.datetime(1950, 1, 1, tzinfo=UTC)  # the earliest cryptography takes
    for key in (rsa_key, ec_key, ed25519.Ed25519PrivateKey.generate()):
        cert = certificate(key, serial=12345, not_after=not_after, not_before=not_before)
        assert read_fields(der_of(cert)).not_after == not_after
        assert_reads_like_cryptography(cert)


def test_the_dates_above_are_written_as_utctime_and_as_generalizedtime(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    # So both encodings are read: through 2049 UTCTime (tag 0x17), from 2050 GeneralizedTime.
    for not_after, encoded in [
        (NOT_AFTERS[3], b"\x17\x0d491231235959Z"),
        (NOT_AFTERS[4], b"\x18\x0f20500101000000Z"),
    ]:
        assert encoded in der_of(certificate(ec_key, serial=1, not_after=not_after))


_HYPOTHESIS_KEY = ec.generate_private_key(ec.SECP256R1())  # given() cannot take fixtures


@hsettings(max_examples=60, deadline=None)
@given(
    serial=st.integers(min_value=1, max_value=2**159 - 1),
    not_after=st.datetimes(
        min_value=datetime.datetime(1950, 1, 1), max_value=datetime.datetime(9999, 12, 31)
    ).map(lambda d: d.replace(microsecond=0, tzinfo=UTC)),
    # cryptography caps a commonName at 64 bytes of UTF-8.
    issuer_cn=st.text(st.characters(codec="utf-8"), min_size=1, max_size=64).filter(
        lambda cn: len(cn.encode()) <= 64
    ),
)
def test_any_serial_date_and_issuer_read_like_cryptography(
    serial: int, not_after: datetime.datetime, issuer_cn: str
) -> None:
    cert = certificate(
        _HYPOTHESIS_KEY,
        serial=serial,
        not_after=not_after,
        not_before=datetime.datetime(1950, 1, 1, tzinfo=UTC),
        issuer_cn=issuer_cn,
    )
    assert_reads_like_cryptography(cert)


def test_the_projects_own_ca_and_serving_certificates_read_like_cryptography(
    tmp_path: Path,
) -> None:
    files = write_certificates(
        tmp_path, service="istio-spiffe-webhook", namespace="istio-spiffe-webhook"
    )
    for path in (files.ca_cert, files.cert):
        assert_reads_like_cryptography(x509.load_pem_x509_certificate(path.read_bytes()))
    # Long-lived ones: a century crosses 2050, so notAfter is a GeneralizedTime.
    ca_key, ca = make_ca(valid_days=36500)
    _, leaf = make_serving_certificate(
        ca_key, ca, service="s", namespace="n", extra_sans=["127.0.0.1"], valid_days=36500
    )
    for cert in (ca, leaf):
        assert cert.not_valid_after_utc.year > 2050
        assert_reads_like_cryptography(cert)


def der(tag: int, *contents: bytes) -> bytes:
    """A DER element (enough of an encoder for a hand-made certificate)."""
    body = b"".join(contents)
    if len(body) < 0x80:
        return bytes([tag, len(body)]) + body
    size = len(body).to_bytes((len(body).bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def v1_certificate(serial: bytes, not_after: bytes, *, time_tag: int = 0x17) -> bytes:
    """A version 1 certificate: no [0] version in front of the serial."""
    name = der(0x30, der(0x31, der(0x30, der(0x06, bytes.fromhex("550403")), der(0x0C, b"x"))))
    algorithm = der(0x30, der(0x06, bytes.fromhex("2a8648ce3d040302")))  # ecdsa-with-SHA256
    validity = der(0x30, der(0x17, b"200101000000Z"), der(time_tag, not_after))
    tbs = der(0x30, der(0x02, serial), algorithm, name, validity, name)
    return der(0x30, tbs, algorithm, der(0x03, b"\x00"))


def test_a_version_1_certificate_without_the_version_field_is_read() -> None:
    fields = read_fields(v1_certificate(b"\x00\x80\x01", b"300601120000Z"))
    assert fields.serial == 0x8001
    assert fields.not_after == datetime.datetime(2030, 6, 1, 12, tzinfo=UTC)


def test_a_length_in_three_octets_is_followed() -> None:
    # An issuer of 1,000 names of 60 bytes: the lengths around it need three octets.
    common_name = der(0x30, der(0x06, bytes.fromhex("550403")), der(0x0C, b"n" * 60))
    big_name = der(0x30, *[der(0x31, common_name)] * 1000)
    algorithm = der(0x30, der(0x06, bytes.fromhex("2a8648ce3d040302")))
    validity = der(0x30, der(0x17, b"200101000000Z"), der(0x18, b"20991231235959Z"))
    tbs = der(
        0x30, der(0xA0, der(0x02, b"\x02")), der(0x02, b"\x2a"), algorithm, big_name, validity
    )
    whole = der(0x30, tbs, algorithm, der(0x03, b"\x00"))
    assert whole[1] == 0x83  # three length octets
    fields = read_fields(whole)
    assert (fields.serial, fields.not_after) == (
        42,
        datetime.datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC),
    )


# --- Truncated and garbage DER: a clear error naming the element --------------------------


def test_every_truncation_of_a_certificate_is_refused_as_truncated(
    ec_key: ec.EllipticCurvePrivateKey,
) -> None:
    whole = der_of(certificate(ec_key, serial=2**100, not_after=datetime.datetime(2060, 1, 1)))
    for length in range(len(whole)):
        with pytest.raises(CertificateFormatError) as raised:
            read_fields(whole[:length])
        assert str(raised.value).startswith("truncated: Certificate"), length
    assert str(_error(b"")) == "truncated: Certificate missing"
    assert str(_error(whole[:1])) == "truncated: Certificate has no length"
    assert str(_error(whole[:3])) == "truncated: Certificate length"
    size = int.from_bytes(whole[2:4], "big")
    assert str(_error(whole[:100])) == f"truncated: Certificate needs {size} bytes, 96 left"


def _error(data: bytes) -> CertificateFormatError:
    with pytest.raises(CertificateFormatError) as raised:
        read_fields(data)
    return raised.value


def test_a_certificate_whose_inner_lengths_run_past_its_end_is_refused() -> None:
    whole = v1_certificate(b"\x05", b"300601120000Z")
    # Claim a longer notAfter than there is: the Validity ends first.
    at = whole.index(b"300601120000Z") - 1
    broken = whole[:at] + bytes([whole[at] + 5]) + whole[at + 1 :]
    assert str(_error(broken)) == "truncated: notAfter needs 18 bytes, 13 left"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00" * 10, "Certificate: expected SEQUENCE, found tag 0x00"),
        (b"-----BEGIN CERTIFICATE-----", "Certificate: expected SEQUENCE, found tag 0x2d"),
        (b"\x30\x80\x00\x00", "Certificate: indefinite length is not DER"),
        (b"\x30\x85\x01\x02\x03\x04\x05", "Certificate: length of 5 octets is too long"),
        (b"\x1f\x01\x00", "Certificate: expected SEQUENCE, found tag 0x1f"),
        (b"\x30\x02\x05\x00", "TBSCertificate: expected SEQUENCE, found tag 0x05"),
        (b"\x30\x00", "truncated: TBSCertificate missing"),
        (b"\x30\x02\x30\x00\x00", "Certificate: 1 bytes after its end"),
        (
            b"\x30\x04\x30\x02\x04\x00",
            "version or serialNumber: expected [0] or INTEGER, found tag 0x04",
        ),
        (b"\x30\x04\x30\x02\x02\x00", "serialNumber: empty INTEGER"),
        (
            b"\x30\x07\x30\x05\xa0\x03\x02\x01\x02",
            "truncated: serialNumber missing",
        ),
        (b"\x30\x05\x30\x03\x02\x01\x01", "truncated: signature missing"),
        (b"\x30\x07\x30\x05\x02\x01\x01\x31\x00", "signature: expected SEQUENCE, found tag 0x31"),
    ],
)
def test_garbage_is_refused_with_an_error_naming_the_element(data: bytes, message: str) -> None:
    assert str(_error(data)) == message


@pytest.mark.parametrize(
    ("time_tag", "text", "message"),
    [
        (0x17, b"3006011200Z", "notAfter: '3006011200Z' is not an RFC 5280 time"),
        (0x17, b"300601120000+0100", "notAfter: '300601120000+0100' is not an RFC 5280 time"),
        (0x18, b"20300601120000.5Z", "notAfter: '20300601120000.5Z' is not an RFC 5280 time"),
        (0x18, b"300601120000Z", "notAfter: '300601120000Z' is not an RFC 5280 time"),
        (0x17, b"301301120000Z", "notAfter: '301301120000Z' is not a valid date"),
        (0x04, b"300601120000Z", "notAfter: expected UTCTime or GeneralizedTime, found tag 0x04"),
    ],
)
def test_a_not_after_outside_rfc_5280_is_refused(time_tag: int, text: bytes, message: str) -> None:
    assert str(_error(v1_certificate(b"\x01", text, time_tag=time_tag))) == message


# --- The server's pair: loaded with the ssl module, never with cryptography ---------------


def test_load_pair_reports_what_cryptography_reads(tmp_path: Path) -> None:
    files = write_certificates(tmp_path, service="svc", namespace="ns")
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    pair = load_pair(files.cert, files.key)
    assert pair.serial == cert.serial_number
    assert pair.not_after == cert.not_valid_after_utc.timestamp()
    assert pair.fingerprint == cert.fingerprint(hashes.SHA256()).hex()
    assert pair.fingerprint == hashlib.sha256(der_of(cert)).hexdigest()


def _pem_key(key: PrivateKey, encryption: serialization.KeySerializationEncryption) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _load_error(cert: Path, key: Path) -> str:
    with pytest.raises(CertificateError) as raised:
        load_pair(cert, key)
    return str(raised.value)


def test_an_encrypted_key_is_refused_without_a_prompt(tmp_path: Path) -> None:
    files = write_certificates(tmp_path, service="svc", namespace="ns")
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    files.key.write_bytes(_pem_key(key, serialization.BestAvailableEncryption(b"secret")))  # type: ignore[arg-type]
    message = _load_error(files.cert, files.key)
    assert message == f"key {files.key}: encrypted; give an unencrypted key"


def test_a_key_of_another_type_does_not_match_the_certificate(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    files = write_certificates(tmp_path, service="svc", namespace="ns")
    files.key.write_bytes(_pem_key(rsa_key, serialization.NoEncryption()))
    message = _load_error(files.cert, files.key)
    assert message == f"key {files.key} does not match certificate {files.cert}"


def test_a_pem_block_openssl_cannot_read_is_blamed_on_the_certificate(tmp_path: Path) -> None:
    files = write_certificates(tmp_path, service="svc", namespace="ns")
    # Readable up to notAfter, but no subject public key: OpenSSL refuses it.
    block = base64.encodebytes(v1_certificate(b"\x01", b"300601120000Z")).decode()
    files.cert.write_text(f"-----BEGIN CERTIFICATE-----\n{block}-----END CERTIFICATE-----\n")
    message = _load_error(files.cert, files.key)
    assert message == f"certificate {files.cert}: not a certificate OpenSSL can read"


@pytest.mark.parametrize(
    "module",
    ["server", "tls", "uvicorn_adapter", "commands.serve", "cli", "app", "observability", "config"],
)
def test_serving_never_imports_cryptography(module: str) -> None:
    code = f"import sys, webhook.{module}; print('cryptography' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout == "False\n"
