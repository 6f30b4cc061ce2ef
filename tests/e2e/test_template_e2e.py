"""The Istio injection template form, proven with Go's text/template and Kubernetes' own
strategic merge code (tests/test_template.py is only the quick check of `make test`).

`make e2e` runs it; by hand: `E2E=1 .venv/bin/pytest -m e2e tests/e2e/test_template_e2e.py`,
with KUBECONFIG set for the API server's judgement too.

It builds e2e/templatecheck in a temporary folder inside the Kubernetes 1.36 tree that
../shared/kube-harness/build.sh extracts (whose vendor/ has k8s.io/api, k8s.io/apimachinery
and sigs.k8s.io/yaml; nothing is downloaded), with the Go that build.sh installed, and runs
it over every case. That program does what istiod does with an injection template (see its
comment): renders it with text/template for the pod and `.NativeSidecars`, and merges it into
the pod with `StrategicMergeMapPatchUsingLookupPatchMeta` and `corev1.Pod`'s patch metadata.

The cases: every shared fixture pod that has istio-proxy, and the documented `spire` shapes
of each (tests.e2e.shapes), in each sidecar mode istiod could have injected it in (the
`sidecar.istio.io/nativeSidecar` annotation, else `.NativeSidecars`, must put the proxy where
the pod has it); pods whose proxy is a classic container also with the gateway variant
(which istiod applies whatever `.NativeSidecars` says); two pods with shapes the fixtures
lack (`odd_pods`: the variables set twice, as `proxyMetadata` does, and a socket volume with
another source); two opted-out pods; and all of it
again with every contract setting changed (tests/golden/template-custom-settings.yaml) on
the fixtures renamed to match. Pods without istio-proxy are not cases: istiod runs templates
only when it injects, and a pod that names its own templates does not get this one.

For each case:
- the result is the webhook's `rewrite()` of the same pod applied with jsonpatch, up to the
  list positions the merge decides (`merge_positions_ignored`), both read into a
  `corev1.Pod` and written back as Istio does;
- applying the template again changes nothing, positions included;
- tests/gotemplate.py (the evaluator of `make test`) renders exactly the text Go renders;
- with KUBECONFIG, `kubectl create --dry-run=server` accepts the result in a namespace that
  did not opt in (no webhook, no policy). Istio's own `sidecar-spire` output has istio-proxy
  twice (an init container and a stub container, istio/istio#56455); the API server refuses
  it as it is, and must refuse the template's result too; only the API server judges those,
  so without KUBECONFIG they are skipped.
`make e2e` prints `template: N/N pods` (default settings) and `template (changed settings):
N/N pods`, counting the cases that passed (the tally of tests/e2e/conftest.py).

Environment (defaults: where build.sh puts them under ${XDG_CACHE_HOME:-~/.cache}):
- `KUBE_SRC`: the Kubernetes tree (`kube-1.36/build/src`);
- `KUBE_GO`: its Go (`kube-1.36/build/go/bin/go`);
- `KUBE_GOCACHE`: Go's build cache (`kube-1.36/build/gocache`, shared with build.sh's build).
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

if os.environ.get("E2E") != "1":
    pytest.skip("end-to-end test: set E2E=1 (and KUBECONFIG)", allow_module_level=True)

from tests.e2e.shapes import e2e_pods, refused_fields
from tests.gotemplate import render, template_data
from tests.shapes import renamed, renames
from webhook.config import Settings, load_settings
from webhook.rewrite import Contract, rewrite
from webhook.template import GATEWAY_SUFFIX, TEMPLATE_NAME, render_template

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = ROOT / "e2e" / "templatecheck" / "main.go"
BUILD = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kube-1.36" / "build"
KUBE_SRC = Path(os.environ.get("KUBE_SRC", BUILD / "src"))
KUBE_GO = Path(os.environ.get("KUBE_GO", BUILD / "go" / "bin" / "go"))
KUBE_GOCACHE = Path(os.environ.get("KUBE_GOCACHE", BUILD / "gocache"))
HOW_TO_BUILD = (
    "the template check needs the Kubernetes 1.36 tree and its Go that "
    "../shared/kube-harness/build.sh makes (README there: `fetch github:openshift/microshift`, "
    "then build.sh GIT_DIR); set KUBE_SRC and KUBE_GO if they are elsewhere"
)
NATIVE_ANNOTATION = "sidecar.istio.io/nativeSidecar"
LISTS = ("initContainers", "containers")

DEFAULT = Settings()
CUSTOM = load_settings(ROOT / "tests" / "golden" / "template-custom-settings.yaml")
GATEWAY = TEMPLATE_NAME + GATEWAY_SUFFIX
FORMS = {"default": "template", "custom": "template (changed settings)"}


@dataclass(frozen=True)
class Case:
    name: str
    settings_id: str  # "default" or "custom"
    pod: dict[str, Any]
    template: str  # TEMPLATE_NAME or GATEWAY
    native_sidecars: bool

    @property
    def key(self) -> str:
        return f"{self.settings_id}:{self.name}"

    @property
    def settings(self) -> Settings:
        return DEFAULT if self.settings_id == "default" else CUSTOM

    @property
    def proxy_twice(self) -> bool:
        return all(proxy_in(self.pod, self.settings, key) for key in LISTS)


def proxy_in(pod: dict[str, Any], settings: Settings, key: str) -> bool:
    return any(c.get("name") == settings.proxy_container for c in pod["spec"].get(key) or [])


RENAMES = renames(DEFAULT, CUSTOM)


def cases() -> list[Case]:
    found: list[Case] = []
    pods = e2e_pods(DEFAULT)
    for settings_id, settings in (("default", DEFAULT), ("custom", CUSTOM)):
        for name, original in pods.items():
            pod = original if settings_id == "default" else renamed(original, RENAMES)
            native, classic = (proxy_in(pod, settings, key) for key in LISTS)
            if settings_id == "custom" and native and classic:
                continue  # only the API server judges those, and custom names are not valid
            annotation = (pod["metadata"].get("annotations") or {}).get(NATIVE_ANNOTATION)
            for flag in (False, True):
                # Istio's condition: native unless (annotation, else the flag) is "false".
                if native == ((annotation or str(flag).lower()) != "false") and (native or classic):
                    found.append(
                        Case(
                            f"{name} [NativeSidecars={flag}]", settings_id, pod, TEMPLATE_NAME, flag
                        )
                    )
            if classic and not native:
                found.append(Case(f"{name} [{GATEWAY}]", settings_id, pod, GATEWAY, True))
        for name, pod, native in odd_pods(settings, pods):
            found.append(Case(name, settings_id, pod, TEMPLATE_NAME, native))
        for name in ("hello--0", "hello-old-version--0"):
            pod = json.loads(
                json.dumps(pods[name] if settings_id == "default" else renamed(pods[name], RENAMES))
            )
            pod["metadata"].setdefault("labels", {})[settings.inject_label] = (
                settings.inject_disabled_value
            )
            native = proxy_in(pod, settings, "initContainers")
            found.append(Case(f"{name} opted out", settings_id, pod, TEMPLATE_NAME, native))
    return found


def odd_pods(
    settings: Settings, pods: dict[str, dict[str, Any]]
) -> list[tuple[str, dict[str, Any], bool]]:
    """Shapes Istio writes that the fixtures lack: `proxyMetadata` setting the two variables
    (Istio's sidecar template appends it after its own entries, so a name comes twice, the
    later winning at run time), one of them from `valueFrom`; and a socket volume that
    already had another source and CSI attributes."""
    odd = []
    for name in ("hello--0", "hello-old-version--0"):
        pod = json.loads(json.dumps(pods[name]))
        if settings is CUSTOM:
            pod = renamed(pod, RENAMES)
        native = proxy_in(pod, settings, "initContainers")
        [proxy] = [
            c
            for c in pod["spec"]["initContainers" if native else "containers"]
            if c["name"] == settings.proxy_container
        ]
        proxy["env"] += [
            {"name": settings.ca_addr_env, "value": "istiod-canary.istio-system.svc:15012"},
            {
                "name": settings.cert_provider_env,
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
            },
        ]
        for volume in pod["spec"]["volumes"]:
            if volume["name"] == settings.socket_volume:
                volume["hostPath"] = {"path": "/run/spire/sockets"}
                volume["csi"] = {"driver": "other.example.org", "volumeAttributes": {"a": "b"}}
        odd.append((f"{name} +proxyMetadata, other socket source", pod, native))
    return odd


CASES = cases()


def merge_positions_ignored(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod with its entries in the order a strategic merge may choose put in one order.

    A strategic merge keeps the entries a patch does not name in the order they had, puts the
    ones it names in the patch's order, and new ones first (strategicpatch's
    normalizeElementOrder and mergeSortedSlice); the webhook replaces entries where they are
    and appends new ones. So in the lists the template patches (`spec.volumes`,
    `spec.initContainers`, `spec.containers`, and each container's `env` and `volumeMounts`)
    the entries are sorted by their merge key (`name`, or `mountPath` for mounts), stably, so
    entries with one key keep their order. Everything else, the content of every entry
    included, is compared as it is.
    """
    pod = json.loads(json.dumps(pod))
    spec = pod.get("spec") or {}

    def by(key: str, items: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        return None if items is None else sorted(items, key=lambda item: str(item.get(key)))

    if "volumes" in spec:
        spec["volumes"] = by("name", spec["volumes"])
    for list_name in LISTS:
        if list_name not in spec:
            continue
        spec[list_name] = by("name", spec[list_name])
        for container in spec[list_name] or []:
            for field, key in (("env", "name"), ("volumeMounts", "mountPath")):
                if field in container:
                    container[field] = by(key, container[field])
    return pod


def differences(template: Any, webhook: Any) -> str:
    """A unified diff of two pods as sorted JSON, for assertion messages."""
    left, right = (
        json.dumps(p, indent=1, sort_keys=True).splitlines() for p in (template, webhook)
    )
    lines = difflib.unified_diff(left, right, "template", "webhook", lineterm="", n=3)
    return "\n" + "\n".join(lines)


# --- The Go program ---------------------------------------------------------------------------


def go_environment() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{KUBE_GO.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-mod=vendor",
        "GOPROXY": "off",
        "CGO_ENABLED": "0",
        "GOCACHE": str(KUBE_GOCACHE),
    }


@pytest.fixture(scope="module")
def templatecheck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """e2e/templatecheck built inside the Kubernetes tree (its folder removed afterwards)."""
    if not (KUBE_SRC / "vendor" / "sigs.k8s.io" / "yaml").is_dir():
        pytest.fail(f"no Kubernetes tree with a vendor folder at {KUBE_SRC}: {HOW_TO_BUILD}")
    if not os.access(KUBE_GO, os.X_OK):
        pytest.fail(f"no Go at {KUBE_GO}: {HOW_TO_BUILD}")
    binary = tmp_path_factory.mktemp("templatecheck") / "templatecheck"
    package = Path(tempfile.mkdtemp(prefix="isw-templatecheck-", dir=KUBE_SRC / "cmd"))
    try:
        shutil.copy(PROGRAM, package / "main.go")
        built = subprocess.run(
            [str(KUBE_GO), "build", "-o", str(binary), f"./cmd/{package.name}"],
            cwd=KUBE_SRC,
            env=go_environment(),
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        shutil.rmtree(package)
    assert built.returncode == 0, f"building {PROGRAM.name} failed: {built.stderr}"
    return binary


def run_templatecheck(binary: Path, cases: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    templates = {
        f"{settings_id}/{name}": render_template(settings, proxy_in)
        for settings_id, settings in (("default", DEFAULT), ("custom", CUSTOM))
        for name, proxy_in in ((TEMPLATE_NAME, "auto"), (GATEWAY, "containers"))
    }
    done = subprocess.run(
        [str(binary)],
        input=json.dumps({"templates": templates, "cases": cases}),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    assert [r["name"] for r in results] == [c["name"] for c in cases]
    return {r["name"]: r for r in results}


@dataclass
class Outcomes:
    template: dict[str, dict[str, Any]]  # the template applied once
    again: dict[str, dict[str, Any]]  # and to its own result
    webhook: dict[str, dict[str, Any]]  # rewrite(), through the same corev1.Pod round trip


@pytest.fixture(scope="module")
def outcomes(templatecheck: Path) -> Outcomes:
    once = [
        {
            "name": case.key,
            "pod": case.pod,
            "nativeSidecars": case.native_sidecars,
            "templates": [f"{case.settings_id}/{case.template}"],
        }
        for case in CASES
    ]
    by_webhook = [
        {
            "name": case.key,
            "pod": jsonpatch.apply_patch(
                case.pod, rewrite(case.pod, Contract.from_settings(case.settings)).ops
            ),
            "nativeSidecars": False,
            "templates": [],
        }
        for case in CASES
    ]
    template = run_templatecheck(templatecheck, once)
    again = run_templatecheck(
        templatecheck,
        [{**c, "pod": template[c["name"]]["pod"]} for c in once if "pod" in template[c["name"]]],
    )
    return Outcomes(template, again, run_templatecheck(templatecheck, by_webhook))


# --- The API server (with KUBECONFIG) ----------------------------------------------------------


@dataclass
class ApiServer:
    tools: Any  # tests/e2e/conftest.py's Tools
    namespace: str  # did not opt in

    def dry_run(self, pod: dict[str, Any]) -> dict[str, Any] | str:
        """The pod the API server would store, or its refusal as text."""
        stored: dict[str, Any] | str = self.tools.create_pod(
            pod, self.namespace, dry_run=True, prefix="template-"
        )
        return stored


@pytest.fixture(scope="module")
def api_server(tools: Any) -> Iterator[ApiServer | None]:
    """A namespace that did not opt in (privileged: Istio's pods need NET_ADMIN), or None
    without KUBECONFIG."""
    if not os.environ.get("KUBECONFIG"):
        yield None
        return
    from tests.e2e.conftest import wait_for_default_service_account

    reached = tools.kubectl("version", "-o", "json", check=False, timeout=30)
    if reached.returncode != 0 or "serverVersion" not in reached.stdout:
        pytest.fail(f"cannot reach the cluster of KUBECONFIG: {reached.stderr.strip()}")
    name = f"isw-template-e2e-{os.urandom(4).hex()}"
    tools.kubectl("create", "namespace", name)
    try:
        tools.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=privileged")
        wait_for_default_service_account(name)
        yield ApiServer(tools, name)
    finally:
        tools.kubectl(
            "delete", "namespace", name, "--ignore-not-found", "--wait=false", check=False
        )


# --- The tests -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.key for c in CASES])
def test_template_applied_as_istiod_does_gives_the_webhooks_rewrite(
    case: Case, outcomes: Outcomes, api_server: ApiServer | None, tally: Any
) -> None:
    if case.proxy_twice and api_server is None:
        pytest.skip("istio-proxy twice: only the API server judges this pod (set KUBECONFIG)")
    with tally.case(FORMS[case.settings_id], case.name):
        outcome = outcomes.template[case.key]
        assert "error" not in outcome, outcome.get("error")
        result = outcome["pod"]
        data = template_data(case.pod, case.native_sidecars)
        template = render_template(
            case.settings, "auto" if case.template == TEMPLATE_NAME else "containers"
        )
        assert outcome["rendered"] == [render(template, data)]
        again = outcomes.again[case.key]["pod"]
        assert again == result, differences(again, result)
        if case.proxy_twice:
            assert api_server is not None
            refused = api_server.dry_run(case.pod)
            assert isinstance(refused, str), "Istio's pod with istio-proxy twice was accepted"
            assert isinstance(api_server.dry_run(result), str)
            return
        webhook = outcomes.webhook[case.key]["pod"]
        ours, theirs = merge_positions_ignored(result), merge_positions_ignored(webhook)
        assert ours == theirs, differences(ours, theirs)
        if api_server is not None and case.settings_id == "default":
            stored = api_server.dry_run(result)
            if isinstance(stored, str):
                # Accepted unless the pod was refused as Istio left it (Istio's own
                # user-volume test input is), and then for the same fields.
                refused = api_server.dry_run(case.pod)
                assert isinstance(refused, str), stored
                assert refused_fields(stored) == refused_fields(refused)


def test_cases_cover_both_sidecar_modes_the_gateway_variant_and_opt_out() -> None:
    default = [c for c in CASES if c.settings_id == "default"]
    assert {c.native_sidecars for c in default if c.template == TEMPLATE_NAME} == {False, True}
    assert {c.name.split(" ")[0] for c in default if c.template == GATEWAY} >= {
        "gateway--0",
        "grpc-agent--0",
        "hello-old-version--0",
    }
    assert sum("opted out" in c.name for c in default) == 2
    names = {c.name.split(" ")[0].split(".")[0] for c in default}
    assert names == {n for n in e2e_pods(DEFAULT) if "." not in n} - {
        "custom-template--0",
        "hello-ignore--0",
    }
