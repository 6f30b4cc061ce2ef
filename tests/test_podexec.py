"""`webhook.cluster.podexec` through the `kubernetes` client's WebSocket exec against the fake
API server, which speaks RFC 6455 and the v5/v4 channel protocol as the API server does."""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests import fakeapi as f
from webhook.cluster.client import load_api_client
from webhook.cluster.podexec import ExecFailed, ExecResult, run_in_container

COMMAND = ["pilot-agent", "request", "GET", "certs"]


def configuration(kubeconfig: Path) -> Any:
    return load_api_client(str(kubeconfig)).configuration


def add_pod(fake: f.FakeAPI, name: str = "web", node: bool = True) -> None:
    pod = f.running_pod({"spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}]}},
                        name, "shop")  # fmt: skip
    if not node:
        del pod["spec"]["nodeName"]
    fake.add(f.namespace("shop"), pod)


def test_stdout_stderr_and_a_zero_exit_come_back_whole(fake: f.FakeAPI, kubeconfig: Path) -> None:
    add_pod(fake)
    big = bytes(range(256)) * 1024  # 256 KiB: eight frames, 64-bit frame lengths
    fake.processes["shop", "web", "istio-proxy"] = lambda cmd: f.Exited(big, b"note\n", 0)
    result = run_in_container(configuration(kubeconfig), "shop", "web", "istio-proxy", COMMAND, 5)
    assert result == ExecResult(big, b"note\n", 0)
    assert fake.execs == [("shop", "web", "istio-proxy", COMMAND, "v5.channel.k8s.io")]


@pytest.mark.parametrize("size", [0, 1, 124, 125, 126, 65534, 65535, 65536])
def test_every_frame_length_encoding_reads_back(
    fake: f.FakeAPI, kubeconfig: Path, size: int
) -> None:
    """stdout of `size` bytes is one frame of size + 1 (the channel byte): 7-, 16-, 64-bit."""
    add_pod(fake)
    data = b"x" * size
    fake.processes["shop", "web", "istio-proxy"] = lambda cmd: f.Exited(data)
    result = run_in_container(configuration(kubeconfig), "shop", "web", "istio-proxy", COMMAND, 5)
    assert result.stdout == data


def test_a_server_that_speaks_only_v4_is_understood(fake: f.FakeAPI, kubeconfig: Path) -> None:
    add_pod(fake)
    fake.exec_protocols = ("v4.channel.k8s.io",)
    fake.processes["shop", "web", "istio-proxy"] = lambda cmd: f.Exited(b"{}\n")
    result = run_in_container(configuration(kubeconfig), "shop", "web", "istio-proxy", COMMAND, 5)
    assert result == ExecResult(b"{}\n", b"", 0)
    assert fake.execs[0][4] == "v4.channel.k8s.io"


def test_a_non_zero_exit_is_the_exit_code_from_the_status_channel(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    add_pod(fake)
    fake.processes["shop", "web", "istio-proxy"] = lambda cmd: f.Exited(b"", b"Error: x\n", 3)
    result = run_in_container(configuration(kubeconfig), "shop", "web", "istio-proxy", COMMAND, 5)
    assert result == ExecResult(b"", b"Error: x\n", 3)


def test_a_command_that_cannot_start_fails_with_the_kubelets_message(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    add_pod(fake)  # no process registered: there is no pilot-agent in the container
    with pytest.raises(ExecFailed) as caught:
        run_in_container(configuration(kubeconfig), "shop", "web", "istio-proxy", COMMAND, 5)
    assert caught.value.reason == (
        "Internal error occurred: error executing command in container: failed to exec in"
        ' container: OCI runtime exec failed: exec: "pilot-agent": executable file not found'
        " in $PATH: unknown"
    )
    assert (caught.value.denied, caught.value.unreachable_api) == (False, False)


def test_forbidden_exec_is_denied_with_the_api_servers_message(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    add_pod(fake)
    fake.deny("pods/exec")
    with pytest.raises(ExecFailed) as caught:
        run_in_container(configuration(kubeconfig), "shop", "web", "istio-proxy", COMMAND, 5)
    assert caught.value.reason == (
        'access denied: pods "web" is forbidden: User "system:serviceaccount:default:auditor"'
        ' cannot get resource "pods/exec" in API group "" in the namespace "shop" (403)'
    )
    assert caught.value.denied
    assert fake.execs == []


def test_rejected_credentials_are_denied(fake: f.FakeAPI, tmp_path: Path) -> None:
    add_pod(fake)
    config = configuration(fake.kubeconfig(tmp_path, token="stale"))
    with pytest.raises(ExecFailed) as caught:
        run_in_container(config, "shop", "web", "istio-proxy", COMMAND, 5)
    assert caught.value.reason == "credentials rejected: Unauthorized (401)"
    assert caught.value.denied


@pytest.mark.parametrize(
    ("pod", "container", "node", "reason"),
    [
        ("gone", "istio-proxy", True, 'pods "gone" not found (404)'),
        ("web", "istio-proxi", True, "container istio-proxi is not valid for pod web (400)"),
        ("web", "istio-proxy", False, "pod web does not have a host assigned (400)"),
    ],
)
def test_the_api_servers_refusals_keep_its_reason(
    fake: f.FakeAPI, kubeconfig: Path, pod: str, container: str, node: bool, reason: str
) -> None:
    add_pod(fake, node=node)
    with pytest.raises(ExecFailed) as caught:
        run_in_container(configuration(kubeconfig), "shop", pod, container, COMMAND, 5)
    assert caught.value.reason == reason
    assert (caught.value.denied, caught.value.unreachable_api) == (False, False)


def test_an_unreachable_api_server_is_said_so(fake: f.FakeAPI, tmp_path: Path) -> None:
    port = f.closed_port()
    config = configuration(fake.kubeconfig(tmp_path, server=f"http://127.0.0.1:{port}"))
    with pytest.raises(ExecFailed) as caught:
        run_in_container(config, "shop", "web", "istio-proxy", COMMAND, 5)
    assert caught.value.reason == (
        f"cannot reach the Kubernetes API at http://127.0.0.1:{port}: connection refused"
    )
    assert caught.value.unreachable_api


def test_a_server_that_never_answers_the_upgrade_is_given_up(
    fake: f.FakeAPI, tmp_path: Path
) -> None:
    with socket.socket() as silent:  # accepts connections, never reads or writes
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        config = configuration(fake.kubeconfig(tmp_path, server=f"http://127.0.0.1:{port}"))
        started = time.monotonic()
        with pytest.raises(ExecFailed) as caught:
            run_in_container(config, "shop", "web", "istio-proxy", COMMAND, 0.5)
        elapsed = time.monotonic() - started
    assert caught.value.reason == "the API server did not answer the exec request within 0.5s"
    assert elapsed < 5


def test_exec_over_tls_verifies_the_api_servers_certificate(tmp_path: Path) -> None:
    from kubernetes import client

    from webhook.certs import write_certificates

    files = write_certificates(
        tmp_path / "certs", service="kubernetes", namespace="default", extra_sans=["127.0.0.1"]
    )
    fake = f.FakeAPI(tls=(files.cert, files.key))
    with f.running(fake):
        add_pod(fake)
        fake.processes["shop", "web", "istio-proxy"] = lambda cmd: f.Exited(b"over tls\n")
        config = client.Configuration()
        config.host = fake.url
        config.ssl_ca_cert = str(files.ca_cert)
        config.api_key = {"authorization": f"Bearer {f.TOKEN}"}
        result = run_in_container(config, "shop", "web", "istio-proxy", COMMAND, 5)
    assert result == ExecResult(b"over tls\n", b"", 0)


def test_the_fakes_frame_reader_refuses_an_unmasked_client_frame() -> None:
    """The fake holds clients to RFC 6455: a masked frame reads back, an unmasked one fails."""
    mask = b"\x01\x02\x03\x04"
    payload = b"\x03\xe8"
    masked = (
        bytes([0x88, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )
    assert f.read_client_frame(io.BytesIO(masked)) == (0x8, payload)
    with pytest.raises(ValueError, match="must be masked"):
        f.read_client_frame(io.BytesIO(f.websocket_frame(0x8, payload)))
