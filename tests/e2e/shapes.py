"""The pods `make e2e` puts through the real API server: every shared fixture and the
documented `spire` shapes of each, as files the harness's Istio-injector replay serves.

A replayed pod is a plain pod labelled `fixture=NAME`; the replay gives it the spec of
`NAME.json`, as Istio's injector would have.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.oracle import istio_pods
from webhook.config import Settings

REPLAY_LABEL = "fixture"


SPIRE_MOUNT_PATH = "/run/secrets/workload-spiffe-uds"


def spire_variants(pod: dict[str, Any], settings: Settings) -> dict[str, dict[str, Any]]:
    """Istio's documented `spire` template merged over `sidecar` (TEMPORARY: issue 10's
    tests.shapes replaces this): the socket volume a CSI volume and istio-proxy mounting
    it a second time at /run/..., before or after the sidecar's own mount."""
    variants: dict[str, dict[str, Any]] = {}
    for kind in ("before", "after"):
        variant = json.loads(json.dumps(pod))
        spec = variant.get("spec") or {}
        proxies = [
            c
            for key in ("initContainers", "containers")
            for c in spec.get(key) or []
            if c.get("name") == settings.proxy_container
        ]
        if not proxies:
            return {}
        for proxy in proxies:
            mounts = proxy.setdefault("volumeMounts", [])
            extra = {
                "name": settings.socket_volume,
                "mountPath": SPIRE_MOUNT_PATH,
                "readOnly": True,
            }
            mounts.insert(0, extra) if kind == "before" else mounts.append(extra)
        for volume in spec.get("volumes") or []:
            if volume.get("name") == settings.socket_volume:
                volume.clear()
                volume.update(
                    {
                        "name": settings.socket_volume,
                        "csi": {"driver": settings.csi_driver, "readOnly": True},
                    }
                )
        variants[kind] = variant
    return variants


def e2e_pods(settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """Every shared fixture pod, and its `spire` shapes as `NAME.spire-KIND`."""
    settings = settings or Settings()
    pods: dict[str, dict[str, Any]] = {}
    for name, pod in istio_pods().items():
        pods[name] = pod
        for kind, variant in spire_variants(pod, settings).items():
            pods[f"{name}.spire-{kind}"] = variant
    return pods


def replay_fixtures(directory: Path) -> None:
    """Write every e2e pod as `NAME.json` for the replay (ISTIO_REPLAY_FIXTURES)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, pod in e2e_pods().items():
        (directory / f"{name}.json").write_text(json.dumps(pod))


def plain_pod(name: str) -> dict[str, Any]:
    """What a user applies: no proxy; the replay injects fixture `name` into it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name.replace(".", "-").replace("_", "-").lower(),
            "labels": {REPLAY_LABEL: name},
        },
        "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }


def summary_lines(report: Path) -> list[str]:
    """`FORM: RIGHT/ALL pods` from the case files every pytest process wrote."""
    cases: dict[str, dict[str, bool]] = {}
    for part in sorted(report.parent.glob(f"{report.name}.*.json")):
        for form, results in json.loads(part.read_text()).items():
            for name, right in results.items():
                cases.setdefault(form, {})[name] = cases.get(form, {}).get(name, True) and right
    return [f"{form}: {sum(c.values())}/{len(c)} pods" for form, c in sorted(cases.items())]
