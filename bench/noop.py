"""The no-op baselines of `make bench` (bench only, not part of the product).

`NoopApp` is shaped like the product's `webhook.app.WebhookApp`: a lean ASGI route in front
of a FastAPI app. Both no-ops read the whole body and answer constant JSON, so what they
cost is the server stack itself (uvicorn, httptools, uvloop, TLS) and the framework:
- `POST /noop`: the lean ASGI route, the like-for-like baseline of the product's `/mutate`;
- `POST /noop-fastapi`: a FastAPI endpoint (`Request.body()`, a prebuilt `Response`), the
  "no-op FastAPI endpoint" the issue measured first;
- `GET /healthz`: FastAPI, for readiness polling.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request, Response

from bench.common import review_body
from webhook.config import Settings
from webhook.review import handle
from webhook.rewrite import Contract

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

NOOP_PATH = "/noop"
NOOP_FASTAPI_PATH = "/noop-fastapi"
# The product's own answer to hello--0, computed once: the same bytes on the wire.
ANSWER = handle(review_body("hello--0"), Contract.from_settings(Settings())).response_bytes()
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(ANSWER))]


class NoopApp:
    """ASGI: `/noop` answered here after reading the body, everything else by FastAPI."""

    def __init__(self) -> None:
        self.api = _fastapi()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == NOOP_PATH:
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                more = message.get("more_body", False)
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            await send({"type": "http.response.body", "body": ANSWER})
        else:
            await self.api(scope, receive, send)


def _fastapi() -> FastAPI:
    api = FastAPI(title="istio-spiffe-webhook bench no-op")

    @api.post(NOOP_FASTAPI_PATH)
    async def noop(request: Request) -> Response:
        await request.body()
        return Response(content=ANSWER, media_type="application/json")

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return api


def app_factory() -> NoopApp:
    return NoopApp()
