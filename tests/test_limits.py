"""Limits on the real server: header size, slow clients (headers and body), idle
connections, body size with Content-Length and chunked."""

from __future__ import annotations

import copy
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.oracle import admission_reviews
from tests.serving import HOST, ServerHandle, read_until_closed, running_server

HEADER_LIMIT = 4096
BODY_LIMIT = 16384
TIMEOUT = 1.5  # request_timeout_seconds
# libuv's timers count whole milliseconds: a deadline may end a hair before the clock says.
TIMER_GRAIN = 0.005
REVIEW = admission_reviews()["hello-native"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    with running_server(
        tmp_path_factory.mktemp("limits"),
        max_header_bytes=HEADER_LIMIT,
        max_body_bytes=BODY_LIMIT,
        request_timeout_seconds=TIMEOUT,
        keep_alive_seconds=1,
    ) as handle:
        yield handle


def split(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return status, headers, body


def normal_mutate(server: ServerHandle) -> int:
    with server.client() as client:
        response = client.post("/mutate", json=REVIEW)
    assert response.json()["response"]["uid"] == REVIEW["request"]["uid"]
    return response.status_code


# --- Header size --------------------------------------------------------------------


def test_headers_over_the_limit_get_431_and_the_connection_closes(server: ServerHandle) -> None:
    with server.client() as client:
        response = client.get("/healthz", headers={"x-pad": "a" * HEADER_LIMIT})
    assert response.status_code == 431
    assert response.json() == {"error": f"request headers exceed {HEADER_LIMIT} bytes"}
    assert response.headers["connection"] == "close"


def test_headers_under_the_limit_are_served(server: ServerHandle) -> None:
    with server.client() as client:
        response = client.get("/healthz", headers={"x-pad": "a" * (HEADER_LIMIT - 500)})
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_an_unfinished_header_block_over_the_limit_gets_431(server: ServerHandle) -> None:
    with server.connect() as tls:
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * HEADER_LIMIT)
        status, headers, body = split(read_until_closed(tls))
    assert status == "HTTP/1.1 431 Request Header Fields Too Large"
    assert headers["connection"] == "close"
    assert json.loads(body) == {"error": f"request headers exceed {HEADER_LIMIT} bytes"}


# --- Slow clients ---------------------------------------------------------------------


@dataclass
class SlowClient:
    """Sends `head` whole, then `trickle` one byte per second until the server answers."""

    server: ServerHandle
    head: bytes
    trickle: bytes
    started: threading.Event = field(default_factory=threading.Event)
    answer: bytes = b""
    bytes_sent: int = 0
    answered_at: float = 0.0

    def run(self) -> None:
        with self.server.connect() as tls:
            tls.sendall(self.head)
            tls.settimeout(1.0)  # one byte per second: wait 1 s for an answer between bytes
            self.started.set()
            for byte in self.trickle[:30]:  # bounded: the server must cut it off before
                try:
                    tls.sendall(bytes([byte]))
                    self.bytes_sent += 1
                    first = tls.recv(65536)
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    break
                tls.settimeout(10)
                self.answer = first + read_until_closed(tls)
                break
            self.answered_at = time.monotonic()


def run_slow_client(server: ServerHandle, head: bytes, trickle: bytes) -> tuple[SlowClient, float]:
    """The slow client in a thread, and when a normal request sent meanwhile finished."""
    slow = SlowClient(server, head, trickle)
    thread = threading.Thread(target=slow.run, daemon=True)
    thread.start()
    assert slow.started.wait(10)
    assert normal_mutate(server) == 200
    normal_done = time.monotonic()
    thread.join(timeout=60)
    assert not thread.is_alive()
    return slow, normal_done


def test_a_client_sending_headers_one_byte_a_second_is_cut_off_and_blocks_no_one(
    server: ServerHandle,
) -> None:
    slow, normal_done = run_slow_client(
        server, b"POST /mutate HTTP/1.1\r\n", b"Host: webhook\r\nX-Slow: " + b"s" * 100
    )
    status, headers, body = split(slow.answer)
    assert status == "HTTP/1.1 408 Request Timeout"
    assert headers["connection"] == "close"
    assert json.loads(body) == {"error": f"request headers not received within {TIMEOUT:g}s"}
    assert 0 < slow.bytes_sent < 30
    assert normal_done < slow.answered_at  # the normal request did not wait for it


def test_a_client_sending_the_body_one_byte_a_second_is_cut_off_and_blocks_no_one(
    server: ServerHandle,
) -> None:
    body = json.dumps(REVIEW).encode()
    head = (
        b"POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    slow, normal_done = run_slow_client(server, head, body)
    status, headers, answer = split(slow.answer)
    assert status == "HTTP/1.1 408 Request Timeout"
    assert headers["connection"] == "close"
    assert json.loads(answer) == {"error": f"body not received within {TIMEOUT:g}s"}
    assert 0 < slow.bytes_sent < 30
    assert normal_done < slow.answered_at


def _timeouts_counted(server: ServerHandle) -> float:
    key = (
        "istio_spiffe_webhook_admission_requests_total",
        (("dry_run", "false"), ("outcome", "rejected"), ("reason", "timeout")),
    )
    return server.metrics().get(key, 0.0)


def test_head_and_body_share_one_deadline_from_the_requests_first_byte(
    server: ServerHandle,
) -> None:
    # Head two thirds of the deadline late, then half the body: the 408 comes one deadline
    # after the first byte, not a fresh deadline after the head.
    body = json.dumps(REVIEW).encode()
    timeouts_before = _timeouts_counted(server)
    with server.connect() as tls:
        began = time.monotonic()
        tls.sendall(b"POST /mutate HTTP/1.1\r\n")
        time.sleep(TIMEOUT * 2 / 3)
        tls.sendall(
            b"Host: webhook\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[: len(body) // 2]
        )
        answer = read_until_closed(tls)
        answered_after = time.monotonic() - began
    status, headers, text = split(answer)
    assert (status, headers["connection"]) == ("HTTP/1.1 408 Request Timeout", "close")
    assert json.loads(text) == {"error": f"body not received within {TIMEOUT:g}s"}
    # Bounds with room for a loaded machine, yet apart: a fresh deadline would end at 2.5 s.
    assert TIMEOUT - TIMER_GRAIN <= answered_after < TIMEOUT * 5 / 3 - 0.1
    # /mutate counts it once the closed connection wakes it: poll, bounded.
    deadline = time.monotonic() + 10
    while _timeouts_counted(server) == timeouts_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _timeouts_counted(server) == timeouts_before + 1


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(
    server: ServerHandle,
) -> None:
    with server.connect() as tls:
        assert read_until_closed(tls) == b""


def test_a_connection_that_never_starts_the_tls_handshake_is_closed(
    server: ServerHandle,
) -> None:
    with socket.create_connection((HOST, server.port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
        assert sock.recv(1024) == b""  # closed after request_timeout_seconds, not 60 s


def test_an_idle_keep_alive_connection_is_closed_after_its_response(
    server: ServerHandle,
) -> None:
    with server.connect() as tls:
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: webhook\r\n\r\n")
        data = read_until_closed(tls)  # the answer, then the close after keep_alive_seconds
    status, headers, body = split(data)
    assert (status, body) == ("HTTP/1.1 200 OK", b'{"status":"ok"}')
    assert "connection" not in headers  # kept alive until idle


# --- Body size --------------------------------------------------------------------------


def padded_review(size: int) -> bytes:
    """A valid AdmissionReview (not a pod: allowed unchanged) of exactly `size` bytes."""
    review = copy.deepcopy(REVIEW)
    review["request"]["kind"] = {"group": "", "version": "v1", "kind": "ConfigMap"}
    review["request"]["object"] = {"kind": "ConfigMap", "data": {"pad": ""}}
    bare = len(json.dumps(review).encode())
    review["request"]["object"]["data"]["pad"] = "x" * (size - bare)
    body = json.dumps(review).encode()
    assert len(body) == size
    return body


def test_a_body_of_exactly_the_limit_is_served(server: ServerHandle) -> None:
    with server.client() as client:
        response = client.post("/mutate", content=padded_review(BODY_LIMIT))
    assert response.status_code == 200
    assert response.json()["response"] == {"uid": REVIEW["request"]["uid"], "allowed": True}


def test_a_body_over_the_limit_with_content_length_gets_413(server: ServerHandle) -> None:
    with server.client() as client:
        response = client.post("/mutate", content=padded_review(BODY_LIMIT + 1))
    assert (response.status_code, response.json()) == (
        413,
        {"error": f"body exceeds {BODY_LIMIT} bytes"},
    )


def test_a_chunked_body_over_the_limit_gets_413(server: ServerHandle) -> None:
    body = padded_review(BODY_LIMIT + 1)
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    with server.client() as client:
        response = client.post("/mutate", content=iter(chunks))
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert (response.status_code, response.json()) == (
        413,
        {"error": f"body exceeds {BODY_LIMIT} bytes"},
    )


def test_a_chunked_body_under_the_limit_is_served(server: ServerHandle) -> None:
    body = json.dumps(REVIEW).encode()
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    with server.client() as client:
        response = client.post("/mutate", content=iter(chunks))
    assert response.status_code == 200
    assert response.json()["response"]["patchType"] == "JSONPatch"


def test_a_body_left_unsent_after_an_early_413_is_cut_off_by_the_request_deadline(
    tmp_path: Path,
) -> None:
    # /mutate answers 413 from Content-Length alone; a client that then sends nothing holds
    # the connection only until the request deadline, even with a long keep-alive.
    with (
        running_server(
            tmp_path,
            max_body_bytes=BODY_LIMIT,
            request_timeout_seconds=TIMEOUT,
            keep_alive_seconds=60,
        ) as long_keep_alive,
        long_keep_alive.connect(timeout=TIMEOUT * 4) as tls,
    ):
        began = time.monotonic()
        tls.sendall(
            b"POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(BODY_LIMIT + 1).encode() + b"\r\n\r\n"
        )
        answer = read_until_closed(tls)
        closed_after = time.monotonic() - began
    status, _, text = split(answer)
    assert (status, json.loads(text)) == (
        "HTTP/1.1 413 Request Entity Too Large",
        {"error": f"body exceeds {BODY_LIMIT} bytes"},
    )  # one answer only: no 408 after it
    assert TIMEOUT - TIMER_GRAIN <= closed_after < TIMEOUT * 4
