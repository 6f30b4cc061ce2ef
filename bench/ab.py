"""A/B of the webhook's source trees: is a speed trick worth keeping?

    .venv/bin/python bench/ab.py with=. without=/tmp/tree-without-it [--rounds 8]

Each NAME=DIR serves `/mutate` from the `webhook` package in DIR (first on PYTHONPATH),
with the same uvicorn, TLS, certificate and settings as `make bench`, all pinned to core 0
while wrk runs on core 1. Each tree after the first runs side by side with the first (two
wrk at once, both servers on the one server core), round after round, so both meet the
same state of this shared machine, whose speed moves by up to 70 % in spells of seconds;
per tree and fixture (hello--0, merge-probers--0) it reports its server CPU time per
request (median and least over the rounds) and the median over the rounds of the first
tree's CPU per request over this tree's. Loopback only; bounded (rounds x trees x
fixtures x seconds, plus start-up).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import FIXTURE_NAMES
from bench.run import (
    FULL,
    BenchError,
    Runner,
    Server,
    ensure_wrk,
    pinning,
    product_argv,
    server_env,
    serving_files,
    start_on_a_free_port,
    time_limit,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", help="NAME=DIR, the first is the reference")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    trees = [tuple(t.split("=", 1)) for t in args.trees]
    if any(len(t) != 2 or not Path(t[1], "webhook").is_dir() for t in trees):
        parser.error("each tree is NAME=DIR, DIR holding the webhook package")
    budget = 60 + len(trees) * len(FIXTURE_NAMES) * (args.rounds + 1) * (args.seconds + 2)
    try:
        with time_limit(budget):
            results = compare(trees, args.rounds, args.seconds)  # type: ignore[arg-type]
    except BenchError as error:
        print(f"ab: {error}", file=sys.stderr)
        return 1
    print(f"{'tree':12} {'fixture':18} {'median µs':>10} {'least µs':>9} {'ratio':>6}  rounds")
    for name, _ in trees[1:]:
        for fixture in FIXTURE_NAMES:
            cpu, ratios = results[name][fixture]["cpu"], results[name][fixture]["ratios"]
            each = " ".join(f"{r:.2f}" for r in ratios)
            print(
                f"{name:12} {fixture:18} {statistics.median(cpu):10.1f} {min(cpu):9.1f}"
                f" {statistics.median(ratios):6.3f}  {each}"
            )
    print(
        f"ratio: {trees[0][0]}'s CPU per request over this tree's, in rounds where the two"
        " ran at once on the server core; the median of the rounds (>1: this tree is faster)"
    )
    return 0


def compare(trees: list[tuple[str, str]], rounds: int, seconds: float) -> dict[str, Any]:
    server_prefix, load_prefix, _ = pinning()
    wrk, note = ensure_wrk(install=False)
    if wrk is None:
        raise BenchError(f"wrk is needed: {note}")
    with tempfile.TemporaryDirectory(prefix="isw-ab-") as tmp:
        work = Path(tmp)
        files, bodies = serving_files(work)
        servers: dict[str, Server] = {}
        try:
            for name, directory in trees:
                env = server_env(metrics_port="0", shutdown_delay_seconds="0", log_level="info")
                env["PYTHONPATH"] = str(Path(directory).resolve())
                servers[name] = start_on_a_free_port(
                    name, server_prefix, product_argv, files, work, env
                )
            runner = Runner(wrk, load_prefix, FULL, bodies, files.ca_cert, lambda _: None)
            for server in servers.values():  # warm-up
                for fixture in FIXTURE_NAMES:
                    runner.closed_loop(server, "/mutate", fixture, seconds)
            reference, *others = servers.values()
            results: dict[str, Any] = {
                server.name: {f: {"cpu": [], "ratios": []} for f in FIXTURE_NAMES}
                for server in others
            }
            for _ in range(rounds):
                for server in others:
                    for fixture in FIXTURE_NAMES:
                        # Side by side with the reference: one state of the machine for both.
                        ref, this = runner.closed_loops(
                            [(reference, "/mutate", fixture), (server, "/mutate", fixture)],
                            seconds,
                        )
                        figures = results[server.name][fixture]
                        figures["cpu"].append(float(this["cpu_us_per_request"]))
                        figures["ratios"].append(
                            float(ref["cpu_us_per_request"]) / float(this["cpu_us_per_request"])
                        )
            if runner.errors:
                raise BenchError("; ".join(runner.errors))
            return results
        finally:
            for server in servers.values():
                server.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
