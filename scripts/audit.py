"""`make audit`: check the pinned dependencies against a vulnerability database.

    python scripts/audit.py [LOCK ...]     # default: requirements/runtime.lock and dev.lock
    AUDIT_SERVICE=osv python scripts/audit.py

Runs `pip-audit --require-hashes --disable-pip -r LOCK -f json` for each lock file (exactly
the pinned versions and hashes the image and CI install; nothing is installed or resolved)
and reads its JSON. pip-audit itself exits 0 when it could audit nothing (every package
"not found"), so this script judges the result:

- every package audited, no vulnerability: exit 0;
- a known vulnerability: the package, version, advisory and fixed versions; exit 1;
- some packages audited and some not: the audit is incomplete; exit 1;
- no package of a lock file could be audited, or the service cannot be reached at all: it
  says plainly that no vulnerability database is reachable from this machine and that
  nothing was checked; exit 2 (unless another lock file found something: exit 1), so an
  audit that checked nothing never passes for a clean one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LOCKS = [ROOT / "requirements" / "runtime.lock", ROOT / "requirements" / "dev.lock"]
TIMEOUT_SECONDS = 600
EXIT_CLEAN, EXIT_FOUND, EXIT_NOT_CHECKED = 0, 1, 2
UNREACHABLE_HINTS = (
    "ConnectionError",
    "Name or service not known",
    "Temporary failure in name resolution",
    "Max retries exceeded",
    "timed out",
    "Connection refused",
    "Network is unreachable",
    "SSLError",
)


@dataclass
class Report:
    lock: Path
    audited: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    vulnerable: list[str] = field(default_factory=list)
    error: str = ""  # pip-audit could not run to the end

    @property
    def unreachable(self) -> bool:
        return (not self.audited and bool(self.skipped)) or any(
            hint in self.error for hint in UNREACHABLE_HINTS
        )


def run_pip_audit(lock: Path, service: str) -> Report:
    report = Report(lock)
    command = [
        sys.executable,
        "-m",
        "pip_audit",
        "--require-hashes",
        "--disable-pip",
        "-r",
        str(lock),
        "--format",
        "json",
        "--progress-spinner",
        "off",
        "--timeout",
        "15",
        "--vulnerability-service",
        service,
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        report.error = f"pip-audit did not finish within {TIMEOUT_SECONDS} s (timed out)"
        return report
    try:
        data: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        last = [line for line in done.stderr.splitlines() if line.strip()][-1:]
        report.error = f"pip-audit exited {done.returncode}: {''.join(last) or 'no output'}"
        if done.returncode == 0:
            report.error += " (no JSON report)"
        report.error += "\n" + done.stderr[-2000:]
        return report
    for dependency in data.get("dependencies", []):
        name = f"{dependency.get('name')} {dependency.get('version', '')}".strip()
        if "skip_reason" in dependency:
            report.skipped[name] = str(dependency["skip_reason"])
            continue
        report.audited.append(name)
        for vuln in dependency.get("vulns", []):
            fixed = ", ".join(vuln.get("fix_versions") or []) or "no fixed version"
            report.vulnerable.append(f"{name}: {vuln.get('id')} (fixed in {fixed})")
    return report


def main(argv: list[str]) -> int:
    locks = [Path(arg) for arg in argv] or DEFAULT_LOCKS
    missing = [str(lock) for lock in locks if not lock.is_file()]
    if missing:
        print(f"audit: no such lock file: {', '.join(missing)}", file=sys.stderr)
        return 2
    service = os.environ.get("AUDIT_SERVICE", "pypi")
    reports = [run_pip_audit(lock, service) for lock in locks]
    status = EXIT_CLEAN
    for report in reports:
        where = report.lock.relative_to(ROOT) if report.lock.is_relative_to(ROOT) else report.lock
        if report.unreachable:
            reason = (
                report.error.splitlines()[0]
                if report.error
                else next(iter(report.skipped.values()))
            )
            what = (
                f"{len(report.skipped)} packages could not be audited"
                if report.skipped
                else "pip-audit could not reach it"
            )
            print(
                f"audit: {where}: NOT CHECKED: no vulnerability database ({service}) is"
                f" reachable from this machine; {what} (first reason: {reason})"
            )
            if status == EXIT_CLEAN:
                status = EXIT_NOT_CHECKED
            continue
        if report.error:
            print(f"audit: {where}: pip-audit failed: {report.error}")
            status = EXIT_FOUND
            continue
        for line in report.vulnerable:
            print(f"audit: {where}: VULNERABLE: {line}")
        for name, reason in report.skipped.items():
            print(f"audit: {where}: not audited: {name}: {reason}")
        if report.vulnerable or report.skipped:
            status = EXIT_FOUND
        print(
            f"audit: {where}: {len(report.audited)} packages audited against {service},"
            f" {len(report.vulnerable)} known vulnerabilities,"
            f" {len(report.skipped)} not audited"
        )
    if all(report.unreachable for report in reports):
        print(
            "audit: FAILED: nothing was checked (no vulnerability database reachable); run"
            " `make audit` on a machine with access to PyPI's JSON API or OSV"
            " (AUDIT_SERVICE=osv)."
        )
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
