"""Shared by the atheris targets: pods built from fuzz bytes, and the checks on a rewrite.

`pod_from(fdp)` spends the fuzzer's bytes on choices (which containers, which names,
which volume sources, which env entries, where a field is missing or null), so coverage
guidance steers the pod's shape instead of fighting JSON syntax. Now and then it puts a
value of the wrong JSON type somewhere (`Built.odd`): then `rewrite()` may raise
`InvalidPod`, and the oracle (which assumes a well-typed pod) is not consulted.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import atheris
import jsonpatch

from tests.oracle import expected
from webhook.config import Settings
from webhook.rewrite import Contract, InvalidPod, rewrite

SETTINGS = Settings()
CONTRACT = Contract.from_settings(SETTINGS)
ODD_VALUES: list[Any] = [None, True, 0, 1.5, "", "x", [], {}, [None], {"a": None}]
CONTAINER_NAMES = [SETTINGS.proxy_container, "istio-init", "app", "", "~1/x"]
VOLUME_NAMES = [SETTINGS.certs_volume, SETTINGS.socket_volume, "istio-envoy", "data", ""]
ENV_NAMES = [SETTINGS.cert_provider_env, SETTINGS.ca_addr_env, "JWT_POLICY", ""]
LABEL_KEYS = [SETTINGS.inject_label, SETTINGS.identity_label, "a/b", "~", "~1", "ключ", ""]
LABEL_VALUES = [SETTINGS.inject_disabled_value, SETTINGS.identity_label_value, "enabled", ""]
SOURCES: list[dict[str, Any]] = [
    {},
    {"emptyDir": None},
    {"emptyDir": {}},
    {"hostPath": {"path": "/run/spire"}},
    {"csi": {"driver": SETTINGS.csi_driver, "readOnly": True}},
    {"csi": {"driver": SETTINGS.csi_driver}},
    {"csi": {"driver": "other.example.org", "readOnly": True}},
    {"configMap": {"name": "c"}},
    {"secret": {"secretName": "s"}},
]


@dataclass
class Built:
    pod: Any  # a pod; any JSON value when read from raw bytes
    odd: bool = False  # a value of the wrong JSON type was put somewhere


class Builder:
    def __init__(self, fdp: atheris.FuzzedDataProvider) -> None:
        self.fdp = fdp
        self.odd = False

    def pick(self, options: list[Any]) -> Any:
        return copy.deepcopy(options[self.fdp.ConsumeIntInRange(0, len(options) - 1)])

    def chance(self, one_in: int) -> bool:
        return self.fdp.ConsumeIntInRange(0, one_in - 1) == 0

    def text(self, options: list[str]) -> str:
        if self.chance(6):
            return self.fdp.ConsumeUnicodeNoSurrogates(8)
        return str(self.pick(options))

    def field(self, value: Any) -> Any:
        """`value`, or (rarely) a value of any JSON type in its place."""
        if self.chance(24):
            self.odd = True
            return self.pick(ODD_VALUES)
        return value

    def items(self, most: int, make: Any) -> list[Any] | None:
        if self.chance(8):
            return None
        return [self.field(make()) for _ in range(self.fdp.ConsumeIntInRange(0, most))]

    def put(self, target: dict[str, Any], key: str, value: Any) -> None:
        """Set `key`, unless the bytes say to leave it out."""
        if not self.chance(5):
            target[key] = self.field(value)

    def mount(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.text(VOLUME_NAMES), "mountPath": "/m"}
        if self.chance(2):
            out["readOnly"] = self.pick([True, False, None])
        return out

    def env(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.text(ENV_NAMES)}
        kind = self.fdp.ConsumeIntInRange(0, 3)
        if kind in (0, 2):
            out["value"] = self.pick(["istiod", SETTINGS.cert_provider, SETTINGS.ca_addr, ""])
        if kind in (1, 2):
            out["valueFrom"] = {"fieldRef": {"fieldPath": "metadata.name"}}
        return out

    def container(self, init: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.text(CONTAINER_NAMES), "image": "i"}
        self.put(out, "volumeMounts", self.items(4, self.mount))
        self.put(out, "env", self.items(5, self.env))
        if init and self.chance(2):
            out["restartPolicy"] = "Always"
        return out

    def volume(self) -> dict[str, Any]:
        return {"name": self.text(VOLUME_NAMES), **self.pick(SOURCES)}

    def labels(self) -> dict[str, Any]:
        return {
            self.text(LABEL_KEYS): self.text(LABEL_VALUES)
            for _ in range(self.fdp.ConsumeIntInRange(0, 4))
        }

    def pod(self) -> Built:
        spec: dict[str, Any] = {}
        self.put(spec, "containers", self.items(3, lambda: self.container(False)))
        self.put(spec, "initContainers", self.items(3, lambda: self.container(True)))
        self.put(spec, "volumes", self.items(5, self.volume))
        metadata: dict[str, Any] = {"name": "p"}
        self.put(metadata, "labels", self.labels())
        self.put(metadata, "annotations", self.labels())
        pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod"}
        self.put(pod, "metadata", metadata)
        self.put(pod, "spec", spec)
        return Built(pod, self.odd)


def pod_from(fdp: atheris.FuzzedDataProvider) -> Built:
    return Builder(fdp).pod()


def check_rewrite(built: Built) -> None:
    """Raise AssertionError if the rewrite of this pod (default settings) breaks a property."""
    pod = built.pod
    before = copy.deepcopy(pod)
    try:
        result = rewrite(pod, CONTRACT)
    except InvalidPod:
        if not built.odd:
            raise AssertionError("InvalidPod for a well-typed pod") from None
        assert pod == before, "rewrite() changed its input"
        return
    assert pod == before, "rewrite() changed its input"
    assert not result.warnings or result.ops, "a warning without a patch"
    patched = jsonpatch.apply_patch(pod, result.ops)
    assert pod == before, "the patch changed the input"
    assert rewrite(patched, CONTRACT).ops == [], "a second pass is not a no-op"
    if not built.odd:
        assert patched == expected(pod, SETTINGS), "the patched pod is not the contract's"
