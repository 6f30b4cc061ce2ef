"""Run the real server for tests: `istio-spiffe-webhook serve` in a subprocess over TLS.

    with running_server(tmp_path, max_body_bytes=4096) as server:
        with server.client() as client:
            response = client.post("/mutate", content=body)

`running_server(directory, **settings)` writes a CA and a serving certificate with the
project's own `webhook.certs.write_certificates` (SANs include 127.0.0.1 and localhost),
starts the server on free loopback ports (TLS and metrics), waits (bounded) until
`/readyz` answers 200 and stops it in teardown: SIGTERM, then SIGKILL after a bound.
Keyword arguments are settings (`max_body_bytes=4096` becomes
`ISTIO_SPIFFE_WEBHOOK_MAX_BODY_BYTES=4096`); the parent's ISTIO_SPIFFE_WEBHOOK_* variables
are not passed on. The server's stdout and stderr (JSON log lines) go to `server.log_file`.
Certificates already in `<directory>/certs/` are reused (a second server with the same CA).
`preamble="..."` runs that Python in the server process before the command (to make a
part fail on purpose).

For a module-wide server use a module-scoped fixture with `tmp_path_factory.mktemp(...)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from webhook.certs import (
    CertificateFiles,
    certificate_pem,
    make_serving_certificate,
    private_key_pem,
    write_certificates,
)
from webhook.config import ENV_PREFIX

HOST = "127.0.0.1"
READY_WITHIN_SECONDS = 20.0
STOP_WITHIN_SECONDS = 30.0
START_ATTEMPTS = 3  # a free port can be taken between choosing it and binding it

# Test defaults (overridable): no drain pause, so teardown is quick.
TEST_DEFAULTS: dict[str, str] = {"shutdown_delay_seconds": "0"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def serve_argv(*args: str, preamble: str = "") -> list[str]:
    """The command line of `istio-spiffe-webhook serve ...` for this interpreter;
    `preamble` is Python run in the server process first (a test's fault injection)."""
    script = Path(sys.executable).parent / "istio-spiffe-webhook"
    if script.exists() and not preamble:
        return [str(script), "serve", *args]
    code = f"{preamble}\nfrom webhook.cli import main\nmain()\n"
    return [sys.executable, "-c", code, "serve", *args]


def server_env(settings: Mapping[str, Any]) -> dict[str, str]:
    """The parent's environment without ISTIO_SPIFFE_WEBHOOK_*, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    for name, value in settings.items():
        key = name if name.startswith(ENV_PREFIX) else ENV_PREFIX + name.upper()
        env[key] = str(value)
    return env


def make_certificates(directory: Path, *, force: bool = False) -> CertificateFiles:
    return write_certificates(
        directory,
        service="istio-spiffe-webhook",
        namespace="istio-spiffe-webhook",
        extra_sans=[HOST, "localhost"],
        force=force,
    )


def new_serving_pair(
    certs: CertificateFiles, days: int = 30
) -> tuple[bytes, bytes, x509.Certificate]:
    """A new serving key and certificate from the same CA: (key PEM, cert PEM, cert)."""
    ca_key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    key, cert = make_serving_certificate(
        ca_key,
        ca,
        service="istio-spiffe-webhook",
        namespace="istio-spiffe-webhook",
        extra_sans=[HOST, "localhost"],
        valid_days=days,
    )
    return private_key_pem(key), certificate_pem(cert), cert


def read_until_closed(tls: ssl.SSLSocket) -> bytes:
    """Everything the server sends until it closes (each read bounded by the timeout)."""
    data = b""
    for _ in range(10_000):
        try:
            chunk = tls.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            break
        if not chunk:
            break
        data += chunk
    return data


@dataclass
class ServerHandle:
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    certs: CertificateFiles
    log_file: Path
    env: dict[str, str] = field(repr=False)

    @property
    def base_url(self) -> str:
        return f"https://{HOST}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.metrics_port}/metrics"

    @property
    def ca_file(self) -> Path:
        return self.certs.ca_cert

    @property
    def cert_dir(self) -> Path:
        return self.certs.directory

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the server's CA (TLS 1.2+, hostname checked)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def client(self, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 10.0)
        return httpx.Client(base_url=self.base_url, verify=self.ssl_context(), **kwargs)

    def connect(self, timeout: float = 10.0) -> ssl.SSLSocket:
        """A raw TLS connection to the server (for slow or malformed requests)."""
        sock = socket.create_connection((HOST, self.port), timeout=timeout)
        try:
            return self.ssl_context().wrap_socket(sock, server_hostname=HOST)
        except BaseException:
            sock.close()
            raise

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of `/metrics`: (name, sorted labels) -> value."""
        from prometheus_client.parser import text_string_to_metric_families

        response = httpx.get(self.metrics_url, timeout=10.0)
        response.raise_for_status()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    def log_text(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """Every stderr line parsed as JSON (a line that is not JSON raises)."""
        return [json.loads(line) for line in self.log_text().splitlines() if line.strip()]

    def wait_for_log(
        self, predicate: Callable[[dict[str, Any]], bool], within: float = 10.0
    ) -> dict[str, Any]:
        """The first log record for which `predicate(record)` is true (bounded poll)."""
        deadline = time.monotonic() + within
        while True:
            for record in self.log_records():
                if predicate(record):
                    return record
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching log line within {within}s:\n{self.log_text()}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, within: float = STOP_WITHIN_SECONDS) -> int:
        """Signal the server and wait (bounded) for it to exit; kill it past the bound."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout=within)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return int(self.process.returncode)


def _wait_ready(handle: ServerHandle) -> bool:
    """True once /readyz is 200; False if the process exited first."""
    deadline = time.monotonic() + READY_WITHIN_SECONDS
    with handle.client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if handle.process.poll() is not None:
                return False
            try:
                if client.get("/readyz").status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"server not ready within {READY_WITHIN_SECONDS}s:\n{handle.log_text()}")


@contextlib.contextmanager
def running_server(
    directory: Path, *, preamble: str = "", **settings: Any
) -> Iterator[ServerHandle]:
    """The real server, ready, on free loopback ports; stopped on exit (`preamble`: see
    `serve_argv`)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert_dir = directory / "certs"
    certs = (
        make_certificates(cert_dir)
        if not (cert_dir / "tls.crt").exists()
        else CertificateFiles(
            directory=cert_dir,
            ca_cert=cert_dir / "ca.crt",
            ca_key=cert_dir / "ca.key",
            cert=cert_dir / "tls.crt",
            key=cert_dir / "tls.key",
            ca_bundle_patch=cert_dir / "ca-bundle-patch.yaml",
        )
    )
    handle: ServerHandle | None = None
    for attempt in range(START_ATTEMPTS):
        port, metrics_port = free_port(), free_port()
        env = server_env(
            {
                **TEST_DEFAULTS,
                "host": HOST,
                "port": port,
                "metrics_host": HOST,
                "metrics_port": metrics_port,
                "tls_cert_file": certs.cert,
                "tls_key_file": certs.key,
                **settings,
            }
        )
        log_file = directory / f"server-{port}.log"
        with log_file.open("wb") as stderr:
            process = subprocess.Popen(
                serve_argv(preamble=preamble),
                cwd=directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        handle = ServerHandle(process, port, metrics_port, certs, log_file, env)
        try:
            if _wait_ready(handle):
                break
        except BaseException:
            handle.stop(signal.SIGKILL)
            raise
        handle.stop(signal.SIGKILL)
        if "cannot listen" not in handle.log_text() and "cannot serve metrics" not in (
            handle.log_text()
        ):
            raise RuntimeError(f"server exited at start:\n{handle.log_text()}")
        if attempt == START_ATTEMPTS - 1:
            raise RuntimeError(f"no free ports after {START_ATTEMPTS} tries:\n{handle.log_text()}")
    assert handle is not None
    try:
        yield handle
    finally:
        handle.stop()
