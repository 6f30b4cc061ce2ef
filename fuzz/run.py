"""`make fuzz`: run each atheris target for a bounded time and print the figures.

    FUZZ_SECONDS=60 python fuzz/run.py [target ...]     # targets: rewrite, review

Each target runs in its own process (`python -m fuzz.fuzz_<target>`, from the repo root)
for FUZZ_SECONDS (default 60), with a corpus in fuzz/corpus/<target>/ (gitignored) seeded
from examples/ and, when present, ../shared/fixtures/, and the dictionary fuzz/json.dict.
libFuzzer stops at the first crash and writes the input to fuzz/corpus/<target>-crash-*;
turn it into a named test in tests/test_fuzz_regressions.py. Exits 1 on any crash, hang or
out-of-memory, or when a target did not finish within its bound.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "fuzz"
CORPUS = FUZZ / "corpus"
SHARED = ROOT.parent / "shared" / "fixtures"
TARGETS = ("rewrite", "review")
GRACE_SECONDS = 120  # beyond -max_total_time before the process is killed


@dataclass
class Figures:
    target: str
    seconds: float
    runs: int
    exec_per_second: int
    coverage: int
    corpus: int
    crashes: list[Path]
    returncode: int
    log: Path

    @property
    def failed(self) -> bool:
        return bool(self.crashes) or self.returncode != 0


def seed_inputs() -> dict[str, bytes]:
    """AdmissionReviews (and pods) the project ships, plus the shared fixtures if present."""
    reviews: dict[str, Any] = {}
    pods: dict[str, Any] = {}
    example = ROOT / "examples" / "admission-review.json"
    if example.exists():
        reviews["example"] = json.loads(example.read_text())
    for path in sorted((SHARED / "admission-reviews").glob("*.json")):
        reviews[path.stem] = json.loads(path.read_text())
    for path in sorted((SHARED / "istio-injected").glob("*.json")):
        pods[path.stem] = json.loads(path.read_text())
    for name, review in reviews.items():
        pods.setdefault(f"review-{name}", review["request"]["object"])
    seeds: dict[str, bytes] = {}
    for name, review in reviews.items():
        seeds[f"review/seed-{name}"] = json.dumps(review, separators=(",", ":")).encode()
    for name, pod in pods.items():
        # fuzz_rewrite: an even first byte means "read the rest as JSON".
        seeds[f"rewrite/seed-{name}"] = b"\x00" + json.dumps(pod, separators=(",", ":")).encode()
    return seeds


def prepare_corpus() -> None:
    for target in TARGETS:
        (CORPUS / target).mkdir(parents=True, exist_ok=True)
    for name, data in seed_inputs().items():
        path = CORPUS / name
        if not path.exists():
            path.write_bytes(data)


def run_target(target: str, seconds: int) -> Figures:
    corpus = CORPUS / target
    log = CORPUS / f"{target}.log"
    prefix = CORPUS / f"{target}-"  # libFuzzer appends crash-/timeout-/oom-<sha1>
    before = set(CORPUS.glob(f"{target}-*"))
    command = [
        sys.executable,
        "-m",
        f"fuzz.fuzz_{target}",
        f"-max_total_time={seconds}",
        "-print_final_stats=1",
        "-max_len=16384",
        "-timeout=10",  # one input taking longer is a hang: reported as a crash
        "-rss_limit_mb=2048",
        f"-dict={FUZZ / 'json.dict'}",
        f"-artifact_prefix={prefix}",
        str(corpus),
    ]
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            returncode = process.wait(timeout=seconds + GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
            returncode = -9
    elapsed = time.monotonic() - started
    text = log.read_text(encoding="utf-8", errors="replace")
    return Figures(
        target=target,
        seconds=elapsed,
        runs=_stat(text, r"stat::number_of_executed_units:\s+(\d+)", r"#(\d+)\s"),
        exec_per_second=_stat(text, r"stat::average_exec_per_sec:\s+(\d+)", r"exec/s: (\d+)"),
        coverage=_stat(text, r"cov: (\d+)"),
        corpus=len([p for p in corpus.iterdir() if p.is_file()]),
        crashes=sorted(set(CORPUS.glob(f"{target}-*")) - before),
        returncode=returncode,
        log=log,
    )


def _stat(text: str, *patterns: str) -> int:
    """The last match of the first pattern that matches, as an int (0 if none)."""
    for pattern in patterns:
        found = re.findall(pattern, text)
        if found:
            return int(found[-1])
    return 0


def main(argv: list[str]) -> int:
    try:
        seconds = int(os.environ.get("FUZZ_SECONDS", "60"))
    except ValueError:
        print("fuzz: FUZZ_SECONDS must be a whole number of seconds", file=sys.stderr)
        return 2
    targets = argv or list(TARGETS)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or seconds < 1:
        print(f"fuzz: targets are {', '.join(TARGETS)}; FUZZ_SECONDS >= 1", file=sys.stderr)
        return 2
    prepare_corpus()
    print(f"fuzz: {', '.join(targets)} for {seconds} s each; corpus in {CORPUS}", flush=True)
    results = [run_target(target, seconds) for target in targets]
    print(f"{'target':<10}{'runs':>12}{'exec/s':>9}{'cov':>7}{'corpus':>8}{'crashes':>9}")
    for r in results:
        crashes = len(r.crashes) or (1 if r.returncode != 0 else 0)
        print(
            f"{r.target:<10}{r.runs:>12}{r.exec_per_second:>9}{r.coverage:>7}"
            f"{r.corpus:>8}{crashes:>9}"
        )
    failed = [r for r in results if r.failed]
    for r in failed:
        print(f"fuzz: {r.target} FAILED (exit {r.returncode}); log: {r.log}")
        for crash in r.crashes:
            print(f"  input: {crash}")
        for line in r.log.read_text(encoding="utf-8", errors="replace").splitlines():
            if "Uncaught Python exception" in line or "Error" in line or "ERROR" in line:
                print(f"  {line}")
    if failed:
        return 1
    print("fuzz: no crashes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
