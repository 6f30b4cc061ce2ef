"""The real server over HTTPS: every admission-review fixture, bad input, health, startup errors."""

from __future__ import annotations

import base64
import copy
import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from kubernetes.client import ApiClient, V1Pod

from tests.oracle import admission_reviews, assert_rewritten, expected
from tests.serving import (
    HOST,
    ServerHandle,
    free_port,
    make_certificates,
    running_server,
    serve_argv,
    server_env,
)
from webhook.config import Settings

REVIEWS = admission_reviews()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    with running_server(tmp_path_factory.mktemp("server")) as handle:
        yield handle


def to_v1pod(obj: dict[str, Any]) -> V1Pod:
    pod = ApiClient()._ApiClient__deserialize(obj, "V1Pod")  # type: ignore[attr-defined]
    assert isinstance(pod, V1Pod)
    return pod


def post(server: ServerHandle, body: bytes) -> tuple[int, dict[str, Any]]:
    with server.client() as client:
        response = client.post("/mutate", content=body)
    return response.status_code, response.json()


@pytest.mark.parametrize("name", sorted(REVIEWS))
def test_every_admission_review_fixture_is_answered_with_the_contracts_patch(
    server: ServerHandle, name: str
) -> None:
    review = REVIEWS[name]
    status, answer = post(server, json.dumps(review).encode())
    assert status == 200
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    assert "warnings" not in response  # emptyDir sockets are the normal case
    pod = review["request"]["object"]
    patch = json.loads(base64.b64decode(response["patch"]))
    patched = jsonpatch.apply_patch(pod, patch)
    assert_rewritten(pod, patched, Settings())
    assert patched == expected(pod, Settings())
    v1pod = to_v1pod(patched)
    assert v1pod.metadata.labels["spiffe.io/spire-managed-identity"] == "true"
    [socket_volume] = [v for v in v1pod.spec.volumes if v.name == "workload-socket"]
    assert (socket_volume.csi.driver, socket_volume.csi.read_only) == ("csi.spiffe.io", True)

    second = copy.deepcopy(review)
    second["request"]["object"] = patched
    status, again = post(server, json.dumps(second).encode())
    assert status == 200
    assert again["response"] == {"uid": review["request"]["uid"], "allowed": True}


def test_a_pod_without_istio_proxy_is_allowed_without_a_patch(server: ServerHandle) -> None:
    review = copy.deepcopy(REVIEWS["hello-native"])
    spec = review["request"]["object"]["spec"]
    spec["initContainers"] = [c for c in spec["initContainers"] if c["name"] != "istio-proxy"]
    status, answer = post(server, json.dumps(review).encode())
    assert (status, answer["response"]) == (
        200,
        {"uid": review["request"]["uid"], "allowed": True},
    )


def test_another_kind_is_allowed_unchanged(server: ServerHandle) -> None:
    review = copy.deepcopy(REVIEWS["gateway"])
    review["request"]["kind"] = {"group": "", "version": "v1", "kind": "Service"}
    review["request"]["object"] = {"apiVersion": "v1", "kind": "Service", "metadata": {}}
    status, answer = post(server, json.dumps(review).encode())
    assert (status, answer["response"]) == (
        200,
        {"uid": review["request"]["uid"], "allowed": True},
    )


def _review(**request: Any) -> bytes:
    base = copy.deepcopy(REVIEWS["gateway"])
    base["request"].update(request)
    return json.dumps(base).encode()


def _without(path: str) -> bytes:
    review = copy.deepcopy(REVIEWS["gateway"])
    *parents, last = path.split(".")
    node = review
    for part in parents:
        node = node[part]
    del node[last]
    return json.dumps(review).encode()


BAD_INPUTS = {
    "not-json": (b"{not json", "body is not JSON: "),
    "json-array": (b"[1, 2]", "body is not an AdmissionReview: expected a JSON object"),
    "old-api-version": (
        json.dumps({**REVIEWS["gateway"], "apiVersion": "admission.k8s.io/v1beta1"}).encode(),
        "apiVersion: expected admission.k8s.io/v1, got 'admission.k8s.io/v1beta1'",
    ),
    "no-request": (_without("request"), "request: required field is missing"),
    "no-uid": (_without("request.uid"), "request.uid: required field is missing"),
    "object-not-a-pod": (
        _review(object={"apiVersion": "v1", "kind": "Service", "spec": {}}),
        "request.object.kind: expected Pod, got 'Service'",
    ),
    "object-missing": (
        _review(object=None),
        "request.object: a Pod CREATE must carry the pod as a JSON object",
    ),
    "containers-not-a-list": (
        _review(object={"kind": "Pod", "spec": {"containers": {}}}),
        "request.object.spec.containers: must be a JSON array",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_400_with_the_reason(server: ServerHandle, case: str) -> None:
    body, reason = BAD_INPUTS[case]
    status, answer = post(server, body)
    assert status == 400
    assert list(answer) == ["error"]
    if case == "not-json":
        assert answer["error"].startswith(reason)
    else:
        assert answer["error"] == reason


def test_a_body_over_the_limit_gets_413(server: ServerHandle) -> None:
    limit = Settings().max_body_bytes
    status, answer = post(server, b" " * (limit + 1))
    assert (status, answer) == (413, {"error": f"body exceeds {limit} bytes"})


def test_get_on_mutate_is_405(server: ServerHandle) -> None:
    with server.client() as client:
        response = client.get("/mutate")
    assert (response.status_code, response.json(), response.headers["allow"]) == (
        405,
        {"error": "method not allowed: use POST"},
        "POST",
    )


def test_healthz_and_readyz(server: ServerHandle) -> None:
    with server.client() as client:
        health, ready = client.get("/healthz"), client.get("/readyz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


def test_plain_http_on_the_tls_port_is_closed_without_an_answer(server: ServerHandle) -> None:
    with socket.create_connection((HOST, server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(1024) == b""


# --- Startup errors: one line on stderr, non-zero exit, no traceback ------------------


def start(tmp_path: Path, *args: str, **settings: Any) -> subprocess.CompletedProcess[str]:
    env = server_env(
        {"host": HOST, "port": free_port(), "metrics_port": 0, "log_level": "info", **settings}
    )
    return subprocess.run(
        serve_argv(*args),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], line: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr == f"Error: {line}\n"
    assert result.stdout == ""


def test_a_missing_certificate_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = start(tmp_path, "--cert", "nowhere.crt", "--key", "nowhere.key")
    assert_one_line_error(result, "certificate nowhere.crt: No such file or directory")


def test_the_default_certificate_path_is_certs_tls_crt(tmp_path: Path) -> None:
    result = start(tmp_path)
    assert_one_line_error(result, "certificate certs/tls.crt: No such file or directory")


def test_a_garbage_certificate_is_one_line_and_exit_1(tmp_path: Path) -> None:
    files = make_certificates(tmp_path / "certs")
    files.cert.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    result = start(tmp_path, "--cert", str(files.cert), "--key", str(files.key))
    assert_one_line_error(result, f"certificate {files.cert}: no PEM certificate in it")


def test_a_garbage_key_is_one_line_and_exit_1(tmp_path: Path) -> None:
    files = make_certificates(tmp_path / "certs")
    files.key.write_text("not a key\n")
    result = start(tmp_path, "--cert", str(files.cert), "--key", str(files.key))
    assert_one_line_error(result, f"key {files.key}: not a PEM private key")


def test_a_key_of_another_certificate_is_one_line_and_exit_1(tmp_path: Path) -> None:
    files = make_certificates(tmp_path / "certs")
    result = start(tmp_path, "--cert", str(files.cert), "--key", str(files.ca_key))
    assert_one_line_error(result, f"key {files.ca_key} does not match certificate {files.cert}")


def test_a_bad_config_value_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = start(tmp_path, port="notanumber")
    assert_one_line_error(
        result,
        "invalid configuration: port: Input should be a valid integer,"
        " unable to parse string as an integer",
    )


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    files = make_certificates(tmp_path / "certs")
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = start(tmp_path, "--cert", str(files.cert), "--key", str(files.key), port=str(port))
    assert_one_line_error(result, f"cannot listen on {HOST}:{port}: Address already in use")


def test_a_metrics_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    files = make_certificates(tmp_path / "certs")
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = start(
            tmp_path,
            "--cert",
            str(files.cert),
            "--key",
            str(files.key),
            metrics_host=HOST,
            metrics_port=str(port),
        )
    assert_one_line_error(result, f"cannot serve metrics on {HOST}:{port}: Address already in use")


def test_a_bad_value_in_the_config_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("keep_alive_seconds: -1\n")
    result = start(tmp_path, "--config", str(config))
    assert_one_line_error(
        result, "invalid configuration: keep_alive_seconds: Input should be greater than 0"
    )


def test_command_line_options_win_over_the_config_file(tmp_path: Path) -> None:
    files = make_certificates(tmp_path / "certs")
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"host: {HOST}\nport: 1\nmetrics_port: 0\nshutdown_delay_seconds: 0\n"
        "tls_cert_file: nowhere.crt\ntls_key_file: nowhere.key\n"
    )
    argv = serve_argv(
        "--config", str(config), "--port", str(port), "--cert", str(files.cert),
        "--key", str(files.key),
    )  # fmt: skip
    log_file = tmp_path / "serve.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(argv, cwd=tmp_path, env=server_env({}), stdout=log, stderr=log)
    handle = ServerHandle(process, port, 0, files, log_file, {})
    try:
        serving = handle.wait_for_log(lambda r: r["msg"] == "serving", within=20)
        assert (serving["address"], serving["metrics"]) == (f"https://{HOST}:{port}", None)
        with handle.client() as client:
            assert client.get("/readyz").json() == {"status": "ready"}
    finally:
        assert handle.stop() == 0


# Run in the server process first: `import kubernetes` (or cryptography) then raises.
WITHOUT_KUBERNETES_AND_CRYPTOGRAPHY = """
import sys
sys.modules["kubernetes"] = None
sys.modules["cryptography"] = None
"""


def test_serve_needs_neither_kubernetes_nor_cryptography(tmp_path: Path) -> None:
    with running_server(tmp_path, preamble=WITHOUT_KUBERNETES_AND_CRYPTOGRAPHY) as server:
        status, answer = post(server, json.dumps(REVIEWS["hello-native"]).encode())
        assert (status, answer["response"]["patchType"]) == (200, "JSONPatch")
        assert server.stop() == 0
    assert "Traceback" not in server.log_text()
