"""The ASGI route itself, driven with raw ASGI messages (what uvicorn sends it)."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry

from webhook.app import WebhookApp
from webhook.config import Settings
from webhook.observability import Metrics, Observer
from webhook.uvicorn_adapter import DEADLINE_EXPIRED


def _disconnected_mid_body(scope: dict[str, Any]) -> tuple[list[dict[str, Any]], Metrics]:
    """What /mutate sends and counts when the connection ends after part of the body."""
    metrics = Metrics(CollectorRegistry())
    app = WebhookApp(Settings(request_timeout_seconds=1.5), observer=Observer(metrics))
    incoming: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"apiVersion": ', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent, metrics


def _counted(metrics: Metrics, reason: str) -> float | None:
    return metrics.registry.get_sample_value(
        "istio_spiffe_webhook_admission_requests_total",
        {"outcome": "rejected", "reason": reason, "dry_run": "false"},
    )


def test_a_client_that_disconnects_mid_body_gets_no_answer_and_is_counted() -> None:
    scope = {"type": "http", "path": "/mutate", "method": "POST", "headers": []}
    sent, metrics = _disconnected_mid_body(scope)

    assert sent == []
    assert _counted(metrics, "client-disconnected") == 1.0


def test_a_body_cut_off_by_the_servers_request_deadline_is_counted_as_a_timeout() -> None:
    # The protocol (uvicorn_adapter) has answered 408 and closed; /mutate only counts it.
    scope = {
        "type": "http",
        "path": "/mutate",
        "method": "POST",
        "headers": [],
        "extensions": {DEADLINE_EXPIRED: {}},
    }
    sent, metrics = _disconnected_mid_body(scope)
    assert sent == []
    assert (_counted(metrics, "timeout"), _counted(metrics, "client-disconnected")) == (1.0, None)


def test_a_disconnect_without_the_deadline_extension_is_not_taken_for_a_timeout() -> None:
    scope = {"type": "http", "path": "/mutate", "method": "POST", "headers": []}
    sent, metrics = _disconnected_mid_body({**scope, "extensions": {"http.response.trailers": {}}})
    assert sent == []
    assert (_counted(metrics, "timeout"), _counted(metrics, "client-disconnected")) == (None, 1.0)
