"""`verify` end to end: the real `kubernetes` client execs `pilot-agent request` in each pod's
istio-proxy through the fake API server (WebSocket, channel protocol), a fake Envoy answers
with its admin JSON carrying certificates made here, and the verdicts are judged against a
clock the tests set. The shared captures of real Istio proxies go through the same path.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tests import fakeapi as f
from tests.fakeenvoy import CA, HOUR, Envoy, Issued
from tests.oracle import SHARED, admission_reviews, expected
from webhook.cli import main
from webhook.cluster.client import Cluster, ClusterError, load_api_client
from webhook.cluster.pods import PodSelection
from webhook.cluster.verify import (
    VERDICTS,
    Criteria,
    Sampler,
    VerifyError,
    exit_status,
    run_verify,
    run_watch,
)
from webhook.config import Settings

UTC = datetime.UTC
NOW = datetime.datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
MINUTE = datetime.timedelta(minutes=1)
SETTINGS = Settings()
INJECT = "istio-spiffe-webhook/inject"
REVIEWS = admission_reviews()
NATIVE = expected(REVIEWS["hello-native"]["request"]["object"], SETTINGS)  # rewritten pods
CLASSIC = expected(REVIEWS["hello-classic"]["request"]["object"], SETTINGS)
SPIRE = CA("example.org")
CAPTURES = SHARED / "envoy-admin"


def t(text: str) -> str:
    """A time of day on NOW's date, as the report prints it."""
    return f"2026-11-20T{text}Z"


class Clock:
    """A clock the tests move; `sleep` moves it and runs what is due (a provider's renewals)."""

    def __init__(self, now: datetime.datetime = NOW) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self.on_sleep: list[Callable[[datetime.datetime], None]] = []

    def __call__(self) -> datetime.datetime:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += datetime.timedelta(seconds=seconds)
        for hook in self.on_sleep:
            hook(self.now)


def shop(fake: f.FakeAPI) -> tuple[dict[str, Any], dict[str, Any]]:
    """Namespace shop (opted in) with Deployment web and its ReplicaSet."""
    web = f.deployment("web", "shop")
    rs = f.replicaset("web-6d4cf", "shop", web)
    fake.add(f.namespace("shop", {INJECT: "enabled"}), web, rs)
    return web, rs


def add_proxied(
    fake: f.FakeAPI,
    name: str,
    envoy: Envoy | None,
    owner: dict[str, Any] | None = None,
    ns: str = "shop",
    source: dict[str, Any] = NATIVE,
    **kw: Any,
) -> dict[str, Any]:
    pod = f.running_pod(source, name, ns, owner, **kw)
    fake.add(pod)
    if envoy is not None:
        fake.processes[ns, name, "istio-proxy"] = envoy.pilot_agent
    return pod


def svid(minutes_old: float, ca: CA = SPIRE, path: str = "ns/shop/sa/web", **kw: Any) -> Issued:
    return ca.issue(path, NOW - minutes_old * MINUTE, **kw)


def verify_report(
    kubeconfig: Path,
    selection: PodSelection | None = None,
    criteria: Criteria | None = None,
    clock: Callable[[], datetime.datetime] | None = None,
) -> dict[str, Any]:
    cluster = Cluster(load_api_client(str(kubeconfig)))
    clock = clock or Clock()
    sampler = Sampler(cluster, SETTINGS, criteria or Criteria(), clock, recheck_after=0)
    return run_verify(
        cluster, SETTINGS, selection or PodSelection(), criteria or Criteria(), sampler=sampler,
        clock=clock,
    )  # fmt: skip


def only_pod(report: dict[str, Any]) -> dict[str, Any]:
    (owner,) = report["owners"]
    (pod,) = owner["pods"]
    return pod


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The clock the command uses, fixed at NOW."""
    clock = Clock()
    monkeypatch.setattr("webhook.cluster.verify.utc_now", clock)
    return clock


def verify(kubeconfig: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["verify", "--kubeconfig", str(kubeconfig), *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.stdout, result.stderr


# --- one verdict each ----------------------------------------------------------------------


def test_a_young_svid_is_rotating_with_everything_envoy_holds(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    _, rs = shop(fake)
    issued = svid(10)
    add_proxied(
        fake, "web-6d4cf-a", Envoy(SPIRE, issued, last_updated="2026-11-20T09:50:00.5Z"), rs
    )
    report = verify_report(kubeconfig)
    assert report == {
        "checkedAt": t("10:00:00"),
        "trustDomain": None,
        "podsChecked": 1,
        "podsNotRunning": 0,
        "summary": {v: int(v == "rotating") for v in VERDICTS},
        "apiProblems": 0,
        "owners": [
            {
                "namespace": "shop",
                "kind": "Deployment",
                "name": "web",
                "pods": [
                    {
                        "name": "web-6d4cf-a",
                        "verdict": "rotating",
                        "reason": "issued 10m0s ago, 17% into its 1h0m0s lifetime; renewal due"
                        f" by {t('10:23:00')}",
                        "checkedAt": t("10:00:00"),
                        "default": {
                            "spiffeId": "spiffe://example.org/ns/shop/sa/web",
                            "serial": issued.serial,
                            "issuer": "O=SPIFFE,C=US",
                            "validFrom": t("09:50:00"),
                            "expires": t("10:50:00"),
                            "timeLeft": "50m0s",
                            "lastUpdated": "2026-11-20T09:50:00.5Z",
                        },
                        "served": [issued.serial],  # two TLS contexts serve it
                        "rootCA": [
                            {
                                "trustDomain": None,
                                "subject": "CN=Root CA,O=my-company.org",
                                "expires": "2035-12-30T00:00:00Z",
                            }
                        ],
                    }
                ],
            }
        ],
    }
    assert exit_status(report) == 0
    assert [c[3] for c in fake.execs] == [
        ["pilot-agent", "request", "GET", "certs"],
        ["pilot-agent", "request", "GET", "config_dump?resource=dynamic_active_secrets"],
    ]
    assert {(c[0], c[1], c[2]) for c in fake.execs} == {("shop", "web-6d4cf-a", "istio-proxy")}


@pytest.mark.parametrize(
    ("minutes_old", "verdict", "reason"),
    [
        (0, "rotating", "issued 0s ago, 0% into its 1h0m0s lifetime; renewal due by"
                        " 2026-11-20T10:33:00Z"),
        (35, "rotating", "issued 35m0s ago, 58% into its 1h0m0s lifetime; renewal due by"
                         " 2026-11-20T09:58:00Z"),  # within the 2 minutes a push may take
        (35.5, "stale", "issued 35m30s ago, 59% into its 1h0m0s lifetime: the provider renews"
                        " by 55% (2026-11-20T09:57:30Z) and nothing renewed it"),
        (59.9, "stale", "issued 59m54s ago, 100% into its 1h0m0s lifetime: the provider renews"
                        " by 55% (2026-11-20T09:33:06Z) and nothing renewed it"),
        (60, "expired", "expired 0s ago (2026-11-20T10:00:00Z): nothing renewed it"),
        (75, "expired", "expired 15m0s ago (2026-11-20T09:45:00Z): nothing renewed it"),
        (-5, "expired", "not valid before 2026-11-20T10:05:00Z, 5m0s after this machine's"
                        " clock: a clock is wrong"),
    ],
)  # fmt: skip
def test_the_age_of_the_svid_decides_rotating_stale_or_expired(
    fake: f.FakeAPI, kubeconfig: Path, minutes_old: float, verdict: str, reason: str
) -> None:
    add_proxied(fake, "a", Envoy(SPIRE, svid(minutes_old)))
    report = verify_report(kubeconfig)
    assert (only_pod(report)["verdict"], only_pod(report)["reason"]) == (verdict, reason)
    assert report["summary"][verdict] == 1
    assert exit_status(report) == (0 if verdict == "rotating" else 1)


def test_an_svid_of_another_trust_domain_is_foreign(fake: f.FakeAPI, kubeconfig: Path) -> None:
    add_proxied(fake, "a", Envoy(SPIRE, svid(10, trust_domain="other.org")))
    pod = only_pod(verify_report(kubeconfig, criteria=Criteria(trust_domain="example.org")))
    assert (pod["verdict"], pod["reason"]) == (
        "foreign",
        "spiffe://other.org/ns/shop/sa/web is in trust domain other.org, not example.org",
    )
    assert only_pod(verify_report(kubeconfig))["verdict"] == "rotating"  # no --trust-domain


def test_a_certificate_from_istiods_self_signed_ca_is_foreign(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    istiod = CA("example.org", istiod=True)
    add_proxied(
        fake, "a", Envoy(istiod, istiod.issue("ns/shop/sa/web", NOW - 10 * MINUTE, 24 * HOUR))
    )
    report = verify_report(kubeconfig, criteria=Criteria(trust_domain="example.org"))
    assert (only_pod(report)["verdict"], only_pod(report)["reason"]) == (
        "foreign",
        "issued by istiod's CA (O=example.org): Istio's agent took the certificate from istiod,"
        " not from the Workload API",
    )
    assert exit_status(report) == 1


def test_a_certificate_from_a_plugged_in_istiod_ca_is_foreign_when_named(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    plugged = CA("example.org")  # looks like any CA: only --istiod-ca tells
    add_proxied(fake, "a", Envoy(plugged, svid(10, ca=plugged)))
    assert only_pod(verify_report(kubeconfig))["verdict"] == "rotating"
    criteria = Criteria(istiod_issuers=frozenset({plugged.signer.subject.rfc4514_string()}))
    assert only_pod(verify_report(kubeconfig, criteria=criteria))["verdict"] == "foreign"


def test_a_certificate_without_a_spiffe_id_is_foreign(fake: f.FakeAPI, kubeconfig: Path) -> None:
    issued = svid(10)
    plain = SPIRE._sign(issued.leaf.subject, SPIRE.signer.subject, SPIRE.signer_key,
                        SPIRE.signer_key, NOW - 10 * MINUTE, HOUR)  # fmt: skip
    add_proxied(fake, "a", Envoy(SPIRE, Issued(plain, [plain])))
    pod = only_pod(verify_report(kubeconfig))
    assert (pod["verdict"], pod["reason"]) == (
        "foreign",
        "the certificate (issuer O=SPIFFE,C=US) has no SPIFFE ID (URI SAN)",
    )


def test_envoy_serving_another_serial_than_sds_delivered_is_a_mismatch(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    old, new = svid(40), svid(10)
    add_proxied(fake, "a", Envoy(SPIRE, held=new, served=old))
    report = verify_report(kubeconfig)
    pod = only_pod(report)
    assert (pod["verdict"], pod["reason"]) == (
        "mismatch",
        f"/certs serves serial {old.serial} (expires {t('10:20:00')}) but the default secret"
        f" holds {new.serial}: Envoy did not switch to the certificate SDS delivered",
    )
    assert pod["served"] == [old.serial]
    assert len(fake.execs) == 4  # read twice: a rotation between the two reads looks the same
    assert exit_status(report) == 1


def test_a_rotation_between_the_two_reads_is_not_a_mismatch(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    old, new = svid(31), svid(0)
    envoy = Envoy(SPIRE, held=new, served=old)  # /certs read before the TLS contexts switched

    def switching(command: list[str]) -> f.Exited:
        answer = envoy.pilot_agent(command)
        if command[-1].startswith("config_dump"):
            envoy.served = new
        return answer

    add_proxied(fake, "a", envoy)
    fake.processes["shop", "a", "istio-proxy"] = switching
    assert only_pod(verify_report(kubeconfig))["verdict"] == "rotating"


def test_a_pod_no_tls_context_uses_yet_is_judged_by_its_secret(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    envoy = Envoy(SPIRE, svid(10))
    envoy.certs = lambda: {"certificates": []}  # type: ignore[method-assign]
    add_proxied(fake, "a", envoy)
    pod = only_pod(verify_report(kubeconfig))
    assert pod["verdict"] == "rotating"
    assert pod["reason"].endswith("; no TLS listener or cluster uses it yet (/certs lists none)")


def test_no_default_secret_is_missing(fake: f.FakeAPI, kubeconfig: Path) -> None:
    add_proxied(fake, "a", Envoy(SPIRE, None))
    report = verify_report(kubeconfig)
    pod = only_pod(report)
    assert (pod["verdict"], pod["reason"], pod["default"]) == (
        "missing",
        "Envoy has no active secret named default: SDS never delivered one",
        None,
    )
    assert pod["rootCA"] == [
        {"trustDomain": None, "subject": "CN=Root CA,O=my-company.org",
         "expires": "2035-12-30T00:00:00Z"}
    ]  # fmt: skip
    assert exit_status(report) == 1


def test_a_federated_rootca_lists_its_trust_domains(fake: f.FakeAPI, kubeconfig: Path) -> None:
    add_proxied(fake, "a", Envoy(SPIRE, svid(10), federated=True))
    assert [r["trustDomain"] for r in only_pod(verify_report(kubeconfig))["rootCA"]] == [
        "example.org"
    ]


# --- unreachable -----------------------------------------------------------------------------


def test_forbidden_exec_is_unreachable_with_the_api_servers_reason_and_exit_2(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    add_proxied(fake, "a", Envoy(SPIRE, svid(10)))
    fake.deny("pods/exec")
    report = verify_report(kubeconfig)
    pod = only_pod(report)
    assert (pod["verdict"], pod["reason"]) == (
        "unreachable",
        'access denied: pods "a" is forbidden: User "system:serviceaccount:default:auditor"'
        ' cannot get resource "pods/exec" in API group "" in the namespace "shop" (403)',
    )
    assert (report["apiProblems"], exit_status(report)) == (1, 2)


def test_a_proxy_without_an_admin_listening_is_unreachable_with_pilot_agents_error(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    add_proxied(fake, "a", Envoy(SPIRE, svid(10), admin_up=False))
    report = verify_report(kubeconfig)
    assert only_pod(report)["reason"] == (
        "Envoy's admin API did not answer: `pilot-agent request GET certs` exited with 1:"
        ' Error: Get "http://localhost:15000/certs": dial tcp 127.0.0.1:15000: connect:'
        " connection refused"
    )
    assert (report["summary"]["unreachable"], exit_status(report)) == (1, 1)


def test_a_proxy_image_without_pilot_agent_is_unreachable(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    add_proxied(fake, "a", None)  # no process: the runtime cannot start pilot-agent
    assert only_pod(verify_report(kubeconfig))["reason"] == (
        "Internal error occurred: error executing command in container: failed to exec in"
        ' container: OCI runtime exec failed: exec: "pilot-agent": executable file not found'
        " in $PATH: unknown"
    )


def test_an_admin_answer_that_is_not_json_is_unreachable(fake: f.FakeAPI, kubeconfig: Path) -> None:
    add_proxied(fake, "a", None)
    fake.processes["shop", "a", "istio-proxy"] = lambda cmd: f.Exited(b"<html>oops</html>\n")
    assert only_pod(verify_report(kubeconfig))["reason"] == (
        "/certs answered something that is not JSON: '<html>oops</html>'"
    )


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        ({"waiting": {"reason": "CrashLoopBackOff"}}, "istio-proxy is not running (waiting:"
                                                     " CrashLoopBackOff)"),
        ({"terminated": {"reason": "Error", "exitCode": 1}}, "istio-proxy is not running"
                                                            " (terminated: Error)"),
    ],
)  # fmt: skip
def test_a_proxy_that_is_not_running_is_unreachable_without_an_exec(
    fake: f.FakeAPI, kubeconfig: Path, state: dict[str, Any], reason: str
) -> None:
    pod = f.running_pod(NATIVE, "a", "shop")
    pod["status"]["initContainerStatuses"] = [
        {"name": "istio-proxy", "state": state, "ready": False, "restartCount": 4,
         "image": "istio/proxyv2:1.28.0", "imageID": "", "started": False}
    ]  # fmt: skip
    fake.add(pod)
    pod_report = only_pod(verify_report(kubeconfig))
    assert (pod_report["verdict"], pod_report["reason"]) == ("unreachable", reason)
    assert fake.execs == []


def test_a_pod_deleted_before_its_exec_is_unreachable_with_the_api_servers_reason(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    pod = add_proxied(fake, "a", Envoy(SPIRE, svid(10)))
    cluster = Cluster(load_api_client(str(kubeconfig)))
    sampler = Sampler(cluster, SETTINGS, Criteria(), Clock())
    fake.remove(pod)
    reading = sampler.read(pod)
    assert (reading.verdict, reading.reason) == ("unreachable", 'pods "a" not found (404)')


# --- the captured proxies --------------------------------------------------------------------


def recorded(name: str, serial: str, spiffe_id: str) -> Callable[[list[str]], f.Exited]:
    """pilot-agent request answering with a captured dump (istioctl's mask form; verify asks
    with resource=, and both shapes are Envoy's) and a /certs that serves its leaf."""
    dump = (CAPTURES / f"{name}-secrets-config_dump.json").read_bytes()
    certs = {"certificates": [{"ca_cert": [], "cert_chain": [
        {"path": "<inline>", "serial_number": serial, "subject_alt_names": [{"uri": spiffe_id}],
         "days_until_expiration": "0"}]}]}  # fmt: skip

    def run(command: list[str]) -> f.Exited:
        if command[-1] == "certs":
            return f.Exited(json.dumps(certs).encode() + b"\n")
        return f.Exited(dump + b"\n")

    return run


SPIRE_ID = "spiffe://east.local/ns/istio-system/sa/federation-ingress-gateway-service-account"


@pytest.mark.parametrize(
    ("now", "trust_domain", "verdict"),
    [
        ("2024-10-27T21:50:00Z", None, "rotating"),
        ("2024-10-27T21:50:00Z", "east.local", "rotating"),
        ("2024-10-27T21:50:00Z", "west.local", "foreign"),
        ("2024-10-27T22:20:00Z", None, "stale"),
        ("2024-10-27T22:44:37Z", None, "expired"),
    ],
)
def test_the_captured_spire_proxy_is_judged_by_the_clock(
    fake: f.FakeAPI, kubeconfig: Path, now: str, trust_domain: str | None, verdict: str
) -> None:
    add_proxied(fake, "gw", None)
    fake.processes["shop", "gw", "istio-proxy"] = recorded(
        "spire", "cd4902e499169b11ec171dad1668adbb", SPIRE_ID
    )
    clock = Clock(datetime.datetime.fromisoformat(now))
    pod = only_pod(verify_report(kubeconfig, criteria=Criteria(trust_domain), clock=clock))
    assert pod["verdict"] == verdict
    assert pod["default"] == {
        "spiffeId": SPIRE_ID,
        "serial": "cd4902e499169b11ec171dad1668adbb",
        "issuer": "O=SPIFFE,C=US",
        "validFrom": "2024-10-27T21:44:27Z",
        "expires": "2024-10-27T22:44:37Z",
        "timeLeft": pod["default"]["timeLeft"],
        "lastUpdated": "2024-10-25T13:26:36.591Z",
    }
    assert [(r["trustDomain"], r["expires"]) for r in pod["rootCA"]] == [
        ("east.local", "2034-10-23T13:23:05Z"),
        ("west.local", "2034-10-23T13:23:05Z"),
    ]


def test_the_captured_istiod_proxy_is_foreign(fake: f.FakeAPI, kubeconfig: Path) -> None:
    add_proxied(fake, "waypoint", None)
    fake.processes["shop", "waypoint", "istio-proxy"] = recorded(
        "istio",
        "6fbee254c22900615cb1f74e3d2f1713",
        "spiffe://cluster.local/ns/ambient/sa/namespace-istio-waypoint",
    )
    clock = Clock(datetime.datetime(2023, 5, 15, 2, 0, tzinfo=UTC))
    pod = only_pod(verify_report(kubeconfig, clock=clock))
    assert (pod["verdict"], pod["reason"]) == (
        "foreign",
        "issued by istiod's CA (O=cluster.local): Istio's agent took the certificate from"
        " istiod, not from the Workload API",
    )


# --- selection and grouping ----------------------------------------------------------------


def test_pods_are_grouped_by_owner_and_only_running_proxies_are_read(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    _, rs = shop(fake)
    nightly = f.cronjob("nightly", "shop")
    job = f.job("nightly-29400000", "shop", nightly)
    fake.add(nightly, job, f.namespace("plain"))
    add_proxied(fake, "web-6d4cf-b", Envoy(SPIRE, svid(40)), rs)
    add_proxied(fake, "web-6d4cf-a", Envoy(SPIRE, svid(10)), rs)
    add_proxied(fake, "nightly-29400000-x", Envoy(SPIRE, svid(5)), job, source=CLASSIC)
    add_proxied(fake, "debug", Envoy(SPIRE, svid(5)))
    add_proxied(fake, "pending", None, phase="Pending")
    add_proxied(fake, "done", None, phase="Succeeded")
    fake.add(f.running_pod({"spec": {"containers": [{"name": "app"}]}}, "no-proxy", "plain"))
    report = verify_report(kubeconfig)
    assert [(o["namespace"], o["kind"], o["name"], [p["name"] for p in o["pods"]])
            for o in report["owners"]] == [
        ("shop", "CronJob", "nightly", ["nightly-29400000-x"]),
        ("shop", "Deployment", "web", ["web-6d4cf-a", "web-6d4cf-b"]),
        ("shop", "Pod", "debug", ["debug"]),
    ]  # fmt: skip
    assert (report["podsChecked"], report["podsNotRunning"]) == (4, 1)
    assert report["summary"] == {**{v: 0 for v in VERDICTS}, "rotating": 3, "stale": 1}
    assert {c[1] for c in fake.execs} == {"web-6d4cf-a", "web-6d4cf-b", "nightly-29400000-x",
                                          "debug"}  # fmt: skip


def test_the_selection_is_audits(fake: f.FakeAPI, kubeconfig: Path) -> None:
    shop(fake)
    fake.add(f.namespace("legacy"))
    add_proxied(fake, "a", Envoy(SPIRE, svid(10)), labels={"team": "pay"})
    add_proxied(fake, "b", Envoy(SPIRE, svid(10)), labels={"team": "search"})
    add_proxied(fake, "c", Envoy(SPIRE, svid(10)), ns="legacy")

    def names(selection: PodSelection) -> list[str]:
        report = verify_report(kubeconfig, selection)
        return sorted(p["name"] for o in report["owners"] for p in o["pods"])

    assert names(PodSelection()) == ["a", "b", "c"]
    assert names(PodSelection(only_opted_in=True)) == ["a", "b"]
    assert names(PodSelection(selector="team=pay")) == ["a"]
    assert names(PodSelection(namespace="legacy")) == ["c"]
    assert names(PodSelection(namespace="shop", pod="b")) == ["b"]


# --- the command ---------------------------------------------------------------------------


def test_the_table_shows_each_owner_its_pods_columns_reasons_and_what_to_do(
    fake: f.FakeAPI, kubeconfig: Path, fixed_clock: Clock
) -> None:
    _, rs = shop(fake)
    fresh, old = svid(10), svid(40)
    add_proxied(fake, "web-6d4cf-a", Envoy(SPIRE, fresh, last_updated="2026-11-20T09:50:00.5Z"), rs)
    add_proxied(fake, "web-6d4cf-b", Envoy(SPIRE, old, last_updated="2026-11-20T09:20:00.1Z"), rs)
    code, out, err = verify(kubeconfig)
    assert (code, err) == (1, "")
    pad = " " * (len(fresh.serial) - len("SERIAL"))
    assert out.splitlines() == [
        f"2 pods with istio-proxy read at {t('10:00:00')}: 1 rotating, 1 stale.",
        "",
        "shop  Deployment/web",
        f"  POD          VERDICT   SPIFFE ID                            SERIAL{pad}  VALID FROM"
        "            EXPIRES               LEFT   SDS UPDATED",
        f"  web-6d4cf-a  rotating  spiffe://example.org/ns/shop/sa/web  {fresh.serial}"
        f"  {t('09:50:00')}  {t('10:50:00')}  50m0s  2026-11-20T09:50:00.5Z",
        f"      issued 10m0s ago, 17% into its 1h0m0s lifetime; renewal due by {t('10:23:00')}",
        "      ROOTCA CN=Root CA,O=my-company.org expires 2035-12-30T00:00:00Z",
        f"  web-6d4cf-b  stale     spiffe://example.org/ns/shop/sa/web  {old.serial}"
        f"  {t('09:20:00')}  {t('10:20:00')}  20m0s  2026-11-20T09:20:00.1Z",
        "      issued 40m0s ago, 67% into its 1h0m0s lifetime: the provider renews by 55%"
        f" ({t('09:53:00')}) and nothing renewed it",
        "      ROOTCA CN=Root CA,O=my-company.org expires 2035-12-30T00:00:00Z",
        "",
        "stale: the Workload API provider did not renew it: check the SPIRE agent on the pod's"
        " node and the pod's registration entry",
    ]


def test_json_and_yaml_are_the_same_report_and_exit_0_when_all_rotate(
    fake: f.FakeAPI, kubeconfig: Path, fixed_clock: Clock
) -> None:
    add_proxied(fake, "a", Envoy(SPIRE, svid(10)))
    code, as_json, err = verify(kubeconfig, "-o", "json", "--trust-domain", "example.org")
    assert (code, err) == (0, "")
    report = json.loads(as_json)
    assert (report["trustDomain"], report["summary"]["rotating"]) == ("example.org", 1)
    code, as_yaml, _ = verify(kubeconfig, "-o", "yaml", "--trust-domain", "example.org")
    assert code == 0
    assert yaml.safe_load(as_yaml) == report


def test_no_pods_at_all_is_said_and_exits_0(fake: f.FakeAPI, kubeconfig: Path) -> None:
    code, out, _ = verify(kubeconfig)
    assert (code, out) == (0, "No running pod with istio-proxy was selected.\n")


def test_denied_exec_exits_2_with_the_report(
    fake: f.FakeAPI, kubeconfig: Path, fixed_clock: Clock
) -> None:
    add_proxied(fake, "a", Envoy(SPIRE, svid(10)))
    add_proxied(fake, "b", Envoy(SPIRE, svid(10)))
    fake.deny("pods/exec")
    code, out, _ = verify(kubeconfig, "-o", "json")
    assert code == 2
    assert json.loads(out)["summary"]["unreachable"] == 2


def test_denied_pod_listing_exits_2_with_one_line(fake: f.FakeAPI, kubeconfig: Path) -> None:
    fake.deny("pods")
    code, out, err = verify(kubeconfig)
    assert (code, out) == (2, "")
    assert err.startswith("Error: access denied while reading pods in all namespaces: pods is")
    assert len(err.splitlines()) == 1


def test_an_unreachable_cluster_exits_2(fake: f.FakeAPI, tmp_path: Path) -> None:
    port = f.closed_port()
    code, out, err = verify(fake.kubeconfig(tmp_path, server=f"http://127.0.0.1:{port}"))
    assert (code, out) == (2, "")
    assert err == (
        f"Error: cannot reach the Kubernetes API at http://127.0.0.1:{port}: connection refused\n"
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["-n", "shop", "-A"], 2, "Error: use either --namespace or --all-namespaces"),
        (["--pod", "nobody"], 1, "Error: no running pod nobody in any namespace"),
        (["--watch", "ten minutes"], 2, "Error: Invalid value for '--watch': 'ten minutes' is"
                                        " not a duration like 70m, 1h10m or 90s"),
        (["--watch", "1m", "--interval", "5m"], 2, "Error: --watch 1m0s is shorter than"
                                                   " --interval 5m0s: nothing would be sampled"
                                                   " twice"),
        (["--watch", "1m", "--interval", "0s"], 2, "Error: --interval must be longer than 0s"),
    ],
)  # fmt: skip
def test_bad_requests_are_one_line_errors(
    fake: f.FakeAPI, kubeconfig: Path, args: list[str], code: int, message: str
) -> None:
    result_code, out, err = verify(kubeconfig, *args)
    assert (result_code, out) == (code, "")
    assert err.splitlines()[-1] == message


def test_an_istiod_ca_file_without_certificates_is_a_usage_error(
    kubeconfig: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    code, out, err = verify(kubeconfig, "--istiod-ca", str(bad))
    assert (code, out) == (2, "")
    assert err.splitlines()[-1] == (
        f"Error: Invalid value for --istiod-ca: {bad} holds no PEM certificate"
    )


def test_istiod_ca_names_the_plugged_in_ca(
    fake: f.FakeAPI, kubeconfig: Path, tmp_path: Path, fixed_clock: Clock
) -> None:
    from cryptography.hazmat.primitives import serialization

    plugged = CA("example.org")
    add_proxied(fake, "a", Envoy(plugged, svid(10, ca=plugged)))
    pem = tmp_path / "ca-cert.pem"
    pem.write_bytes(plugged.signer.public_bytes(serialization.Encoding.PEM))
    code, out, _ = verify(kubeconfig, "--istiod-ca", str(pem), "-o", "json")
    assert code == 1
    assert only_pod(json.loads(out))["verdict"] == "foreign"


def test_a_terminal_gets_a_progress_line_on_stderr(
    fake: f.FakeAPI, kubeconfig: Path, fixed_clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("webhook.commands.verify.stderr_is_terminal", lambda: True)
    add_proxied(fake, "a", Envoy(SPIRE, svid(10)))
    add_proxied(fake, "b", Envoy(SPIRE, svid(10)))
    code, out, err = verify(kubeconfig, "-o", "json")
    assert code == 0
    line = "verify: read 0 of 2 pods"
    assert err == (
        "\rverify: read 0 of 2 pods\rverify: read 1 of 2 pods\rverify: read 2 of 2 pods"
        f"\r{' ' * len(line)}\r"
    )
    assert json.loads(out)["podsChecked"] == 2  # stdout stays the report alone


def test_verify_runs_as_a_command(fake: f.FakeAPI, kubeconfig: Path) -> None:
    now = datetime.datetime.now(UTC)
    add_proxied(fake, "a", Envoy(SPIRE, SPIRE.issue("ns/shop/sa/web", now - 5 * MINUTE)))
    add_proxied(fake, "b", Envoy(SPIRE, SPIRE.issue("ns/shop/sa/web", now - 45 * MINUTE)))
    done = f.run_command(kubeconfig, "verify", "-o", "json")
    assert (done.returncode, done.stderr) == (1, "")
    report = json.loads(done.stdout)
    assert [(p["name"], p["verdict"]) for o in report["owners"] for p in o["pods"]] == [
        ("a", "rotating"),
        ("b", "stale"),
    ]


# --- watching ------------------------------------------------------------------------------


class Provider:
    """A Workload API provider that renews each pod's SVID at half its life, as SPIRE does,
    until it is stopped; the proxies' Envoys take each renewal at once."""

    def __init__(self, clock: Clock, *envoys: Envoy, renew: bool = True) -> None:
        self.envoys, self.renew = envoys, renew
        clock.on_sleep.append(self.tick)

    def tick(self, now: datetime.datetime) -> None:
        for envoy in self.envoys:
            while self.renew and envoy.held is not None:
                leaf = envoy.held.leaf
                due = (
                    leaf.not_valid_before_utc
                    + (leaf.not_valid_after_utc - leaf.not_valid_before_utc) / 2
                )
                if due > now:
                    break
                envoy.rotate(SPIRE.issue("ns/shop/sa/web", due), due.isoformat())


def watch(
    kubeconfig: Path,
    clock: Clock,
    duration: datetime.timedelta = 70 * MINUTE,
    interval: datetime.timedelta = 5 * MINUTE,
) -> dict[str, Any]:
    cluster = Cluster(load_api_client(str(kubeconfig)))
    sampler = Sampler(cluster, SETTINGS, Criteria(), clock, recheck_after=0)
    return run_watch(
        cluster, SETTINGS, PodSelection(), Criteria(), duration=duration, interval=interval,
        sampler=sampler, clock=clock, sleep=clock.sleep,
    )  # fmt: skip


def test_watch_proves_rotation_serial_by_serial(fake: f.FakeAPI, kubeconfig: Path) -> None:
    clock = Clock()
    first = svid(10)
    envoy = Envoy(SPIRE, first)
    Provider(clock, envoy)
    add_proxied(fake, "a", envoy)
    report = watch(kubeconfig, clock)
    assert clock.sleeps == [300.0] * 14  # 15 samples, 5 minutes apart: 70 minutes
    assert report["watch"] == {"duration": "1h10m0s", "interval": "5m0s", "rounds": 15,
                               "ended": t("11:10:00")}  # fmt: skip
    pod = only_pod(report)
    serials = [(s["validFrom"], s["firstSeen"], s["lastSeen"], s["renewedBeforeExpiry"])
               for s in pod["serials"]]  # fmt: skip
    assert serials == [
        (t("09:50:00"), t("10:00:00"), t("10:15:00"), None),
        (t("10:20:00"), t("10:20:00"), t("10:45:00"), True),
        (t("10:50:00"), t("10:50:00"), t("11:10:00"), True),
    ]
    assert pod["serials"][0]["serial"] == first.serial
    assert (pod["verdict"], pod["reason"], pod["samples"], pod["renewals"]) == (
        "rotating",
        "renewed 2 times, each time before the certificate it replaced expired",
        15,
        2,
    )
    assert exit_status(report) == 0


def test_watch_catches_a_provider_that_stopped_renewing(fake: f.FakeAPI, kubeconfig: Path) -> None:
    clock = Clock()
    envoy = Envoy(SPIRE, svid(10))
    Provider(clock, envoy, renew=False)
    add_proxied(fake, "a", envoy)
    report = watch(kubeconfig, clock)
    pod = only_pod(report)
    assert (pod["verdict"], pod["reason"]) == (
        "stale",
        f"at {t('10:30:00')}: issued 40m0s ago, 67% into its 1h0m0s lifetime: the provider"
        f" renews by 55% ({t('10:23:00')}) and nothing renewed it",
    )
    (serial,) = pod["serials"]
    assert (serial["lastSeen"], serial["heldAfterExpiry"]) == (t("11:10:00"), True)
    assert pod["last"]["verdict"] == "expired"
    assert exit_status(report) == 1


def test_watch_catches_a_renewal_that_came_after_expiry_between_two_samples(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    clock = Clock()
    first = svid(10)
    envoy = Envoy(SPIRE, first)
    late = SPIRE.issue("ns/shop/sa/web", NOW + 55 * MINUTE)  # first expired at 10:50
    clock.on_sleep.append(lambda now: envoy.rotate(late, "2026-11-20T10:55:00Z"))
    add_proxied(fake, "a", envoy)
    report = watch(kubeconfig, clock, duration=60 * MINUTE, interval=60 * MINUTE)
    pod = only_pod(report)
    assert [s["renewedBeforeExpiry"] for s in pod["serials"]] == [None, False]
    assert (pod["verdict"], pod["reason"]) == (
        "expired",
        f"serial {first.serial} expired at {t('10:50:00')} before its successor {late.serial}"
        f" was issued at {t('10:55:00')}: a renewal was missed between two samples",
    )
    assert exit_status(report) == 1


def test_watch_with_no_renewal_due_says_so(fake: f.FakeAPI, kubeconfig: Path) -> None:
    clock = Clock()
    add_proxied(fake, "a", Envoy(SPIRE, svid(0)))
    report = watch(kubeconfig, clock, duration=10 * MINUTE)
    pod = only_pod(report)
    assert (pod["verdict"], pod["reason"], pod["renewals"]) == (
        "rotating",
        f"valid at every sample; no renewal was due while watching (next due by {t('10:33:00')})",
        0,
    )


def test_watch_follows_pods_that_come_and_go_and_counts_unreachable_samples(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    clock = Clock()
    stays, leaves, comes = (Envoy(SPIRE, svid(10)) for _ in range(3))
    Provider(clock, stays, leaves, comes)
    add_proxied(fake, "stays", stays)
    gone = add_proxied(fake, "leaves", leaves)
    calls = iter(range(1000))

    def flaky(command: list[str]) -> f.Exited:  # the second sample's first request fails
        return (
            f.Exited(b"", b"Error: timeout\n", 1)
            if next(calls) == 2
            else stays.pilot_agent(command)
        )

    fake.processes["shop", "stays", "istio-proxy"] = flaky
    changes = {NOW + 5 * MINUTE: lambda: fake.remove(gone),
               NOW + 10 * MINUTE: lambda: add_proxied(fake, "comes", comes)}  # fmt: skip
    clock.on_sleep.append(lambda now: changes.pop(now, lambda: None)())
    report = watch(kubeconfig, clock, duration=15 * MINUTE)
    pods = {p["name"]: p for o in report["owners"] for p in o["pods"]}
    assert {n: (p["samples"], p["unreachableSamples"], p["verdict"]) for n, p in pods.items()} == {
        "comes": (2, 0, "rotating"),
        "leaves": (1, 0, "rotating"),
        "stays": (4, 1, "rotating"),
    }
    assert report["podsChecked"] == 3


def test_watch_denied_in_one_sample_only_is_not_an_api_problem(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    clock = Clock()
    add_proxied(fake, "a", Envoy(SPIRE, svid(10)))
    changes = {NOW + 5 * MINUTE: lambda: fake.deny("pods/exec"),
               NOW + 10 * MINUTE: fake.denied.clear}  # fmt: skip
    clock.on_sleep.append(lambda now: changes.pop(now, lambda: None)())
    report = watch(kubeconfig, clock, duration=10 * MINUTE)
    pod = only_pod(report)
    assert (pod["verdict"], pod["samples"], pod["unreachableSamples"]) == ("rotating", 3, 1)
    assert (report["apiProblems"], exit_status(report)) == (0, 0)
    fake.deny("pods/exec")  # denied throughout: unreachable, exit 2
    report = watch(kubeconfig, Clock(), duration=10 * MINUTE)
    assert (only_pod(report)["verdict"], report["apiProblems"], exit_status(report)) == (
        "unreachable", 1, 2
    )  # fmt: skip


def test_watch_that_loses_the_api_reports_what_it_saw_and_exits_2(
    fake: f.FakeAPI, kubeconfig: Path
) -> None:
    clock = Clock()
    add_proxied(fake, "a", Envoy(SPIRE, svid(10)))
    clock.on_sleep.append(lambda now: fake.deny("pods"))
    report = watch(kubeconfig, clock, duration=10 * MINUTE)
    assert report["interrupted"].startswith(
        "round 2 of 3: access denied while reading pods in all namespaces"
    )
    assert only_pod(report)["samples"] == 1
    assert exit_status(report) == 2


def test_watch_that_cannot_list_at_first_raises(fake: f.FakeAPI, kubeconfig: Path) -> None:
    fake.deny("pods")
    with pytest.raises(ClusterError):
        watch(kubeconfig, Clock(), duration=10 * MINUTE)


def test_watch_refuses_an_interval_longer_than_the_watch(kubeconfig: Path) -> None:
    with pytest.raises(VerifyError, match="shorter than --interval"):
        watch(kubeconfig, Clock(), duration=MINUTE, interval=5 * MINUTE)


def test_the_command_watches_with_a_short_real_interval(fake: f.FakeAPI, kubeconfig: Path) -> None:
    """Real time: 3 samples 0.3 s apart; the provider renews after the first."""
    now = datetime.datetime.now(UTC)
    first = SPIRE.issue("ns/shop/sa/web", now - 29 * MINUTE)
    second = SPIRE.issue("ns/shop/sa/web", now)
    envoy = Envoy(SPIRE, first)
    add_proxied(fake, "a", envoy)
    requests = iter(range(1000))

    def renewing(command: list[str]) -> f.Exited:
        if next(requests) == 2:
            envoy.rotate(second, now.isoformat())
        return envoy.pilot_agent(command)

    fake.processes["shop", "a", "istio-proxy"] = renewing
    code, out, err = verify(kubeconfig, "--watch", "0.6s", "--interval", "0.3s", "-o", "json")
    assert code == 0, out
    assert err.splitlines() == [
        "verify: sample 1 of 3: 1 pods read, next in 300ms",
        "verify: sample 2 of 3: 1 pods read, next in 300ms",
        "verify: sample 3 of 3: 1 pods read",
    ]
    pod = only_pod(json.loads(out))
    assert [s["serial"] for s in pod["serials"]] == [first.serial, second.serial]
    assert [s["renewedBeforeExpiry"] for s in pod["serials"]] == [None, True]
    assert (pod["verdict"], pod["samples"]) == ("rotating", 3)


def test_the_watch_table_lists_each_serial(fake: f.FakeAPI, kubeconfig: Path) -> None:
    from webhook.commands.verify import table

    clock = Clock()
    first = svid(10)
    envoy = Envoy(SPIRE, first)
    Provider(clock, envoy)
    add_proxied(fake, "a", envoy)
    report = watch(kubeconfig, clock, duration=30 * MINUTE, interval=15 * MINUTE)
    second = envoy.held
    assert second is not None
    assert table(report).splitlines() == [
        f"1 pods with istio-proxy sampled 3 times over 30m0s from {t('10:00:00')}: 1 rotating.",
        "",
        "shop  Pod/a",
        "  a  rotating  (3 samples, 1 renewals)",
        "      renewed 1 time, each time before the certificate it replaced expired",
        f"      serial {first.serial}  valid {t('09:50:00')} to {t('10:50:00')}  seen"
        f" {t('10:00:00')} to {t('10:15:00')}",
        f"      serial {second.serial}  valid {t('10:20:00')} to {t('11:20:00')}  seen"
        f" {t('10:30:00')} to {t('10:30:00')}  arrived before the previous one expired",
    ]


def test_the_docs_explain_every_verdict_and_every_option() -> None:
    from webhook.commands.verify import verify_command

    docs = (Path(__file__).resolve().parents[1] / "docs" / "verify.md").read_text()
    table = docs.split("| verdict | when |", 1)[1].split("\n\n", 1)[0]
    assert sorted(re.findall(r"^\| `(\w+)` \|", table, re.M)) == sorted(VERDICTS)
    for param in verify_command.params:
        for name in param.opts:
            if name.startswith("--"):
                assert f"`{name}" in docs, name
