"""Assembly: the app, TLS, limits and draining on one uvicorn worker.

`serve(settings)` loads the serving pair (webhook/tls.py), builds the app
(webhook/app.py), binds the socket itself (a port in use is a one-line error, not a
traceback) and runs uvicorn on uvloop. Library internals are used only by
webhook/uvicorn_adapter.py.

Each limit is enforced in one place (`request_timeout_seconds` bounds two phases of a
connection, each in its own place):

- TLS handshake deadline (`request_timeout_seconds`): the listener, through the event loop
  (`uvicorn_adapter.HandshakeDeadlineLoop`);
- request deadline: a request's head and body must arrive within `request_timeout_seconds`
  of its first byte, else 408 (an idle new connection is closed), and header size, 431
  (`max_header_bytes`): the HTTP protocol (`uvicorn_adapter.LimitedHttpToolsProtocol`);
- body size, 413 (`max_body_bytes`): `/mutate` (`app.WebhookApp`), while reading;
- idle keep-alive connections (`keep_alive_seconds`): uvicorn (`timeout_keep_alive`).

Draining: on SIGTERM/SIGINT `/readyz` turns 503 at once; requests are still served for
`shutdown_delay_seconds`, then the server stops accepting, lets in-flight requests finish
and exits 0 within `shutdown_grace_seconds` in all. A second signal stops at once; a
third SIGINT does not wait for requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import uvicorn

from webhook import uvicorn_adapter
from webhook.app import Readiness, WebhookApp
from webhook.config import Settings
from webhook.observability import LOGGER_NAME, Metrics, Observer, configure_logging
from webhook.tls import CertificateError, CertificateSource
from webhook.write_coalescing import CoalescingTransport

log = logging.getLogger(LOGGER_NAME)

ASGIApp = Callable[..., Any]

# Responses leave in one write (webhook/write_coalescing.py); False to measure without.
COALESCE_WRITES = True


class AppFactory(Protocol):
    def __call__(self, settings: Settings, readiness: Readiness, observer: Observer) -> Any: ...


class StartupError(Exception):
    """The server cannot start; the message is one line for the operator."""


def uvicorn_config(app: ASGIApp, settings: Settings, context: ssl.SSLContext) -> uvicorn.Config:
    """The uvicorn configuration of the product (benchmarks reuse it with another app)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="none",  # we run the loop (uvloop) ourselves
        http=uvicorn_adapter.http_protocol(
            max_header_bytes=settings.max_header_bytes,
            request_timeout=settings.request_timeout_seconds,
            wrap_transport=CoalescingTransport if COALESCE_WRITES else None,
        ),
        ws="none",  # no WebSocket upgrades: an admission webhook has no use for them
        interface="asgi3",
        lifespan="off",
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        workers=1,
        # Our context (webhook/tls.py): uvicorn's cannot set a TLS minimum or drop
        # compression and renegotiation.
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


_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Draining:
    """What SIGTERM and SIGINT do: not ready at once, stop accepting after `delay`."""

    def __init__(self, server: uvicorn.Server, readiness: Readiness, delay: float) -> None:
        self.server = server
        self.readiness = readiness
        self.delay = delay

    def signalled(self, sig: signal.Signals) -> None:
        if not self.readiness.draining:
            self.readiness.draining = True
            log.info("draining", extra={"fields": {"signal": sig.name, "delay_s": self.delay}})
            asyncio.get_running_loop().call_later(self.delay, self._stop)
        elif self.server.should_exit and sig == signal.SIGINT:
            self.server.force_exit = True  # do not wait for requests in flight
        else:
            self._stop()  # a second signal: stop accepting now

    def _stop(self) -> None:
        self.server.should_exit = True

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            loop.add_signal_handler(sig, self.signalled, sig)
        try:
            yield
        finally:
            for sig in _SIGNALS:
                loop.remove_signal_handler(sig)


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
    server = uvicorn_adapter.Server(uvicorn_config(app, settings, source.context))
    draining = Draining(server, readiness, settings.shutdown_delay_seconds)
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
                        **pair.describe(),
                    }
                },
            )
            loop_factory = uvicorn_adapter.event_loop_factory(settings.request_timeout_seconds)
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                runner.run(_run(server, draining, source, sock, settings.cert_reload_seconds))
    finally:
        sock.close()
    log.info("stopped")


async def _run(
    server: uvicorn.Server,
    draining: Draining,
    source: CertificateSource,
    sock: socket.socket,
    reload_interval: float,
) -> None:
    watcher = asyncio.create_task(source.watch(reload_interval))
    try:
        with draining.handling_signals():
            await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
