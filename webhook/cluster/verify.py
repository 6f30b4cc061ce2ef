"""`verify`: whether the certificate each Istio proxy's Envoy serves is rotating, pod by pod.

For every running pod with istio-proxy (selected like `audit` selects), Envoy's admin API is
read through the Kubernetes API: `pilot-agent request GET certs` and `pilot-agent request GET
config_dump?resource=dynamic_active_secrets`, run in istio-proxy over `pods/exec`
(`webhook.cluster.podexec`). `pilot-agent` is the proxy image's own entrypoint, so this works
on distroless proxies, and it asks the admin port on localhost. What the `default` secret
holds and what `/certs` says the TLS contexts serve are judged against a clock:

- `rotating`: valid, and younger than the point of its lifetime by which a Workload API
  provider has renewed it (SPIRE: 55%, see `RENEW_BY`), plus `RENEW_GRACE` for the
  provider's sync and the SDS push;
- `stale`: valid but older than that: nothing renewed it;
- `expired`: outside its validity (past its end, or not yet valid by this machine's clock);
- `foreign`: not an SVID of `trust_domain`, or issued by istiod's CA (its self-signed CA's
  subject is `O=<trust domain>`, `security/pkg/pki/ca/ca.go`; a plugged-in CA is named with
  `istiod_issuers`);
- `mismatch`: `/certs` lists another serial for the same SPIFFE ID than `config_dump` holds
  (read twice before it is said);
- `missing`: no `default` secret, or none with a readable certificate;
- `unreachable`: the admin API could not be read: the API server's reason (no permission,
  pod gone, ...), istio-proxy not running, or pilot-agent's error (no admin listening).

`watch` samples every `interval` for `duration` and says, per pod, each serial seen and
whether each new one arrived before the one it replaced expired.

Nothing here prints; the command layer (`webhook/commands/verify.py`) does.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from webhook.cluster.client import Cluster, ClusterError, Json
from webhook.cluster.envoyadmin import (
    DEFAULT_SECRET,
    ROOT_SECRET,
    AdminFormatError,
    Certificate,
    Root,
    Secret,
    Served,
    read_secrets,
    read_served,
    same_serial,
)
from webhook.cluster.podexec import ExecFailed, run_in_container
from webhook.cluster.pods import (
    OwnerResolver,
    PodSelection,
    name_of,
    namespace_of,
    select_pods,
)
from webhook.config import Settings
from webhook.rewrite import Contract, InvalidPod, has_proxy

ROTATING, STALE, EXPIRED, FOREIGN, MISMATCH, MISSING, UNREACHABLE = (
    "rotating", "stale", "expired", "foreign", "mismatch", "missing", "unreachable",
)  # fmt: skip
VERDICTS = (ROTATING, STALE, EXPIRED, FOREIGN, MISMATCH, MISSING, UNREACHABLE)
# SPIRE's agent renews an X509-SVID once less than half its lifetime is left, that half
# jittered by +-10% (spiffe/spire pkg/common/rotationutil/rotationutil.go; older releases:
# exactly half): by 55% of its lifetime at the latest. Teleport's tbot renews earlier.
RENEW_BY = 0.55
# ... then its cache sync and the SDS push take seconds: allow this much after that point.
RENEW_GRACE = datetime.timedelta(minutes=2)
CERTS_PATH = "certs"
SECRETS_PATH = "config_dump?resource=dynamic_active_secrets"
EXEC_TIMEOUT = 30.0  # seconds for one pilot-agent request (its own HTTP client allows 60)
WORKERS = 8  # pods read in parallel
MISMATCH_RECHECK = 1.0  # seconds before a mismatch is read again (a rotation in between)

Clock = Callable[[], datetime.datetime]
Progress = Callable[[int, int], None]


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class VerifyError(ValueError):
    """The request cannot be carried out as given (bad option values); one line."""


@dataclass(frozen=True)
class Criteria:
    """What a rotating certificate is, beyond its validity."""

    trust_domain: str | None = None
    istiod_issuers: frozenset[str] = frozenset()  # RFC 4514 subjects of istiod's CAs
    renew_by: float = RENEW_BY  # share of its lifetime by which a renewal has happened


@dataclass(frozen=True)
class Reading:
    """One sample of one pod's Envoy."""

    at: datetime.datetime
    verdict: str
    reason: str
    default: Certificate | None = None
    last_updated: str | None = None
    served: tuple[str, ...] = ()  # serials /certs lists for the default's SPIFFE ID
    roots: tuple[Root, ...] = ()
    api_problem: bool = False  # the API refused us or could not be reached (exit status 2)


# --- judging ---------------------------------------------------------------------------


def judge(
    secrets: dict[str, Secret],
    served: list[Served],
    now: datetime.datetime,
    criteria: Criteria = Criteria(),
) -> tuple[str, str]:
    """The verdict and its reason for what Envoy holds (`secrets`) and serves (`served`)."""
    default = secrets.get(DEFAULT_SECRET)
    if default is None:
        return MISSING, "Envoy has no active secret named default: SDS never delivered one"
    if not default.chain:
        return MISSING, f"the default secret holds no certificate: {default.problem or 'empty'}"
    leaf = default.chain[0]
    if leaf.spiffe_id is None:
        return FOREIGN, f"the certificate (issuer {leaf.issuer}) has no SPIFFE ID (URI SAN)"
    if criteria.trust_domain is not None and leaf.trust_domain != criteria.trust_domain:
        return FOREIGN, (
            f"{leaf.spiffe_id} is in trust domain {leaf.trust_domain}, not {criteria.trust_domain}"
        )
    if leaf.issuer in criteria.istiod_issuers or leaf.issuer == f"O={leaf.trust_domain}":
        return FOREIGN, (
            f"issued by istiod's CA ({leaf.issuer}): Istio's agent took the certificate from"
            " istiod, not from the Workload API"
        )
    if now >= leaf.not_after:
        return EXPIRED, (
            f"expired {duration_text(now - leaf.not_after)} ago ({timestamp(leaf.not_after)}):"
            " nothing renewed it"
        )
    if leaf.not_before > now + RENEW_GRACE:
        return EXPIRED, (
            f"not valid before {timestamp(leaf.not_before)},"
            f" {duration_text(leaf.not_before - now)} after this machine's clock:"
            " a clock is wrong"
        )
    mine = [s for s in served if leaf.spiffe_id in s.spiffe_ids]
    other = next((s for s in mine if not same_serial(s.serial, leaf.serial)), None)
    if other is not None:
        return MISMATCH, (
            f"/certs serves serial {other.serial} (expires {other.expiration or 'unknown'})"
            f" but the default secret holds {leaf.serial}: Envoy did not switch to the"
            " certificate SDS delivered"
        )
    lifetime = leaf.not_after - leaf.not_before
    age = max(now - leaf.not_before, datetime.timedelta(0))
    renew_at = leaf.not_before + lifetime * criteria.renew_by
    share = f"{_percent(age, lifetime)} into its {duration_text(lifetime)} lifetime"
    if now > renew_at + RENEW_GRACE:
        return STALE, (
            f"issued {duration_text(age)} ago, {share}: the provider renews by"
            f" {criteria.renew_by:.0%} ({timestamp(renew_at)}) and nothing renewed it"
        )
    reason = f"issued {duration_text(age)} ago, {share}; renewal due by {timestamp(renew_at)}"
    if not mine:
        reason += "; no TLS listener or cluster uses it yet (/certs lists none)"
    return ROTATING, reason


# --- reading one pod ---------------------------------------------------------------------


class Sampler:
    """Reads one pod's Envoy admin API through `pods/exec` and judges it."""

    def __init__(
        self,
        cluster: Cluster,
        settings: Settings,
        criteria: Criteria,
        clock: Clock | None = None,
        exec_timeout: float = EXEC_TIMEOUT,
        recheck_after: float = MISMATCH_RECHECK,
    ) -> None:
        self.configuration = cluster.api_client.configuration
        self.settings = settings
        self.criteria = criteria
        self.clock = clock or utc_now
        self.exec_timeout = exec_timeout
        self.recheck_after = recheck_after

    def read(self, pod: Json) -> Reading:
        not_running = proxy_not_running(pod, self.settings)
        if not_running:
            return Reading(self.clock(), UNREACHABLE, not_running)
        reading = self._read_once(pod)
        if reading.verdict == MISMATCH:  # a rotation between the two reads looks the same
            time.sleep(self.recheck_after)
            reading = self._read_once(pod)
        return reading

    def _read_once(self, pod: Json) -> Reading:
        try:
            served = read_served(self._admin(pod, CERTS_PATH))
            secrets = read_secrets(self._admin(pod, SECRETS_PATH))
        except ExecFailed as error:
            return Reading(
                self.clock(),
                UNREACHABLE,
                error.reason,
                api_problem=error.denied or error.unreachable_api,
            )
        except AdminFormatError as error:
            return Reading(self.clock(), UNREACHABLE, str(error))
        now = self.clock()
        verdict, reason = judge(secrets, served, now, self.criteria)
        default = secrets.get(DEFAULT_SECRET)
        leaf = default.chain[0] if default is not None and default.chain else None
        root = secrets.get(ROOT_SECRET)
        return Reading(
            now,
            verdict,
            reason,
            default=leaf,
            last_updated=default.last_updated if default is not None else None,
            served=tuple(
                dict.fromkeys(
                    s.serial
                    for s in served
                    if leaf is None or leaf.spiffe_id is None or leaf.spiffe_id in s.spiffe_ids
                )
            ),
            roots=root.roots if root is not None else (),
        )

    def _admin(self, pod: Json, path: str) -> bytes:
        command = ["pilot-agent", "request", "GET", path]
        result = run_in_container(
            self.configuration,
            namespace_of(pod),
            name_of(pod),
            self.settings.proxy_container,
            command,
            self.exec_timeout,
        )
        if result.exit_code != 0:
            said = (result.stderr or result.stdout).decode("utf-8", "replace")
            said = " ".join(said.split())[:300] or "no output"
            raise ExecFailed(
                f"Envoy's admin API did not answer: `{' '.join(command)}` exited with"
                f" {result.exit_code}: {said}"
            )
        return result.stdout


def proxy_not_running(pod: Json, settings: Settings) -> str:
    """Why istio-proxy cannot answer according to the pod's status; "" when it may."""
    status = pod.get("status") or {}
    phase = status.get("phase")
    if phase != "Running":
        return f"the pod is {phase or 'in no phase'}, not Running"
    for key in ("containerStatuses", "initContainerStatuses"):
        for entry in status.get(key) or []:
            if not isinstance(entry, dict) or entry.get("name") != settings.proxy_container:
                continue
            state = entry.get("state") or {}
            if "running" in state:
                return ""
            for what in ("waiting", "terminated"):
                if isinstance(state.get(what), dict):
                    why = state[what].get("reason")
                    detail = f"{what}: {why}" if why else what
                    return f"{settings.proxy_container} is not running ({detail})"
            return f"{settings.proxy_container} is not running"
    return ""


# --- one pass over the cluster -------------------------------------------------------------


@dataclass
class _Target:
    namespace: str
    name: str
    owner: tuple[str, str]
    readings: list[Reading] = field(default_factory=list)


def _targets(
    cluster: Cluster, settings: Settings, selection: PodSelection, resolver: OwnerResolver
) -> tuple[list[tuple[Json, tuple[str, str]]], int]:
    """The running pods with istio-proxy and their owners; and how many were not running."""
    selected = select_pods(cluster, settings, selection)
    contract = Contract.from_settings(settings)
    targets, not_running = [], 0
    for pod in selected.pods:
        try:
            proxied = has_proxy(pod, contract)
        except InvalidPod:
            continue
        if not proxied:
            continue
        if (pod.get("status") or {}).get("phase") != "Running":
            not_running += 1  # nothing serves a certificate yet: not judged
            continue
        targets.append((pod, resolver.owner(pod)))
    return targets, not_running


def sample_all(
    sampler: Sampler, pods: list[Json], progress: Progress | None = None
) -> list[Reading]:
    """Each pod's reading, in the order of `pods`, WORKERS at a time."""
    readings: list[Reading | None] = [None] * len(pods)
    if progress is not None:
        progress(0, len(pods))
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="verify") as pool:
        futures = {pool.submit(sampler.read, pod): index for index, pod in enumerate(pods)}
        for done, future in enumerate(as_completed(futures), start=1):
            readings[futures[future]] = future.result()
            if progress is not None:
                progress(done, len(pods))
    return [r for r in readings if r is not None]


def run_verify(
    cluster: Cluster,
    settings: Settings,
    selection: PodSelection,
    criteria: Criteria = Criteria(),
    *,
    sampler: Sampler | None = None,
    clock: Clock | None = None,
    progress: Progress | None = None,
) -> Json:
    """One reading of every selected pod, as a JSON-ready report grouped by owner."""
    clock = clock or utc_now
    sampler = sampler or Sampler(cluster, settings, criteria, clock)
    started = clock()
    resolver = OwnerResolver(cluster)
    targets, not_running = _targets(cluster, settings, selection, resolver)
    readings = sample_all(sampler, [pod for pod, _ in targets], progress)
    pods = [
        _Target(namespace_of(pod), name_of(pod), owner, [reading])
        for (pod, owner), reading in zip(targets, readings, strict=True)
    ]
    return _report(
        {"checkedAt": timestamp(started), "trustDomain": criteria.trust_domain},
        [(t, {"name": t.name, **reading_json(t.readings[-1])}) for t in pods],
        not_running,
    )


def _report(head: Json, pods: list[tuple[_Target, Json]], not_running: int) -> Json:
    """The report: pods grouped by owner. A pod counts as an API problem when its verdict is
    `unreachable` because the API refused access or could not be reached (exit status 2);
    in a watch, a problem in some samples only is not one."""
    groups: dict[tuple[str, str, str], list[Json]] = {}
    for target, entry in pods:
        groups.setdefault((target.namespace, *target.owner), []).append(entry)
    owners: list[Json] = [
        {
            "namespace": key[0],
            "kind": key[1],
            "name": key[2],
            "pods": sorted(groups[key], key=lambda entry: str(entry["name"])),
        }
        for key in sorted(groups)
    ]
    summary = {v: 0 for v in VERDICTS}
    for _, entry in pods:
        summary[entry["verdict"]] += 1
    return {
        **head,
        "podsChecked": len(pods),
        "podsNotRunning": not_running,
        "summary": summary,
        "apiProblems": sum(
            1
            for target, entry in pods
            if entry["verdict"] == UNREACHABLE and target.readings[-1].api_problem
        ),
        "owners": owners,
    }


def reading_json(reading: Reading) -> Json:
    cert = reading.default
    return {
        "verdict": reading.verdict,
        "reason": reading.reason,
        "checkedAt": timestamp(reading.at),
        "default": None
        if cert is None
        else {
            "spiffeId": cert.spiffe_id,
            "serial": cert.serial,
            "issuer": cert.issuer,
            "validFrom": timestamp(cert.not_before),
            "expires": timestamp(cert.not_after),
            "timeLeft": duration_text(cert.not_after - reading.at)
            if cert.not_after > reading.at
            else "0s",
            "lastUpdated": reading.last_updated,
        },
        "served": list(reading.served),
        "rootCA": [
            {
                "trustDomain": root.trust_domain,
                "subject": root.certificate.subject,
                "expires": timestamp(root.certificate.not_after),
            }
            for root in reading.roots
        ],
    }


def exit_status(report: Json) -> int:
    """0 every pod rotating, 1 any pod not, 2 the API refused access or was unreachable."""
    if report["apiProblems"] or report.get("interrupted"):
        return 2
    summary = report["summary"]
    return 1 if any(summary[v] for v in VERDICTS if v != ROTATING) else 0


# --- watching ------------------------------------------------------------------------------


def run_watch(
    cluster: Cluster,
    settings: Settings,
    selection: PodSelection,
    criteria: Criteria = Criteria(),
    *,
    duration: datetime.timedelta,
    interval: datetime.timedelta,
    sampler: Sampler | None = None,
    clock: Clock | None = None,
    sleep: Callable[[float], None] | None = None,
    progress: Progress | None = None,
    on_round: Callable[[int, int, int], None] | None = None,
) -> Json:
    """Sample every `interval` for `duration` (a first sample at once, then one per interval
    up to `duration`); per pod, the serials seen and whether each renewal came in time.

    Pods that appear later are sampled from then on; pods that disappear keep the samples
    taken. If the API fails after the first round, the report says so (`interrupted`)."""
    if interval <= datetime.timedelta(0):
        raise VerifyError("--interval must be longer than 0s")
    if duration < interval:
        raise VerifyError(
            f"--watch {duration_text(duration)} is shorter than --interval"
            f" {duration_text(interval)}: nothing would be sampled twice"
        )
    clock, sleep = clock or utc_now, sleep or time.sleep
    sampler = sampler or Sampler(cluster, settings, criteria, clock)
    rounds = duration // interval + 1
    started = clock()
    resolver = OwnerResolver(cluster)
    targets: dict[tuple[str, str], _Target] = {}
    not_running = 0
    interrupted = ""
    for index in range(rounds):
        wait = (started + interval * index - clock()).total_seconds()
        if wait > 0:
            sleep(wait)
        try:
            pods, not_running = _targets(cluster, settings, selection, resolver)
        except ClusterError as error:
            if index == 0:
                raise
            interrupted = f"round {index + 1} of {rounds}: {error}"
            break
        readings = sample_all(sampler, [pod for pod, _ in pods], progress)
        for (pod, owner), reading in zip(pods, readings, strict=True):
            key = (namespace_of(pod), name_of(pod))
            target = targets.setdefault(key, _Target(key[0], key[1], owner))
            target.readings.append(reading)
        if on_round is not None:
            on_round(index + 1, rounds, len(pods))
    report = _report(
        {
            "checkedAt": timestamp(started),
            "trustDomain": criteria.trust_domain,
            "watch": {
                "duration": duration_text(duration),
                "interval": duration_text(interval),
                "rounds": rounds,
                "ended": timestamp(clock()),
            },
        },
        [(t, {"name": t.name, **watch_json(t.readings, criteria)}) for t in targets.values()],
        not_running,
    )
    if interrupted:
        report["interrupted"] = interrupted
    return report


def watch_json(readings: list[Reading], criteria: Criteria) -> Json:
    """A pod's watch: its verdict over every sample and the serials it went through."""
    serials = _serials(readings)
    reachable = [r for r in readings if r.verdict != UNREACHABLE]
    if not reachable:
        verdict, reason = UNREACHABLE, readings[-1].reason
    else:
        first_bad = next((r for r in reachable if r.verdict != ROTATING), None)
        late = next((i for i, s in enumerate(serials) if s["renewedBeforeExpiry"] is False), 0)
        renewals = sum(1 for s in serials if s["renewedBeforeExpiry"])
        if first_bad is not None:
            verdict, reason = first_bad.verdict, f"at {timestamp(first_bad.at)}: {first_bad.reason}"
        elif late:
            before, after = serials[late - 1], serials[late]
            verdict = EXPIRED
            reason = (
                f"serial {before['serial']} expired at {before['expires']} before its successor"
                f" {after['serial']} was issued at {after['validFrom']}: a renewal was missed"
                " between two samples"
            )
        elif renewals:
            verdict = ROTATING
            reason = (
                f"renewed {renewals} time{'s' if renewals > 1 else ''}, each time before the"
                " certificate it replaced expired"
            )
        else:
            verdict = ROTATING
            last = reachable[-1]
            due = ""
            if last.default is not None:
                cert = last.default
                renew_at = cert.not_before + (cert.not_after - cert.not_before) * (
                    criteria.renew_by
                )
                due = f" (next due by {timestamp(renew_at)})"
            reason = f"valid at every sample; no renewal was due while watching{due}"
    return {
        "verdict": verdict,
        "reason": reason,
        "samples": len(readings),
        "unreachableSamples": len(readings) - len(reachable),
        "renewals": sum(1 for s in serials if s["renewedBeforeExpiry"]),
        "serials": serials,
        "last": reading_json(readings[-1]),
    }


def _serials(readings: Iterable[Reading]) -> list[Json]:
    """Each certificate seen, in order, with whether it arrived before its predecessor ended."""
    seen: list[Json] = []
    certs: list[Certificate] = []
    for reading in readings:
        cert = reading.default
        if cert is None:
            continue
        if certs and same_serial(certs[-1].serial, cert.serial):
            seen[-1]["lastSeen"] = timestamp(reading.at)
            if reading.at >= cert.not_after:
                seen[-1]["heldAfterExpiry"] = True
            continue
        entry: Json = {
            "serial": cert.serial,
            "spiffeId": cert.spiffe_id,
            "validFrom": timestamp(cert.not_before),
            "expires": timestamp(cert.not_after),
            "firstSeen": timestamp(reading.at),
            "lastSeen": timestamp(reading.at),
            "heldAfterExpiry": reading.at >= cert.not_after,
            "renewedBeforeExpiry": None,  # the first one seen: its predecessor is unknown
        }
        if certs:
            previous, before = certs[-1], seen[-1]
            entry["renewedBeforeExpiry"] = (
                not before["heldAfterExpiry"] and cert.not_before <= previous.not_after
            )
        seen.append(entry)
        certs.append(cert)
    return seen


# --- formatting --------------------------------------------------------------------------


def timestamp(when: datetime.datetime) -> str:
    """A UTC time as RFC 3339 to the second, as Envoy's /certs prints it."""
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration_text(span: datetime.timedelta) -> str:
    """A span the way Go prints durations, to the second: 1h0m0s, 29m30s, 45s, 1.5s, 500ms."""
    total = span.total_seconds()
    if 0 < total < 1:
        return f"{total * 1000:.0f}ms"
    if total < 60 and total != int(total):
        return f"{total:.3f}".rstrip("0") + "s"
    seconds = max(int(total), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def _percent(part: datetime.timedelta, whole: datetime.timedelta) -> str:
    if whole <= datetime.timedelta(0):
        return "100%"
    return f"{part / whole:.0%}"
