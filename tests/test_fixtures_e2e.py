"""Done means: every fixture through the real HTTPS server gets exactly the contract.

Every pod of ../shared/fixtures/istio-injected/ (wrapped in a Pod CREATE AdmissionReview)
and every review of ../shared/fixtures/admission-reviews/ (as a kube-apiserver sent it) is
POSTed to the real server (a subprocess over TLS, certificates by `webhook.certs`) with a
real httpx client. The answer echoes the uid and allows; the base64 JSON Patch applies with
`jsonpatch` to exactly `tests.oracle.expected`, passes the API server's checks the rewrite
can affect, loads into a `V1Pod`, and sent back it gets no patch. Pods without istio-proxy
get no patch; a dry run gets its twin's answer. Last, a small soak (tests/soak.py) with a
certificate rotation in the middle.
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import pytest

from tests import soak
from tests.oracle import admission_reviews, assert_rewritten, expected, in_scope, istio_pods
from tests.serving import ServerHandle, running_server
from tests.soak import pod_review
from tests.test_properties import to_v1pod
from webhook.config import Settings

SETTINGS = Settings()
PODS = istio_pods()
REVIEWS = admission_reviews()
NO_PROXY = {"custom-template--0", "hello-ignore--0"}
# The only fixture where the rewrite does something a user may not expect.
WARNINGS = {"grpc-agent--0": ["removed the workload-certs mount from container traffic"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    with running_server(tmp_path_factory.mktemp("fixtures-e2e")) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(server: ServerHandle) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


def admit(client: httpx.Client, review: dict[str, Any]) -> dict[str, Any]:
    """POST the review; assert the envelope of a 200 answer; return its `response`."""
    answer = client.post("/mutate", content=json.dumps(review).encode())
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert set(body) == {"apiVersion", "kind", "response"}
    assert (body["apiVersion"], body["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")
    response: dict[str, Any] = body["response"]
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] is True
    return response


def check_rewrite(
    client: httpx.Client, review: dict[str, Any], warnings: list[str]
) -> list[dict[str, Any]]:
    """The answer's patch makes exactly the oracle's pod, and a second pass is a no-op."""
    pod = review["request"]["object"]
    response = admit(client, review)
    expected_keys = {"uid", "allowed", "patchType", "patch"} | ({"warnings"} if warnings else set())
    assert set(response) == expected_keys
    assert response["patchType"] == "JSONPatch"
    assert response.get("warnings", []) == warnings
    ops: list[dict[str, Any]] = json.loads(base64.b64decode(response["patch"], validate=True))
    patched = jsonpatch.apply_patch(pod, ops)
    assert patched == expected(pod, SETTINGS)
    assert_rewritten(pod, patched, SETTINGS)
    v1pod = to_v1pod(patched)
    assert v1pod.metadata.labels[SETTINGS.identity_label] == SETTINGS.identity_label_value
    assert [(v.name, v.csi.driver, v.csi.read_only) for v in v1pod.spec.volumes if v.csi] == [
        (SETTINGS.socket_volume, SETTINGS.csi_driver, True)
    ]

    again = copy.deepcopy(review)
    again["request"]["uid"] = str(uuid.uuid4())
    again["request"]["object"] = patched
    assert admit(client, again) == {"uid": again["request"]["uid"], "allowed": True}
    return ops


@pytest.mark.parametrize("name", sorted(set(PODS) - NO_PROXY))
def test_istio_injected_pod_is_patched_to_exactly_the_contract_over_https(
    client: httpx.Client, name: str
) -> None:
    assert in_scope(PODS[name], SETTINGS)
    check_rewrite(client, pod_review(PODS[name]), WARNINGS.get(name, []))


@pytest.mark.parametrize("name", sorted(NO_PROXY))
def test_istio_injected_pod_without_proxy_is_allowed_without_a_patch(
    client: httpx.Client, name: str
) -> None:
    review = pod_review(PODS[name])
    assert admit(client, review) == {"uid": review["request"]["uid"], "allowed": True}


@pytest.mark.parametrize("name", sorted(REVIEWS))
def test_api_server_review_is_patched_to_exactly_the_contract_over_https(
    client: httpx.Client, name: str
) -> None:
    check_rewrite(client, REVIEWS[name], [])


@pytest.mark.parametrize("name", sorted(n for n in REVIEWS if not n.endswith("-dry-run")))
def test_dry_run_review_gets_the_same_patch_as_its_real_twin(
    client: httpx.Client, name: str
) -> None:
    real, dry = REVIEWS[name], REVIEWS[f"{name}-dry-run"]
    assert dry["request"]["dryRun"] is True and real["request"]["dryRun"] is False
    real_answer, dry_answer = admit(client, real), admit(client, dry)
    assert dry_answer["patch"] == real_answer["patch"]
    assert {**dry_answer, "uid": None} == {**real_answer, "uid": None}


@pytest.mark.parametrize("name", sorted(set(PODS) - NO_PROXY))
def test_istio_injected_pod_dry_run_gets_the_same_patch(client: httpx.Client, name: str) -> None:
    real = pod_review(PODS[name])
    dry = copy.deepcopy(real)
    dry["request"]["dryRun"] = True
    dry["request"]["options"]["dryRun"] = ["All"]
    assert {**admit(client, dry), "uid": None} == {**admit(client, real), "uid": None}


def test_small_soak_with_a_certificate_rotation_answers_every_request_exactly(
    tmp_path: Path,
) -> None:
    figures = soak.run(
        tmp_path, seconds=60.0, max_requests=500, concurrency=8, rotate_after=250, quiet=True
    )
    assert figures.requests == 500
    assert figures.failures == []
    assert figures.rotated_serial is not None
    assert figures.serial_after == figures.rotated_serial != figures.serial_before
