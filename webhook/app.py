"""The ASGI app: `/mutate` (lean route), `/healthz`, `/readyz` and the OpenAPI document.

`/mutate` is served by a small ASGI handler in front of FastAPI: every pod creation in an
opted-in namespace waits for it, and FastAPI's per-request machinery (dependency solving,
request objects, response classes) costs more than the rewrite itself (see bench/). The
route is still described in FastAPI's OpenAPI document, so schema-driven tools reach it.
Everything else (health, readiness, docs) is plain FastAPI.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter

from webhook import __version__
from webhook.config import Settings
from webhook.observability import Metrics, Observer
from webhook.review import (
    ADMISSION_REVIEW_ADAPTER,
    AdmissionRequest,
    AdmissionReview,
    AdmissionReviewResponse,
    BadReview,
    Decision,
    ErrorBody,
    decide,
    parse,
)
from webhook.rewrite import Contract
from webhook.uvicorn_adapter import DEADLINE_EXPIRED

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MUTATE_PATH = "/mutate"
_JSON = [(b"content-type", b"application/json")]


@dataclass(slots=True)
class Readiness:
    """Ready when a serving certificate is loaded and the server is not draining."""

    certificate_loaded: bool = False
    draining: bool = False

    @property
    def ready(self) -> bool:
        return self.certificate_loaded and not self.draining


class WebhookApp:
    """ASGI entry point: `/mutate` here, the rest to FastAPI.

    The settings' contract is compiled once, here, and every `/mutate` rewrites with it.
    """

    def __init__(
        self,
        settings: Settings,
        readiness: Readiness | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.settings = settings
        self.contract = Contract.from_settings(settings)
        self.readiness = readiness or Readiness(certificate_loaded=True)
        self.observer = observer or Observer(Metrics())
        self.api = _fastapi(self.readiness)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == MUTATE_PATH:
            await self._mutate(scope, receive, send)
        else:
            await self.api(scope, receive, send)

    async def _mutate(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        if scope["method"] != "POST":
            await _respond(send, 405, _error("method not allowed: use POST"), [(b"allow", b"POST")])
            return
        # The request deadline is the HTTP protocol's (webhook/uvicorn_adapter.py): when it
        # passes mid-body, the client has its 408 and the connection is closed.
        try:
            body = await _read_body(scope, receive, self.settings.max_body_bytes)
        except _ClientGone:
            if DEADLINE_EXPIRED in (scope.get("extensions") or {}):
                reason = f"body not received within {self.settings.request_timeout_seconds:g}s"
                self._rejected("timeout", started, reason)
            else:
                # Nobody to answer: count it, but not as a bad review.
                self._rejected("client-disconnected", started)
            return
        if body is None:
            reason = f"body exceeds {self.settings.max_body_bytes} bytes"
            await _respond(send, 413, _error(reason))
            self._rejected("too-large", started)
            return
        review: AdmissionReview | None = None
        try:
            review = parse(body)
            decision = decide(review, self.contract)
            response = decision.response_bytes()
        except BadReview as error:
            await _respond(send, error.status, _error(error.reason))
            self._rejected("bad-request", started, error.reason)
            return
        except Exception as error:
            # A bug must not take the pod's creation down with a traceback in the answer:
            # a generic 500, and the traceback in the log line with the request's uid.
            await _respond(send, 500, _error("internal error while handling the review"))
            request = review["request"] if review is not None else None
            self.observer.admission(
                outcome="error",
                reason="internal",
                dry_run=bool(request is not None and request["dryRun"]),
                seconds=time.perf_counter() - started,
                fields=_request_fields(request) if request is not None else None,
                error=error,
            )
            return
        await _respond(send, 200, response)
        self._decided(decision, started)

    def _decided(self, decision: Decision, started: float) -> None:
        request = decision.request
        fields = _request_fields(request)
        if decision.result.warnings:
            fields["warnings"] = decision.result.warnings
        self.observer.admission(
            outcome=decision.outcome,
            reason=decision.reason,
            dry_run=bool(request["dryRun"]),
            seconds=time.perf_counter() - started,
            operations=len(decision.result.ops),
            fields=fields,
        )

    def _rejected(self, reason: str, started: float, detail: str = "") -> None:
        self.observer.admission(
            outcome="rejected",
            reason=reason,
            dry_run=False,
            seconds=time.perf_counter() - started,
            fields={"error": detail} if detail else None,
        )


def _request_fields(request: AdmissionRequest) -> dict[str, Any]:
    """What the log line says about the request: who asked for what, never the pod."""
    pod = request["object"]
    metadata = pod.get("metadata") if isinstance(pod, dict) else None
    metadata = metadata if isinstance(metadata, dict) else {}
    owners = metadata.get("ownerReferences")
    owner = owners[0] if isinstance(owners, list) and owners else None
    fields: dict[str, Any] = {
        "uid": request["uid"],
        "namespace": request["namespace"],
        "name": metadata.get("name") or request["name"] or metadata.get("generateName"),
        "operation": request["operation"],
        "kind": request["kind"]["kind"],
    }
    if isinstance(owner, dict):
        fields["owner"] = f"{owner.get('kind')}/{owner.get('name')}"
    return fields


class _ClientGone(Exception):
    """The client disconnected before its whole body arrived."""


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it is known to exceed `limit` bytes."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                if int(value) > limit:
                    return None
            except ValueError:
                pass
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _error(reason: str) -> bytes:
    return orjson.dumps({"error": reason})


async def _respond(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _fastapi(readiness: Readiness) -> FastAPI:
    api = FastAPI(
        title="istio-spiffe-webhook",
        version=__version__,
        description="Mutating admission webhook: Istio sidecars take rotating certificates"
        " from a SPIFFE Workload API through the SPIFFE CSI driver.",
    )

    @api.get("/healthz", summary="Liveness: the process serves requests")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get(
        "/readyz",
        summary="Readiness: a certificate is loaded and the server is not draining",
        responses={503: {"description": "not ready"}},
    )
    async def readyz() -> JSONResponse:
        if readiness.ready:
            return JSONResponse({"status": "ready"})
        why = "draining" if readiness.draining else "no serving certificate loaded"
        return JSONResponse({"status": "not ready", "reason": why}, status_code=503)

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = FastAPI.openapi(api)
            _document_mutate(schema)
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
    return api


def _document_mutate(schema: dict[str, Any]) -> None:
    """Describe the lean `/mutate` route in FastAPI's OpenAPI document."""
    _, definitions = TypeAdapter.json_schemas(
        [
            ("request", "validation", ADMISSION_REVIEW_ADAPTER),
            ("response", "serialization", TypeAdapter(AdmissionReviewResponse)),
            ("error", "serialization", TypeAdapter(ErrorBody)),
        ],
        ref_template="#/components/schemas/{model}",
    )
    schema.setdefault("components", {}).setdefault("schemas", {}).update(
        definitions.get("$defs", {})
    )

    def ref(name: str) -> dict[str, Any]:
        return {
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}
        }

    schema["paths"][MUTATE_PATH] = {
        "post": {
            "summary": "Rewrite an Istio-injected pod for the SPIFFE CSI driver",
            "operationId": "mutate",
            "requestBody": {"required": True, **ref("AdmissionReview")},
            "responses": {
                "200": {
                    "description": "the AdmissionReview answer",
                    **ref("AdmissionReviewResponse"),
                },
                "400": {
                    "description": "not an AdmissionReview v1 we can answer",
                    **ref("ErrorBody"),
                },
                "413": {"description": "body over the configured limit", **ref("ErrorBody")},
            },
        }
    }
