"""AdmissionReview v1 in and out: envelope validation, 4xx reasons, response building.

The pod stays a plain dict from the request body to the patch: a typed model of the whole
pod would cost time and could drop fields it does not know. The TypedDicts below validate
only the envelope (`object` is passed through: the body's own dict, never copied) and, with
the response models, document the API.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic takes typing's only from Python 3.12

from webhook.rewrite import Contract, InvalidPod, Result, rewrite

API_VERSION: Literal["admission.k8s.io/v1"] = "admission.k8s.io/v1"


class BadReview(ValueError):
    """The request body is not an AdmissionReview we can answer: HTTP `status`."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


# Strict: the API server sends JSON of exactly these types; a review with `dryRun: 0` or
# `uid: 7` was not sent by one and is refused, not coerced. TypedDicts rather than models:
# validating into plain dicts takes half the time, and `object` stays the body's own dict.
# A key with a default is always present after validation, as a model's field would be.
@with_config(ConfigDict(extra="ignore", strict=True))
class GroupVersionKind(TypedDict):
    group: Annotated[str, Field(default="")]
    version: Annotated[str, Field(default="")]
    kind: str


@with_config(ConfigDict(extra="ignore", strict=True))
class AdmissionRequest(TypedDict):
    uid: Annotated[str, Field(min_length=1)]
    kind: GroupVersionKind
    operation: str
    namespace: Annotated[str | None, Field(default=None)]
    name: Annotated[str | None, Field(default=None)]
    dryRun: Annotated[bool | None, Field(default=False)]
    object: Annotated[Any, Field(default=None)]


@with_config(ConfigDict(extra="ignore", strict=True))
class AdmissionReview(TypedDict):
    apiVersion: Literal["admission.k8s.io/v1"]
    kind: Literal["AdmissionReview"]
    request: AdmissionRequest


ADMISSION_REVIEW_ADAPTER = TypeAdapter(AdmissionReview)


class AdmissionResponse(BaseModel):
    uid: str
    allowed: bool
    patchType: Literal["JSONPatch"] | None = None
    patch: str | None = Field(None, description="base64 of the RFC 6902 JSON Patch")
    warnings: list[str] | None = None


class AdmissionReviewResponse(BaseModel):
    apiVersion: Literal["admission.k8s.io/v1"] = API_VERSION
    kind: Literal["AdmissionReview"] = "AdmissionReview"
    response: AdmissionResponse


class ErrorBody(BaseModel):
    error: str


@dataclass(slots=True)
class Decision:
    """What the webhook answered and why: the response and what logs/metrics need."""

    review: AdmissionReview
    result: Result
    outcome: Literal["mutated", "unchanged"]
    reason: str  # why unchanged: "not-a-pod", "not-create", "no-proxy", "opted-out", "compliant"

    @property
    def request(self) -> AdmissionRequest:
        return self.review["request"]

    def response_bytes(self) -> bytes:
        response: dict[str, Any] = {"uid": self.request["uid"], "allowed": True}
        if self.result.ops:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(orjson.dumps(self.result.ops)).decode()
        if self.result.warnings:
            response["warnings"] = self.result.warnings
        return orjson.dumps(
            {"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response}
        )


def parse(body: bytes) -> AdmissionReview:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BadReview(f"body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise BadReview("body is not an AdmissionReview: expected a JSON object")
    try:
        return ADMISSION_REVIEW_ADAPTER.validate_python(data)
    except ValidationError as error:
        raise BadReview(_describe(error)) from None


def decide(review: AdmissionReview, contract: Contract) -> Decision:
    request = review["request"]
    if request["kind"]["kind"] != "Pod" or request["kind"]["group"] != "":
        return Decision(review, Result(), "unchanged", "not-a-pod")
    if request["operation"] != "CREATE":
        return Decision(review, Result(), "unchanged", "not-create")
    pod = request["object"]
    if not isinstance(pod, dict):
        raise BadReview("request.object: a Pod CREATE must carry the pod as a JSON object")
    if pod.get("kind") != "Pod":
        raise BadReview(f"request.object.kind: expected Pod, got {pod.get('kind')!r}")
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        raise BadReview("request.object.spec: must be a JSON object")
    if not isinstance(spec.get("containers"), list):
        raise BadReview("request.object.spec.containers: must be a JSON array")
    try:
        result = rewrite(pod, contract)
    except InvalidPod as error:
        raise BadReview(f"request.object.{error}") from None
    if result.ops:
        return Decision(review, result, "mutated", "")
    return Decision(review, result, "unchanged", result.skipped or "compliant")


def handle(body: bytes, contract: Contract) -> Decision:
    """Bytes of an AdmissionReview in, the decision out; BadReview on bad input.

    The body's size is the reader's limit (`/mutate` refuses one over `max_body_bytes`
    with 413 while reading it), not checked again here.
    """
    return decide(parse(body), contract)


def _describe(error: ValidationError) -> str:
    item = error.errors()[0]
    where = ".".join(str(part) for part in item["loc"]) or "body"
    if item["type"] == "missing":
        return f"{where}: required field is missing"
    if item["type"] == "literal_error" and where == "apiVersion":
        return f"apiVersion: expected {API_VERSION}, got {item.get('input')!r}"
    return f"{where}: {item['msg']}"
