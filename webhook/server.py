"""The server: uvicorn over TLS, certificate hot reload, limits, draining and metrics.

One uvicorn worker (uvloop, httptools) serves `webhook.app.WebhookApp` on a socket this
module binds itself (so a port in use is a one-line error, not a traceback). TLS:

- We build the `ssl.SSLContext` ourselves and hand it to uvicorn through
  `Config(ssl_context_factory=...)`, the hook uvicorn offers for exactly this; uvicorn's own
  `create_ssl_context` cannot set a TLS minimum or drop compression and renegotiation.
- TLS 1.2 is the minimum; its suites are ECDHE with AES-GCM or ChaCha20-Poly1305 only
  (TLS 1.3 suites are all AEAD); no compression, no renegotiation.
- Hot reload (cert-manager and Secret updates rotate the files in place): a task checks the
  files' identity (inode, size, mtime) every `cert_reload_seconds`; a changed pair is loaded
  into a fresh context, and only when it loads (certificate parses, key parses, key matches:
  OpenSSL checks all three in `load_cert_chain`) does it become current. The listening
  context's `sni_callback` hands every new handshake the current context
  (`SSLSocket.context = ...`), the documented way to pick a certificate per handshake, so no
  live context is ever mutated. A bad pair is logged and the old one kept. `cryptography` is
  never imported by `serve` (memory: see `load_pair`).

Limits uvicorn lacks, enforced in `LimitedHttpToolsProtocol`: request headers over
`max_header_bytes` get 431 (httptools, unlike h11, has no limit; we keep httptools for its
speed), and headers not received whole within `request_timeout_seconds` get 408 (an idle
new connection is just closed). The body has the same deadline, enforced by `/mutate`
(408), and the TLS handshake too (the event loop's `ssl_handshake_timeout`).

On SIGTERM/SIGINT `/readyz` turns 503 at once; requests are still served for
`shutdown_delay_seconds`, then the server stops accepting, lets in-flight requests finish
and exits 0 within `shutdown_grace_seconds` in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import click
import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from webhook.app import Readiness, WebhookApp
from webhook.cli import config_option, settings_from
from webhook.config import Settings
from webhook.observability import LOGGER_NAME, Metrics, Observer, configure_logging
from webhook.x509_fields import read_fields

log = logging.getLogger(LOGGER_NAME)

# TLS 1.2 suites: forward-secret key exchange (ECDHE) and AEAD ciphers only.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"

ASGIApp = Callable[..., Any]


class AppFactory(Protocol):
    def __call__(self, settings: Settings, readiness: Readiness, observer: Observer) -> Any: ...


class StartupError(Exception):
    """The server cannot start; the message is one line for the operator."""


class CertificateError(Exception):
    """A certificate/key pair cannot be used; the message says which file and why."""


# --- TLS ---------------------------------------------------------------------------------


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
    `cryptography` is not imported here: it costs the worker about 8.5 MB of memory (see
    webhook/x509_fields.py); OpenSSL checks the pair and x509_fields reads what we log.
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
        log.info("certificate reloaded", extra={"fields": _describe(pair)})
        return True

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.check()
            except Exception:  # never let the watcher die: the next check may succeed
                log.exception("certificate check failed")


def _describe(pair: LoadedPair) -> dict[str, Any]:
    return {
        "serial": format(pair.serial, "x"),
        "sha256": pair.fingerprint,
        "not_after": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(pair.not_after)),
    }


# --- HTTP limits -------------------------------------------------------------------------


class _CoalescingTransport(asyncio.Transport):
    """Holds a lone write until the next one, so a response leaves in one TLS record.

    uvicorn writes a response's headers and its body in two `transport.write` calls: two
    TLS records, two `send` syscalls and, when the client sleeps between them, two wake-ups
    of the client, which the kernel charges to the server (the wake-up is most of what a
    loopback `send` costs on a virtual machine; see bench/README.md). A write is held until
    the next write (sent together with it at once) or the end of the current event loop
    callbacks (`call_soon`), whichever is first, so nothing waits for more data that may
    never come; `close()` sends what is held first. Order is kept.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._loop.call_soon(self._flush)
        else:
            self._held = None
            self._transport.write(held + data)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._held or b"")

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header size limit and a header deadline."""

    max_header_bytes = 16 * 1024
    header_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_headers = True
        self._header_bytes = 0  # parsed: request line and header fields
        self._raw_header_bytes = 0  # received while the headers are incomplete
        self._request_begun = False
        self._too_large = False
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # flow control and addresses: the real transport
        # Responses are written through this one: headers and body in one write.
        self.transport = _CoalescingTransport(transport, self.loop)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            self._raw_header_bytes += len(data)
            if self._header_timer is None:
                self._arm_header_timer()
        super().data_received(data)
        # Still in the headers after parsing: everything received so far is header bytes.
        if (
            self._in_headers
            and self._raw_header_bytes > self.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._too_large = True
            self.send_400_response("")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._request_begun = True
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count(len(url) + 16)  # method, version, spaces, CRLF

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._count(len(name) + len(value) + 4)  # ": " and CRLF

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes:
            self._too_large = True
            # Stops the parser; uvicorn then calls send_400_response, which answers 431.
            raise ValueError("request headers too large")

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._raw_header_bytes = 0
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_headers = True
        self._request_begun = False

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._reject(431, f"request headers exceed {self.max_header_bytes} bytes")
        else:
            super().send_400_response(msg)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_deadline)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        if not self._in_headers or self.transport.is_closing():
            return
        if self._request_begun or self._raw_header_bytes:
            self._reject(408, f"request headers not received within {self.header_timeout:g}s")
        elif self.cycle is None or self.cycle.response_complete:
            self.transport.close()  # connected, never sent a byte

    def _reject(self, status: int, reason: str) -> None:
        log.warning(
            "request rejected",
            extra={"fields": {"status": status, "error": reason, "client": self._client()}},
        )
        body = b'{"error": "' + reason.encode("ascii", "replace") + b'"}'
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode() + b"\r\n",
                b"connection: close\r\n\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(head))
        self.transport.close()

    def _client(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else ""


def protocol_class(settings: Settings) -> type[LimitedHttpToolsProtocol]:
    """The HTTP protocol with this configuration's limits."""
    return type(
        "WebhookHttpProtocol",
        (LimitedHttpToolsProtocol,),
        {
            "max_header_bytes": settings.max_header_bytes,
            "header_timeout": settings.request_timeout_seconds,
        },
    )


# --- The server --------------------------------------------------------------------------


class WebhookServer(uvicorn.Server):
    """uvicorn's server with our shutdown: not ready first, then drain, then exit 0."""

    def __init__(self, config: uvicorn.Config, readiness: Readiness, delay: float) -> None:
        super().__init__(config)
        self.readiness = readiness
        self.delay = delay
        self._stop_at: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._stop_at is None:
            self.readiness.draining = True
            self._stop_at = time.monotonic() + self.delay
            log.info(
                "draining",
                extra={"fields": {"signal": signal.Signals(sig).name, "delay_s": self.delay}},
            )
        else:
            super().handle_exit(sig, frame)  # a second signal: stop now (SIGINT: force)

    async def on_tick(self, counter: int) -> bool:
        if self._stop_at is not None and time.monotonic() >= self._stop_at:
            self.should_exit = True
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Like uvicorn's, but without re-raising the signal after the graceful shutdown:
        # a drained server exits 0, not "killed by SIGTERM".
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Loop(uvloop.Loop):
    """uvloop with a TLS handshake deadline on the servers it creates."""

    handshake_timeout = 10.0

    async def create_server(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", self.handshake_timeout)
        return await super().create_server(*args, **kwargs)


def uvicorn_config(app: ASGIApp, settings: Settings, context: ssl.SSLContext) -> uvicorn.Config:
    """The uvicorn configuration of the product (benchmarks reuse it with another app)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="none",  # we run the loop (uvloop) ourselves
        http=protocol_class(settings),
        ws="none",  # no WebSocket upgrades: an admission webhook has no use for them
        interface="asgi3",
        lifespan="off",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        workers=1,
        ssl_context_factory=lambda _config, _default: context,
        # uvicorn hands both values to call_later / wait_for, which take floats.
        timeout_keep_alive=settings.keep_alive_seconds,  # type: ignore[arg-type]
        timeout_graceful_shutdown=max(  # type: ignore[arg-type]
            settings.shutdown_grace_seconds - settings.shutdown_delay_seconds - 0.5, 0.1
        ),
    )


def bind(host: str, port: int) -> socket.socket:
    """The listening socket; StartupError with one line when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.set_inheritable(False)
    return sock


@contextlib.contextmanager
def metrics_server(settings: Settings, metrics: Metrics) -> Iterator[int | None]:
    """Prometheus `/metrics` on its own plain-HTTP port (none when metrics_port is 0)."""
    if settings.metrics_port == 0:
        yield None
        return
    from prometheus_client import start_http_server

    try:
        server, thread = start_http_server(
            settings.metrics_port, settings.metrics_host, registry=metrics.registry
        )
    except OSError as error:
        raise StartupError(
            f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}:"
            f" {error.strerror or error}"
        ) from None
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def serve(settings: Settings, make_app: AppFactory = WebhookApp) -> None:
    """Run until SIGTERM/SIGINT. Raises StartupError when it cannot start."""
    configure_logging(settings.log_level)
    metrics = Metrics()
    readiness = Readiness()
    source = CertificateSource(settings.tls_cert_file, settings.tls_key_file, metrics)
    try:
        pair = source.load()
    except CertificateError as error:
        raise StartupError(str(error)) from None
    readiness.certificate_loaded = True
    app = make_app(settings, readiness, Observer(metrics))
    config = uvicorn_config(app, settings, source.context)
    server = WebhookServer(config, readiness, settings.shutdown_delay_seconds)
    sock = bind(settings.host, settings.port)
    try:
        with metrics_server(settings, metrics) as metrics_port:
            log.info(
                "serving",
                extra={
                    "fields": {
                        "address": f"https://{settings.host}:{sock.getsockname()[1]}",
                        "metrics": (
                            f"http://{settings.metrics_host}:{metrics_port}/metrics"
                            if metrics_port
                            else None
                        ),
                        **_describe(pair),
                    }
                },
            )
            _Loop.handshake_timeout = settings.request_timeout_seconds
            with asyncio.Runner(loop_factory=_Loop) as runner:
                runner.run(_run(server, source, sock, settings.cert_reload_seconds))
    finally:
        sock.close()
    log.info("stopped")


async def _run(
    server: WebhookServer, source: CertificateSource, sock: socket.socket, interval: float
) -> None:
    watcher = asyncio.create_task(source.watch(interval))
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


@click.command("serve")
@click.option("--host", default=None, help="Address to listen on [default: Settings.host].")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="TLS port [default: 8443]."
)
@click.option(
    "--cert",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Serving certificate (PEM) [default: certs/tls.crt].",
)
@click.option(
    "--key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Its private key (PEM, unencrypted) [default: certs/tls.key].",
)
@config_option
def serve_command(
    host: str | None, port: int | None, cert: Path | None, key: Path | None, config: str | None
) -> None:
    """Serve the admission webhook over TLS."""
    settings = settings_from(config, host=host, port=port, tls_cert_file=cert, tls_key_file=key)
    try:
        serve(settings)
    except StartupError as error:
        raise click.ClickException(str(error)) from None
