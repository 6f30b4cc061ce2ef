"""Metrics, JSON logs and AdmissionResponse warnings of the real server, after real requests;
the 500 path with a rewrite that raises; the JSON log lines themselves."""

from __future__ import annotations

import base64
import copy
import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from prometheus_client import CollectorRegistry

from tests.oracle import admission_reviews, istio_pods
from tests.serving import ServerHandle, running_server
from webhook.certs import certificate_expiry
from webhook.observability import (
    LOGGER_NAME,
    JsonFormatter,
    JsonLineHandler,
    Metrics,
    Observer,
    configure_logging,
)

REVIEWS = admission_reviews()
REQUESTS = "istio_spiffe_webhook_admission_requests_total"
DURATION = "istio_spiffe_webhook_admission_duration_seconds"
OPERATIONS = "istio_spiffe_webhook_patch_operations_total"
EXPIRY = "istio_spiffe_webhook_certificate_expiration_timestamp_seconds"
RELOADS = "istio_spiffe_webhook_certificate_reloads_total"
BODY_LIMIT = 65536
MARKER = "marker-that-must-not-reach-the-logs-7f3a"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    with running_server(tmp_path, max_body_bytes=BODY_LIMIT) as handle:
        yield handle


def review_of(pod: dict[str, Any], uid: str, **request: Any) -> dict[str, Any]:
    review = copy.deepcopy(REVIEWS["hello-native"])
    review["request"].update(uid=uid, object=copy.deepcopy(pod), **request)
    return review


def post(server: ServerHandle, body: bytes | dict[str, Any]) -> tuple[int, dict[str, Any]]:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with server.client() as client:
        response = client.post("/mutate", content=content)
    return response.status_code, response.json()


def operations(answer: dict[str, Any]) -> int:
    return len(json.loads(base64.b64decode(answer["response"]["patch"])))


def samples(metrics: dict[Any, float], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (sample, labels), value in metrics.items() if sample == name}


def test_metrics_count_every_outcome_reason_and_dry_run(server: ServerHandle) -> None:
    hello = REVIEWS["hello-native"]
    opted_out = copy.deepcopy(hello["request"]["object"])
    opted_out["metadata"]["labels"]["istio-spiffe-webhook/inject"] = "disabled"
    no_proxy = istio_pods()["custom-template--0"]

    ops = 0
    for name in ("hello-native", "gateway", "gateway-dry-run"):
        status, answer = post(server, REVIEWS[name])
        assert status == 200
        ops += operations(answer)
    status, answer = post(server, REVIEWS["hello-classic"])
    ops += operations(answer)
    rewritten = jsonpatch.apply_patch(
        REVIEWS["hello-classic"]["request"]["object"],
        json.loads(base64.b64decode(answer["response"]["patch"])),
    )
    unchanged = [
        review_of(rewritten, "compliant"),
        review_of(opted_out, "opted-out"),
        review_of(no_proxy, "no-proxy"),
        review_of(no_proxy, "no-proxy-dry-run", dryRun=True),
        review_of(hello["request"]["object"], "update", operation="UPDATE"),
        review_of(
            {"kind": "ConfigMap"},
            "not-a-pod",
            kind={"group": "", "version": "v1", "kind": "ConfigMap"},
        ),
    ]
    for review in unchanged:
        assert post(server, review)[0] == 200
    assert post(server, b"{not json")[0] == 400
    assert post(server, b" " * (BODY_LIMIT + 1))[0] == 413

    metrics = server.metrics()
    assert samples(metrics, REQUESTS) == {
        (("dry_run", "false"), ("outcome", "mutated"), ("reason", "")): 3.0,
        (("dry_run", "true"), ("outcome", "mutated"), ("reason", "")): 1.0,
        (("dry_run", "false"), ("outcome", "unchanged"), ("reason", "compliant")): 1.0,
        (("dry_run", "false"), ("outcome", "unchanged"), ("reason", "opted-out")): 1.0,
        (("dry_run", "false"), ("outcome", "unchanged"), ("reason", "no-proxy")): 1.0,
        (("dry_run", "true"), ("outcome", "unchanged"), ("reason", "no-proxy")): 1.0,
        (("dry_run", "false"), ("outcome", "unchanged"), ("reason", "not-create")): 1.0,
        (("dry_run", "false"), ("outcome", "unchanged"), ("reason", "not-a-pod")): 1.0,
        (("dry_run", "false"), ("outcome", "rejected"), ("reason", "bad-request")): 1.0,
        (("dry_run", "false"), ("outcome", "rejected"), ("reason", "too-large")): 1.0,
    }
    assert samples(metrics, DURATION + "_count") == {
        (("outcome", "mutated"),): 4.0,
        (("outcome", "unchanged"),): 6.0,
        (("outcome", "rejected"),): 2.0,
    }
    buckets = samples(metrics, DURATION + "_bucket")
    for outcome, count in (("mutated", 4.0), ("unchanged", 6.0), ("rejected", 2.0)):
        assert buckets[(("le", "+Inf"), ("outcome", outcome))] == count
    assert samples(metrics, OPERATIONS) == {(): float(ops)}
    assert samples(metrics, EXPIRY) == {(): certificate_expiry(server.certs.cert).timestamp()}
    assert samples(metrics, RELOADS) == {}


def test_each_decision_is_one_json_log_line_with_its_fields(server: ServerHandle) -> None:
    review = copy.deepcopy(REVIEWS["hello-native"])
    pod = review["request"]["object"]
    pod["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "hello-6d8f", "uid": "u"}
    ]
    pod["spec"]["containers"][0]["env"] = [{"name": "TOKEN", "value": MARKER}]
    status, answer = post(server, review)
    assert status == 200
    status, _ = post(server, REVIEWS["gateway-dry-run"])
    assert status == 200
    assert post(server, b"[" * 10 + MARKER.encode())[0] == 400
    # The line is written after the answer is sent: wait for the last one.
    server.wait_for_log(lambda r: r.get("reason") == "bad-request")

    records = server.log_records()  # every line parses as JSON
    decisions = [r for r in records if r["msg"] == "admission"]
    for record in decisions:
        assert isinstance(record.pop("duration_ms"), float)
        assert record.pop("time").endswith("Z")
    assert decisions == [
        {
            "level": "info",
            "msg": "admission",
            "outcome": "mutated",
            "reason": "",
            "dry_run": False,
            "patch_operations": operations(answer),
            "uid": review["request"]["uid"],
            "namespace": "shop",
            "name": "hello-",
            "operation": "CREATE",
            "kind": "Pod",
            "owner": "ReplicaSet/hello-6d8f",
        },
        {
            "level": "info",
            "msg": "admission",
            "outcome": "mutated",
            "reason": "",
            "dry_run": True,
            "patch_operations": 7,
            "uid": REVIEWS["gateway-dry-run"]["request"]["uid"],
            "namespace": "shop",
            "name": "gateway-",
            "operation": "CREATE",
            "kind": "Pod",
        },
        {
            "level": "warning",
            "msg": "admission",
            "outcome": "rejected",
            "reason": "bad-request",
            "dry_run": False,
            "patch_operations": 0,
            "error": "body is not JSON: unexpected character, expected a JSON value:"
            " line 1 column 11 (char 10)",
        },
    ]
    text = server.log_text()
    assert MARKER not in text  # no request bodies
    key_lines = server.certs.key.read_text().splitlines()[1:-1]
    assert key_lines and not any(line in text for line in key_lines)  # no key material
    assert "PRIVATE KEY" not in text


def test_the_startup_line_names_the_addresses_and_the_certificate(server: ServerHandle) -> None:
    [serving] = [r for r in server.log_records() if r["msg"] == "serving"]
    assert serving["address"] == server.base_url
    assert serving["metrics"] == server.metrics_url
    expiry = certificate_expiry(server.certs.cert)
    assert serving["not_after"] == expiry.strftime("%Y-%m-%dT%H:%M:%SZ")


def with_socket(pod: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    pod = copy.deepcopy(pod)
    for i, volume in enumerate(pod["spec"]["volumes"]):
        if volume["name"] == "workload-socket":
            pod["spec"]["volumes"][i] = {"name": "workload-socket", **source}
    return pod


def test_a_host_path_socket_volume_is_replaced_with_a_warning(server: ServerHandle) -> None:
    pod = with_socket(REVIEWS["gateway"]["request"]["object"], {"hostPath": {"path": "/run/x"}})
    for dry_run in (False, True):
        status, answer = post(server, review_of(pod, f"host-path-{dry_run}", dryRun=dry_run))
        assert status == 200
        assert answer["response"]["warnings"] == [
            "replaced the hostPath source of volume workload-socket with the CSI driver"
            " csi.spiffe.io"
        ]
    server.wait_for_log(lambda r: r.get("uid") == "host-path-True")  # written after the answer
    logged = [r.get("warnings") for r in server.log_records() if r["msg"] == "admission"]
    assert logged == [answer["response"]["warnings"]] * 2


def test_an_empty_dir_socket_volume_is_replaced_without_a_warning(server: ServerHandle) -> None:
    pod = with_socket(REVIEWS["gateway"]["request"]["object"], {"emptyDir": {}})
    status, answer = post(server, review_of(pod, "empty-dir"))
    assert status == 200
    assert answer["response"]["patchType"] == "JSONPatch"
    assert "warnings" not in answer["response"]


def test_removing_another_containers_certs_mount_is_a_warning(server: ServerHandle) -> None:
    pod = istio_pods()["grpc-agent--0"]
    status, answer = post(server, review_of(pod, "grpc-agent"))
    assert status == 200
    assert answer["response"]["warnings"] == [
        "removed the workload-certs mount from container traffic"
    ]


# --- The 500 path: a rewrite that raises ------------------------------------------------

# Run in the server process before it starts: every rewrite fails as a bug would.
BROKEN_REWRITE = """
import webhook.review
def rewrite(pod, contract):
    raise KeyError("missing")
webhook.review.rewrite = rewrite
"""


def test_a_rewrite_that_raises_gets_500_and_an_error_line_with_traceback_and_uid(
    tmp_path: Path,
) -> None:
    pod = REVIEWS["hello-native"]["request"]["object"]
    with running_server(tmp_path, preamble=BROKEN_REWRITE) as server:
        answers = [
            post(server, review_of(pod, "crash-live")),
            post(server, review_of(pod, "crash-dry-run", dryRun=True)),
        ]
        server.wait_for_log(lambda r: r.get("uid") == "crash-dry-run")  # after the answer
        metrics = server.metrics()
        records = [r for r in server.log_records() if r["msg"] == "admission"]

    assert answers == [(500, {"error": "internal error while handling the review"})] * 2
    assert samples(metrics, REQUESTS) == {
        (("dry_run", "false"), ("outcome", "error"), ("reason", "internal")): 1.0,
        (("dry_run", "true"), ("outcome", "error"), ("reason", "internal")): 1.0,
    }
    assert samples(metrics, DURATION + "_count") == {(("outcome", "error"),): 2.0}
    tracebacks = []
    for record in records:
        assert isinstance(record.pop("duration_ms"), float)
        assert record.pop("time").endswith("Z")
        tracebacks.append(record.pop("traceback"))
    assert records == [
        {
            "level": "error",
            "msg": "admission",
            "outcome": "error",
            "reason": "internal",
            "dry_run": dry_run,
            "patch_operations": 0,
            "uid": uid,
            "namespace": "shop",
            "name": "hello-",
            "operation": "CREATE",
            "kind": "Pod",
            "error": "KeyError: 'missing'",
        }
        for uid, dry_run in (("crash-live", False), ("crash-dry-run", True))
    ]
    for traceback in tracebacks:
        lines = traceback.splitlines()
        assert lines[0] == "Traceback (most recent call last):"
        assert lines[-1] == "KeyError: 'missing'"
        assert 'File "<string>", line 4, in rewrite' in traceback  # where it was raised
        assert "in _mutate" in traceback  # and the request path that called it


# --- The log lines themselves ---------------------------------------------------------


@pytest.fixture
def log_stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Logging as `configure_logging` sets it up (one JSON StreamHandler on the root
    logger, INFO), into a string."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    monkeypatch.setattr(logging.root, "handlers", [handler])
    level = logging.root.level
    logging.root.setLevel(logging.INFO)  # setLevel, not setattr: it clears the loggers' caches
    try:
        yield stream
    finally:
        logging.root.setLevel(level)


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every log line stamped 2025-11-25T12:00:00.250Z."""
    monkeypatch.setattr(time, "time", lambda: 1_764_072_000.25)
    monkeypatch.setattr(time, "time_ns", lambda: 1_764_072_000_250_000_000)


def test_an_admission_is_one_json_line_through_the_logging_handler(
    log_stream: io.StringIO, frozen_clock: None
) -> None:
    observer = Observer(Metrics(CollectorRegistry()))
    fields = {"uid": "u-1", "name": "hello", "big": 2**70, "warnings": ["a"]}
    observer.admission(outcome="mutated", reason="", dry_run=True, seconds=0.0001, fields=fields)
    observer.admission(outcome="rejected", reason="bad-request", dry_run=False, seconds=0.001)
    assert [json.loads(line) for line in log_stream.getvalue().splitlines()] == [
        {
            "time": "2025-11-25T12:00:00.250Z",
            "level": "info",
            "msg": "admission",
            "outcome": "mutated",
            "reason": "",
            "dry_run": True,
            "patch_operations": 0,
            "duration_ms": 0.1,
            "uid": "u-1",
            "name": "hello",
            "big": 2**70,  # over 64 bits: orjson refuses it, the json module writes it
            "warnings": ["a"],
        },
        {
            "time": "2025-11-25T12:00:00.250Z",
            "level": "warning",
            "msg": "admission",
            "outcome": "rejected",
            "reason": "bad-request",
            "dry_run": False,
            "patch_operations": 0,
            "duration_ms": 1.0,
        },
    ]


def test_any_line_logged_with_an_exception_carries_its_type_message_and_traceback(
    log_stream: io.StringIO,
) -> None:
    def fail() -> None:
        raise ValueError("no good")

    try:
        fail()
    except ValueError:
        logging.getLogger("some.library").exception("it broke", extra={"fields": {"uid": "u"}})
    [record] = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    traceback = record.pop("traceback")
    assert record == {
        "time": record["time"],
        "level": "error",
        "msg": "it broke",
        "uid": "u",
        "error": "ValueError: no good",
    }
    assert traceback.splitlines()[0] == "Traceback (most recent call last):"
    assert traceback.splitlines()[-2:] == ['    raise ValueError("no good")', "ValueError: no good"]


# --- The decision line's direct write (webhook/observability.py, JsonLineHandler) -----


@pytest.fixture
def server_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Logging as the server sets it up (`configure_logging`), into a string; the previous
    set-up is restored after."""
    stream = io.StringIO()
    for name in ("logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "handlers", logger.handlers[:])
        monkeypatch.setattr(logger, "propagate", logger.propagate)
        monkeypatch.setattr(logger, "disabled", logger.disabled)
    monkeypatch.setattr(logging.root, "handlers", logging.root.handlers[:])
    level = logging.root.level
    configure_logging("info", stream=stream)
    try:
        yield stream
    finally:
        logging.root.setLevel(level)


def _without_pytests_capture(monkeypatch: pytest.MonkeyPatch) -> JsonLineHandler:
    """Only the server's handler on the root logger: pytest adds its capturing handler
    for each test's call, and with it the logging chain is (rightly) always taken."""
    [ours] = [h for h in logging.root.handlers if isinstance(h, JsonLineHandler)]
    monkeypatch.setattr(logging.root, "handlers", [ours])
    return ours


def _admissions(observer: Observer) -> None:
    fields = {"uid": "u-1", "name": "hello", "big": 2**70}
    observer.admission(outcome="mutated", reason="", dry_run=False, seconds=0.0002, fields=fields)
    observer.admission(outcome="rejected", reason="too-large", dry_run=False, seconds=0.001)


def test_a_decision_line_written_directly_equals_what_the_logging_chain_writes(
    server_logging: io.StringIO, frozen_clock: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    observer = Observer(Metrics(CollectorRegistry()))
    made: list[logging.LogRecord] = []
    make_record = logging.getLogger(LOGGER_NAME).makeRecord

    def counting_make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made.append(make_record(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(logging.getLogger(LOGGER_NAME), "makeRecord", counting_make_record)
    handler = _without_pytests_capture(monkeypatch)
    _admissions(observer)
    direct = server_logging.getvalue()
    assert made == []  # no LogRecord: the direct write

    # A filter anywhere on the way must see the records: the logging chain is taken.
    seen: list[str] = []
    handler.addFilter(lambda record: seen.append(record.getMessage()) or True)
    server_logging.seek(0)
    server_logging.truncate()
    _admissions(observer)
    assert (len(made), seen) == (2, ["admission", "admission"])
    assert server_logging.getvalue() == direct
    assert json.loads(direct.splitlines()[0])["big"] == 2**70


def test_an_error_line_takes_the_logging_chain_and_carries_its_traceback_and_uid(
    server_logging: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    _without_pytests_capture(monkeypatch)
    observer = Observer(Metrics(CollectorRegistry()))
    try:
        {}["missing"]
    except KeyError as error:
        observer.admission(
            outcome="error",
            reason="internal",
            dry_run=False,
            seconds=0.001,
            fields={"uid": "u-9"},
            error=error,
        )
    [line] = [json.loads(text) for text in server_logging.getvalue().splitlines()]
    assert (line["level"], line["uid"], line["error"]) == ("error", "u-9", "KeyError: 'missing'")
    assert line["traceback"].splitlines()[-1] == "KeyError: 'missing'"


def test_a_stream_that_fails_leaves_the_decision_to_the_logging_chain(
    server_logging: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = _without_pytests_capture(monkeypatch)
    failures: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", failures.append)
    monkeypatch.setattr(server_logging, "write", _raise_os_error)
    Observer(Metrics(CollectorRegistry())).admission(
        outcome="mutated", reason="", dry_run=False, seconds=0.0002, fields={"uid": "u-2"}
    )
    # Logging's own error handling got the record (it prints it to stderr, never raises).
    assert [(r.getMessage(), r.fields["uid"]) for r in failures] == [("admission", "u-2")]  # type: ignore[attr-defined]


def _raise_os_error(text: str) -> int:
    raise OSError("disk full")


def test_another_formatter_set_on_the_servers_handler_formats_the_decision_line(
    server_logging: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = _without_pytests_capture(monkeypatch)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    Observer(Metrics(CollectorRegistry())).admission(
        outcome="mutated", reason="", dry_run=False, seconds=0.0002, fields={"uid": "u-3"}
    )
    assert server_logging.getvalue() == "INFO admission\n"
