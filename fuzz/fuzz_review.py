"""atheris target: `webhook.review.handle` on raw request bodies.

The only exception allowed out of `handle` is `BadReview` (HTTP 4xx, with a reason); every
decision it returns must serialize to an AdmissionReview that echoes the uid and allows,
with a patch that applies to the request's pod. Bytes that parse as JSON are also sent
wrapped in a Pod CREATE review (as the pod, and spliced into a real review's pod), so the
fuzzer reaches the rewrite through the envelope.

    python -m fuzz.fuzz_review [libFuzzer options] [corpus directory]   # from the repo root
"""

from __future__ import annotations

import base64
import sys
from typing import Any

import atheris

with atheris.instrument_imports():
    import jsonpatch
    import orjson

    from fuzz.common import CONTRACT, SETTINGS
    from webhook.review import BadReview, handle

REVIEW: dict[str, Any] = {
    "apiVersion": "admission.k8s.io/v1",
    "kind": "AdmissionReview",
    "request": {
        "uid": "fuzz",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "operation": "CREATE",
        "namespace": "default",
        "object": None,
    },
}
PROXY_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"generateName": "hello-", "labels": {"app": "hello"}},
    "spec": {
        "containers": [{"name": "app"}, {"name": SETTINGS.proxy_container, "env": []}],
        "volumes": [{"name": SETTINGS.certs_volume}, {"name": SETTINGS.socket_volume}],
    },
}


def check(body: bytes) -> None:
    try:
        decision = handle(body, CONTRACT)
    except BadReview as error:
        assert 400 <= error.status < 500 and error.reason, "BadReview without a 4xx reason"
        return
    answer = orjson.loads(decision.response_bytes())
    response = answer["response"]
    assert response["uid"] == decision.request["uid"] and response["allowed"] is True
    assert "warnings" not in response or "patch" in response, "a warning without a patch"
    if "patch" in response:
        ops = orjson.loads(base64.b64decode(response["patch"]))
        jsonpatch.apply_patch(decision.request["object"], ops)


def test_one_input(data: bytes) -> None:
    check(data)
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    as_pod = {**REVIEW, "request": {**REVIEW["request"], "object": value}}
    check(orjson.dumps(as_pod))
    if isinstance(value, dict):
        pod = {**PROXY_POD, "spec": {**PROXY_POD["spec"], **value}}
        spliced = {**REVIEW, "request": {**REVIEW["request"], "object": pod}}
        check(orjson.dumps(spliced))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
