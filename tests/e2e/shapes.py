"""The pods `make e2e` puts through the real API server: every shared fixture and the
documented `spire` shapes of each, as files the harness's Istio-injector replay serves.

A replayed pod is a plain pod labelled `fixture=NAME`; the replay gives it the spec of
`NAME.json`, as Istio's injector would have.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.oracle import istio_pods
from tests.shapes import spire_variants
from webhook.config import Settings

REPLAY_LABEL = "fixture"


def e2e_pods(settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """Every shared fixture pod, and its `spire` shapes as `NAME.spire-KIND`."""
    settings = settings or Settings()
    pods: dict[str, dict[str, Any]] = {}
    for name, pod in istio_pods().items():
        pods[name] = pod
        for kind, variant in spire_variants(pod, settings).items():
            pods[f"{name}.{kind}"] = variant
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


UNITS = {"manifests": "kustomizations"}


def summary_lines(report: Path) -> list[str]:
    """`FORM: RIGHT/ALL pods` from the case files every pytest process wrote."""
    cases: dict[str, dict[str, bool]] = {}
    for part in sorted(report.parent.glob(f"{report.name}.*.json")):
        for form, results in json.loads(part.read_text()).items():
            for name, right in results.items():
                cases.setdefault(form, {})[name] = cases.get(form, {}).get(name, True) and right
    return [
        f"{form}: {sum(c.values())}/{len(c)} {UNITS.get(form, 'pods')}"
        for form, c in sorted(cases.items())
    ]


def refused_fields(message: str) -> list[str]:
    """The fields an API server refusal names, without list indexes (the rewrite removes a
    volume, so the same volume can sit at another index)."""
    return [re.sub(r"\[\d+\]", "[]", f) for f in re.findall(r"spec\.[\w.\[\]]+", message)]
