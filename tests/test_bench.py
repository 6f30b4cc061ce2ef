"""The benchmark harness itself works: no-op server, microbenchmarks, open-loop generator,
target evaluation and a quick `bench/run.py`. No timing is asserted here: speed is for
`make bench`."""

from __future__ import annotations

import asyncio
import math
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvloop

from bench import micro, openloop, run
from bench.common import FIXTURE_NAMES, load_pod, review_body
from bench.noop import ANSWER
from tests.serving import free_port, make_certificates, server_env
from webhook.config import Settings
from webhook.review import handle
from webhook.rewrite import Contract

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def noop_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """bench/serve_noop.py over TLS on a free loopback port: (port, CA file)."""
    directory = tmp_path_factory.mktemp("noop")
    certs = make_certificates(directory / "certs")
    log = (directory / "noop.log").open("wb")
    for _ in range(3):  # a free port can be taken between choosing and binding it
        port = free_port()
        argv = [sys.executable, str(ROOT / "bench" / "serve_noop.py"), "--port", str(port)]
        process = subprocess.Popen(
            [*argv, "--cert", str(certs.cert), "--key", str(certs.key)],
            stdout=log,
            stderr=log,
            env=server_env({"metrics_port": 0, "shutdown_delay_seconds": 0}),
        )
        try:
            if _ready(process, port, certs.ca_cert):
                break
        except BaseException:
            _stop(process)
            raise
        _stop(process)
    else:
        pytest.fail(f"the no-op server did not start: {(directory / 'noop.log').read_text()}")
    try:
        yield port, certs.ca_cert
    finally:
        _stop(process)
        log.close()


def _ready(process: subprocess.Popen[bytes], port: int, ca: Path) -> bool:
    deadline = time.monotonic() + 20
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                if client.get(f"https://127.0.0.1:{port}/healthz").status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise TimeoutError("no-op server not ready within 20 s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_bench_fixtures_are_the_shared_istio_pods_unchanged() -> None:
    shared = ROOT.parent / "shared" / "fixtures" / "istio-injected"
    for name in FIXTURE_NAMES:
        assert load_pod(name) == orjson.loads((shared / f"{name}.json").read_bytes())


def test_review_body_is_a_pod_create_review_the_webhook_patches() -> None:
    for name in FIXTURE_NAMES:
        body = review_body(name)
        review = orjson.loads(body)
        assert review["request"]["operation"] == "CREATE"
        assert review["request"]["object"] == load_pod(name)
        decision = handle(body, Contract.from_settings(Settings()))
        assert (decision.outcome, len(decision.result.ops)) == ("mutated", 7)


def test_both_noops_read_the_body_and_answer_the_products_bytes_over_tls(
    noop_server: tuple[int, Path],
) -> None:
    port, ca = noop_server
    body = review_body("hello--0")
    assert handle(body, Contract.from_settings(Settings())).response_bytes() == ANSWER
    with httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=10) as client:
        for path in ("/noop", "/noop-fastapi"):
            for _ in range(3):  # keep-alive: several requests on one connection
                response = client.post(f"https://127.0.0.1:{port}{path}", content=body)
                assert (response.status_code, response.content) == (200, ANSWER)
                assert response.headers["content-type"] == "application/json"


def test_open_loop_sends_every_scheduled_request_and_reports_its_own_delay(
    noop_server: tuple[int, Path],
) -> None:
    port, ca = noop_server
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(
            openloop.open_loop(
                host="127.0.0.1",
                port=port,
                path="/noop",
                body=review_body("hello--0"),
                rate=100.0,
                duration=0.5,
                warmup=0.2,
                ssl_context=ssl.create_default_context(cafile=str(ca)),
                server_hostname="localhost",
            )
        )
    assert (result["requests"], result["errors"], result["statuses"]) == (50, {}, {"200": 50})
    for key in ("latency_ms", "service_ms", "generator_delay_ms"):
        figures = result[key]
        assert set(figures) == {"p50", "p90", "p99", "p99.9", "max"}
        ordered = [figures[q] for q in ("p50", "p90", "p99", "p99.9", "max")]
        assert all(math.isfinite(v) and v >= 0 for v in ordered)
        assert ordered == sorted(ordered)
    # Latency counts from the scheduled time: never less than the service time alone.
    assert result["latency_ms"]["max"] >= result["service_ms"]["p50"]


def test_open_loop_fails_loudly_when_nothing_listens() -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner, pytest.raises(OSError):
        runner.run(
            openloop.open_loop(
                host="127.0.0.1",
                port=free_port(),
                path="/noop",
                body=b"{}",
                rate=10.0,
                duration=0.1,
                warmup=0.0,
                ssl_context=None,
            )
        )


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [openloop.percentile(values, p) for p in (50, 99, 99.9, 100)] == [50, 99, 100, 100]
    assert openloop.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert math.isnan(openloop.percentile([], 99))


def test_microbenchmarks_time_the_rewrite_and_the_handling_of_every_fixture() -> None:
    results = micro.run(quick=True)
    assert set(results) == set(FIXTURE_NAMES)
    for name, figures in results.items():
        assert figures["body_bytes"] == len(review_body(name))
        assert figures["ops"] == 7
        for key in ("rewrite_us", "handle_us", "asgi_us"):
            assert math.isfinite(figures[key]) and figures[key] > 0


def _results(**cpu_us: float) -> dict[str, Any]:
    """A results dict as run() makes it, with chosen figures (server CPU µs per request)."""
    hello, big = FIXTURE_NAMES
    latency = {"p50": 0.5, "p90": 0.8, "p99": 2.5, "p99.9": 12.0, "max": 20.0}
    opened = {
        "requests": 10_000,
        "latency_ms": latency,
        "generator_delay_ms": {"p99": 0.1, "p99.9": 0.3},
    }
    results: dict[str, Any] = {
        "setup": {"wrk": "wrk found"},
        "open_loop": {f"mutate:{hello}": opened, f"mutate:{big}": opened},
        "micro": {hello: {"rewrite_us": 19.9, "asgi_us": 100.0, "handle_us": 40.0}},
        "memory": {
            "webhook_end": {"VmHWM": 59.0, "VmRSS": 58.0},
            "noop_end": {"VmHWM": 50.0},
            "after_first": {"VmRSS": 50.0, "requests": 10_000},
            "after_second": {"VmRSS": 55.5, "requests": 100_000},
        },
    }
    results["closed_loop"] = {
        key: {"cpu_us_per_request": cpu, "rps": 1e6 / cpu}
        for key, cpu in (
            ("noop-fastapi", cpu_us["noop_fastapi"]),
            ("noop", cpu_us["noop"]),
            (f"mutate:{hello}", cpu_us["hello"]),
            (f"mutate:{big}", cpu_us["big"]),
        )
    }
    # Three rounds run side by side: one undisturbed, one slow spell over both servers,
    # one that slowed /mutate more (baseline CPU, /mutate CPU, as multiples).
    spells = [(1.0, 1.0), (1.5, 1.5), (1.2, 1.5)]
    results["paired_ratios"] = {"cpu": {}, "wall": {}}
    for baseline, base_key in (("noop-fastapi", "noop_fastapi"), ("noop", "noop")):
        names = FIXTURE_NAMES if baseline == "noop-fastapi" else (hello,)
        for name in names:
            base, mutate = cpu_us[base_key], cpu_us["hello" if name == hello else "big"]
            pair = f"{name}/{baseline}"
            results["paired_ratios"]["cpu"][pair] = [base * b / (mutate * m) for b, m in spells]
            results["paired_ratios"]["wall"][pair] = [base * b / (mutate * m) for b, m in spells]
    results["ratios"] = run.ratios(results)
    return results


def test_every_target_is_judged_pass_or_fail_against_its_limit() -> None:
    results = _results(noop_fastapi=160.0, noop=50.0, hello=200.0, big=201.0)
    rows = {row["key"]: (row["figure"], row["status"]) for row in run.evaluate(results)}
    assert set(rows) == {key for key, *_ in run.TARGETS}
    assert rows == {
        "throughput_ratio:hello--0": (0.80, "PASS"),
        "throughput_ratio:merge-probers--0": (160.0 / 201.0, "FAIL"),
        "p99_ms:hello--0": (2.5, "PASS"),
        "p99.9_ms:hello--0": (12.0, "FAIL"),
        "p99_ms:merge-probers--0": (2.5, "PASS"),
        "p99.9_ms:merge-probers--0": (12.0, "FAIL"),
        "rewrite_us:hello--0": (19.9, "PASS"),
        "handling_us:hello--0": (100.0, "FAIL"),
        "peak_rss_mb": (59.0, "PASS"),
        "rss_growth_mb": (5.5, "FAIL"),
    }
    assert results["ratios"]["throughput:hello--0/noop"] == 50.0 / 200.0
    assert results["ratios"]["wall_throughput:hello--0/noop-fastapi"] == pytest.approx(0.80)


def test_the_throughput_ratio_is_the_median_of_the_rounds_run_side_by_side() -> None:
    results = _results(noop_fastapi=160.0, noop=50.0, hello=200.0, big=201.0)
    results["paired_ratios"]["cpu"]["hello--0/noop-fastapi"] = [0.70, 0.90, 0.85, 0.60, 0.88]
    results["ratios"] = run.ratios(results)
    row = next(r for r in run.evaluate(results) if r["key"] == "throughput_ratio:hello--0")
    assert (row["figure"], row["status"]) == (0.85, "PASS")
    assert row["note"] == (
        "median of 5 rounds run beside the no-op (0.60 to 0.90); wall clock 0.80;"
        " to the lean no-op 0.25"
    )


def test_targets_without_a_closed_loop_run_are_skipped_with_the_reason() -> None:
    results = _results(noop_fastapi=150.0, noop=50.0, hello=200.0, big=200.0)
    results["closed_loop"] = {}
    results["ratios"] = {}
    del results["memory"]["after_first"], results["memory"]["after_second"]
    results["setup"]["wrk"] = "wrk not installed (--no-install): closed-loop throughput skipped"
    rows = {row["key"]: row for row in run.evaluate(results)}
    for key in ("throughput_ratio:hello--0", "throughput_ratio:merge-probers--0", "rss_growth_mb"):
        assert (rows[key]["status"], rows[key]["note"]) == ("SKIP", results["setup"]["wrk"])
    assert rows["p99_ms:hello--0"]["status"] == "PASS"


def test_quick_run_writes_every_target_and_the_ratios(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--no-install"]
    done = subprocess.run(
        [*argv, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results = orjson.loads(out.read_bytes())
    rows = {row["key"]: row for row in results["targets"]}
    assert list(rows) == [key for key, *_ in run.TARGETS]
    for row in results["targets"]:
        assert row["status"] in ("PASS", "FAIL", "SKIP")
        assert f"{row['status']}" in done.stdout
    assert set(results["open_loop"]) == {
        "mutate:hello--0",
        "mutate:merge-probers--0",
        "noop-fastapi",
        "noop",
    }
    for figures in results["open_loop"].values():
        assert figures["requests"] == 200 and figures["errors"] == {}
    closed_loop_ran = shutil.which("wrk") is not None
    assert (rows["throughput_ratio:hello--0"]["status"] != "SKIP") is closed_loop_ran
    if closed_loop_ran:
        assert set(results["ratios"]) == {
            f"{kind}:{pair}"
            for kind in ("throughput", "wall_throughput")
            for pair in (
                "hello--0/noop-fastapi",
                "merge-probers--0/noop-fastapi",
                "hello--0/noop",
            )
        }
        assert results["memory"]["after_second"]["requests"] >= 1_500
    else:
        assert "wrk not installed" in rows["throughput_ratio:hello--0"]["note"]


def test_the_peak_rss_is_taken_before_the_side_by_side_rounds_and_theirs_is_noted() -> None:
    results = _results(noop_fastapi=160.0, noop=50.0, hello=200.0, big=201.0)
    results["memory"]["webhook_after_pairs"] = {"VmHWM": 63.0, "VmRSS": 62.0}
    results["memory"]["noop_after_pairs"] = {"VmHWM": 64.0, "VmRSS": 63.5}
    row = next(r for r in run.evaluate(results) if r["key"] == "peak_rss_mb")
    assert (row["figure"], row["status"], row["note"]) == (
        59.0,
        "PASS",
        "noop 50.0; after the side-by-side rounds 63.0, noop 64.0",
    )
