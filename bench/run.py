"""`make bench`: the webhook's cost, measured side by side with no-op baselines in one run.

See bench/README.md for the method. In short, on 127.0.0.1 only and bounded in time:

1. in-process microbenchmarks (`bench/micro.py`): the rewrite, and request bytes in to
   response bytes out, per fixture;
2. the real server (`istio-spiffe-webhook serve`, TLS, keep-alive) and the no-op baselines
   served by the same stack (`bench/serve_noop.py`), each pinned to core 0 with `taskset`
   when it exists; the load generators run on core 1;
3. closed-loop throughput with wrk (requests/s and server CPU microseconds per request,
   from /proc/PID/stat), for `/mutate` with each fixture, each run at the same time as a
   no-op so that both meet the same state of the machine;
4. latency at a fixed 500 requests/s, open loop (`bench/openloop.py`), from the scheduled
   send time;
5. the server's RSS after 10,000 and after 100,000 requests, and its peak (VmHWM).

Prints a table with every target, PASS or FAIL next to its figure, and writes
`bench/results.json` (figures and ratios). `--quick` runs everything briefly (for tests;
its figures are not the targets' conditions). Exit status 0 when it ran, whatever the
targets say; 1 when it could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from bench import micro
from bench.common import BENCH, FIXTURE_NAMES, review_body
from webhook.certs import CertificateFiles, write_certificates
from webhook.config import ENV_PREFIX

HOST = "127.0.0.1"
RESULTS = BENCH / "results.json"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Plan:
    """How long each phase runs."""

    warmup_s: float = 2.0
    # Closed-loop rounds: each pair (/mutate beside a no-op) once per round.
    closed_s: float = 2.0
    rounds: int = 5
    connections: int = 16
    rate: float = 500.0
    open_warmup_s: float = 2.0
    open_s: float = 20.0
    rss_first: int = 10_000
    rss_second: int = 100_000
    quick: bool = False


FULL = Plan()
QUICK = Plan(
    warmup_s=0.5,
    closed_s=1.0,
    rounds=1,
    connections=4,
    rate=200.0,
    open_warmup_s=0.2,
    open_s=1.0,
    rss_first=500,
    rss_second=1_500,
    quick=True,
)

# (key, what, limit, unit, how the figure compares: "<" or ">=")
TARGETS: list[tuple[str, str, float, str, str]] = [
    *[
        (f"throughput_ratio:{name}", f"/mutate {name} throughput / FastAPI no-op's", 0.80, "", ">=")
        for name in FIXTURE_NAMES
    ],
    *[
        target
        for name in FIXTURE_NAMES
        for target in (
            (f"p99_ms:{name}", f"/mutate {name} p99 at 500 req/s", 3.0, "ms", "<"),
            (f"p99.9_ms:{name}", f"/mutate {name} p99.9 at 500 req/s", 10.0, "ms", "<"),
        )
    ],
    ("rewrite_us:hello--0", "rewrite() of hello--0, in-process", 20.0, "µs", "<"),
    ("handling_us:hello--0", "whole request handling of hello--0, in-process", 100.0, "µs", "<"),
    ("peak_rss_mb", "peak RSS of the webhook (VmHWM)", 60.0, "MB", "<"),
    ("rss_growth_mb", "RSS growth from 10,000 to 100,000 requests", 5.0, "MB", "<"),
]


class BenchError(Exception):
    """The benchmark cannot run; the message says why."""


# --- processes ---------------------------------------------------------------------------


def pinning() -> tuple[list[str], list[str], str]:
    """(server prefix, generator prefix, description): cores 0 and 1 when taskset exists."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", "0"], ["taskset", "-c", "1"], "server core 0, load core 1"
    return [], [], "not pinned (taskset or a second core missing)"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def server_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update({ENV_PREFIX + k.upper(): v for k, v in settings.items()})
    return env


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    served: int = 0  # requests answered so far (as counted by the load generators)

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (/proc/PID/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory(self) -> dict[str, float]:
        """VmRSS and VmHWM (peak) in MiB."""
        values: dict[str, float] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
        return values

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_server(
    name: str, argv: list[str], port: int, work: Path, cafile: Path, env: dict[str, str]
) -> Server:
    log = work / f"{name}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=sink, env=env)
    server = Server(name, process, port, log)
    deadline = time.monotonic() + 30
    context = ssl.create_default_context(cafile=str(cafile))
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{name} exited with {process.returncode}: {log_tail(log)}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPSConnection(HOST, port, context=context, timeout=2)
            try:
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return server
            finally:
                conn.close()
        time.sleep(0.1)
    server.stop()
    raise BenchError(f"{name} not answering /healthz within 30 s: {log_tail(log)}")


def start_on_a_free_port(
    name: str,
    prefix: list[str],
    argv: Callable[[int, Path, Path], list[str]],
    files: CertificateFiles,
    work: Path,
    env: dict[str, str],
) -> Server:
    """`start_server` on a free port, again on another if that one was taken meanwhile."""
    for attempt in range(3):
        port = free_port()
        try:
            return start_server(
                name, prefix + argv(port, files.cert, files.key), port, work, files.ca_cert, env
            )
        except BenchError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def serving_files(work: Path) -> tuple[CertificateFiles, dict[str, Path]]:
    """A serving certificate (for 127.0.0.1 and localhost) and each fixture's review body."""
    files = write_certificates(
        work / "certs",
        service="istio-spiffe-webhook",
        namespace="istio-spiffe-webhook",
        extra_sans=[HOST, "localhost"],
    )
    bodies = {}
    for name in FIXTURE_NAMES:
        bodies[name] = work / f"{name}.review.json"
        bodies[name].write_bytes(review_body(name))
    return files, bodies


def log_tail(path: Path) -> str:
    text = path.read_text(errors="replace").strip().splitlines()
    return " | ".join(text[-5:]) or "(no output)"


def product_argv(port: int, cert: Path, key: Path) -> list[str]:
    script = Path(sys.executable).parent / "istio-spiffe-webhook"
    command = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from webhook.cli import main; main()"]
    )
    return [
        *command,
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--cert",
        str(cert),
        "--key",
        str(key),
    ]


def noop_argv(port: int, cert: Path, key: Path) -> list[str]:
    script = str(BENCH / "serve_noop.py")
    return [sys.executable, script, "--port", str(port), "--cert", str(cert), "--key", str(key)]


# --- load generators ---------------------------------------------------------------------


def ensure_wrk(install: bool) -> tuple[str | None, str]:
    """The wrk binary, installing the Debian package when allowed; (None, why) if absent."""
    found = shutil.which("wrk")
    if found:
        return found, "wrk found"
    if not install:
        return None, "wrk not installed (--no-install): closed-loop throughput skipped"
    if not shutil.which("apt-get"):
        return None, "wrk not installed and apt-get not available: closed-loop throughput skipped"
    if os.geteuid() != 0:
        return None, "wrk not installed and not root (apt-get needs root): closed-loop skipped"
    print("wrk not found: apt-get install -y wrk", flush=True)
    steps = [["apt-get", "install", "-y", "-q", "wrk"]]
    steps += [["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "wrk"]]
    for step in steps:
        try:
            subprocess.run(step, check=False, timeout=240, capture_output=True)
        except subprocess.TimeoutExpired:
            return None, f"`{' '.join(step)}` timed out: closed-loop throughput skipped"
        found = shutil.which("wrk")
        if found:
            return found, "wrk installed with apt-get"
    return None, "apt-get could not install wrk: closed-loop throughput skipped"


@dataclass
class Runner:
    wrk: str | None
    load_prefix: list[str]
    plan: Plan
    bodies: dict[str, Path]
    cafile: Path
    log: Callable[[str], None] = print
    errors: list[str] = field(default_factory=list)

    def closed_loop(self, server: Server, path: str, body: str, seconds: float) -> dict[str, Any]:
        """wrk for `seconds`: requests/s and the server's CPU µs per request."""
        return self.closed_loops([(server, path, body)], seconds)[0]

    def closed_loops(
        self, loads: list[tuple[Server, str, str]], seconds: float
    ) -> list[dict[str, Any]]:
        """One wrk per (server, path, body), all at once for `seconds` (distinct servers):
        each one's requests/s and its server's CPU µs per request."""
        assert self.wrk is not None
        cpu_before = [server.cpu_seconds() for server, _, _ in loads]
        running = [
            subprocess.Popen(
                [
                    *self.load_prefix,
                    self.wrk,
                    "-t1",
                    f"-c{self.plan.connections}",
                    f"-d{max(1, round(seconds))}s",
                    "--timeout",
                    "5s",
                    "-s",
                    str(BENCH / "post.lua"),
                    f"https://{HOST}:{server.port}{path}",
                ],
                env={**os.environ, "BENCH_BODY": str(self.bodies[body])},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for server, path, body in loads
        ]
        try:
            outputs = [wrk.communicate(timeout=seconds + 30) for wrk in running]
        except subprocess.TimeoutExpired:
            raise BenchError(f"wrk did not finish within {seconds + 30:g} s") from None
        finally:
            for wrk in running:
                if wrk.poll() is None:
                    wrk.kill()
                    wrk.wait(timeout=10)
        measured = []
        for (server, path, body), before, wrk, (stdout, stderr) in zip(
            loads, cpu_before, running, outputs, strict=True
        ):
            cpu = server.cpu_seconds() - before
            match = re.search(r"^BENCH_JSON (\{.*\})$", stdout, re.M)
            if wrk.returncode != 0 or not match:
                raise BenchError(f"wrk failed ({wrk.returncode}): {stderr.strip()[:300]}")
            figures: dict[str, Any] = orjson.loads(match.group(1))
            requests = int(figures["requests"])
            server.served += requests
            errors = sum(int(figures[k]) for k in ("connect", "read", "write", "status", "timeout"))
            if errors:
                self.errors.append(f"{server.name} {path} {body}: {errors} wrk errors {figures}")
            measured.append(
                {
                    "requests": requests,
                    "seconds": figures["duration_us"] / 1e6,
                    "rps": requests / (figures["duration_us"] / 1e6),
                    "cpu_us_per_request": cpu / requests * 1e6 if requests else math.nan,
                    "cpu_utilisation": cpu / (figures["duration_us"] / 1e6),
                    "errors": errors,
                }
            )
        return measured

    def open_loop(self, server: Server, path: str, body: str) -> dict[str, Any]:
        plan = self.plan
        argv = [
            *self.load_prefix,
            sys.executable,
            str(BENCH / "openloop.py"),
            "--port",
            str(server.port),
            "--path",
            path,
            "--body",
            str(self.bodies[body]),
            "--rate",
            str(plan.rate),
            "--duration",
            str(plan.open_s),
            "--warmup",
            str(plan.open_warmup_s),
            "--cafile",
            str(self.cafile),
            "--server-hostname",
            "localhost",
        ]
        cpu_before = server.cpu_seconds()
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=plan.open_s + plan.open_warmup_s + 60,
            check=False,
        )
        cpu = server.cpu_seconds() - cpu_before
        if done.returncode != 0:
            raise BenchError(f"open-loop generator failed: {done.stderr.strip()[-400:]}")
        figures: dict[str, Any] = orjson.loads(done.stdout.strip().splitlines()[-1])
        sent = int((plan.open_s + plan.open_warmup_s) * plan.rate)
        server.served += sent
        figures["cpu_us_per_request"] = cpu / sent * 1e6
        if figures["errors"]:
            self.errors.append(f"{server.name} {path} {body} open loop: {figures['errors']}")
        return figures

    def serve_until(self, server: Server, path: str, body: str, total: int) -> None:
        """Closed-loop load until the server has answered at least `total` requests."""
        for _ in range(60):  # bounded: each round at least one second
            if server.served >= total:
                return
            remaining = total - server.served
            self.closed_loop(server, path, body, min(10.0, max(1.0, remaining / 4000)))
        raise BenchError(f"{server.name}: could not reach {total} requests")


# --- the run -----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("uvicorn", "httptools", "uvloop", "fastapi", "pydantic", "orjson"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "nproc": os.cpu_count(),
        "cpu": model or platform.processor() or "unknown",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "packages": versions,
    }


def run(plan: Plan, install: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every measurement; the results dict (targets evaluated)."""
    started = time.monotonic()
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": plan.quick,
        "machine": machine(),
    }
    server_prefix, load_prefix, pinned = pinning()
    wrk, wrk_note = ensure_wrk(install)
    results["setup"] = {
        "pinning": pinned,
        "wrk": wrk_note,
        "closed_loop": f"wrk -t1 -c{plan.connections}, {plan.rounds} rounds of {plan.closed_s:g} s"
        " in which each /mutate runs beside a no-op, the pairs shuffled; the throughput"
        " ratio is the median over the rounds",
        "open_loop": f"{plan.rate:g} req/s for {plan.open_s:g} s after {plan.open_warmup_s:g} s",
    }
    log(f"machine: {results['machine']['nproc']} cores, {results['machine']['cpu']}")
    log(f"setup: {pinned}; {wrk_note}")

    log("in-process microbenchmarks ...")
    results["micro"] = micro.run(quick=plan.quick)

    with tempfile.TemporaryDirectory(prefix="isw-bench-") as tmp:
        work = Path(tmp)
        files, bodies = serving_files(work)
        env = server_env(metrics_port="0", shutdown_delay_seconds="0", log_level="info")
        servers: list[Server] = []
        try:
            for name, argv in (("webhook", product_argv), ("noop", noop_argv)):
                servers.append(start_on_a_free_port(name, server_prefix, argv, files, work, env))
            product, noop = servers
            results["memory"] = {"webhook_start": product.memory(), "noop_start": noop.memory()}
            runner = Runner(wrk, load_prefix, plan, bodies, files.ca_cert, log)
            measure(runner, product, noop, results)
            results["load_errors"] = runner.errors
        finally:
            for server in servers:
                server.stop()
    results["elapsed_s"] = time.monotonic() - started
    results["ratios"] = ratios(results)
    results["targets"] = evaluate(results)
    return results


def measure(runner: Runner, product: Server, noop: Server, results: dict[str, Any]) -> None:
    """Memory and latency while each server has the server core to itself, then the
    throughput pairs (two servers sharing the core hold more requests in flight, which
    raises both peaks: recorded apart, after them)."""
    plan = runner.plan
    hello = FIXTURE_NAMES[0]
    memory = results["memory"]
    if runner.wrk:
        runner.log(f"warm-up, then {plan.rss_first} requests to the webhook ...")
        runner.serve_until(product, "/mutate", hello, plan.rss_first)
        memory["after_first"] = {**product.memory(), "requests": product.served}
    results["open_loop"] = open_loop(runner, product, noop)
    if runner.wrk:
        runner.log(f"up to {plan.rss_second} requests to the webhook ...")
        runner.serve_until(product, "/mutate", hello, plan.rss_second)
        memory["after_second"] = {**product.memory(), "requests": product.served}
    memory["webhook_end"] = product.memory()
    memory["noop_end"] = noop.memory()
    results["closed_loop"] = closed_loop_pairs(runner, product, noop, results) if runner.wrk else {}
    memory["webhook_after_pairs"] = product.memory()
    memory["noop_after_pairs"] = noop.memory()


def open_loop(runner: Runner, product: Server, noop: Server) -> dict[str, Any]:
    """Latency at the plan's fixed rate, per endpoint."""
    hello = FIXTURE_NAMES[0]
    runner.log(f"open loop, {runner.plan.rate:g} req/s ...")
    opened: dict[str, Any] = {}
    opened[f"mutate:{hello}"] = runner.open_loop(product, "/mutate", hello)
    opened["noop-fastapi"] = runner.open_loop(noop, "/noop-fastapi", hello)
    for name in FIXTURE_NAMES[1:]:
        opened[f"mutate:{name}"] = runner.open_loop(product, "/mutate", name)
    opened["noop"] = runner.open_loop(noop, "/noop", hello)
    for key, figures in opened.items():
        lat, delay = figures["latency_ms"], figures["generator_delay_ms"]
        runner.log(
            f"  {key:24} p50 {lat['p50']:.2f}  p99 {lat['p99']:.2f}  p99.9 {lat['p99.9']:.2f}"
            f"  max {lat['max']:.2f} ms  (generator delay p99 {delay['p99']:.3f} ms)"
        )
    return opened


def closed_loop_pairs(
    runner: Runner, product: Server, noop: Server, results: dict[str, Any]
) -> dict[str, Any]:
    """Closed-loop rounds of /mutate beside a no-op; each endpoint's least round (the
    paired ratios go to results["paired_ratios"])."""
    plan = runner.plan
    hello = FIXTURE_NAMES[0]
    closed: dict[str, Any] = {}
    runner.closed_loop(noop, "/noop-fastapi", hello, plan.warmup_s)
    runner.closed_loop(noop, "/noop", hello, plan.warmup_s)
    runner.log(f"closed loop (wrk), {plan.rounds} rounds ...")
    for name in FIXTURE_NAMES[1:]:
        runner.closed_loop(product, "/mutate", name, plan.warmup_s)
    # Each /mutate runs at the same time as a no-op, both servers on the one server
    # core: a slow spell of the machine hits both alike, and the ratio of their CPU per
    # request is read within each round. Pairs in a shuffled order (seeded: the same
    # every run), so no spell keeps falling on the same pair's turn.
    pairs = [
        *[("noop-fastapi", f"mutate:{name}", name) for name in FIXTURE_NAMES],
        ("noop", f"mutate:{hello}", hello),
    ]
    path_of = {"noop-fastapi": "/noop-fastapi", "noop": "/noop"}
    rounds: dict[str, list[dict[str, Any]]] = {}
    paired: dict[str, list[float]] = {}
    paired_wall: dict[str, list[float]] = {}
    order = random.Random(13)
    for _ in range(plan.rounds):
        for baseline, mutate, name in order.sample(pairs, len(pairs)):
            # The same request bytes to both: the no-op reads this fixture's review too.
            base_figures, mutate_figures = runner.closed_loops(
                [(noop, path_of[baseline], name), (product, "/mutate", name)], plan.closed_s
            )
            base_key = baseline if name == hello else f"{baseline}:{name}"
            rounds.setdefault(base_key, []).append(base_figures)
            rounds.setdefault(mutate, []).append(mutate_figures)
            paired.setdefault(f"{name}/{baseline}", []).append(
                base_figures["cpu_us_per_request"] / mutate_figures["cpu_us_per_request"]
            )
            paired_wall.setdefault(f"{name}/{baseline}", []).append(
                mutate_figures["rps"] / base_figures["rps"]
            )
    results["paired_ratios"] = {"cpu": paired, "wall": paired_wall}
    for key, measured in rounds.items():
        # The least disturbed round: the least server CPU per request.
        closed[key] = {
            **min(measured, key=lambda figures: float(figures["cpu_us_per_request"])),
            "rounds_rps": [round(figures["rps"]) for figures in measured],
            "rounds_cpu_us": [round(figures["cpu_us_per_request"]) for figures in measured],
        }
    for key, figures in closed.items():
        runner.log(
            f"  {key:24} {figures['rps']:8.0f} req/s"
            f"  {figures['cpu_us_per_request']:6.0f} µs CPU/request"
            f"  (rounds: {', '.join(str(r) for r in figures['rounds_cpu_us'])} µs;"
            f" {', '.join(str(r) for r in figures['rounds_rps'])} req/s)"
        )
    return closed


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """`throughput`: requests per second of server CPU time, /mutate over a baseline (what
    each could serve with the core to itself), the median over the rounds in which the two
    ran at once; `wall_throughput`: the median ratio of requests/s as wrk saw them in those
    rounds (about the same: the two servers shared the core)."""
    paired = results.get("paired_ratios") or {"cpu": {}, "wall": {}}
    out: dict[str, float] = {}
    for pair, measured in paired["cpu"].items():
        out[f"throughput:{pair}"] = statistics.median(measured)
        out[f"wall_throughput:{pair}"] = statistics.median(paired["wall"][pair])
    return out


def figures(results: dict[str, Any]) -> dict[str, tuple[float | None, str]]:
    """Each target's figure and a note, or (None, why it is missing)."""
    out: dict[str, tuple[float | None, str]] = {}
    why_closed = results.get("setup", {}).get("wrk", "no closed-loop run")
    for name in FIXTURE_NAMES:
        ratio = results.get("ratios", {}).get(f"throughput:{name}/noop-fastapi")
        if ratio is None:
            out[f"throughput_ratio:{name}"] = (None, why_closed)
        else:
            each = results["paired_ratios"]["cpu"][f"{name}/noop-fastapi"]
            wall = results["ratios"][f"wall_throughput:{name}/noop-fastapi"]
            floor = results["ratios"].get(f"throughput:{name}/noop")
            out[f"throughput_ratio:{name}"] = (
                ratio,
                f"median of {len(each)} rounds run beside the no-op ({min(each):.2f} to"
                f" {max(each):.2f}); wall clock {wall:.2f}"
                + (f"; to the lean no-op {floor:.2f}" if floor is not None else ""),
            )
        opened = (results.get("open_loop") or {}).get(f"mutate:{name}")
        for quantile in ("p99", "p99.9"):
            if opened is None:
                out[f"{quantile}_ms:{name}"] = (None, "no open-loop run")
            else:
                delay = opened["generator_delay_ms"][quantile]
                out[f"{quantile}_ms:{name}"] = (
                    opened["latency_ms"][quantile],
                    f"{opened['requests']} requests, generator delay {delay:.3f} ms",
                )
    hello = (results.get("micro") or {}).get("hello--0")
    if hello:
        out["rewrite_us:hello--0"] = (hello["rewrite_us"], "best of repeats")
        out["handling_us:hello--0"] = (
            hello["asgi_us"],
            f"through the ASGI app; parse to bytes only: {hello['handle_us']:.1f} µs",
        )
    memory = results.get("memory") or {}
    end = memory.get("webhook_end")
    if end:
        after = memory.get("webhook_after_pairs")
        out["peak_rss_mb"] = (
            end["VmHWM"],
            f"noop {memory.get('noop_end', {}).get('VmHWM', 0):.1f}"
            + (
                f"; after the side-by-side rounds {after['VmHWM']:.1f}, noop"
                f" {memory.get('noop_after_pairs', {}).get('VmHWM', 0):.1f}"
                if after
                else ""
            ),
        )
    first, second = memory.get("after_first"), memory.get("after_second")
    if first and second:
        out["rss_growth_mb"] = (
            second["VmRSS"] - first["VmRSS"],
            f"{first['VmRSS']:.1f} MB after {first['requests']},"
            f" {second['VmRSS']:.1f} MB after {second['requests']} requests",
        )
    else:
        out["rss_growth_mb"] = (None, why_closed)
    return out


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    found = figures(results)
    rows = []
    for key, what, limit, unit, compare in TARGETS:
        figure, note = found.get(key, (None, "not measured"))
        if figure is None or math.isnan(figure):
            status = "SKIP"
        elif compare == "<":
            status = "PASS" if figure < limit else "FAIL"
        else:
            status = "PASS" if figure >= limit else "FAIL"
        rows.append(
            {
                "key": key,
                "what": what,
                "target": f"{'<' if compare == '<' else '≥'} {limit:g} {unit}".rstrip(),
                "figure": figure,
                "unit": unit,
                "status": status,
                "note": note,
            }
        )
    return rows


def table(results: dict[str, Any]) -> str:
    lines = [f"{'target':52} {'goal':>10} {'figure':>10}  status  note"]
    for row in results["targets"]:
        figure = "-" if row["figure"] is None else f"{row['figure']:.2f}"
        lines.append(
            f"{row['what']:52} {row['target']:>10} {figure:>10}  {row['status']:6}  {row['note']}"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """SIGALRM after `seconds`: the whole run is bounded."""

    def expired(signum: int, frame: Any) -> None:
        raise BenchError(f"the benchmark did not finish within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (harness check)")
    parser.add_argument(
        "--no-install", action="store_true", help="never apt-get install wrk when missing"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    try:
        with time_limit(120 if args.quick else 290):
            results = run(plan, install=not args.no_install)
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    args.out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print()
    print(table(results))
    for problem in results.get("load_errors", []):
        print(f"load errors: {problem}")
    print(f"\n{results['elapsed_s']:.0f} s; figures and ratios in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
