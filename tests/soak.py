"""Soak: many admission reviews from concurrent clients, a certificate rotation midway.

    python -m tests.soak          # `make soak`; SOAK_SECONDS=60 SOAK_REQUESTS=20000
                                  # SOAK_CONCURRENCY=16 SOAK_RSS_LIMIT_MB=10 override

Starts the real server (`tests.serving.running_server`: a subprocess over TLS on free
loopback ports; nothing leaves 127.0.0.1), checks every fixture's answer once against the
oracle, then has `concurrency` keep-alive httpx clients post the fixture reviews in turn
until the request count or the time is reached. Each answer must be 200 and exactly the
verified answer of its fixture (uid echoed, same patch, same warnings). Each client opens a
new connection every RECYCLE requests, so handshakes happen throughout. Halfway through,
the serving certificate is rotated the way kubelet updates a Secret volume (new files in a
new directory, one atomic symlink swap); the run waits (bounded) until a new handshake gets
the new certificate. The server's RSS (/proc/PID/status VmRSS) is sampled after warm-up and
at the end. Prints the figures; exits 1 on any failed request, an error in the server's
log, a rotation not seen, a server that died, or RSS growth over the limit after warm-up.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonpatch
import orjson
from cryptography import x509

from tests.oracle import admission_reviews, expected, in_scope, istio_pods
from tests.serving import ServerHandle, make_certificates, new_serving_pair, running_server
from webhook.config import Settings

UID = b"00000000-soak-uid-placeholder-000000"
RECYCLE = 100  # requests per connection before a client reconnects (a new handshake)
REQUEST_TIMEOUT = 10.0
ROTATION_SEEN_WITHIN = 15.0
MAX_FAILURES_KEPT = 50


def pod_review(pod: dict[str, Any], uid: str | None = None) -> dict[str, Any]:
    """A Pod CREATE AdmissionReview as a kube-apiserver sends it (no dry run)."""
    metadata = pod.get("metadata") or {}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": metadata.get("name", ""),
            "namespace": metadata.get("namespace", "default"),
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


@dataclass
class Case:
    """One fixture review: its body with a uid placeholder and the verified answer."""

    name: str
    template: bytes
    answer: dict[str, Any] = field(default_factory=dict)  # `response` without the uid

    def body(self, uid: str) -> bytes:
        return self.template.replace(UID, uid.encode())


@dataclass
class Figures:
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    failure_count: int = 0
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    rss_warm_kb: int | None = None
    rss_end_kb: int | None = None
    serial_before: int | None = None
    rotated_serial: int | None = None
    serial_after: int | None = None
    server_errors: list[str] = field(default_factory=list)
    server_alive: bool = True

    def fail(self, reason: str) -> None:
        self.failure_count += 1
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append(reason)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

    @property
    def rss_growth_kb(self) -> int:
        if self.rss_warm_kb is None or self.rss_end_kb is None:
            return 0
        return self.rss_end_kb - self.rss_warm_kb

    def report(self) -> str:
        rps = self.requests / self.seconds if self.seconds else 0.0
        lines = [
            f"requests        {self.requests}",
            f"failures        {self.failure_count}",
            f"duration        {self.seconds:.1f} s",
            f"throughput      {rps:.0f} requests/s",
            f"latency p50     {self.quantile(0.50) * 1000:.2f} ms",
            f"latency p99     {self.quantile(0.99) * 1000:.2f} ms",
            f"latency max     {self.quantile(1.0) * 1000:.2f} ms",
            f"RSS after warm-up {_mb(self.rss_warm_kb)}",
            f"RSS at the end  {_mb(self.rss_end_kb)} (growth {self.rss_growth_kb / 1024:+.1f} MB)",
            f"certificate     serial {_hex(self.serial_before)} -> {_hex(self.rotated_serial)},"
            f" served after rotation: {_hex(self.serial_after)}",
            f"server          {'alive' if self.server_alive else 'DIED'},"
            f" {len(self.server_errors)} error log lines",
        ]
        lines += [f"  failure: {f}" for f in self.failures[:10]]
        lines += [f"  server error: {e}" for e in self.server_errors[:10]]
        return "\n".join(lines)


def _mb(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.1f} MB"


def _hex(serial: int | None) -> str:
    return "none" if serial is None else f"{serial:x}"[:12]


def cases() -> list[Case]:
    """Every fixture: Istio's pods wrapped in a review, and the API server's reviews."""
    reviews = {name: pod_review(pod) for name, pod in istio_pods().items()}
    reviews.update({f"review:{name}": review for name, review in admission_reviews().items()})
    out = []
    for name, review in sorted(reviews.items()):
        review = json.loads(json.dumps(review))
        review["request"]["uid"] = UID.decode()
        out.append(Case(name, orjson.dumps(review)))
    return out


def verify(client: httpx.Client, case: Case, settings: Settings) -> None:
    """Check one answer against the oracle and keep it as the case's expected answer."""
    response = client.post("/mutate", content=case.body("verify"))
    if response.status_code != 200:
        raise AssertionError(f"{case.name}: HTTP {response.status_code} {response.text}")
    answer = response.json()["response"]
    if answer.pop("uid") != "verify" or answer.get("allowed") is not True:
        raise AssertionError(f"{case.name}: uid not echoed or not allowed: {answer}")
    pod = orjson.loads(case.template)["request"]["object"]
    if "patch" in answer:
        patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(answer["patch"])))
    else:
        patched = pod
    if patched != expected(pod, settings) or ("patch" in answer) != in_scope(pod, settings):
        raise AssertionError(f"{case.name}: the patch does not give the contract's pod")
    case.answer = answer


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def served_serial(handle: ServerHandle) -> int:
    with handle.connect() as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


class Certificates:
    """Serving pairs in versioned directories behind one symlink, swapped atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = make_certificates(directory / "certs")
        self.live = directory / "live"
        self.version = 0

    @property
    def cert(self) -> Path:
        return self.live / "tls.crt"

    @property
    def key(self) -> Path:
        return self.live / "tls.key"

    def rotate(self) -> int:
        """A new pair from the same CA, made current in one step; its serial number."""
        key_pem, cert_pem, cert = new_serving_pair(self.ca)
        self.version += 1
        target = self.directory / f"v{self.version}"
        target.mkdir()
        (target / "tls.key").write_bytes(key_pem)
        (target / "tls.key").chmod(0o600)
        (target / "tls.crt").write_bytes(cert_pem)
        link = self.directory / "live.tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(target.name)
        os.replace(link, self.live)
        return int(cert.serial_number)


async def _load(
    handle: ServerHandle,
    certificates: Certificates,
    all_cases: list[Case],
    figures: Figures,
    *,
    seconds: float,
    max_requests: int,
    concurrency: int,
    rotate_after: int,
    warmup: int,
) -> None:
    started = time.monotonic()
    deadline = started + seconds
    issued = itertools.count()
    done = 0
    rotation_due = asyncio.Event()
    warm = asyncio.Event()
    context = handle.ssl_context()

    async def worker() -> None:
        nonlocal done
        client: httpx.AsyncClient | None = None
        used = 0
        try:
            while time.monotonic() < deadline:
                index = next(issued)
                if index >= max_requests:
                    return
                if index >= rotate_after or time.monotonic() - started >= seconds / 2:
                    rotation_due.set()
                if client is None or used >= RECYCLE:
                    if client is not None:
                        await client.aclose()
                    client = httpx.AsyncClient(
                        base_url=handle.base_url,
                        verify=context,
                        timeout=REQUEST_TIMEOUT,
                        limits=httpx.Limits(max_connections=1),
                    )
                    used = 0
                used += 1
                case = all_cases[index % len(all_cases)]
                uid = f"soak-{index}"
                sent = time.perf_counter()
                try:
                    response = await client.post("/mutate", content=case.body(uid))
                except httpx.HTTPError as error:
                    figures.fail(f"{case.name} #{index}: {type(error).__name__}: {error}")
                    client = None  # a broken connection: start a new one
                    continue
                figures.latencies.append(time.perf_counter() - sent)
                done += 1
                if done >= warmup:
                    warm.set()
                if response.status_code != 200:
                    figures.fail(f"{case.name} #{index}: HTTP {response.status_code}")
                    continue
                try:
                    answer = orjson.loads(response.content)
                except orjson.JSONDecodeError:
                    figures.fail(f"{case.name} #{index}: not JSON")
                    continue
                if answer.get("response") != {"uid": uid, **case.answer}:
                    figures.fail(f"{case.name} #{index}: wrong answer {answer}")
        finally:
            if client is not None:
                await client.aclose()

    async def rotator() -> None:
        await rotation_due.wait()
        figures.rotated_serial = certificates.rotate()
        limit = time.monotonic() + ROTATION_SEEN_WITHIN
        while time.monotonic() < limit:
            figures.serial_after = await asyncio.to_thread(served_serial, handle)
            if figures.serial_after == figures.rotated_serial:
                return
            await asyncio.sleep(0.1)

    async def sampler() -> None:
        await warm.wait()
        figures.rss_warm_kb = rss_kb(handle.process.pid)

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    helpers = [asyncio.create_task(rotator()), asyncio.create_task(sampler())]
    await asyncio.gather(*workers)
    figures.seconds = time.monotonic() - started
    figures.requests = done
    if rotation_due.is_set():
        await asyncio.wait_for(helpers[0], ROTATION_SEEN_WITHIN + REQUEST_TIMEOUT)
    for task in helpers:
        task.cancel()
    await asyncio.gather(*helpers, return_exceptions=True)


def run(
    directory: Path,
    *,
    seconds: float = 60.0,
    max_requests: int = 20_000,
    concurrency: int = 16,
    rotate_after: int | None = None,
    quiet: bool = False,
) -> Figures:
    """Serve, verify each fixture once, load, rotate midway; the figures."""
    settings = Settings()
    certificates = Certificates(directory)
    certificates.rotate()
    all_cases = cases()
    figures = Figures()
    with running_server(
        directory,
        cert_reload_seconds=0.2,
        tls_cert_file=certificates.cert,
        tls_key_file=certificates.key,
    ) as handle:
        figures.serial_before = served_serial(handle)
        with handle.client() as client:
            for case in all_cases:
                verify(client, case, settings)
        if not quiet:
            print(
                f"soak: {len(all_cases)} fixtures verified; {concurrency} clients, up to"
                f" {max_requests} requests in {seconds:.0f} s",
                flush=True,
            )
        asyncio.run(
            _load(
                handle,
                certificates,
                all_cases,
                figures,
                seconds=seconds,
                max_requests=max_requests,
                concurrency=concurrency,
                rotate_after=max_requests // 2 if rotate_after is None else rotate_after,
                warmup=max(1, min(2000, max_requests // 5)),
            )
        )
        figures.rss_end_kb = rss_kb(handle.process.pid)
        figures.server_alive = handle.process.poll() is None
        for record in handle.log_records():
            if record.get("level") in ("error", "critical"):
                figures.server_errors.append(json.dumps(record))
    return figures


def main() -> int:
    seconds = float(os.environ.get("SOAK_SECONDS", "60"))
    max_requests = int(os.environ.get("SOAK_REQUESTS", "20000"))
    concurrency = int(os.environ.get("SOAK_CONCURRENCY", "16"))
    rss_limit_mb = float(os.environ.get("SOAK_RSS_LIMIT_MB", "10"))
    with tempfile.TemporaryDirectory(prefix="soak-") as directory:
        figures = run(
            Path(directory), seconds=seconds, max_requests=max_requests, concurrency=concurrency
        )
    print(figures.report())
    problems = []
    if figures.failure_count:
        problems.append(f"{figures.failure_count} requests failed")
    if figures.server_errors:
        problems.append(f"{len(figures.server_errors)} error lines in the server's log")
    if not figures.server_alive:
        problems.append("the server died")
    if figures.rotated_serial is None or figures.serial_after != figures.rotated_serial:
        problems.append("the rotated certificate was not served")
    if figures.rss_warm_kb is None:
        problems.append("RSS was not sampled after warm-up")
    elif figures.rss_growth_kb > rss_limit_mb * 1024:
        problems.append(f"RSS grew {figures.rss_growth_kb / 1024:.1f} MB after warm-up")
    if problems:
        print("soak: FAILED: " + "; ".join(problems))
        return 1
    print("soak: passed")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
