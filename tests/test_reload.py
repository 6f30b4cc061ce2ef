"""Certificate hot reload on the real server: new handshakes see a rotated certificate; a
malformed or half-written pair keeps the old one, logs an error and counts it."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.serving import HOST, ServerHandle, new_serving_pair, running_server

RELOAD = "istio_spiffe_webhook_certificate_reloads_total"
EXPIRY = "istio_spiffe_webhook_certificate_expiration_timestamp_seconds"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server(tmp_path, cert_reload_seconds=0.1) as handle:
        yield handle


def served_certificate(server: ServerHandle) -> x509.Certificate:
    """The certificate a new handshake gets (verified against the CA)."""
    context = server.ssl_context()
    with (
        socket.create_connection((HOST, server.port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=HOST) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def replace(path: Path, data: bytes) -> None:
    """Swap a file's content in one step (as kubelet and cert-manager do)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)
    os.replace(temporary, path)


def wait_until_served(server: ServerHandle, serial: int, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while served_certificate(server).serial_number != serial:
        if time.monotonic() > deadline:
            raise AssertionError(f"serial {serial:x} not served within {within}s")
        time.sleep(0.05)


def reload_errors(server: ServerHandle) -> list[dict[str, object]]:
    return [r for r in server.log_records() if r["msg"].startswith("certificate reload failed")]


def wait_for_errors(server: ServerHandle, count: int, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while len(reload_errors(server)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} reload errors:\n{server.log_text()}")
        time.sleep(0.05)


def test_a_rotated_certificate_is_served_to_new_handshakes(server: ServerHandle) -> None:
    first = served_certificate(server)
    assert (
        first.serial_number
        == x509.load_pem_x509_certificate(server.certs.cert.read_bytes()).serial_number
    )
    key_pem, cert_pem, cert = new_serving_pair(server.certs, days=30)
    assert cert.serial_number != first.serial_number
    replace(server.certs.key, key_pem)
    replace(server.certs.cert, cert_pem)
    wait_until_served(server, cert.serial_number)

    with server.client() as client:  # and it serves requests with it
        assert client.get("/healthz").status_code == 200
    record = server.wait_for_log(lambda r: r["msg"] == "certificate reloaded")
    assert record["serial"] == format(cert.serial_number, "x")
    assert record["not_after"] == cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    metrics = server.metrics()
    assert metrics[(RELOAD, (("result", "success"),))] == 1.0
    assert metrics[(EXPIRY, ())] == cert.not_valid_after_utc.timestamp()
    # A mismatched pair may have been seen between the two writes; it was refused.
    assert metrics.get((RELOAD, (("result", "error"),)), 0.0) == len(reload_errors(server))


def test_a_garbage_or_half_written_pair_keeps_the_old_certificate(server: ServerHandle) -> None:
    old = served_certificate(server)
    old_cert_pem = server.certs.cert.read_bytes()

    # 1. Garbage in the certificate file.
    replace(server.certs.cert, b"-----BEGIN CERTIFICATE-----\nnonsense\n")
    wait_for_errors(server, 1)
    assert served_certificate(server).serial_number == old.serial_number

    # 2. A half-written certificate (the first half of a real PEM).
    key_pem, cert_pem, new = new_serving_pair(server.certs, days=40)
    replace(server.certs.cert, cert_pem[: len(cert_pem) // 2])
    wait_for_errors(server, 2)
    assert served_certificate(server).serial_number == old.serial_number

    # 3. The new key with the old certificate (a rotation caught between two files).
    replace(server.certs.cert, old_cert_pem)
    replace(server.certs.key, key_pem)
    wait_for_errors(server, 3)
    assert served_certificate(server).serial_number == old.serial_number

    errors = [r["error"] for r in reload_errors(server)]
    cert_file, key_file = server.certs.cert, server.certs.key
    assert errors == [
        f"certificate {cert_file}: no PEM certificate in it",
        f"certificate {cert_file}: no PEM certificate in it",
        f"key {key_file} does not match certificate {cert_file}",
    ]
    assert all(r["level"] == "error" for r in reload_errors(server))
    metrics = server.metrics()
    assert metrics[(RELOAD, (("result", "error"),))] == 3.0
    assert (RELOAD, (("result", "success"),)) not in metrics
    assert metrics[(EXPIRY, ())] == old.not_valid_after_utc.timestamp()

    # 4. The matching certificate arrives: it is taken.
    replace(server.certs.cert, cert_pem)
    wait_until_served(server, new.serial_number)
    metrics = server.metrics()
    assert metrics[(RELOAD, (("result", "success"),))] == 1.0
    assert metrics[(EXPIRY, ())] == new.not_valid_after_utc.timestamp()
    assert "PRIVATE KEY" not in server.log_text()


def test_removed_files_keep_the_old_certificate(server: ServerHandle) -> None:
    old = served_certificate(server)
    server.certs.key.unlink()
    wait_for_errors(server, 1)
    assert reload_errors(server)[0]["error"] == (
        f"key {server.certs.key}: No such file or directory"
    )
    assert served_certificate(server).serial_number == old.serial_number
    with server.client() as client:
        assert client.get("/readyz").json() == {"status": "ready"}
