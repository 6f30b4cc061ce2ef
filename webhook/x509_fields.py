"""The serial number and notAfter of an X.509 certificate, read from its DER, stdlib only.

Why a hand-written reader: `serve` logs the serial and expiry of its serving certificate and
exports the expiry as a metric, and that is all it needs from the certificate. Importing
`cryptography` for it costs about 8.5 MB of resident memory in every worker, which puts the
worker over its 60 MB target (see the README's performance section). The standard `ssl`
module loads and checks the pair (`SSLContext.load_cert_chain` rejects a key that does not
match) and turns PEM into DER, but has no public way to read fields from a certificate. So
this module walks the few DER elements in front of notAfter and stops there; it checks
nothing else (no signature, no extensions): OpenSSL does the real loading. `cryptography`
stays the project's library for making certificates (`webhook/certs.py`) and for `doctor`;
tests/test_x509_fields.py checks this reader against its reading of many certificates.

The structure walked (RFC 5280, section 4.1):

    Certificate  ::=  SEQUENCE  {
        tbsCertificate       TBSCertificate,
        signatureAlgorithm   AlgorithmIdentifier,
        signatureValue       BIT STRING  }

    TBSCertificate  ::=  SEQUENCE  {
        version         [0]  EXPLICIT Version DEFAULT v1,
        serialNumber         CertificateSerialNumber,     -- INTEGER
        signature            AlgorithmIdentifier,         -- SEQUENCE
        issuer               Name,                        -- SEQUENCE
        validity             Validity,
        ...  }

    Validity ::= SEQUENCE {
        notBefore      Time,
        notAfter       Time  }

    Time ::= CHOICE {
        utcTime        UTCTime,           -- YYMMDDHHMMSSZ, through 2049
        generalTime    GeneralizedTime }  -- YYYYMMDDHHMMSSZ, from 2050
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

# DER identifier octets (universal class unless noted).
_INTEGER = 0x02
_SEQUENCE = 0x30  # constructed
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18
_VERSION = 0xA0  # [0] EXPLICIT, context-specific and constructed

_TAG_NAMES = {
    _INTEGER: "INTEGER",
    _SEQUENCE: "SEQUENCE",
    _UTC_TIME: "UTCTime",
    _GENERALIZED_TIME: "GeneralizedTime",
    _VERSION: "[0]",
}


class CertificateFormatError(ValueError):
    """The bytes are not a DER certificate this reader can follow; the message says where."""


@dataclass(frozen=True, slots=True)
class CertificateFields:
    serial: int
    not_after: datetime.datetime  # timezone-aware, UTC


@dataclass(frozen=True, slots=True)
class _Element:
    tag: int
    start: int  # offset of the contents
    end: int  # offset just past the contents


def _element(der: bytes, offset: int, end: int, what: str, tags: tuple[int, ...]) -> _Element:
    """The element at `offset`, one of `tags`, which must lie entirely before `end`.

    DER is tag, length, contents (X.690 section 8.1). Every tag we read is one octet.
    """
    if offset >= end:
        raise CertificateFormatError(f"truncated: {what} missing")
    tag = der[offset]
    if tag not in tags:
        wanted = " or ".join(_TAG_NAMES[t] for t in tags)
        raise CertificateFormatError(f"{what}: expected {wanted}, found tag 0x{tag:02x}")
    offset += 1
    if offset >= end:
        raise CertificateFormatError(f"truncated: {what} has no length")
    first = der[offset]
    offset += 1
    if first < 0x80:  # short form: the length itself
        length = first
    elif first == 0x80:  # indefinite length: BER, not DER
        raise CertificateFormatError(f"{what}: indefinite length is not DER")
    else:  # long form: the low 7 bits count the length octets that follow
        count = first & 0x7F
        if count > 4:
            raise CertificateFormatError(f"{what}: length of {count} octets is too long")
        if offset + count > end:
            raise CertificateFormatError(f"truncated: {what} length")
        length = int.from_bytes(der[offset : offset + count], "big")
        offset += count
    if offset + length > end:
        raise CertificateFormatError(f"truncated: {what} needs {length} bytes, {end - offset} left")
    return _Element(tag, offset, offset + length)


def _time(der: bytes, element: _Element, what: str) -> datetime.datetime:
    """A UTCTime or GeneralizedTime in the one form RFC 5280 allows: UTC ("Z"), seconds."""
    text = der[element.start : element.end].decode("ascii", "replace")
    digits = 12 if element.tag == _UTC_TIME else 14
    if len(text) != digits + 1 or not text[:digits].isdigit() or text[-1] != "Z":
        raise CertificateFormatError(f"{what}: {text!r} is not an RFC 5280 time")
    if element.tag == _UTC_TIME:
        # RFC 5280 4.1.2.5.1: YY >= 50 is 19YY, YY < 50 is 20YY.
        year = int(text[:2])
        year += 1900 if year >= 50 else 2000
        rest = text[2:]
    else:
        year = int(text[:4])
        rest = text[4:]
    try:
        return datetime.datetime(
            year,
            int(rest[0:2]),
            int(rest[2:4]),
            int(rest[4:6]),
            int(rest[6:8]),
            int(rest[8:10]),
            tzinfo=datetime.UTC,
        )
    except ValueError:
        raise CertificateFormatError(f"{what}: {text!r} is not a valid date") from None


def read_fields(der: bytes) -> CertificateFields:
    """The serial number and notAfter of the DER certificate `der`.

    Raises CertificateFormatError, naming the element, when the bytes are truncated or are
    not shaped like a certificate up to notAfter.
    """
    certificate = _element(der, 0, len(der), "Certificate", (_SEQUENCE,))
    if certificate.end != len(der):
        raise CertificateFormatError(
            f"Certificate: {len(der) - certificate.end} bytes after its end"
        )
    tbs = _element(der, certificate.start, certificate.end, "TBSCertificate", (_SEQUENCE,))

    field = _element(der, tbs.start, tbs.end, "version or serialNumber", (_VERSION, _INTEGER))
    if field.tag == _VERSION:  # version is present (v2, v3): skip it
        field = _element(der, field.end, tbs.end, "serialNumber", (_INTEGER,))
    if field.start == field.end:
        raise CertificateFormatError("serialNumber: empty INTEGER")
    # A DER INTEGER is two's complement: a serial with its high bit set has a 0x00 in front.
    serial = int.from_bytes(der[field.start : field.end], "big", signed=True)

    # Skipped whole: the signature AlgorithmIdentifier and the issuer Name.
    signature = _element(der, field.end, tbs.end, "signature", (_SEQUENCE,))
    issuer = _element(der, signature.end, tbs.end, "issuer", (_SEQUENCE,))
    validity = _element(der, issuer.end, tbs.end, "validity", (_SEQUENCE,))

    times = (_UTC_TIME, _GENERALIZED_TIME)
    not_before = _element(der, validity.start, validity.end, "notBefore", times)
    not_after = _element(der, not_before.end, validity.end, "notAfter", times)
    return CertificateFields(serial=serial, not_after=_time(der, not_after, "notAfter"))
