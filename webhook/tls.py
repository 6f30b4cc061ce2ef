"""TLS: the server context, the serving pair, and its hot reload.

The counterpart of cert-manager's `server/tls` (`dynamic_source`) and controller-runtime's
`certwatcher`: one small component owns the certificate in use.

- `tls_context` builds the server context: TLS 1.2 minimum, TLS 1.2 suites ECDHE with
  AES-GCM or ChaCha20-Poly1305 only (TLS 1.3 suites are all AEAD), no compression, no
  renegotiation, ALPN `http/1.1`. uvicorn's own context cannot set a minimum or drop
  compression and renegotiation, so the server hands it this one
  (`Config(ssl_context_factory=...)`).
- `load_pair` checks a pair and loads it into a fresh context (OpenSSL checks that the
  certificate parses, the key parses and they match, all in `load_cert_chain`), with the
  standard `ssl` module only: `cryptography` costs the worker about 8.5 MB of memory (see
  webhook/x509_fields.py).
- `CertificateSource` keeps the pair in use. Its `watch` task checks the files' identity
  (inode, size, mtime) every `cert_reload_seconds` (cert-manager and Secret updates rotate
  them in place); a changed pair becomes current only when it loads. The listening
  context's `sni_callback` hands every new handshake the current context
  (`SSLSocket.context = ...`, the documented way to pick a certificate per handshake), so
  no live context is ever mutated. A bad pair is logged and counted, and the old one kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webhook.observability import LOGGER_NAME, Metrics
from webhook.x509_fields import read_fields

log = logging.getLogger(LOGGER_NAME)

# TLS 1.2 suites: forward-secret key exchange (ECDHE) and AEAD ciphers only.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"


class CertificateError(Exception):
    """A certificate/key pair cannot be used; the message says which file and why."""


def tls_context(
    cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str]
) -> ssl.SSLContext:
    """A server context with our TLS settings and the pair loaded from the files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= (
        ssl.OP_NO_COMPRESSION
        | ssl.OP_NO_RENEGOTIATION
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_SINGLE_ECDH_USE
    )
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(cert_file, key_file, password=_no_password)
    return context


def _no_password() -> bytes:
    # Called by OpenSSL only for an encrypted key: refuse, never prompt on a terminal.
    raise _EncryptedKey


class _EncryptedKey(Exception):
    """Raised through `load_cert_chain` by `_no_password`: the key needs a password."""


@dataclass(frozen=True, slots=True)
class LoadedPair:
    context: ssl.SSLContext
    not_after: float  # Unix time the certificate expires
    serial: int
    fingerprint: str  # SHA-256 of the certificate (DER), for the log

    def describe(self) -> dict[str, Any]:
        """What the log says about the pair (never key material)."""
        return {
            "serial": format(self.serial, "x"),
            "sha256": self.fingerprint,
            "not_after": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.not_after)),
        }


_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_END = b"-----END CERTIFICATE-----"


def _first_certificate_der(pem: bytes) -> bytes:
    """The DER of the first PEM certificate in `pem`; ValueError when there is none."""
    start = pem.find(_PEM_BEGIN)
    end = pem.find(_PEM_END, start)
    if start < 0 or end < 0:
        raise ValueError("no PEM certificate")
    block = pem[start : end + len(_PEM_END)].decode("ascii")  # UnicodeError is a ValueError
    return ssl.PEM_cert_to_DER_cert(block)  # binascii.Error (a ValueError) on bad base64


def _openssl_reads_certificate(der: bytes) -> bool:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=der)
    except ssl.SSLError:
        return False
    return True


def load_pair(cert_file: Path, key_file: Path) -> LoadedPair:
    """Check the pair and load it into a fresh context, with the standard `ssl` module only.

    Raises CertificateError with a one-line reason; never includes key material.
    """
    try:
        cert_data = cert_file.read_bytes()
    except OSError as error:
        raise CertificateError(f"certificate {cert_file}: {error.strerror or error}") from None
    try:
        key_file.read_bytes()  # readable at all: a one-line error naming the key file
    except OSError as error:
        raise CertificateError(f"key {key_file}: {error.strerror or error}") from None
    try:
        der = _first_certificate_der(cert_data)
        fields = read_fields(der)
    except ValueError:
        raise CertificateError(f"certificate {cert_file}: no PEM certificate in it") from None
    try:
        context = tls_context(cert_file, key_file)
    except _EncryptedKey:
        raise CertificateError(f"key {key_file}: encrypted; give an unencrypted key") from None
    except ssl.SSLError as error:
        raise CertificateError(_pair_error(cert_file, key_file, der, error)) from None
    except OSError as error:
        # The files changed between the check and the load (a rotation in progress).
        raise CertificateError(
            f"certificate {cert_file} / key {key_file}: {error.strerror or error}"
        ) from None
    return LoadedPair(
        context=context,
        not_after=fields.not_after.timestamp(),
        serial=fields.serial,
        fingerprint=hashlib.sha256(der).hexdigest(),
    )


def _pair_error(cert_file: Path, key_file: Path, der: bytes, error: ssl.SSLError) -> str:
    """One line for an OpenSSL error from `load_cert_chain`.

    OpenSSL names a mismatch (KEY_VALUES_MISMATCH; NO_CERTIFICATE_ASSIGNED when the key is
    of another type, e.g. RSA for an EC certificate) but says only "PEM lib" for an
    unreadable certificate or key, without telling which: the certificate is then tried
    alone.
    """
    if error.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
        return f"key {key_file} does not match certificate {cert_file}"
    if not _openssl_reads_certificate(der):
        return f"certificate {cert_file}: not a certificate OpenSSL can read"
    if error.reason is None:  # "PEM lib": no PEM key, or a PEM block that is no key
        return f"key {key_file}: not a PEM private key"
    return f"key {key_file}: OpenSSL cannot use it ({error.reason})"


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return (status.st_ino, status.st_size, status.st_mtime_ns)


class CertificateSource:
    """The serving certificate in use, reloaded when its files change.

    `context` is the listening context: its `sni_callback` hands each new handshake the
    context of the current pair. Reloads run on the event loop (or any one thread).
    """

    def __init__(self, cert_file: Path, key_file: Path, metrics: Metrics) -> None:
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self.metrics = metrics
        self._current: LoadedPair | None = None
        self._seen: tuple[object, object] | None = None
        self._listening: ssl.SSLContext | None = None

    @property
    def current(self) -> LoadedPair:
        if self._current is None:
            raise RuntimeError("no certificate loaded yet")
        return self._current

    @property
    def context(self) -> ssl.SSLContext:
        if self._listening is None:
            raise RuntimeError("no certificate loaded yet")
        return self._listening

    def load(self) -> LoadedPair:
        """The first load (raises CertificateError); sets up the listening context."""
        seen = self._signature()
        pair = load_pair(self.cert_file, self.key_file)
        self._install(pair, seen)
        # The first pair's context listens; the callback switches each handshake to the
        # current pair's context (the same one until the first reload).
        pair.context.sni_callback = self._select
        self._listening = pair.context
        return pair

    def _select(self, connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        # Called by OpenSSL for every ClientHello, with or without SNI.
        connection.context = self.current.context

    def _signature(self) -> tuple[object, object]:
        return (_identity(self.cert_file), _identity(self.key_file))

    def _install(self, pair: LoadedPair, seen: tuple[object, object]) -> None:
        self._current = pair
        self._seen = seen
        self.metrics.certificate_expiry.set(pair.not_after)

    def check(self) -> bool:
        """Reload when the files changed; True when a new pair is now in use."""
        seen = self._signature()
        if seen == self._seen:
            return False
        try:
            pair = load_pair(self.cert_file, self.key_file)
        except CertificateError as error:
            # Remember the bad state: one error per change, not one per check.
            self._seen = seen
            self.metrics.certificate_reloads.labels("error").inc()
            log.error(
                "certificate reload failed; keeping the certificate in use",
                extra={"fields": {"error": str(error), "serial": format(self.current.serial, "x")}},
            )
            return False
        self._install(pair, seen)
        self.metrics.certificate_reloads.labels("success").inc()
        log.info("certificate reloaded", extra={"fields": pair.describe()})
        return True

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.check()
            except Exception:  # never let the watcher die: the next check may succeed
                log.exception("certificate check failed")
