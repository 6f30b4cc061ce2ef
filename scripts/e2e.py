"""`make e2e`: every form of the rewrite, judged by a real kube-apiserver 1.36.2.

It starts `../shared/kube-harness` (etcd, kube-apiserver and kube-controller-manager on
127.0.0.1, each on a free port, state in a temporary folder), the harness's replay of
Istio's injector (fed the shared fixtures plus the documented `spire` shapes of each),
and this project's webhook served locally like `make run` and registered by `url` +
`caBundle` from the shipped MutatingWebhookConfiguration. Then it runs `tests/e2e` with
`E2E=1 E2E_INSTALL=local`, prints one summary line per form (`webhook: N/N pods`, ...) and
tears everything down, also on failure or Ctrl-C. Exit status: pytest's, or 2 when the
harness is not built or does not start.

Not part of `make test` or CI: those machines have no Kubernetes binaries.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.shapes import replay_fixtures, summary_lines  # noqa: E402

HARNESS = Path(os.environ.get("E2E_HARNESS", ROOT.parent / "shared" / "kube-harness"))
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
K8S_BIN = Path(os.environ.get("K8S_BIN", CACHE / "kube-1.36" / "bin"))
CLI = Path(sys.executable).with_name("istio-spiffe-webhook")
WEBHOOK_CONFIGURATION = ROOT / "manifests/components/webhook/mutatingwebhookconfiguration.yaml"
HOW_TO_BUILD = (
    "make e2e needs kube-apiserver and kube-controller-manager 1.36.2 in {bin} and etcd: "
    "build them once per machine as ../shared/kube-harness/README.md says "
    "(`fetch github:openshift/microshift`, then ../shared/kube-harness/build.sh GIT_DIR, "
    "about 10 minutes; apt-get install -y etcd-server kubectl)"
)


class HarnessError(Exception):
    """The harness is missing or did not start; the message says what to do."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def check_binaries() -> None:
    missing = [
        name
        for name in ("kube-apiserver", "kube-controller-manager")
        if not os.access(K8S_BIN / name, os.X_OK)
    ]
    for tool in ("etcd", "kubectl", "openssl"):
        if shutil.which(tool) is None:
            missing.append(tool)
    if missing or not (HARNESS / "kube-up.sh").is_file():
        raise HarnessError(HOW_TO_BUILD.format(bin=K8S_BIN))


def run(cmd: list[str], env: dict[str, str], timeout: float = 180) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise HarnessError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


@contextmanager
def kube_apiserver(state: Path) -> Iterator[dict[str, str]]:
    """A running control plane; yields the environment that points kubectl at it."""
    env = {
        **os.environ,
        "KUBE_STATE_DIR": str(state),
        "K8S_BIN": str(K8S_BIN),
        "KUBE_CONTROLLER_MANAGER": "1",
        "KUBE_API_PORT": str(free_port()),
        "KUBE_CM_PORT": str(free_port()),
        "ETCD_PORT": str(free_port()),
    }
    env.pop("KUBECONFIG", None)
    try:
        out = run(["bash", str(HARNESS / "kube-up.sh")], env, timeout=300)
        exports = [line for line in out.splitlines() if line.startswith("export KUBECONFIG=")]
        if not exports:
            raise HarnessError(f"kube-up.sh printed no KUBECONFIG: {out.strip()}")
        env["KUBECONFIG"] = exports[-1].split("=", 1)[1]
        yield env
    finally:
        subprocess.run(
            ["bash", str(HARNESS / "kube-down.sh")], env=env, capture_output=True, timeout=120
        )


@contextmanager
def istio_replay(env: dict[str, str], fixtures: Path) -> Iterator[None]:
    replay_env = {**env, "ISTIO_REPLAY_FIXTURES": str(fixtures), "PYTHON": sys.executable}
    replay_env["ISTIO_REPLAY_PORT"] = str(free_port())
    try:
        run(["bash", str(HARNESS / "istio-replay" / "up.sh")], replay_env)
        yield
    finally:
        subprocess.run(
            ["bash", str(HARNESS / "istio-replay" / "down.sh")],
            env=replay_env,
            capture_output=True,
            timeout=60,
        )


def wait_ready(url: str, ca: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    import ssl

    context = ssl.create_default_context(cafile=str(ca))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise HarnessError(f"the webhook exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", context=context, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise HarnessError(f"the webhook was not ready within 30 s: {log.read_text()[-2000:]}")


@contextmanager
def local_webhook(env: dict[str, str], work: Path) -> Iterator[str]:
    """`serve` on 127.0.0.1 with fresh certificates, registered by URL; yields its URL."""
    certs = work / "certs"
    certs.mkdir()
    run([str(CLI), "certs", "--out", str(certs), "--san", "127.0.0.1", "--san", "localhost"], env)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    log = work / "webhook.log"
    serve_env = {k: v for k, v in env.items() if not k.startswith("ISTIO_SPIFFE_WEBHOOK_")}
    serve_env["ISTIO_SPIFFE_WEBHOOK_METRICS_PORT"] = "0"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(CLI),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--cert",
                str(certs / "tls.crt"),
                "--key",
                str(certs / "tls.key"),
            ],
            env=serve_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    configuration: dict[str, Any] = yaml.safe_load(WEBHOOK_CONFIGURATION.read_text())
    ca_bundle = base64.b64encode((certs / "ca.crt").read_bytes()).decode()
    for webhook in configuration["webhooks"]:
        path = webhook["clientConfig"]["service"].get("path", "/mutate")
        webhook["clientConfig"] = {"url": f"{url}{path}", "caBundle": ca_bundle}
    try:
        wait_ready(url, certs / "ca.crt", process, log)
        applied = subprocess.run(
            ["kubectl", "apply", "-f", "-"],
            input=json.dumps(configuration),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if applied.returncode != 0:
            raise HarnessError(f"registering the webhook failed: {applied.stderr.strip()}")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        if process.returncode not in (0, -signal.SIGTERM):
            print(f"e2e: the webhook exited with {process.returncode}; its log:", file=sys.stderr)
            print(log.read_text()[-4000:], file=sys.stderr)


def main() -> int:
    try:
        check_binaries()
    except HarnessError as error:
        print(f"e2e: {error}", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="isw-e2e-")))
        report = work / "report.json"
        try:
            print("e2e: starting kube-apiserver 1.36.2 ...", file=sys.stderr)
            env = stack.enter_context(kube_apiserver(work / "state"))
            fixtures = work / "istio-fixtures"
            replay_fixtures(fixtures)
            stack.enter_context(istio_replay(env, fixtures))
            url = stack.enter_context(local_webhook(env, work))
        except (HarnessError, subprocess.TimeoutExpired) as error:
            print(f"e2e: {error}", file=sys.stderr)
            return 2
        print(
            f"e2e: webhook at {url}, Istio's injector replayed; running tests/e2e", file=sys.stderr
        )
        test_env = {
            **env,
            "E2E": "1",
            "E2E_INSTALL": "local",
            "E2E_REPORT": str(report),
            "E2E_REPLAY_FIXTURES": str(fixtures),
        }
        args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "e2e"]
        args += ["--timeout=900", "-n", "2"]  # set-ups wait for the API server (bounded)
        args += sys.argv[1:] or ["tests/e2e"]
        status = subprocess.run(args, env=test_env, cwd=ROOT, timeout=3600).returncode
        for line in summary_lines(report):
            print(line)
        return status


if __name__ == "__main__":
    sys.exit(main())
