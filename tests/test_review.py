"""AdmissionReview handling: `review.handle` directly and the ASGI app in process (httpx).

The same app over real TLS is another module's business; here the app runs in process
through `httpx.ASGITransport`, so every status code and error body is exact and cheap.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import jsonpatch
import pytest

from tests.oracle import admission_reviews, assert_rewritten, istio_pods
from webhook.app import WebhookApp
from webhook.config import Settings
from webhook.review import BadReview, handle
from webhook.rewrite import Contract

SETTINGS = Settings()
CONTRACT = Contract.from_settings(SETTINGS)
REVIEW = admission_reviews()["hello-native"]
UID = REVIEW["request"]["uid"]


def review(change: Callable[[dict[str, Any]], object] | None = None) -> dict[str, Any]:
    """A fresh copy of a real API server's review, changed by `change`."""
    body = copy.deepcopy(REVIEW)
    if change is not None:
        change(body)
    return body


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()


def post(
    content: bytes | Callable[[], AsyncIterator[bytes]],
    settings: Settings = SETTINGS,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """One request to a fresh app, in process."""

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=WebhookApp(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://webhook") as client:
            if method != "POST":
                return await client.request(method, "/mutate")
            payload = content() if callable(content) else content
            return await client.post("/mutate", content=payload, headers=headers)

    return asyncio.run(run())


def patch_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
    ops: list[dict[str, Any]] = json.loads(base64.b64decode(answer["response"]["patch"]))
    return ops


# --- bad input: handle() and the app agree on status and message -------------------------------

BAD = [
    ("not-json", b"{nope", "body is not JSON: unexpected character, expected a string key:"
     " line 1 column 2 (char 1)"),
    ("empty", b"", "body is not JSON: Input is a zero-length, empty document:"
     " line 1 column 1 (char 0)"),
    ("array", b"[]", "body is not an AdmissionReview: expected a JSON object"),
    ("string", b'"x"', "body is not an AdmissionReview: expected a JSON object"),
    (
        "v1beta1",
        encode(review(lambda r: r.update(apiVersion="admission.k8s.io/v1beta1"))),
        "apiVersion: expected admission.k8s.io/v1, got 'admission.k8s.io/v1beta1'",
    ),
    (
        "no-api-version",
        encode(review(lambda r: r.pop("apiVersion"))),
        "apiVersion: required field is missing",
    ),
    ("not-a-review", encode(review(lambda r: r.update(kind="Pod"))),
     "kind: Input should be 'AdmissionReview'"),
    ("no-request", encode(review(lambda r: r.pop("request"))),
     "request: required field is missing"),
    ("request-list", encode(review(lambda r: r.update(request=[]))),
     "request: Input should be a valid dictionary"),
    ("kind-string", encode(review(lambda r: r["request"].update(kind="Pod"))),
     "request.kind: Input should be a valid dictionary"),
    ("no-uid", encode(review(lambda r: r["request"].pop("uid"))),
     "request.uid: required field is missing"),
    ("empty-uid", encode(review(lambda r: r["request"].update(uid=""))),
     "request.uid: String should have at least 1 character"),
    ("no-kind", encode(review(lambda r: r["request"].pop("kind"))),
     "request.kind: required field is missing"),
    ("no-operation", encode(review(lambda r: r["request"].pop("operation"))),
     "request.operation: required field is missing"),
    ("no-object", encode(review(lambda r: r["request"].pop("object"))),
     "request.object: a Pod CREATE must carry the pod as a JSON object"),
    ("object-null", encode(review(lambda r: r["request"].update(object=None))),
     "request.object: a Pod CREATE must carry the pod as a JSON object"),
    ("object-list", encode(review(lambda r: r["request"].update(object=[]))),
     "request.object: a Pod CREATE must carry the pod as a JSON object"),
    ("object-not-pod", encode(review(lambda r: r["request"]["object"].update(kind="Deployment"))),
     "request.object.kind: expected Pod, got 'Deployment'"),
    ("object-no-kind", encode(review(lambda r: r["request"]["object"].pop("kind"))),
     "request.object.kind: expected Pod, got None"),
    ("spec-list", encode(review(lambda r: r["request"]["object"].update(spec=[]))),
     "request.object.spec: must be a JSON object"),
    ("spec-missing", encode(review(lambda r: r["request"]["object"].pop("spec"))),
     "request.object.spec: must be a JSON object"),
    (
        "containers-object",
        encode(review(lambda r: r["request"]["object"]["spec"].update(containers={}))),
        "request.object.spec.containers: must be a JSON array",
    ),
    (
        "volumes-object",
        encode(review(lambda r: r["request"]["object"]["spec"].update(volumes={}))),
        "request.object.spec.volumes: must be a JSON array",
    ),
    (
        "container-string",
        encode(review(lambda r: r["request"]["object"]["spec"]["containers"].append("x"))),
        "request.object.spec.containers[1]: must be a JSON object",
    ),
    (
        "labels-list",
        encode(review(lambda r: r["request"]["object"]["metadata"].update(labels=[]))),
        "request.object.metadata.labels: must be a JSON object",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("body", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_handle_rejects_bad_input_with_400_naming_the_field(body: bytes, message: str) -> None:
    with pytest.raises(BadReview) as caught:
        handle(body, CONTRACT)
    assert (caught.value.status, caught.value.reason) == (400, message)


@pytest.mark.parametrize(("body", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_app_answers_bad_input_with_400_and_a_json_error(body: bytes, message: str) -> None:
    response = post(body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": message}


def test_app_answers_413_from_content_length_over_the_limit() -> None:
    response = post(b" " * 1025, Settings(max_body_bytes=1024))
    assert response.status_code == 413
    assert response.json() == {"error": "body exceeds 1024 bytes"}


def test_app_answers_413_while_reading_a_chunked_body_without_content_length() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 300

    response = post(chunks, Settings(max_body_bytes=1024))
    assert response.request.headers.get("content-length") is None
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413
    assert response.json() == {"error": "body exceeds 1024 bytes"}


def test_body_of_exactly_the_limit_is_read_and_parsed() -> None:
    response = post(b"[" + b" " * 1022 + b"]", Settings(max_body_bytes=1024))
    assert response.status_code == 400
    assert response.json() == {"error": "body is not an AdmissionReview: expected a JSON object"}


def test_get_mutate_is_405_with_allow_post() -> None:
    response = post(b"", method="GET")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json() == {"error": "method not allowed: use POST"}


def test_any_content_type_is_accepted() -> None:
    response = post(encode(REVIEW), headers={"content-type": "text/plain"})
    assert response.status_code == 200
    assert response.json()["response"]["patchType"] == "JSONPatch"


# --- answers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(admission_reviews()))
def test_api_server_reviews_get_the_contract_patch_and_their_uid(name: str) -> None:
    body = admission_reviews()[name]
    response = post(encode(body))
    assert response.status_code == 200
    answer = response.json()
    assert set(answer) == {"apiVersion", "kind", "response"}
    assert (answer["apiVersion"], answer["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")
    assert set(answer["response"]) == {"uid", "allowed", "patchType", "patch"}
    assert answer["response"]["uid"] == body["request"]["uid"]
    assert answer["response"]["allowed"] is True
    assert answer["response"]["patchType"] == "JSONPatch"
    pod = body["request"]["object"]
    assert_rewritten(pod, jsonpatch.apply_patch(pod, patch_of(answer)), SETTINGS)


def test_dry_run_gets_the_same_answer_as_a_real_create() -> None:
    real = post(encode(review(lambda r: r["request"].update(dryRun=False)))).json()
    dry = post(encode(review(lambda r: r["request"].update(dryRun=True)))).json()
    assert dry == real
    assert patch_of(dry) != []


def test_captured_dry_run_and_real_create_get_the_same_patch() -> None:
    reviews = admission_reviews()
    assert reviews["hello-native-dry-run"]["request"]["dryRun"] is True
    assert reviews["hello-native"]["request"]["dryRun"] is False
    dry = handle(encode(reviews["hello-native-dry-run"]), CONTRACT)
    real = handle(encode(reviews["hello-native"]), CONTRACT)
    assert dry.result.ops == real.result.ops


def test_uid_is_echoed() -> None:
    answer = post(encode(review(lambda r: r["request"].update(uid="a-b-c")))).json()
    assert answer["response"]["uid"] == "a-b-c"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (
            lambda r: r["request"].update(
                kind={"group": "apps", "version": "v1", "kind": "Deployment"},
                object={"apiVersion": "apps/v1", "kind": "Deployment"},
            ),
            "not-a-pod",
        ),
        (
            lambda r: r["request"].update(kind={"group": "x.io", "version": "v1", "kind": "Pod"}),
            "not-a-pod",
        ),
        (lambda r: r["request"].update(operation="UPDATE"), "not-create"),
        (lambda r: r["request"].update(operation="DELETE", object=None), "not-create"),
        (lambda r: r["request"].update(object=istio_pods()["hello-ignore--0"]), "no-proxy"),
        (
            lambda r: r["request"]["object"]["metadata"]["labels"].update(
                {"istio-spiffe-webhook/inject": "disabled"}
            ),
            "opted-out",
        ),
    ],
    ids=["deployment", "pod-of-another-group", "update", "delete", "no-proxy", "opted-out"],
)
def test_requests_outside_the_contract_are_allowed_without_patch(
    change: Callable[[dict[str, Any]], object], reason: str
) -> None:
    body = encode(review(change))
    decision = handle(body, CONTRACT)
    assert (decision.outcome, decision.reason, decision.result.ops) == ("unchanged", reason, [])
    response = post(body)
    assert response.status_code == 200
    assert response.json() == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": UID, "allowed": True},
    }


def test_compliant_pod_is_unchanged_with_reason_compliant() -> None:
    pod = REVIEW["request"]["object"]
    rewritten = jsonpatch.apply_patch(pod, handle(encode(REVIEW), CONTRACT).result.ops)
    decision = handle(encode(review(lambda r: r["request"].update(object=rewritten))), CONTRACT)
    assert (decision.outcome, decision.reason) == ("unchanged", "compliant")
    assert json.loads(decision.response_bytes()) == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": UID, "allowed": True},
    }


def test_mutated_decision_has_outcome_mutated_and_empty_reason() -> None:
    decision = handle(encode(REVIEW), CONTRACT)
    assert (decision.outcome, decision.reason) == ("mutated", "")
    assert decision.request["uid"] == UID
    assert decision.request["dryRun"] is False


def test_warnings_are_in_the_answer_only_when_the_rewrite_warns() -> None:
    grpc = copy.deepcopy(istio_pods()["grpc-agent--0"])
    answer = post(encode(review(lambda r: r["request"].update(object=grpc)))).json()
    assert answer["response"]["warnings"] == [
        "removed the workload-certs mount from container traffic"
    ]
    assert_rewritten(grpc, jsonpatch.apply_patch(grpc, patch_of(answer)), SETTINGS)
    assert "warnings" not in post(encode(REVIEW)).json()["response"]


def test_warning_for_a_replaced_host_path_socket_reaches_the_answer() -> None:
    def host_path(r: dict[str, Any]) -> None:
        for volume in r["request"]["object"]["spec"]["volumes"]:
            if volume["name"] == "workload-socket":
                volume.pop("emptyDir")
                volume["hostPath"] = {"path": "/run/spire/sockets", "type": "Directory"}

    answer = post(encode(review(host_path))).json()
    assert answer["response"]["warnings"] == [
        "replaced the hostPath source of volume workload-socket with the CSI driver csi.spiffe.io"
    ]
