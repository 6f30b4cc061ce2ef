"""TLS on the real server: 1.0/1.1 and weak 1.2 suites refused, AEAD 1.2 and 1.3 accepted.

A refusal only means something if the client really offered the old version or suite, so
every refusal test first completes the same handshake against a throwaway local server
that allows everything (`probe`); if this machine's OpenSSL cannot offer it, the test fails
and says so.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving import HOST, ServerHandle, make_certificates, running_server
from webhook.certs import CertificateFiles

OLD_VERSIONS = {"TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1}
# TLS 1.2 suites an ECDSA certificate could use but that are not ECDHE + AEAD.
WEAK_TLS12_SUITES = [
    "ECDHE-ECDSA-AES128-SHA",  # CBC, SHA-1 MAC
    "ECDHE-ECDSA-AES256-SHA384",  # CBC
    "ECDHE-ECDSA-AES128-SHA256",  # CBC
]
STRONG_TLS12_SUITES = [
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    with running_server(tmp_path_factory.mktemp("tls")) as handle:
        yield handle


@pytest.fixture(scope="module")
def spare_certs(tmp_path_factory: pytest.TempPathFactory) -> CertificateFiles:
    return make_certificates(tmp_path_factory.mktemp("spare") / "certs")


def client_context(
    version: ssl.TLSVersion | None = None, ciphers: str | None = None
) -> ssl.SSLContext:
    """A client that offers exactly `version` (and `ciphers`), verification off."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if version is not None:
        context.minimum_version = version
        context.maximum_version = version
    context.set_ciphers(f"{ciphers or 'DEFAULT'}:@SECLEVEL=0")
    return context


def handshake(port: int, context: ssl.SSLContext) -> tuple[str | None, str]:
    """(TLS version, cipher) of a completed handshake with 127.0.0.1:port."""
    with (
        socket.create_connection((HOST, port), timeout=10) as sock,
        context.wrap_socket(sock) as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        return tls.version(), cipher[0]


def probe(certs: CertificateFiles, context: ssl.SSLContext) -> tuple[str | None, str]:
    """Handshake with a throwaway local server that allows every version and suite."""
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    permissive.set_ciphers("ALL:@SECLEVEL=0")
    permissive.load_cert_chain(certs.cert, certs.key)
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(1)
        listener.settimeout(10)

        def accept() -> None:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connection.settimeout(10)
            try:
                with permissive.wrap_socket(connection, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass
            finally:
                connection.close()

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            return handshake(listener.getsockname()[1], context)
        except ssl.SSLError as error:
            pytest.fail(
                f"this machine's OpenSSL ({ssl.OPENSSL_VERSION}) cannot offer what the test"
                f" needs, so the refusal below would prove nothing: {error}"
            )
        finally:
            thread.join(timeout=10)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("name", sorted(OLD_VERSIONS))
def test_tls_1_0_and_1_1_are_refused(
    server: ServerHandle, spare_certs: CertificateFiles, name: str
) -> None:
    context = client_context(OLD_VERSIONS[name])
    assert probe(spare_certs, context)[0] == name  # the client does offer it
    with pytest.raises(ssl.SSLError) as refused:
        handshake(server.port, context)
    # uvloop ends a refused handshake by closing the connection, without an alert.
    assert refused.value.reason == "UNEXPECTED_EOF_WHILE_READING"


@pytest.mark.parametrize("suite", WEAK_TLS12_SUITES)
def test_tls_1_2_with_a_suite_that_is_not_ecdhe_aead_is_refused(
    server: ServerHandle, spare_certs: CertificateFiles, suite: str
) -> None:
    context = client_context(ssl.TLSVersion.TLSv1_2, suite)
    assert probe(spare_certs, context) == ("TLSv1.2", suite)  # the client does offer it
    with pytest.raises(ssl.SSLError) as refused:
        handshake(server.port, context)
    assert refused.value.reason == "UNEXPECTED_EOF_WHILE_READING"


@pytest.mark.parametrize("suite", STRONG_TLS12_SUITES)
def test_tls_1_2_with_ecdhe_and_an_aead_cipher_is_accepted(
    server: ServerHandle, suite: str
) -> None:
    context = client_context(ssl.TLSVersion.TLSv1_2, suite)
    assert handshake(server.port, context) == ("TLSv1.2", suite)


def test_tls_1_3_is_accepted_and_a_verifying_client_gets_answers(server: ServerHandle) -> None:
    context = server.ssl_context()  # verifies the chain and the 127.0.0.1 SAN
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    with (
        socket.create_connection((HOST, server.port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=HOST) as tls,
    ):
        assert tls.version() == "TLSv1.3"
        assert tls.compression() is None
        assert tls.selected_alpn_protocol() is None  # the client offered none
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: webhook\r\nConnection: close\r\n\r\n")
        answer = b""
        for _ in range(100):
            chunk = tls.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b'\r\n\r\n{"status":"ok"}')


def test_the_server_offers_http_1_1_by_alpn_and_no_compression(server: ServerHandle) -> None:
    context = client_context(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256")
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection((HOST, server.port), timeout=10) as sock,
        context.wrap_socket(sock) as tls,
    ):
        assert tls.selected_alpn_protocol() == "http/1.1"
        assert tls.compression() is None


def test_a_client_that_does_not_trust_the_ca_is_refused_by_its_own_verification(
    server: ServerHandle, tmp_path: Path
) -> None:
    other = make_certificates(tmp_path / "other")
    context = ssl.create_default_context(cafile=str(other.ca_cert))
    with (
        pytest.raises(ssl.SSLCertVerificationError),
        socket.create_connection((HOST, server.port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname=HOST),
    ):
        pass
