"""The ASGI route itself, driven with raw ASGI messages (what uvicorn sends it)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
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


def _slow_body_app(timeout: float) -> tuple[WebhookApp, Metrics]:
    metrics = Metrics(CollectorRegistry())
    return WebhookApp(
        Settings(request_timeout_seconds=timeout), observer=Observer(metrics)
    ), metrics


def _first_chunk_then_nothing() -> Callable[[], Awaitable[dict[str, Any]]]:
    """`receive` of a client that sends part of its body, then nothing more."""
    messages = [{"type": "http.request", "body": b'{"apiVersion": ', "more_body": True}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # never set
        raise AssertionError("unreachable")

    return receive


MUTATE = {"type": "http", "path": "/mutate", "method": "POST", "headers": []}


def _timeouts(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value(
        "istio_spiffe_webhook_admission_requests_total",
        {"outcome": "rejected", "reason": "timeout", "dry_run": "false"},
    )


def test_a_body_not_received_within_the_deadline_gets_408_and_is_counted() -> None:
    app, metrics = _slow_body_app(0.2)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(MUTATE, _first_chunk_then_nothing(), send), 10))

    body = b'{"error":"body not received within 0.2s"}'
    assert sent == [
        {
            "type": "http.response.start",
            "status": 408,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        },
        {"type": "http.response.body", "body": body},
    ]
    assert _timeouts(metrics) == 1.0


def test_a_request_cancelled_from_outside_while_reading_is_not_taken_for_a_timeout() -> None:
    # uvicorn cancels requests still running at the end of the shutdown grace period.
    app, metrics = _slow_body_app(60)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        task = asyncio.create_task(app(MUTATE, _first_chunk_then_nothing(), send))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert (sent, _timeouts(metrics)) == ([], None)
