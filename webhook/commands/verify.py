"""`istio-spiffe-webhook verify`: options, progress on stderr, the report on stdout.

The work is `webhook.cluster.verify`; this module only parses, prints and picks the exit
status: 0 every pod rotating, 1 any pod not, 2 the cluster could not be reached or refused
access (for listing pods, or for `pods/exec` on any pod).
"""

from __future__ import annotations

import datetime
import re
import sys
from pathlib import Path
from typing import Any

import click

from webhook.cluster.client import Cluster, Json, load_api_client
from webhook.cluster.pods import PodNotFound, PodSelection
from webhook.commands.options import (
    cluster_errors,
    config_option,
    context_option,
    kubeconfig_option,
    pod_selection_options,
    settings_from,
)
from webhook.commands.output import output_option, render
from webhook.config import Settings

DEFAULT_INTERVAL = "5m"
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:h|m|s))+")
_PART = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")
HINTS = {
    "stale": "the Workload API provider did not renew it: check the SPIRE agent on the pod's"
    " node and the pod's registration entry",
    "expired": "mTLS with this pod fails: restart it once renewals work again",
    "foreign": "the certificate does not come from the Workload API of the trust domain:"
    " `istio-spiffe-webhook audit` shows whether the pod has the webhook's rewrite",
    "mismatch": "Envoy holds a renewed certificate but still serves the old one: restart the pod",
    "missing": "Envoy has no workload certificate: read istio-proxy's log (SDS) and check the"
    " socket mount",
    "unreachable": "the admin API could not be read; when access was denied: exec needs both"
    " get and create on pods/exec (Kubernetes 1.35+), as manifests/components/verify grants",
}


class Duration(click.ParamType[datetime.timedelta, Any]):
    """A duration as Go writes it: 70m, 1h10m, 90s, 2.5s."""

    name = "duration"

    def convert(self, value: Any, param: Any, ctx: Any) -> datetime.timedelta:
        if isinstance(value, datetime.timedelta):
            return value
        text = str(value).strip()
        if not _DURATION.fullmatch(text):
            self.fail(f"{value!r} is not a duration like 70m, 1h10m or 90s", param, ctx)
        unit = {"h": 3600.0, "m": 60.0, "s": 1.0}
        return datetime.timedelta(seconds=sum(float(n) * unit[u] for n, u in _PART.findall(text)))


@click.command("verify")
@pod_selection_options
@click.option(
    "--trust-domain",
    default=None,
    help="The trust domain SVIDs must be in; any other is `foreign`.",
)
@click.option(
    "--istiod-ca",
    "istiod_ca",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="PEM file of istiod's CA certificates when it uses a plugged-in CA (cacerts);"
    " what they issued is `foreign`. istiod's self-signed CA is recognised without it.",
)
@click.option(
    "--watch",
    "watch",
    type=Duration(),
    default=None,
    help="Sample for this long (70m covers a 1-hour SVID) and report each serial seen.",
)
@click.option(
    "--interval",
    type=Duration(),
    default=DEFAULT_INTERVAL,
    show_default=True,
    help="Time between samples with --watch.",
)
@output_option(("table", "json", "yaml"), show_default=True)
@kubeconfig_option
@context_option
@config_option
def verify_command(
    namespace: str | None,
    all_namespaces: bool,
    selector: str | None,
    pod: str | None,
    only_opted_in: bool,
    trust_domain: str | None,
    istiod_ca: str | None,
    watch: datetime.timedelta | None,
    interval: datetime.timedelta,
    output: str,
    kubeconfig: str | None,
    context: str | None,
    config: str | None,
) -> None:
    """Read the certificate each istio-proxy's Envoy serves and say whether it rotates.

    Envoy's admin API (/certs and the dynamic secrets of /config_dump) is read by running
    `pilot-agent request GET ...` in istio-proxy through the API server (pods/exec).

    Exit status: 0 every pod rotating, 1 any pod not, 2 the cluster cannot be reached or
    access is denied.
    """
    from webhook.cluster import verify

    if namespace is not None and all_namespaces:
        raise click.UsageError("use either --namespace or --all-namespaces")
    settings: Settings = settings_from(config)
    criteria = verify.Criteria(trust_domain, _issuers(istiod_ca))
    selection = PodSelection(namespace, selector, pod, only_opted_in)
    progress = _Progress() if stderr_is_terminal() else None
    try:
        with cluster_errors():
            cluster = Cluster(load_api_client(kubeconfig, context))
            if watch is None:
                report = verify.run_verify(
                    cluster, settings, selection, criteria, progress=progress
                )
            else:
                report = verify.run_watch(
                    cluster,
                    settings,
                    selection,
                    criteria,
                    duration=watch,
                    interval=interval,
                    progress=progress,
                    on_round=_round_line(interval, progress),
                )
    except PodNotFound as error:
        raise click.ClickException(str(error)) from None
    except verify.VerifyError as error:
        raise click.UsageError(str(error)) from None
    finally:
        if progress is not None:
            progress.clear()
    click.echo(render(report, output, table))
    sys.exit(verify.exit_status(report))


def _issuers(path: str | None) -> frozenset[str]:
    if path is None:
        return frozenset()
    from cryptography import x509

    try:
        certificates = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except ValueError:
        raise click.BadParameter(
            f"{path} holds no PEM certificate", param_hint="--istiod-ca"
        ) from None
    return frozenset(c.subject.rfc4514_string() for c in certificates)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


class _Progress:
    """`verify: read 12 of 40 pods`, rewritten in place on a terminal."""

    def __init__(self) -> None:
        self.width = 0

    def __call__(self, done: int, total: int) -> None:
        self.show(f"verify: read {done} of {total} pods")

    def show(self, text: str) -> None:
        click.echo("\r" + text.ljust(self.width), nl=False, err=True)
        self.width = len(text)

    def clear(self) -> None:
        if self.width:
            click.echo("\r" + " " * self.width + "\r", nl=False, err=True)
            self.width = 0


def _round_line(interval: datetime.timedelta, progress: _Progress | None) -> Any:
    """A line per sample of --watch, on a terminal or in a log alike."""
    from webhook.cluster.verify import duration_text

    def line(index: int, rounds: int, pods: int) -> None:
        then = f", next in {duration_text(interval)}" if index < rounds else ""
        if progress is not None:
            progress.clear()
        click.echo(f"verify: sample {index} of {rounds}: {pods} pods read{then}", err=True)

    return line


# --- the table ---------------------------------------------------------------------------


def table(report: Json) -> str:
    """The report for people: a headline, then one block per owner, then what to do."""
    summary = report["summary"]
    counts = ", ".join(f"{n} {v}" for v, n in summary.items() if n)
    watch = report.get("watch")
    when = (
        f"sampled {watch['rounds']} times over {watch['duration']} from {report['checkedAt']}"
        if watch
        else f"read at {report['checkedAt']}"
    )
    if report["podsChecked"]:
        lines = [f"{report['podsChecked']} pods with istio-proxy {when}: {counts}."]
    else:
        lines = ["No running pod with istio-proxy was selected."]
    if report["podsNotRunning"]:
        lines.append(
            f"{report['podsNotRunning']} more pods with istio-proxy are not Running and were"
            " not read."
        )
    if report.get("interrupted"):
        lines.append(f"The watch stopped early: {report['interrupted']}")
    rows = _watch_rows(report) if watch else _rows(report)
    lines.extend(rows)
    present = [v for v, n in summary.items() if n and v in HINTS]
    if present:
        lines.append("")
        lines.extend(f"{v}: {HINTS[v]}" for v in present)
    return "\n".join(lines)


def _rows(report: Json) -> list[str]:
    header = (
        "POD",
        "VERDICT",
        "SPIFFE ID",
        "SERIAL",
        "VALID FROM",
        "EXPIRES",
        "LEFT",
        "SDS UPDATED",
    )
    cells: list[tuple[str, ...]] = [header]
    for group in report["owners"]:
        for pod in group["pods"]:
            cert = pod["default"] or {}
            cells.append(
                (
                    pod["name"],
                    pod["verdict"],
                    *(
                        str(cert.get(k) or "-")
                        for k in ("spiffeId", "serial", "validFrom", "expires", "timeLeft")
                    ),
                    str(cert.get("lastUpdated") or "-"),
                )
            )
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    # One line per row, columns padded to the widest cell of the whole report.
    render = iter(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )
    head = "  " + next(render)
    lines: list[str] = []
    for group in report["owners"]:
        lines += ["", f"{group['namespace']}  {group['kind']}/{group['name']}", head]
        for pod in group["pods"]:
            lines.append("  " + next(render))
            lines.append(f"      {pod['reason']}")
            for root in pod["rootCA"]:
                domain = f" ({root['trustDomain']})" if root["trustDomain"] else ""
                lines.append(f"      ROOTCA {root['subject']}{domain} expires {root['expires']}")
    return lines


def _watch_rows(report: Json) -> list[str]:
    lines: list[str] = []
    for group in report["owners"]:
        lines += ["", f"{group['namespace']}  {group['kind']}/{group['name']}"]
        for pod in group["pods"]:
            unreachable = (
                f", {pod['unreachableSamples']} unreachable" if pod["unreachableSamples"] else ""
            )
            lines.append(
                f"  {pod['name']}  {pod['verdict']}  ({pod['samples']} samples{unreachable},"
                f" {pod['renewals']} renewals)"
            )
            lines.append(f"      {pod['reason']}")
            for serial in pod["serials"]:
                note = {
                    True: "  arrived before the previous one expired",
                    False: "  arrived after the previous one expired",
                    None: "",
                }[serial["renewedBeforeExpiry"]]
                lines.append(
                    f"      serial {serial['serial']}  valid {serial['validFrom']} to"
                    f" {serial['expires']}  seen {serial['firstSeen']} to"
                    f" {serial['lastSeen']}{note}"
                )
    return lines
