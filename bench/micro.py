"""In-process microbenchmarks: the rewrite, and the whole request handling per fixture.

- `rewrite`: `webhook.rewrite.rewrite(pod, contract)` on the parsed pod, the contract compiled
  once from the settings beforehand, as the server does at startup.
- `handle`: request bytes in, response bytes out (`review.handle(...).response_bytes()`):
  parse, envelope validation, decision, rewrite, patch encoding.
- `asgi`: the same through the product's ASGI app (`WebhookApp`, the lean `/mutate` route)
  with a fake `receive`/`send`, metrics recorded and the JSON log line written to
  /dev/null: everything the server runs per request except the HTTP parser and TLS.

Each figure is the best of several repeats of many calls, in CPU time of this process per
call (microseconds): CPU time leaves out the time other processes had the core, and the
best repeat is the least disturbed one, as `timeit` recommends. The garbage collector is
off while `rewrite` and `handle` are timed (timeit's default) and on for `asgi`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import timeit
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from bench.common import FIXTURE_NAMES, load_pod, review_body
from webhook.app import WebhookApp
from webhook.config import Settings
from webhook.observability import LOGGER_NAME, JsonFormatter, Metrics, Observer
from webhook.review import handle
from webhook.rewrite import Contract, rewrite


def per_call_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Best of `repeat` runs of `number` calls, in CPU microseconds per call."""
    fn()  # warm caches
    timer = timeit.Timer(fn, timer=time.process_time)
    return min(timer.repeat(number=number, repeat=repeat)) / number * 1e6


@contextmanager
def json_log_to_devnull() -> Iterator[None]:
    """Logging as `configure_logging` sets it up (one JSON StreamHandler on the root logger,
    INFO), writing to /dev/null, for the duration."""
    root = logging.getLogger()
    ours = logging.getLogger(LOGGER_NAME)
    saved = (root.handlers[:], root.level, ours.handlers[:], ours.propagate, ours.level)
    with open(os.devnull, "w") as sink:
        handler = logging.StreamHandler(sink)
        handler.setFormatter(JsonFormatter())
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        ours.handlers[:] = []
        ours.propagate = True
        ours.setLevel(logging.NOTSET)
        try:
            yield
        finally:
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])
            ours.handlers[:] = saved[2]
            ours.propagate = saved[3]
            ours.setLevel(saved[4])


def asgi_us(body: bytes, settings: Settings, number: int, repeat: int) -> float:
    """Microseconds per POST /mutate through WebhookApp, best of `repeat` batches."""
    app = WebhookApp(settings, observer=Observer(Metrics()))
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/mutate",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    message = {"type": "http.request", "body": body, "more_body": False}
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return message

    async def send(msg: MutableMapping[str, Any]) -> None:
        sent.append(msg)

    async def batch() -> float:
        started = time.process_time()
        for _ in range(number):
            await app(scope, receive, send)
        return time.process_time() - started

    async def main() -> float:
        await app(scope, receive, send)
        status = sent[0]["status"]
        if status != 200 or b'"patch"' not in sent[1]["body"]:
            raise RuntimeError(f"/mutate answered {status}: {sent[1]['body'][:200]!r}")
        best = min([await batch() for _ in range(repeat)])
        sent.clear()
        return best / number * 1e6

    with json_log_to_devnull(), asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(main())


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of the product
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _handle(body: bytes, contract: Contract) -> bytes:
    return handle(body, contract).response_bytes()


def run(quick: bool = False, settings: Settings | None = None) -> dict[str, dict[str, float]]:
    """{fixture: {"rewrite_us", "handle_us", "asgi_us", "body_bytes", "ops"}} for each fixture."""
    settings = settings or Settings()
    contract = Contract.from_settings(settings)
    number, repeat = (300, 3) if quick else (1000, 35)
    results: dict[str, dict[str, float]] = {}
    for name in FIXTURE_NAMES:
        pod = load_pod(name)
        body = review_body(name)
        decision = handle(body, contract)
        if decision.outcome != "mutated":
            raise RuntimeError(f"{name}: expected a patch, got {decision.outcome}")
        results[name] = {
            "body_bytes": len(body),
            "ops": len(decision.result.ops),
            "rewrite_us": per_call_us(partial(rewrite, pod, contract), number, repeat),
            "handle_us": per_call_us(partial(_handle, body, contract), number, repeat),
            "asgi_us": asgi_us(body, settings, number, repeat),
        }
    return results


if __name__ == "__main__":
    print(orjson.dumps(run(quick="--quick" in sys.argv), option=orjson.OPT_INDENT_2).decode())
