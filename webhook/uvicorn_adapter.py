"""Every use of uvicorn's internals, for the uvicorn versions checked at import.

The rest of the webhook uses only public API: `uvicorn.Config`, `uvicorn.Server` (`serve`,
`should_exit`, `force_exit`), `uvloop.Loop`; tests/test_uvicorn_adapter.py fails when
another module reaches further. Supported: uvicorn >=0.53,<0.55, as pyproject.toml
says (a test keeps the two equal); importing this module with another version raises
`UnsupportedVersion`. The lower bound: `Config(ssl_context_factory=...)` is new in 0.47,
and before 0.53 uvicorn does not send `connection: close` on the responses it lets finish
while draining (tests/test_shutdown.py fails with 0.47 to 0.52). The upper bound: the
internals below were read against 0.47 to 0.54.

Internals used, and why:

1. `uvicorn.protocols.http.httptools_impl.HttpToolsProtocol`, subclassed by
   `LimitedHttpToolsProtocol`: with httptools (kept for its speed) uvicorn has no limit on
   the size of the request headers (h11 has one) and no deadline for a request to arrive.
   One timer per request bounds the whole request, head and body: armed when it begins,
   cancelled when its last body byte is in. Overridden:
   - `connection_made`: arms the deadline (a connection that sends nothing is closed);
     optionally wraps `self.transport`, the transport uvicorn writes each response through
     (`wrap_transport`, for write coalescing); uvicorn's flow control keeps the real one.
   - `connection_lost`: cancels the deadline.
   - `data_received`: counts the bytes of a header block still unfinished after parsing
     (431 past the limit).
   - `on_message_begin` (an httptools callback, a request's first byte): arms the deadline.
   - `on_headers_complete`: measures the finished header block from uvicorn's
     per-request `self.url` and `self.headers`, and over the limit raises an exception,
     which stops httptools (its documented `HttpParserCallbackError`); uvicorn answers any
     parser error with `send_400_response`.
   - `send_400_response`: answers 431 instead when the header limit stopped the parser.
   - `on_message_complete`: cancels the deadline; the bytes after it begin the next
     request's headers.
   When the deadline passes during the body, the app is still reading it: the request's
   `self.cycle` (uvicorn's `RequestResponseCycle`; its `scope` and `response_started`) gets
   the `DEADLINE_EXPIRED` extension in its scope before the 408 is written and the
   connection closed, so the app, woken by `http.disconnect`, counts a timeout rather than
   a client that left.
2. `uvicorn.Server.capture_signals`, made a no-op by `Server`: `Server.serve()` installs
   its own SIGINT/SIGTERM handlers with `signal.signal` (replacing the event loop's
   `add_signal_handler`), stops accepting at once and re-raises the signal after the
   shutdown (the process then dies by the signal instead of exiting 0). The webhook's
   draining (webhook/server.py) must see the signal first: not ready at once, serving for
   `shutdown_delay_seconds`, then `should_exit`.
3. `uvicorn.Server.startup` creates its listener with `loop.create_server(..., ssl=...)`
   and no `ssl_handshake_timeout` (so uvloop's 60 s applies, and a client that never
   finishes its handshake holds a connection that long): `HandshakeDeadlineLoop`, a
   `uvloop.Loop`, adds the deadline to the TLS servers it creates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable, Generator
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import uvicorn
import uvloop

log = logging.getLogger(__name__)

UVICORN_REQUIREMENT = "uvicorn>=0.53,<0.55"
_UVICORN_LOWEST = (0, 53)
_UVICORN_BELOW = (0, 55)


class UnsupportedVersion(ImportError):
    """An installed library is outside the versions this adapter was written for."""


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: "0.54.0rc1" -> (0, 54, 0)."""
    match = re.match(r"\d+(\.\d+)*", version)
    if match is None:
        return ()
    return tuple(int(part) for part in match.group().split("."))


def check_uvicorn_version(version: str) -> None:
    """UnsupportedVersion unless `version` is in the supported range."""
    if not _UVICORN_LOWEST <= _release(version) < _UVICORN_BELOW:
        raise UnsupportedVersion(
            f"uvicorn {version} is installed, but istio-spiffe-webhook needs"
            f" {UVICORN_REQUIREMENT} (webhook/uvicorn_adapter.py uses its internals);"
            " install the versions of requirements/runtime.lock"
        )


# Before the internal imports: another version may not even have them.
check_uvicorn_version(uvicorn.__version__)

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # noqa: E402

TransportWrapper = Callable[[asyncio.Transport, asyncio.AbstractEventLoop], asyncio.Transport]


# The ASGI extension (an empty dict under this key of the scope's "extensions") that tells
# the app the request deadline passed while it was still reading the body (1.).
DEADLINE_EXPIRED = "istio-spiffe-webhook.request_deadline_expired"


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header size limit and a request deadline (1.)."""

    max_header_bytes = 16 * 1024
    request_timeout = 10.0
    wrap_transport: TransportWrapper | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True  # until a request's header block is complete
        self._header_bytes = 0  # received since the current header block began
        self._headers_too_large = False
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.wrap_transport is not None:
            self.transport = self.wrap_transport(transport, asyncio.get_running_loop())
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        # Still no complete header block after parsing: every byte so far belongs to it.
        if (
            self._awaiting_headers
            and self._header_bytes > self.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._headers_too_large = True
            self.send_400_response("")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_deadline()

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._header_bytes = 0
        # The request line is the URL and at most 16 bytes more (method, version, spaces,
        # CRLF); each field its name, value, ": " and CRLF.
        size = len(self.url) + 16 + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_header_bytes:
            self._headers_too_large = True
            raise ValueError("request headers too large")  # -> send_400_response
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_deadline()
        super().on_message_complete()
        self._awaiting_headers = True

    def send_400_response(self, msg: str) -> None:
        if self._headers_too_large:
            self._reject(431, f"request headers exceed {self.max_header_bytes} bytes")
        else:
            super().send_400_response(msg)

    def _arm_deadline(self) -> None:
        self._cancel_deadline()
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self.request_timeout, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._awaiting_headers:
            if self._header_bytes:
                self._reject(408, f"request headers not received within {self.request_timeout:g}s")
            else:
                self.transport.close()  # connected, never sent a byte: nobody to answer
            return
        cycle = self.cycle
        if cycle.response_started:
            self.transport.close()  # the app answered without the body (413): nothing to add
            return
        cycle.scope.setdefault("extensions", {})[DEADLINE_EXPIRED] = {}
        self._reject(408, f"body not received within {self.request_timeout:g}s")

    def _reject(self, status: int, reason: str) -> None:
        peer = self.transport.get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else ""
        log.warning(
            "request rejected",
            extra={"fields": {"status": status, "error": reason, "client": client}},
        )
        body = json.dumps({"error": reason}).encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())
            + b"date: %s\r\n" % formatdate(usegmt=True).encode()
            + b"content-type: application/json\r\n"
            + b"content-length: %d\r\n" % len(body)
            + b"connection: close\r\n\r\n"
            + body
        )
        self.transport.close()


def http_protocol(
    *, max_header_bytes: int, request_timeout: float, wrap_transport: TransportWrapper | None
) -> type[LimitedHttpToolsProtocol]:
    """The HTTP protocol class for `uvicorn.Config(http=...)`, with these limits."""
    return type(
        "WebhookHttpProtocol",
        (LimitedHttpToolsProtocol,),
        {
            "max_header_bytes": max_header_bytes,
            "request_timeout": request_timeout,
            "wrap_transport": staticmethod(wrap_transport) if wrap_transport else None,
        },
    )


class Server(uvicorn.Server):
    """uvicorn's server, leaving SIGINT and SIGTERM to the caller (2.)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HandshakeDeadlineLoop(uvloop.Loop):
    """uvloop with a TLS handshake deadline on the servers it creates (3.)."""

    handshake_timeout = 60.0

    async def create_server(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", self.handshake_timeout)
        return await super().create_server(*args, **kwargs)


def event_loop_factory(handshake_timeout: float) -> Callable[[], asyncio.AbstractEventLoop]:
    """`asyncio.Runner(loop_factory=...)`: uvloop, TLS handshakes cut at the deadline."""

    def new_event_loop() -> asyncio.AbstractEventLoop:
        loop = HandshakeDeadlineLoop()
        loop.handshake_timeout = handshake_timeout
        return loop

    return new_event_loop
