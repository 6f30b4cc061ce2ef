"""Shared fixtures of the end-to-end tests against a real cluster (E2E=1 and KUBECONFIG).

Nothing here runs unless a test module in tests/e2e is collected with E2E=1 and a
KUBECONFIG: each module skips itself at import otherwise, so these fixtures are never set
up. Every kubectl call has a timeout; every wait is bounded; what a fixture creates it
deletes (namespaces with --wait=false, so teardown stays quick).

Environment:
- `E2E_INSTALL`: `local` (what `make e2e` uses: the webhook is served on this machine and
  registered by `url` + `caBundle` before the tests start; nothing is applied here, and the
  in-cluster Service and Secret that doctor checks do not exist), `certs` (default:
  `istio-spiffe-webhook certs --out` into a temporary copy
  of certs/ and manifests/, then `kubectl apply -k`), `cert-manager` (`kubectl apply -k
  manifests/overlays/cert-manager`, cert-manager must be installed) or `none` (use the
  webhook already installed; nothing is applied or deleted).
- `E2E_IMAGE`: the server image to run (`registry/name:tag`), set on top of the overlay's
  `images:`; the default is the overlays' image.
- `E2E_KEEP=1`: leave what was installed in place after the run.
- `E2E_REPORT`: a file to write the per-form summary lines to (`webhook: N/N pods`), which
  `make e2e` prints at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBECTL_TIMEOUT = 120
OVERLAY_IMAGE = "ghcr.io/istio-spiffe-webhook/istio-spiffe-webhook"
CLI = Path(sys.executable).with_name("istio-spiffe-webhook")


def kubectl(
    *args: str, stdin: str | None = None, check: bool = True, timeout: float = KUBECTL_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("kubectl")
    assert binary, "kubectl is needed for the end-to-end tests"
    done = subprocess.run(
        [binary, *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr.strip()}"
    return done


def cli(*args: str, timeout: float = KUBECTL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """`istio-spiffe-webhook ARGS` as a subprocess, with the test's KUBECONFIG."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISTIO_SPIFFE_WEBHOOK_")}
    return subprocess.run(
        [str(CLI), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


@dataclass
class Install:
    how: str
    kustomization: Path | None  # what `kubectl apply -k` applied, None when nothing


def _image_patch(directory: Path, image: str) -> None:
    """Append an `images:` entry that points the overlay's image at `image`."""
    kustomization = directory / "kustomization.yaml"
    data: dict[str, Any] = yaml.safe_load(kustomization.read_text())
    name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
    entry = {"name": OVERLAY_IMAGE, "newName": name or image}
    if tag:
        entry["newTag"] = tag
    data.setdefault("images", []).append(entry)
    kustomization.write_text(yaml.safe_dump(data, sort_keys=False))


def _prepare(how: str, work: Path) -> Path:
    """A temporary copy of what `kubectl apply -k` takes, certificates made when needed."""
    shutil.copytree(ROOT / "manifests", work / "manifests")
    if how == "certs":
        (work / "certs").mkdir()
        shutil.copy(ROOT / "certs" / "kustomization.yaml", work / "certs" / "kustomization.yaml")
        made = cli("certs", "--out", str(work / "certs"))
        assert made.returncode == 0, made.stderr
        target = work / "certs"
    elif how == "cert-manager":
        target = work / "manifests" / "overlays" / "cert-manager"
    else:
        raise AssertionError(f"E2E_INSTALL must be certs, cert-manager or none, not {how!r}")
    if os.environ.get("E2E_IMAGE"):
        _image_patch(target, os.environ["E2E_IMAGE"])
    return target


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    """The webhook installed and serving; removed again at the end unless E2E_KEEP=1."""
    reached = kubectl("version", "-o", "json", check=False, timeout=30)
    if reached.returncode != 0 or "serverVersion" not in reached.stdout:
        pytest.fail(f"cannot reach the cluster of KUBECONFIG: {reached.stderr.strip()}")
    how = os.environ.get("E2E_INSTALL", "certs")
    if how == "local":
        registered = kubectl(
            "get", "mutatingwebhookconfiguration", "istio-spiffe-webhook", "-o", "json"
        )
        url = json.loads(registered.stdout)["webhooks"][0]["clientConfig"].get("url")
        assert url, "E2E_INSTALL=local expects the webhook registered by url (make e2e)"
        yield Install(how, None)
        return
    if how == "none":
        yield Install(how, None)
        return
    target = _prepare(how, tmp_path_factory.mktemp("install"))
    try:
        kubectl("apply", "-k", str(target))
        kubectl(
            "-n",
            "istio-spiffe-webhook",
            "rollout",
            "status",
            "deployment/istio-spiffe-webhook",
            "--timeout=300s",
            timeout=330,
        )
        yield Install(how, target)
    finally:
        if os.environ.get("E2E_KEEP") != "1":
            kubectl("delete", "-k", str(target), "--ignore-not-found", "--wait=false", check=False)


def wait_for_default_service_account(namespace: str) -> None:
    """Pods need the namespace's `default` ServiceAccount; make it if no controller does."""
    for _ in range(30):
        done = kubectl("get", "serviceaccount", "default", "-n", namespace, check=False)
        if done.returncode == 0:
            return
        time.sleep(1)
    done = kubectl("create", "serviceaccount", "default", "-n", namespace, check=False)
    assert done.returncode == 0 or "AlreadyExists" in done.stderr, done.stderr


def namespace_factory() -> tuple[Callable[[dict[str, str]], str], Callable[[], None]]:
    """`make(labels)` creates a uniquely named namespace; `cleanup()` deletes them all."""
    made: list[str] = []

    def make(labels: dict[str, str]) -> str:
        name = f"isw-e2e-{secrets.token_hex(4)}"
        kubectl("create", "namespace", name)
        made.append(name)
        if labels:
            kubectl("label", "namespace", name, *(f"{k}={v}" for k, v in labels.items()))
        wait_for_default_service_account(name)
        return name

    def cleanup() -> None:
        for name in made:
            kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=false", check=False)

    return make, cleanup


@pytest.fixture
def make_namespace() -> Iterator[Callable[[dict[str, str]], str]]:
    """Namespaces for one test, deleted after it."""
    make, cleanup = namespace_factory()
    yield make
    cleanup()


@pytest.fixture(scope="module")
def make_namespace_module() -> Iterator[Callable[[dict[str, str]], str]]:
    """Namespaces shared by a module's tests, deleted after the module."""
    make, cleanup = namespace_factory()
    yield make
    cleanup()


def create_pod(
    pod: dict[str, Any], namespace: str, *, dry_run: bool, prefix: str = "e2e-"
) -> dict[str, Any] | str:
    """What the API server stores for `pod` in `namespace` (or its refusal, as text)."""
    manifest = json.loads(json.dumps(pod))
    metadata = manifest.setdefault("metadata", {})
    name = metadata.pop("name", None) or "pod"
    metadata["generateName"] = f"{prefix}{name}-"
    metadata["namespace"] = namespace
    for key in ("uid", "resourceVersion", "creationTimestamp"):
        metadata.pop(key, None)
    manifest.pop("status", None)
    args = ["create", "-o", "json", "-f", "-"]
    if dry_run:
        args.insert(1, "--dry-run=server")
    done = kubectl(*args, stdin=json.dumps(manifest), check=False)
    if done.returncode != 0:
        return done.stderr.strip()
    created: dict[str, Any] = json.loads(done.stdout)
    return created


class Tools:
    """The helpers above, for test modules (conftest modules are not imported by name)."""

    kubectl = staticmethod(kubectl)
    cli = staticmethod(cli)
    create_pod = staticmethod(create_pod)


@pytest.fixture(scope="session")
def tools() -> Tools:
    return Tools()


class Tally:
    """Which pods each form got right, for the summary lines of `make e2e`."""

    def __init__(self) -> None:
        self.cases: dict[str, dict[str, bool]] = {}

    @contextmanager
    def case(self, form: str, name: str) -> Iterator[None]:
        """Counts `name` for `form` as right only if the block finishes without failing."""
        cases = self.cases.setdefault(form, {})
        right_so_far = cases.get(name, True)
        cases[name] = False
        yield
        cases[name] = right_so_far


TALLY = Tally()


@pytest.fixture(scope="session")
def tally() -> Tally:
    return TALLY


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Each process (one per xdist worker) writes its cases next to E2E_REPORT; make e2e
    adds them up (tests/e2e/shapes.py: summary_lines)."""
    report = os.environ.get("E2E_REPORT")
    if report and TALLY.cases:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        Path(f"{report}.{worker}.json").write_text(json.dumps(TALLY.cases))
