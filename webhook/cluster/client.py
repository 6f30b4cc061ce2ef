"""Connecting to the cluster and turning API errors into one clear line.

Configuration is found the way controller-runtime finds it: `--kubeconfig`, then the
`KUBECONFIG` environment variable (a `:`-separated list is merged, as kubectl does), then
the in-cluster service account when running in a pod, then `~/.kube/config`.

Objects are read as plain JSON (`_preload_content=False`), exactly as the API server sends
them, so the rewrite judges the same dicts the webhook sees and no field is lost to a
client model. Every call has a timeout; a refused connection, a TLS failure, 401 and 403
become `ClusterError` (the commands exit with status 2 on it), never a traceback.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# (connect, read) seconds for every API call: a hung API server cannot hang the command.
REQUEST_TIMEOUT = (5.0, 30.0)
PAGE_SIZE = 500
MAX_PAGES = 10_000  # bounds the pagination loop (5 million objects)

Json = dict[str, Any]


class ClusterError(Exception):
    """The cluster cannot be reached, or the API refused us; the message is one line."""


class AccessDenied(ClusterError):
    """403: the credentials are good but not allowed this read (a check may do without it)."""


def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> Any:
    """A `kubernetes.client.ApiClient` for the configured cluster, or ClusterError."""
    import urllib3
    from kubernetes import client
    from kubernetes.config.config_exception import ConfigException

    config: Any = importlib.import_module("kubernetes.config")  # untyped

    configuration = client.Configuration()
    paths = kubeconfig or os.environ.get("KUBECONFIG")
    home = Path("~/.kube/config").expanduser()
    try:
        if paths:
            config.load_kube_config(
                config_file=paths,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
        elif os.environ.get("KUBERNETES_SERVICE_HOST") and not context:
            config.load_incluster_config(client_configuration=configuration)
        elif home.exists():
            config.load_kube_config(
                config_file=str(home),
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
        else:
            raise ClusterError(
                "no Kubernetes configuration found: pass --kubeconfig, set KUBECONFIG,"
                " or run in a pod with a service account"
            )
    except ConfigException as error:
        raise ClusterError(f"kubeconfig: {_one_line(str(error))}") from None
    except (OSError, ValueError) as error:  # unreadable file, malformed YAML or fields
        raise ClusterError(f"kubeconfig: {_one_line(str(error))}") from None
    # Retry a refused or reset connection twice; a read that timed out is not retried, so a
    # hung API server costs one REQUEST_TIMEOUT, not three.
    configuration.retries = urllib3.Retry(total=2, read=0, backoff_factor=0.2)
    return client.ApiClient(configuration)


class Cluster:
    """The reads audit and doctor need, each returning the API server's JSON."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.host: str = api_client.configuration.host
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.storage = client.StorageV1Api(api_client)
        self.discovery = client.DiscoveryV1Api(api_client)
        self.admission = client.AdmissionregistrationV1Api(api_client)
        self.admission_beta = client.AdmissionregistrationV1beta1Api(api_client)
        self.apis = client.ApisApi(api_client)
        self.version_api = client.VersionApi(api_client)

    def call(
        self, what: str, method: Callable[..., Any], *args: Any, missing_ok: bool = False, **kw: Any
    ) -> Json | None:
        """One GET through the client; None for 404 when `missing_ok`."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            response = method(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kw)
        except ApiException as error:
            if error.status == 404 and missing_ok:
                return None
            denied = error.status == 403
            raise (AccessDenied if denied else ClusterError)(self._describe(error, what)) from None
        except urllib3.exceptions.HTTPError as error:
            raise ClusterError(
                f"cannot reach the Kubernetes API at {self.host}: {reason_of(error)}"
            ) from None
        try:
            body = json.loads(response.data)
        except ValueError:
            raise ClusterError(
                f"the Kubernetes API at {self.host} sent a body that is not JSON for {what}"
            ) from None
        if not isinstance(body, dict):
            raise ClusterError(f"the Kubernetes API at {self.host} sent a non-object for {what}")
        return body

    def get(self, what: str, method: Callable[..., Any], *args: Any, **kw: Any) -> Json:
        body = self.call(what, method, *args, **kw)
        assert body is not None  # missing_ok is False: a 404 raised
        return body

    def items(self, what: str, method: Callable[..., Any], *args: Any, **kw: Any) -> Iterator[Json]:
        """Every item of a list, page by page (`limit` / `continue`)."""
        token: str | None = None
        for _ in range(MAX_PAGES):
            page = self.get(what, method, *args, limit=PAGE_SIZE, _continue=token, **kw)
            for item in page.get("items") or []:
                if isinstance(item, dict):
                    yield item
            token = (page.get("metadata") or {}).get("continue") or None
            if not token:
                return
        raise ClusterError(f"listing {what} did not end after {MAX_PAGES} pages")

    def _describe(self, error: Any, what: str) -> str:
        message = ""
        try:
            status = json.loads(error.body or "")
            if isinstance(status, dict):
                message = str(status.get("message") or "")
        except ValueError:
            message = ""
        message = _one_line(message or str(error.reason or ""))
        if error.status == 0:  # the client's own TLS or request errors
            return f"cannot reach the Kubernetes API at {self.host}: {message}"
        if error.status == 401:
            return (
                f"access denied: the Kubernetes API at {self.host} rejected the credentials"
                f" (401 {message}) while reading {what}"
            )
        if error.status == 403:
            return f"access denied while reading {what}: {message}"
        return f"the Kubernetes API at {self.host} answered {error.status} to {what}: {message}"


def reason_of(error: Exception) -> str:
    """'connection refused' out of urllib3's nested MaxRetryError text."""
    reason = getattr(error, "reason", None) or error
    text = str(reason)
    tls = re.search(r"\[SSL: \w+\] ([^('\"]+)", text)
    if tls:
        return f"TLS: {tls.group(1).strip()}"
    match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if match:
        return match.group(1).strip().lower()
    if "timed out" in text.lower():
        return "timed out"
    return _one_line(text.split(": ", 1)[-1]) or type(reason).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())
