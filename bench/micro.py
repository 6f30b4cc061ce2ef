"""In-process microbenchmarks: the rewrite, and the whole request handling per fixture.

- `rewrite`: `webhook.rewrite.rewrite(pod, contract)` on the parsed pod, the contract compiled
  once from the settings beforehand, as the server does at startup.
- `handle`: request bytes in, response bytes out (`review.handle(...).response_bytes()`):
  parse, envelope validation, decision, rewrite, patch encoding.
- `asgi`: the same through the product's ASGI app (`WebhookApp`, the lean `/mutate` route)
  with a fake `receive`/`send`, metrics recorded and the JSON log line written to
  /dev/null with logging set up by the server's own `configure_logging`: everything the
  server runs per request except the HTTP parser and TLS.

Each figure is the best of several repeats of many calls, in CPU time of this process per
call (microseconds): CPU time leaves out the time other processes had the core, and the
best repeat is the least disturbed one, as `timeit` recommends; the repeats of all figures
take turns. The garbage collector is
off while `rewrite` and `handle` are timed (timeit's default) and on for `asgi`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
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
from webhook.observability import LOGGER_NAME, Metrics, Observer, configure_logging
from webhook.review import handle
from webhook.rewrite import Contract, rewrite


@contextmanager
def json_log_to_devnull() -> Iterator[None]:
    """Logging set up by the server's own `configure_logging` (INFO), writing to /dev/null,
    for the duration; the previous set-up is restored after."""
    root = logging.getLogger()
    ours = logging.getLogger(LOGGER_NAME)
    saved = (root.handlers[:], root.level, ours.handlers[:], ours.propagate, ours.level)
    flags = (logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    with open(os.devnull, "w") as sink:
        configure_logging("info", stream=sink)
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
            logging.logThreads, logging.logProcesses, logging.logMultiprocessing = flags


Batch = Callable[[], Awaitable[float]]  # runs `number` calls, returns their CPU seconds


def sync_batch(fn: Callable[[], object], number: int) -> Batch:
    """`number` calls of `fn` with the garbage collector off, as timeit does."""

    async def batch() -> float:
        collecting = gc.isenabled()
        gc.disable()
        try:
            started = time.process_time()
            for _ in range(number):
                fn()
            return time.process_time() - started
        finally:
            if collecting:
                gc.enable()

    return batch


def asgi_batch(body: bytes, settings: Settings, number: int) -> Batch:
    """`number` POST /mutate through WebhookApp (a fake receive/send), the collector on."""
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
    answers: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return message

    async def send(msg: MutableMapping[str, Any]) -> None:
        if len(answers) < 2:
            answers.append(msg)

    async def batch() -> float:
        started = time.process_time()
        for _ in range(number):
            await app(scope, receive, send)
        elapsed = time.process_time() - started
        status = answers[0]["status"]
        if status != 200 or b'"patch"' not in answers[1]["body"]:
            raise RuntimeError(f"/mutate answered {status}: {answers[1]['body'][:200]!r}")
        return elapsed

    return batch


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
    """{fixture: {"rewrite_us", "handle_us", "asgi_us", "body_bytes", "ops"}} for each fixture.

    Each figure is the least CPU time per call over `repeat` batches, and the batches of
    all figures take turns, so each figure's batches are spread over the whole phase (this
    VM's speed moves in spells of seconds; bench/README.md).
    """
    settings = settings or Settings()
    contract = Contract.from_settings(settings)
    number, repeat = (300, 3) if quick else (1000, 35)
    results: dict[str, dict[str, float]] = {}
    batches: dict[tuple[str, str], Batch] = {}
    for name in FIXTURE_NAMES:
        pod = load_pod(name)
        body = review_body(name)
        decision = handle(body, contract)
        if decision.outcome != "mutated":
            raise RuntimeError(f"{name}: expected a patch, got {decision.outcome}")
        results[name] = {"body_bytes": len(body), "ops": len(decision.result.ops)}
        batches[name, "rewrite_us"] = sync_batch(partial(rewrite, pod, contract), number)
        batches[name, "handle_us"] = sync_batch(partial(_handle, body, contract), number)
        batches[name, "asgi_us"] = asgi_batch(body, settings, number)

    async def measure() -> dict[tuple[str, str], float]:
        for batch in batches.values():  # warm caches
            await batch()
        best = dict.fromkeys(batches, math.inf)
        for _ in range(repeat):
            for key, batch in batches.items():
                best[key] = min(best[key], await batch())
        return best

    with json_log_to_devnull(), asyncio.Runner(loop_factory=_loop_factory()) as runner:
        for (name, figure), seconds in runner.run(measure()).items():
            results[name][figure] = seconds / number * 1e6
    return results


if __name__ == "__main__":
    print(orjson.dumps(run(quick="--quick" in sys.argv), option=orjson.OPT_INDENT_2).decode())
