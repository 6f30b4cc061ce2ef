"""Graceful shutdown of the real server: SIGTERM during requests in flight."""

from __future__ import annotations

import base64
import copy
import json
import signal
import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest

from tests.oracle import admission_reviews
from tests.serving import HOST, ServerHandle, read_until_closed, running_server

REVIEW = admission_reviews()["hello-classic"]


def review_with_uid(uid: str) -> bytes:
    review = copy.deepcopy(REVIEW)
    review["request"]["uid"] = uid
    return json.dumps(review).encode()


def start_request(server: ServerHandle, body: bytes) -> ssl.SSLSocket:
    """A POST /mutate in flight: headers and half the body sent, the rest held back."""
    tls = server.connect(timeout=30)
    tls.sendall(
        b"POST /mutate HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[: len(body) // 2]
    )
    return tls


def wait_for_readyz(server: ServerHandle, status: int, within: float = 10.0) -> httpx.Response:
    deadline = time.monotonic() + within
    with server.client() as client:
        while True:
            response = client.get("/readyz")
            if response.status_code == status:
                return response
            if time.monotonic() > deadline:
                raise AssertionError(f"/readyz never answered {status}")
            time.sleep(0.02)


def test_sigterm_drains_requests_in_flight_and_exits_0(tmp_path: Path) -> None:
    grace = 8.0
    with running_server(
        tmp_path,
        shutdown_delay_seconds=1.0,
        shutdown_grace_seconds=grace,
        request_timeout_seconds=30,
    ) as server:
        uids = [f"in-flight-{i}" for i in range(3)]
        bodies = [review_with_uid(uid) for uid in uids]
        connections = [start_request(server, body) for body in bodies]
        try:
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            # Not ready at once, while still serving (the delay before it stops accepting).
            response = wait_for_readyz(server, 503)
            assert response.json() == {"status": "not ready", "reason": "draining"}

            # Then it stops accepting: new connections are refused ...
            server.wait_for_log(lambda r: r["msg"] == "Shutting down")
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((HOST, server.port), timeout=10).close()
            assert server.process.poll() is None  # ... but waits for the requests in flight

            answers = []
            for tls, body in zip(connections, bodies, strict=True):
                tls.sendall(body[len(body) // 2 :])
                answers.append(read_until_closed(tls))
        finally:
            for tls in connections:
                tls.close()

        for uid, answer in zip(uids, answers, strict=True):
            head, _, payload = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"\r\nconnection: close" in head
            response = json.loads(payload)["response"]
            assert response["uid"] == uid
            assert json.loads(base64.b64decode(response["patch"]))  # the full answer
        assert server.process.wait(timeout=grace) == 0
        assert time.monotonic() - signalled < grace
        draining = server.wait_for_log(lambda r: r["msg"] == "draining")
        assert (draining["signal"], draining["delay_s"]) == ("SIGTERM", 1.0)
        assert "Traceback" not in server.log_text()


def test_a_request_that_does_not_finish_is_cut_at_the_grace_period(tmp_path: Path) -> None:
    grace = 3.0
    with running_server(
        tmp_path,
        shutdown_delay_seconds=0.5,
        shutdown_grace_seconds=grace,
        request_timeout_seconds=60,
    ) as server:
        tls = start_request(server, review_with_uid("never-finished"))
        with tls:
            server.process.send_signal(signal.SIGTERM)
            assert server.process.wait(timeout=grace + 2) == 0
            answer = read_until_closed(tls)
    # uvicorn cancels the request's task and answers what it answers to any exception.
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert body == b"Internal Server Error"
    errors = [(r["msg"], r.get("error")) for r in server.log_records() if r["level"] == "error"]
    assert errors == [
        ("Cancel 1 running task(s), timeout graceful shutdown exceeded", None),
        (
            "Exception in ASGI application\n",
            "CancelledError: Task cancelled, timeout graceful shutdown exceeded",
        ),
    ]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_idle_server_exits_0_on_the_signal(tmp_path: Path, sig: signal.Signals) -> None:
    with running_server(tmp_path) as server:
        assert server.stop(sig) == 0
    pid = server.process.pid
    messages = [r["msg"] for r in server.log_records()]
    assert messages[-4:] == [
        "draining",
        "Shutting down",
        f"Finished server process [{pid}]",
        "stopped",
    ]
