"""A small, real Kubernetes API server stand-in on 127.0.0.1, for `audit`, `doctor`, `verify`.

It serves over plain HTTP the read paths those commands use, with the shapes a real
kube-apiserver sends: objects by their REST path (`/api/v1/namespaces/shop/pods/x`,
`/apis/apps/v1/...`), lists with `kind: <Kind>List`, `apiVersion`, `metadata.resourceVersion`
(and `continue` when `limit` cuts a list) and items without `kind`/`apiVersion` (as a real
list sends them), label selectors, `Status` objects for 401/403/404/400, `/version`, `/api`,
`/apis` and per-group-version discovery. Bearer-token authentication is checked, so the
credentials in the kubeconfig really travel through the client.

`pods/{name}/exec` is served the way the API server serves it to a WebSocket client: the
RFC 6455 upgrade (`Sec-WebSocket-Accept`, the first of the client's subprotocols the server
speaks, `v5.channel.k8s.io` or `v4.channel.k8s.io`), then unmasked binary frames whose first
byte is the channel (1 stdout, 2 stderr, 3 the kubelet's final `Status`), then a close frame.
Refusals come before the upgrade, as a plain HTTP answer with a `Status` body: 403 when
`pods/exec` is denied (worded as a 1.36 API server words it to an account with neither verb:
the WebSocket upgrade is a GET, authorized as `get` first), 404 for a missing pod, 400 for a
container the pod does not have or a pod without a node (`pkg/registry/core/pod/strategy.go`),
400 for a GET without an upgrade.
What a container runs is a Python function the test registers (`FakeAPI.processes`). The
server side of RFC 6455 is written here (the handshake's accept key, unmasked frames, reading
the client's masked close): it is short, no WebSocket server library is in the dev lock of
its own right, and the real client (`websocket-client` under `kubernetes.stream`) checks every
frame of it.

Objects are built with the `kubernetes` client's own models and
`ApiClient().sanitize_for_serialization`, or taken from the shared fixtures (pods exactly as
the API server stored them), so field names and layouts are Kubernetes' own.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml
from kubernetes import client as k8s

Json = dict[str, Any]
TOKEN = "fake-token-for-tests"
TIMESTAMP = "2026-11-20T10:00:00Z"

# kind -> (plural resource, namespaced)
KINDS: dict[str, tuple[str, bool]] = {
    "Pod": ("pods", True),
    "Namespace": ("namespaces", False),
    "Secret": ("secrets", True),
    "Service": ("services", True),
    "ConfigMap": ("configmaps", True),
    "ReplicaSet": ("replicasets", True),
    "Deployment": ("deployments", True),
    "StatefulSet": ("statefulsets", True),
    "DaemonSet": ("daemonsets", True),
    "Job": ("jobs", True),
    "CronJob": ("cronjobs", True),
    "CSIDriver": ("csidrivers", False),
    "EndpointSlice": ("endpointslices", True),
    "MutatingWebhookConfiguration": ("mutatingwebhookconfigurations", False),
    "MutatingAdmissionPolicy": ("mutatingadmissionpolicies", False),
    "MutatingAdmissionPolicyBinding": ("mutatingadmissionpolicybindings", False),
}
RESOURCES = {plural: (kind, namespaced) for kind, (plural, namespaced) in KINDS.items()}
GROUP_VERSIONS = {
    "v1": ["Pod", "Namespace", "Secret", "Service", "ConfigMap"],
    "apps/v1": ["ReplicaSet", "Deployment", "StatefulSet", "DaemonSet"],
    "batch/v1": ["Job", "CronJob"],
    "storage.k8s.io/v1": ["CSIDriver"],
    "discovery.k8s.io/v1": ["EndpointSlice"],
    "admissionregistration.k8s.io/v1": ["MutatingWebhookConfiguration"],
}
POLICY_KINDS = ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"]
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3
EXEC_CHUNK = 32 * 1024  # output goes out in frames of at most this many bytes
_EXEC_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/exec$")


@dataclass(frozen=True)
class Exited:
    """What a command in a container did: its output and exit code."""

    stdout: bytes = b""
    stderr: bytes = b""
    code: int = 0


class CannotStart(Exception):
    """The runtime could not start the command (no such executable, ...)."""


# (namespace, pod, container) -> the command's behaviour
Process = Callable[[list[str]], Exited]


def status(code: int, reason: str, message: str, details: Json | None = None) -> Json:
    """A `Status` object as the API server sends with every error."""
    body: Json = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


class FakeAPI:
    """The state (objects, denials, discovery) and the HTTP server that serves it."""

    def __init__(
        self,
        minor: int = 36,
        policy_versions: tuple[str, ...] = ("v1",),
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        """`tls`: (certificate, key) files to serve HTTPS, as a real API server does."""
        self.minor = minor
        self.tls = tls
        self.policy_versions = policy_versions
        self.objects: dict[str, Json] = {}
        self.denied: set[str] = set()  # resources (plural, or "pods/exec") answered with 403
        self.requests: list[str] = []  # path?query of every request, in order
        self.processes: dict[tuple[str, str, str], Process] = {}
        self.exec_protocols = EXEC_PROTOCOLS  # subprotocols this server speaks, preferred first
        self.execs: list[
            tuple[str, str, str, list[str], str]
        ] = []  # ns, pod, container, cmd, proto
        self.resource_version = 1000
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- state -----------------------------------------------------------------------
    def add(self, *objects: Json) -> None:
        for obj in objects:
            self.resource_version += 1
            obj = copy.deepcopy(obj)
            obj.setdefault("metadata", {}).setdefault("resourceVersion", str(self.resource_version))
            self.objects[self.path_of(obj)] = obj

    def remove(self, obj: Json) -> None:
        del self.objects[self.path_of(obj)]

    def deny(self, resource: str) -> None:
        self.denied.add(resource)

    @staticmethod
    def path_of(obj: Json) -> str:
        api_version, kind = obj["apiVersion"], obj["kind"]
        plural, namespaced = KINDS[kind]
        prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        meta = obj["metadata"]
        if namespaced:
            return f"{prefix}/namespaces/{meta['namespace']}/{plural}/{meta['name']}"
        return f"{prefix}/{plural}/{meta['name']}"

    # --- the server ------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host!s}:{port}"

    def start(self) -> FakeAPI:
        api = self

        class Handler(_Handler):
            fake = api

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def kubeconfig(self, directory: Path, token: str = TOKEN, server: str | None = None) -> Path:
        """A kubeconfig file pointing at this server with a bearer token."""
        path = directory / "kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": server or self.url}}],
            "users": [{"name": "tester", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # --- routing ---------------------------------------------------------------------
    def handle(self, path: str, query: dict[str, list[str]], token: str | None) -> tuple[int, Any]:
        if token != TOKEN:
            return 401, status(401, "Unauthorized", "Unauthorized")
        path = path.rstrip("/") or "/"  # the client asks for /version/, /apis/, ...
        if path == "/version":
            return 200, self.version()
        if path == "/api":
            return 200, {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}
                ],
            }
        if path == "/apis":
            return 200, self.group_list()
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group_version, rest = "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            return 404, "404 page not found\n"
        served = self.served()
        if group_version not in served:
            return 404, "404 page not found\n"
        if not rest:
            return 200, self.resource_list(group_version, served[group_version])
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        resource, name = rest[0], (rest[1] if len(rest) > 1 else None)
        if len(rest) > 2 or resource not in RESOURCES:
            return 404, "404 page not found\n"
        kind, namespaced = RESOURCES[resource]
        if kind not in served[group_version] or (namespace is not None and not namespaced):
            return 404, "404 page not found\n"
        group = group_version.split("/")[0] if "/" in group_version else ""
        if resource in self.denied:
            return 403, self.forbidden(resource, group, namespace, name)
        if name is not None:
            return self.read(path, resource, group, name)
        return self.list(group_version, kind, namespace, query)

    def read(self, path: str, resource: str, group: str, name: str) -> tuple[int, Any]:
        obj = self.objects.get(path)
        if obj is None:
            qualified = f"{resource}.{group}" if group else resource
            return 404, status(
                404,
                "NotFound",
                f'{qualified} "{name}" not found',
                {"name": name, "group": group, "kind": resource},
            )
        return 200, obj

    def list(
        self, group_version: str, kind: str, namespace: str | None, query: dict[str, list[str]]
    ) -> tuple[int, Any]:
        try:
            selector = parse_selector(query.get("labelSelector", [""])[0])
        except ValueError as error:
            return 400, status(400, "BadRequest", f"unable to parse requirement: {error}")
        items = [
            obj
            for obj in self.objects.values()
            if obj["apiVersion"] == group_version
            and obj["kind"] == kind
            and (namespace is None or obj["metadata"].get("namespace") == namespace)
            and matches(selector, obj["metadata"].get("labels") or {})
        ]
        items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        start = 0
        if query.get("continue", [""])[0]:
            start = json.loads(base64.b64decode(query["continue"][0]))["start"]
        limit = int(query.get("limit", ["0"])[0] or 0)
        end = start + limit if limit else len(items)
        metadata: Json = {"resourceVersion": str(self.resource_version)}
        if end < len(items):
            metadata["continue"] = base64.b64encode(
                json.dumps(
                    {"v": "meta.k8s.io/v1", "rv": self.resource_version, "start": end}
                ).encode()
            ).decode()
            metadata["remainingItemCount"] = len(items) - end
        page = []
        for obj in items[start:end]:
            item = copy.deepcopy(obj)  # a real list's items carry no kind/apiVersion
            item.pop("kind", None)
            item.pop("apiVersion", None)
            page.append(item)
        return 200, {
            "kind": f"{kind}List",
            "apiVersion": group_version,
            "metadata": metadata,
            "items": page,
        }

    def forbidden(self, resource: str, group: str, namespace: str | None, name: str | None) -> Json:
        verb = "get" if name else "list"
        where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        target = f'"{name}" ' if name else ""
        return status(
            403,
            "Forbidden",
            f'{resource} {target}is forbidden: User "system:serviceaccount:default:auditor"'
            f' cannot {verb} resource "{resource}" in API group "{group}" {where}',
            {"name": name, "group": group, "kind": resource} if name else {"kind": resource},
        )

    # --- pods/exec -------------------------------------------------------------------
    def exec_refusal(
        self, namespace: str, name: str, query: dict[str, list[str]], token: str | None
    ) -> tuple[int, Json] | None:
        """The API server's answer when it does not open the stream, None when it does."""
        if token != TOKEN:
            return 401, status(401, "Unauthorized", "Unauthorized")
        if "pods/exec" in self.denied:
            return 403, status(
                403,
                "Forbidden",
                f'pods "{name}" is forbidden: User "system:serviceaccount:default:auditor"'
                f' cannot get resource "pods/exec" in API group "" in the namespace'
                f' "{namespace}"',
                {"name": name, "kind": "pods"},
            )
        pod = self.objects.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
        if pod is None:
            return 404, status(
                404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"}
            )
        container = query.get("container", [""])[0]
        spec = pod.get("spec") or {}
        names = [
            c.get("name") for key in ("containers", "initContainers") for c in spec.get(key) or []
        ]
        if container not in names:
            return 400, status(
                400, "BadRequest", f"container {container} is not valid for pod {name}"
            )
        if not spec.get("nodeName"):
            return 400, status(400, "BadRequest", f"pod {name} does not have a host assigned")
        return None

    def run(
        self, namespace: str, name: str, container: str, command: list[str]
    ) -> tuple[Json, Exited]:
        """Run `command`: the kubelet's final Status and what the command wrote."""
        process = self.processes.get((namespace, name, container))
        try:
            if process is None:
                raise CannotStart(
                    f'exec: "{command[0] if command else ""}": executable file not found in $PATH'
                )
            exited = process(command)
        except CannotStart as error:
            message = (
                "Internal error occurred: error executing command in container: failed to exec"
                f" in container: OCI runtime exec failed: {error}: unknown"
            )
            return {**status(500, "InternalError", message), "metadata": {}}, Exited()
        if exited.code == 0:
            return {"metadata": {}, "status": "Success"}, exited
        # k8s.io/kubelet/pkg/cri/streaming/remotecommand/exec.go, as the v4 protocol writes it
        return {
            "metadata": {},
            "status": "Failure",
            "message": "command terminated with non-zero exit code: error executing command"
            f" [{' '.join(command)}], exit code {exited.code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(exited.code)}]},
        }, exited

    # --- discovery -------------------------------------------------------------------
    def served(self) -> dict[str, list[str]]:
        served = {gv: list(kinds) for gv, kinds in GROUP_VERSIONS.items()}
        for version in self.policy_versions:
            served.setdefault(f"admissionregistration.k8s.io/{version}", []).extend(POLICY_KINDS)
        return served

    def version(self) -> Json:
        return {
            "major": "1",
            "minor": str(self.minor),
            "emulationMajor": "1",
            "emulationMinor": str(self.minor),
            "minCompatibilityMajor": "1",
            "minCompatibilityMinor": str(self.minor - 1),
            "gitVersion": f"v1.{self.minor}.2",
            "gitCommit": "0123456789abcdef0123456789abcdef01234567",
            "gitTreeState": "clean",
            "buildDate": "2026-10-01T00:00:00Z",
            "goVersion": "go1.25.1",
            "compiler": "gc",
            "platform": "linux/amd64",
        }

    def group_list(self) -> Json:
        groups: dict[str, list[str]] = {}
        for group_version in self.served():
            if "/" in group_version:
                group, version = group_version.split("/")
                groups.setdefault(group, []).append(version)
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [
                {
                    "name": group,
                    "versions": [
                        {"groupVersion": f"{group}/{v}", "version": v} for v in sorted(versions)
                    ],
                    "preferredVersion": {
                        "groupVersion": f"{group}/{sorted(versions)[0]}",
                        "version": sorted(versions)[0],
                    },
                }
                for group, versions in sorted(groups.items())
            ],
        }

    @staticmethod
    def resource_list(group_version: str, kinds: list[str]) -> Json:
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": [
                {
                    "name": KINDS[kind][0],
                    "singularName": kind.lower(),
                    "namespaced": KINDS[kind][1],
                    "kind": kind,
                    "verbs": [
                        "create",
                        "delete",
                        "deletecollection",
                        "get",
                        "list",
                        "patch",
                        "update",
                        "watch",
                    ],
                    "storageVersionHash": base64.b64encode(kind.encode()).decode()[:12],
                }
                for kind in kinds
            ],
        }


class _Handler(BaseHTTPRequestHandler):
    fake: FakeAPI
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.fake.requests.append(self.path)
        auth = self.headers.get("Authorization", "")
        scheme, _, credentials = auth.partition(" ")
        token = credentials.strip() if scheme.lower() == "bearer" else None  # RFC 7235
        target = _EXEC_PATH.match(url.path)
        if target:
            self.exec(target.group(1), target.group(2), parse_qs(url.query), token)
            return
        code, body = self.fake.handle(url.path, parse_qs(url.query), token)
        self.answer(code, body)

    def answer(self, code: int, body: Any) -> None:
        if isinstance(body, str):
            data, content_type = body.encode(), "text/plain; charset=utf-8"
        else:
            data, content_type = json.dumps(body).encode(), "application/json"
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def exec(
        self, namespace: str, name: str, query: dict[str, list[str]], token: str | None
    ) -> None:
        if "websocket" not in self.headers.get("Upgrade", "").lower():
            self.answer(400, status(400, "BadRequest", "Upgrade request required"))
            return
        refusal = self.fake.exec_refusal(namespace, name, query, token)
        if refusal is not None:
            self.close_connection = True
            self.answer(*refusal)
            return
        offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        protocol = next((p for p in offered if p in self.fake.exec_protocols), None)
        if protocol is None:
            self.close_connection = True
            self.answer(
                400, status(400, "BadRequest", "unable to upgrade: no supported subprotocol")
            )
            return
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest())
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.send_header("Sec-WebSocket-Protocol", protocol)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        container = query.get("container", [""])[0]
        command = query.get("command", [])
        self.fake.execs.append((namespace, name, container, command, protocol))
        final, exited = self.fake.run(namespace, name, container, command)
        out = bytearray()
        for channel, data in ((1, exited.stdout), (2, exited.stderr)):
            for start in range(0, len(data), EXEC_CHUNK):
                out += websocket_frame(0x2, bytes([channel]) + data[start : start + EXEC_CHUNK])
        out += websocket_frame(0x2, bytes([3]) + json.dumps(final).encode())
        out += websocket_frame(0x8, (1000).to_bytes(2, "big"))  # close: normal closure
        self.wfile.write(bytes(out))
        # Wait briefly for the client's close frame, so the connection ends cleanly.
        self.connection.settimeout(2)
        try:
            while (frame := read_client_frame(self.rfile)) is not None and frame[0] != 0x8:
                pass
        except (OSError, ValueError):
            pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        data = json.dumps(status(405, "MethodNotAllowed", "the fake API is read-only")).encode()
        self.send_response(405)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_PUT = do_PATCH = do_DELETE = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass


def websocket_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame (RFC 6455 section 5.2; a server never masks)."""
    size = len(payload)
    if size < 126:
        header = bytes([0x80 | opcode, size])
    elif size < 1 << 16:
        header = bytes([0x80 | opcode, 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 127]) + size.to_bytes(8, "big")
    return header + payload


def read_client_frame(stream: Any) -> tuple[int, bytes] | None:
    """One frame from a client (masked, RFC 6455 section 5.3); None at the end of the stream.
    An unmasked frame is a protocol error (ValueError)."""
    head = stream.read(2)
    if len(head) < 2:
        return None
    opcode, size = head[0] & 0x0F, head[1] & 0x7F
    if not head[1] & 0x80:
        raise ValueError("a client frame must be masked")
    if size == 126:
        size = int.from_bytes(stream.read(2), "big")
    elif size == 127:
        size = int.from_bytes(stream.read(8), "big")
    mask = stream.read(4)
    data = stream.read(size)
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def run_command(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`istio-spiffe-webhook ARGS` as a real subprocess, KUBECONFIG from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ISTIO_SPIFFE_WEBHOOK_")}
    env["KUBECONFIG"] = str(kubeconfig)
    return subprocess.run(
        [str(Path(sys.executable).with_name("istio-spiffe-webhook")), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@contextmanager
def running(fake: FakeAPI) -> Iterator[FakeAPI]:
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


# --- label selectors (the subset kubectl users write) -------------------------------------
_REQUIREMENT = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9./_-]+)\s*"
    r"(?:(?P<op>==|!=|=)\s*(?P<value>[A-Za-z0-9._-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)


def parse_selector(text: str) -> list[tuple[str, str, list[str]]]:
    requirements = []
    for part in re.split(r",(?![^(]*\))", text) if text.strip() else []:
        match = _REQUIREMENT.match(part)
        if not match:
            raise ValueError(f"invalid selector {part.strip()!r}")
        key = match["key"]
        if match["neg"]:
            if match["op"] or match["setop"]:
                raise ValueError(f"invalid selector {part.strip()!r}")
            requirements.append((key, "!", []))
        elif match["op"]:
            requirements.append((key, "!=" if match["op"] == "!=" else "=", [match["value"]]))
        elif match["setop"]:
            values = [v.strip() for v in match["values"].split(",")]
            requirements.append((key, match["setop"], values))
        else:
            requirements.append((key, "exists", []))
    return requirements


def matches(requirements: list[tuple[str, str, list[str]]], labels: dict[str, str]) -> bool:
    for key, op, values in requirements:
        present = key in labels
        ok = {
            "=": present and labels.get(key) == values[0],
            "!=": labels.get(key) != values[0],
            "in": present and labels.get(key) in values,
            "notin": labels.get(key) not in values,
            "exists": present,
            "!": not present,
        }[op]
        if not ok:
            return False
    return True


# --- objects in Kubernetes' own shapes ----------------------------------------------------
_API = k8s.ApiClient()
_uid_counter = iter(range(1, 1_000_000))


def serialize(model: Any) -> Json:
    obj: Json = _API.sanitize_for_serialization(model)
    meta = obj.setdefault("metadata", {})
    meta.setdefault("uid", uid())
    meta["creationTimestamp"] = TIMESTAMP
    return obj


def uid() -> str:
    return f"00000000-0000-4000-8000-{next(_uid_counter):012d}"


def meta(
    name: str,
    namespace: str | None = None,
    labels: dict[str, str] | None = None,
    owner: Json | None = None,
    annotations: dict[str, str] | None = None,
) -> Any:
    refs = None
    if owner is not None:
        refs = [
            k8s.V1OwnerReference(
                api_version=owner["apiVersion"],
                kind=owner["kind"],
                name=owner["metadata"]["name"],
                uid=owner["metadata"]["uid"],
                controller=True,
                block_owner_deletion=True,
            )
        ]
    return k8s.V1ObjectMeta(
        name=name,
        namespace=namespace,
        labels=labels,
        annotations=annotations,
        owner_references=refs,
        uid=uid(),
    )


def namespace(name: str, labels: dict[str, str] | None = None) -> Json:
    all_labels = {"kubernetes.io/metadata.name": name, **(labels or {})}
    return serialize(
        k8s.V1Namespace(
            api_version="v1",
            kind="Namespace",
            metadata=meta(name, labels=all_labels),
            spec=k8s.V1NamespaceSpec(finalizers=["kubernetes"]),
            status=k8s.V1NamespaceStatus(phase="Active"),
        )
    )


def _template(name: str) -> Any:
    return k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels={"app": name}),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="app", image="app:1")]),
    )


def deployment(name: str, ns: str) -> Json:
    return serialize(
        k8s.V1Deployment(
            api_version="apps/v1",
            kind="Deployment",
            metadata=meta(name, ns, {"app": name}),
            spec=k8s.V1DeploymentSpec(
                replicas=2,
                selector=k8s.V1LabelSelector(match_labels={"app": name}),
                template=_template(name),
            ),
        )
    )


def replicaset(name: str, ns: str, owner: Json | None) -> Json:
    return serialize(
        k8s.V1ReplicaSet(
            api_version="apps/v1",
            kind="ReplicaSet",
            metadata=meta(name, ns, {"app": name}, owner),
            spec=k8s.V1ReplicaSetSpec(
                replicas=2,
                selector=k8s.V1LabelSelector(match_labels={"app": name}),
                template=_template(name),
            ),
        )
    )


def statefulset(name: str, ns: str) -> Json:
    return serialize(
        k8s.V1StatefulSet(
            api_version="apps/v1",
            kind="StatefulSet",
            metadata=meta(name, ns, {"app": name}),
            spec=k8s.V1StatefulSetSpec(
                service_name=name,
                selector=k8s.V1LabelSelector(match_labels={"app": name}),
                template=_template(name),
            ),
        )
    )


def cronjob(name: str, ns: str) -> Json:
    job_template = k8s.V1JobTemplateSpec(
        spec=k8s.V1JobSpec(template=_template(name)),
    )
    return serialize(
        k8s.V1CronJob(
            api_version="batch/v1",
            kind="CronJob",
            metadata=meta(name, ns),
            spec=k8s.V1CronJobSpec(schedule="*/5 * * * *", job_template=job_template),
        )
    )


def job(name: str, ns: str, owner: Json | None) -> Json:
    return serialize(
        k8s.V1Job(
            api_version="batch/v1",
            kind="Job",
            metadata=meta(name, ns, None, owner),
            spec=k8s.V1JobSpec(template=_template(name)),
        )
    )


def running_pod(
    source: Json,
    name: str,
    ns: str,
    owner: Json | None = None,
    phase: str = "Running",
    labels: dict[str, str] | None = None,
) -> Json:
    """A fixture pod as the API server stores it once scheduled: named, owned, with status."""
    pod = copy.deepcopy(source)
    pod["apiVersion"], pod["kind"] = "v1", "Pod"
    metadata = pod.setdefault("metadata", {})
    metadata.pop("generateName", None)
    metadata.update({"name": name, "namespace": ns, "uid": uid(), "creationTimestamp": TIMESTAMP})
    if labels:
        metadata["labels"] = {**(metadata.get("labels") or {}), **labels}
    if owner is not None:
        refs = _API.sanitize_for_serialization(meta(name, owner=owner))["ownerReferences"]
        metadata["ownerReferences"] = refs
    pod.setdefault("spec", {})["nodeName"] = "node-1"
    pod["status"] = {
        "phase": phase,
        "conditions": [
            {"type": "Ready", "status": "True" if phase == "Running" else "False"},
        ],
        "hostIP": "10.0.0.11",
        "podIP": "10.244.1.17",
        "qosClass": "Burstable",
        "startTime": TIMESTAMP,
    }
    return pod


def csidriver(name: str) -> Json:
    return serialize(
        k8s.V1CSIDriver(
            api_version="storage.k8s.io/v1",
            kind="CSIDriver",
            metadata=meta(name),
            spec=k8s.V1CSIDriverSpec(
                attach_required=False,
                pod_info_on_mount=True,
                volume_lifecycle_modes=["Ephemeral"],
            ),
        )
    )


def webhook_configuration(
    name: str,
    ca_bundle: bytes | None,
    *,
    service: str = "istio-spiffe-webhook",
    ns: str = "istio-spiffe-webhook",
    reinvocation: str = "IfNeeded",
    side_effects: str = "None",
    webhook_name: str = "pods.istio-spiffe-webhook.io",
) -> Json:
    return serialize(
        k8s.V1MutatingWebhookConfiguration(
            api_version="admissionregistration.k8s.io/v1",
            kind="MutatingWebhookConfiguration",
            metadata=meta(name),
            webhooks=[
                k8s.V1MutatingWebhook(
                    name=webhook_name,
                    admission_review_versions=["v1"],
                    client_config=k8s.AdmissionregistrationV1WebhookClientConfig(
                        ca_bundle=base64.b64encode(ca_bundle).decode() if ca_bundle else None,
                        service=k8s.AdmissionregistrationV1ServiceReference(
                            name=service, namespace=ns, path="/mutate", port=443
                        ),
                    ),
                    failure_policy="Fail",
                    match_policy="Equivalent",
                    namespace_selector=k8s.V1LabelSelector(
                        match_labels={"istio-spiffe-webhook/inject": "enabled"}
                    ),
                    object_selector=k8s.V1LabelSelector(
                        match_expressions=[
                            k8s.V1LabelSelectorRequirement(
                                key="istio-spiffe-webhook/inject",
                                operator="NotIn",
                                values=["disabled"],
                            )
                        ]
                    ),
                    reinvocation_policy=reinvocation,
                    rules=[
                        k8s.V1RuleWithOperations(
                            api_groups=[""],
                            api_versions=["v1"],
                            operations=["CREATE"],
                            resources=["pods"],
                            scope="Namespaced",
                        )
                    ],
                    side_effects=side_effects,
                    timeout_seconds=5,
                )
            ],
        )
    )


def tls_secret(name: str, ns: str, cert_pem: bytes, key_pem: bytes = b"") -> Json:
    return serialize(
        k8s.V1Secret(
            api_version="v1",
            kind="Secret",
            metadata=meta(name, ns),
            type="kubernetes.io/tls",
            data={
                "tls.crt": base64.b64encode(cert_pem).decode(),
                "tls.key": base64.b64encode(key_pem).decode(),
            },
        )
    )


def service(name: str, ns: str) -> Json:
    return serialize(
        k8s.V1Service(
            api_version="v1",
            kind="Service",
            metadata=meta(name, ns, {"app.kubernetes.io/name": name}),
            spec=k8s.V1ServiceSpec(
                selector={"app.kubernetes.io/name": name},
                ports=[k8s.V1ServicePort(name="https", port=443, target_port=8443, protocol="TCP")],
                type="ClusterIP",
                cluster_ip="10.96.12.34",
            ),
        )
    )


def endpoint_slice(service_name: str, ns: str, ready: list[bool | None]) -> Json:
    return serialize(
        k8s.V1EndpointSlice(
            api_version="discovery.k8s.io/v1",
            kind="EndpointSlice",
            metadata=meta(
                f"{service_name}-abcde",
                ns,
                {
                    "kubernetes.io/service-name": service_name,
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                },
            ),
            address_type="IPv4",
            endpoints=[
                k8s.V1Endpoint(
                    addresses=[f"10.244.1.{20 + i}"],
                    conditions=k8s.V1EndpointConditions(
                        ready=flag, serving=flag, terminating=flag is False
                    ),
                    node_name="node-1",
                )
                for i, flag in enumerate(ready)
            ],
            ports=[k8s.DiscoveryV1EndpointPort(name="https", port=8443, protocol="TCP")],
        )
    )


def configmap(name: str, ns: str, data: dict[str, str]) -> Json:
    return serialize(
        k8s.V1ConfigMap(api_version="v1", kind="ConfigMap", metadata=meta(name, ns), data=data)
    )
