"""A small open-loop load generator: requests at a fixed rate, whatever the answers do.

wrk is closed-loop (a connection sends its next request only after the last answer), so a
slow server slows the load and its queueing never shows in the latencies. Here a scheduler
thread wakes at each request's scheduled time (`start + i / rate`, with `time.sleep`, which
is precise to tens of microseconds) and hands the request to the uvloop event loop, which
sends it on an idle keep-alive TLS connection (opening another when all are busy, up to a
limit; a request waits for a connection only past that limit). Latency is measured from the
scheduled time, so queueing, in the server or here, is counted. The generator's own delay
(scheduled time to the request's bytes handed to the socket) is reported next to it, and the
service time (send to answer) too. Requests in the first `warmup` seconds are not counted.

Run as `python bench/openloop.py --port P --body FILE --cafile CA [...]`; prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import ssl
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson


@dataclass(slots=True)
class Samples:
    latency: list[float] = field(default_factory=list)  # scheduled time -> whole answer
    service: list[float] = field(default_factory=list)  # bytes sent -> whole answer
    delay: list[float] = field(default_factory=list)  # scheduled time -> bytes sent
    errors: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of `values` (p in 0..100); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50) * 1e3,
        "p90": percentile(values, 90) * 1e3,
        "p99": percentile(values, 99) * 1e3,
        "p99.9": percentile(values, 99.9) * 1e3,
        "max": (max(values) if values else math.nan) * 1e3,
    }


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def exchange(self, request: bytes, sent: list[float]) -> tuple[int, bytes]:
        self.writer.write(request)
        sent.append(time.perf_counter())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length)
        return status, body

    def close(self) -> None:
        self.writer.close()


async def open_loop(
    *,
    host: str,
    port: int,
    path: str,
    body: bytes,
    rate: float,
    duration: float,
    warmup: float,
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None = None,
    max_connections: int = 64,
    prewarm: int = 4,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Send `rate` requests/s for `warmup + duration` seconds; the figures as a dict."""
    loop = asyncio.get_running_loop()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {server_hostname or host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    idle: deque[Connection] = deque()
    opened = 0  # connections open now
    connects = 0  # connections opened in all
    waiting: deque[asyncio.Future[Connection]] = deque()
    samples = Samples()
    tasks: set[asyncio.Task[None]] = set()

    async def connect() -> Connection:
        nonlocal opened, connects
        opened += 1
        connects += 1
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host,
                port,
                ssl=ssl_context,
                server_hostname=server_hostname if ssl_context else None,
            ),
            timeout,
        )
        return Connection(reader, writer)

    async def acquire() -> Connection:
        nonlocal opened
        while idle:
            conn = idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                return conn
            # The server closed it while idle (its deadline for a connection that sends
            # nothing): a client would not use it either.
            conn.close()
            opened -= 1
        if opened < max_connections:
            return await connect()
        future: asyncio.Future[Connection] = loop.create_future()
        waiting.append(future)
        return await future

    def release(conn: Connection) -> None:
        while waiting:
            future = waiting.popleft()
            if not future.done():
                future.set_result(conn)
                return
        idle.append(conn)

    async def one(scheduled: float, counted: bool) -> None:
        nonlocal opened
        conn: Connection | None = None
        sent: list[float] = []
        try:
            conn = await acquire()
            status, _ = await asyncio.wait_for(conn.exchange(request, sent), timeout)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            samples.error("connection")
        except TimeoutError:
            samples.error("timeout")
        else:
            done = time.perf_counter()
            release(conn)
            conn = None
            if counted:
                samples.statuses[status] = samples.statuses.get(status, 0) + 1
                if status != 200:
                    samples.error(f"status {status}")
                samples.latency.append(done - scheduled)
                samples.service.append(done - sent[0])
                samples.delay.append(sent[0] - scheduled)
        finally:
            if conn is not None:
                conn.close()
                opened -= 1

    def fire(scheduled: float, counted: bool) -> None:
        task = loop.create_task(one(scheduled, counted))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    for conn in await asyncio.gather(*(connect() for _ in range(prewarm))):
        idle.append(conn)

    total = int((warmup + duration) * rate)
    first_counted = int(warmup * rate)
    finished = threading.Event()
    start = time.perf_counter() + 0.05

    def schedule() -> None:
        for i in range(total):
            at = start + i / rate
            pause = at - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            loop.call_soon_threadsafe(fire, at, i >= first_counted)
        loop.call_soon_threadsafe(finished.set)

    scheduler = threading.Thread(target=schedule, name="open-loop-scheduler", daemon=True)
    scheduler.start()
    while not finished.is_set():
        await asyncio.sleep(0.05)
    if tasks:
        await asyncio.wait(set(tasks), timeout=timeout + 1)
    for task in set(tasks):
        task.cancel()
        samples.error("unfinished")
    scheduler.join(timeout=1)
    for conn in idle:
        conn.close()
    elapsed = time.perf_counter() - start
    return {
        "rate": rate,
        "duration_s": duration,
        "requests": len(samples.latency),
        "errors": samples.errors,
        "statuses": {str(k): v for k, v in samples.statuses.items()},
        "connections_opened": connects,
        "elapsed_s": elapsed,
        "latency_ms": summary_ms(samples.latency),
        "service_ms": summary_ms(samples.service),
        "generator_delay_ms": summary_ms(samples.delay),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/mutate")
    parser.add_argument("--body", type=Path, required=True, help="file with the request body")
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=20.0, help="counted seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="uncounted seconds first")
    parser.add_argument("--cafile", type=Path, help="CA to verify the server (TLS)")
    parser.add_argument("--server-hostname", default="localhost")
    parser.add_argument("--plain", action="store_true", help="plain HTTP, no TLS")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.duration <= 0 or args.warmup < 0:
        parser.error("--rate and --duration must be positive, --warmup not negative")
    context: ssl.SSLContext | None = None
    if not args.plain:
        context = ssl.create_default_context(cafile=str(args.cafile) if args.cafile else None)
    import uvloop

    sys.setswitchinterval(0.0005)  # the scheduler thread gets the GIL back quickly
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(
            open_loop(
                host=args.host,
                port=args.port,
                path=args.path,
                body=args.body.read_bytes(),
                rate=args.rate,
                duration=args.duration,
                warmup=args.warmup,
                ssl_context=context,
                server_hostname=args.server_hostname,
            )
        )
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
