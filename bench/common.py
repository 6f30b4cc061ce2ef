"""What the benchmarks post: fixture pods wrapped as a kube-apiserver wraps them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
FIXTURES = BENCH / "fixtures"
# hello--0 is the baseline pod; merge-probers--0 is the largest fixture.
FIXTURE_NAMES = ("hello--0", "merge-probers--0")


def load_pod(name: str) -> dict[str, Any]:
    pod: dict[str, Any] = orjson.loads((FIXTURES / f"{name}.json").read_bytes())
    return pod


def review(
    pod: dict[str, Any], uid: str = "7c3e0d5a-0b8f-4c1e-9a53-2f1d6c8e4b10"
) -> dict[str, Any]:
    """A Pod CREATE AdmissionReview v1 carrying `pod`, shaped as an API server sends it."""
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    gvr = {"group": "", "version": "v1", "resource": "pods"}
    namespace = (pod.get("metadata") or {}).get("namespace", "default")
    return {
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "0b3a7c55-3d0e-4d0a-8f4f-5c1b9f0e2a61",
                "groups": ["system:serviceaccounts", "system:authenticated"],
            },
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


def review_body(name: str) -> bytes:
    """The request body for fixture `name`: compact JSON, as the API server sends it."""
    return orjson.dumps(review(load_pod(name)))
