"""The ASGI route itself, driven with raw ASGI messages (what uvicorn sends it)."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry

from webhook.app import WebhookApp
from webhook.config import Settings
from webhook.observability import Metrics, Observer


def test_a_client_that_disconnects_mid_body_gets_no_answer_and_is_counted() -> None:
    metrics = Metrics(CollectorRegistry())
    app = WebhookApp(Settings(), observer=Observer(metrics))
    incoming: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"apiVersion": "admission', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "path": "/mutate", "method": "POST", "headers": []}
    asyncio.run(app(scope, receive, send))

    assert sent == []
    counted = metrics.registry.get_sample_value(
        "istio_spiffe_webhook_admission_requests_total",
        {"outcome": "rejected", "reason": "client-disconnected", "dry_run": "false"},
    )
    assert counted == 1.0
