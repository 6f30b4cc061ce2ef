"""`make audit` (scripts/audit.py): its exit status and report for each pip-audit outcome.

The script runs `python -m pip_audit` per lock file. These tests put a stand-in `pip_audit`
first on PYTHONPATH that answers, per lock file, what pip-audit 2.10 printed on a machine
without a reachable vulnerability database (recorded: every package "not found" from a
PyPI mirror without the JSON API; a traceback when OSV's host does not resolve or the proxy
refuses), or a report with and without vulnerabilities. Offline, no network, a few seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "audit.py"

STAND_IN = """
import json, os, pathlib, sys
args = sys.argv[1:]
lock = pathlib.Path(args[args.index("-r") + 1])
with open(os.environ["PIP_AUDIT_CALLS"], "a") as calls:
    calls.write(json.dumps(args) + "\\n")
answer = json.loads(pathlib.Path(os.environ["PIP_AUDIT_ANSWERS"]).read_text())[lock.name]
sys.stdout.write(answer["stdout"])
sys.stderr.write(answer["stderr"])
sys.exit(answer["code"])
"""

OSV_UNRESOLVED = (
    "Traceback (most recent call last):\n"
    '  File "requests/adapters.py", line 729, in send\n'
    "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='api.osv.dev', port=443):"
    ' Max retries exceeded with url: /v1/query (Caused by NameResolutionError("HTTPSConnection'
    "(host='api.osv.dev', port=443): Failed to resolve 'api.osv.dev' ([Errno -2] Name or"
    ' service not known)"))\n'
)
PROXY_REFUSED = (
    "Traceback (most recent call last):\n"
    "requests.exceptions.ProxyError: HTTPSConnectionPool(host='pypi.org', port=443): Max"
    " retries exceeded with url: /pypi/click/8.5.1/json (Caused by ProxyError('Unable to"
    " connect to proxy', NewConnectionError(\"HTTPSConnection(host='127.0.0.1', port=9):"
    ' Failed to establish a new connection: [Errno 111] Connection refused")))\n'
)


def report(*dependencies: dict[str, Any]) -> str:
    return json.dumps({"dependencies": list(dependencies), "fixes": []})


def not_found(name: str, version: str) -> dict[str, Any]:
    reason = f"Dependency not found on PyPI and could not be audited: {name} ({version})"
    return {"name": name, "skip_reason": reason}


def clean(name: str, version: str) -> dict[str, Any]:
    return {"name": name, "version": version, "vulns": []}


def vulnerable(name: str, version: str, advisory: str, fixed: str) -> dict[str, Any]:
    vuln = {"id": advisory, "fix_versions": [fixed], "aliases": [], "description": ""}
    return {"name": name, "version": version, "vulns": [vuln]}


ALL_NOT_FOUND = {
    "stdout": report(not_found("click", "8.5.1"), not_found("fastapi", "0.165.0")),
    "stderr": "No known vulnerabilities found\n",
    "code": 0,
}
ALL_CLEAN = {
    "stdout": report(clean("click", "8.5.1"), clean("fastapi", "0.165.0")),
    "stderr": "No known vulnerabilities found\n",
    "code": 0,
}
ONE_VULNERABLE = {
    "stdout": report(
        clean("click", "8.5.1"), vulnerable("fastapi", "0.165.0", "PYSEC-0000-1", "0.166.0")
    ),
    "stderr": "Found 1 known vulnerability in 1 package\n",
    "code": 1,
}
SOME_NOT_FOUND = {
    "stdout": report(clean("click", "8.5.1"), not_found("fastapi", "0.165.0")),
    "stderr": "No known vulnerabilities found, 1 ignored\n",
    "code": 0,
}


def audit(
    tmp_path: Path, answers: dict[str, dict[str, Any]], service: str = "pypi"
) -> tuple[int, str, list[list[str]]]:
    """Run scripts/audit.py on one lock file per answer; (exit status, stdout, pip-audit calls)."""
    (tmp_path / "pip_audit").mkdir()
    (tmp_path / "pip_audit" / "__main__.py").write_text(STAND_IN)
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    locks = []
    for name in answers:
        locks.append(tmp_path / name)
        locks[-1].write_text("click==8.5.1\nfastapi==0.165.0\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(tmp_path),
        "PIP_AUDIT_ANSWERS": str(tmp_path / "answers.json"),
        "PIP_AUDIT_CALLS": str(tmp_path / "calls"),
        "AUDIT_SERVICE": service,
    }
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, locks)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.stderr == ""
    calls = [json.loads(line) for line in (tmp_path / "calls").read_text().splitlines()]
    return done.returncode, done.stdout.replace(str(tmp_path) + "/", ""), calls


NOTHING_CHECKED = (
    "audit: FAILED: nothing was checked (no vulnerability database reachable); run `make"
    " audit` on a machine with access to PyPI's JSON API or OSV (AUDIT_SERVICE=osv).\n"
)


def test_every_package_not_found_means_nothing_was_checked_and_exits_2(tmp_path: Path) -> None:
    code, out, calls = audit(tmp_path, {"runtime.lock": ALL_NOT_FOUND})
    assert code == 2
    assert out == (
        "audit: runtime.lock: NOT CHECKED: no vulnerability database (pypi) is reachable from"
        " this machine; 2 packages could not be audited (first reason: Dependency not found on"
        " PyPI and could not be audited: click (8.5.1))\n" + NOTHING_CHECKED
    )
    assert calls == [
        [
            "--require-hashes",
            "--disable-pip",
            "-r",
            str(tmp_path / "runtime.lock"),
            "--format",
            "json",
            "--progress-spinner",
            "off",
            "--timeout",
            "15",
            "--vulnerability-service",
            "pypi",
        ]
    ]


@pytest.mark.parametrize(
    ("stderr", "reason"),
    [
        (OSV_UNRESOLVED, "requests.exceptions.ConnectionError: HTTPSConnectionPool(host="),
        (PROXY_REFUSED, "requests.exceptions.ProxyError: HTTPSConnectionPool(host='pypi.org'"),
    ],
)
def test_a_service_that_cannot_be_reached_exits_2(tmp_path: Path, stderr: str, reason: str) -> None:
    answer = {"stdout": "", "stderr": stderr, "code": 1}
    code, out, _ = audit(tmp_path, {"runtime.lock": answer, "dev.lock": answer}, "osv")
    assert code == 2
    lines = out.splitlines(keepends=True)
    assert len(lines) == 3 and lines[2] == NOTHING_CHECKED
    for line, lock in zip(lines[:2], ("runtime.lock", "dev.lock"), strict=True):
        assert line.startswith(
            f"audit: {lock}: NOT CHECKED: no vulnerability database (osv) is reachable from this"
            f" machine; pip-audit could not reach it (first reason: pip-audit exited 1: {reason}"
        )


def test_one_lock_checked_and_another_not_exits_2(tmp_path: Path) -> None:
    code, out, _ = audit(tmp_path, {"runtime.lock": ALL_CLEAN, "dev.lock": ALL_NOT_FOUND})
    assert code == 2
    assert out.splitlines() == [
        "audit: runtime.lock: 2 packages audited against pypi, 0 known vulnerabilities,"
        " 0 not audited",
        "audit: dev.lock: NOT CHECKED: no vulnerability database (pypi) is reachable from this"
        " machine; 2 packages could not be audited (first reason: Dependency not found on PyPI"
        " and could not be audited: click (8.5.1))",
    ]


def test_a_vulnerability_exits_1_even_when_another_lock_was_not_checked(tmp_path: Path) -> None:
    code, out, _ = audit(tmp_path, {"dev.lock": ALL_NOT_FOUND, "runtime.lock": ONE_VULNERABLE})
    assert code == 1
    assert out.splitlines()[1:] == [
        "audit: runtime.lock: VULNERABLE: fastapi 0.165.0: PYSEC-0000-1 (fixed in 0.166.0)",
        "audit: runtime.lock: 2 packages audited against pypi, 1 known vulnerabilities,"
        " 0 not audited",
    ]


def test_an_incomplete_audit_exits_1(tmp_path: Path) -> None:
    code, out, _ = audit(tmp_path, {"runtime.lock": SOME_NOT_FOUND})
    assert code == 1
    assert out.splitlines() == [
        "audit: runtime.lock: not audited: fastapi: Dependency not found on PyPI and could not"
        " be audited: fastapi (0.165.0)",
        "audit: runtime.lock: 1 packages audited against pypi, 0 known vulnerabilities,"
        " 1 not audited",
    ]


def test_every_package_audited_and_clean_exits_0(tmp_path: Path) -> None:
    code, out, _ = audit(tmp_path, {"runtime.lock": ALL_CLEAN, "dev.lock": ALL_CLEAN})
    assert code == 0
    assert out.splitlines() == [
        f"audit: {lock}: 2 packages audited against pypi, 0 known vulnerabilities, 0 not audited"
        for lock in ("runtime.lock", "dev.lock")
    ]
