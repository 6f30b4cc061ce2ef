"""Run a command in a container through the API server's `pods/exec` subresource.

The `kubernetes` client's `kubernetes.stream.stream` speaks the API server's WebSocket
channel protocol (`v5.channel.k8s.io`, else `v4.channel.k8s.io`): every frame starts with a
channel byte, 1 for stdout, 2 for stderr, 3 for the kubelet's final `Status` (`Success`, or
`Failure` with reason `NonZeroExitCode` and the exit code as a cause). The command's output is
returned as bytes, whole; a refused upgrade (401, 403, 404, 400) or a broken stream becomes
`ExecFailed` with one line that says why.

Every call is bounded. The WebSocket library opens its socket without a timeout, so a call
runs in a daemon thread that is given up after `deadline` seconds; and `stream()` swaps a
method of the `ApiClient` it is given while it runs, so each call gets an `ApiClient` of its
own and calls may run in parallel threads.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

STATUS_CHANNEL = 3


@dataclass(frozen=True)
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int


class ExecFailed(Exception):
    """The command did not run to an exit status; `reason` is one line.

    `denied`: the API server refused the credentials or the permission (401, 403).
    `unreachable_api`: the API server could not be reached at all.
    """

    def __init__(self, reason: str, *, denied: bool = False, unreachable_api: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.denied = denied
        self.unreachable_api = unreachable_api


def run_in_container(
    configuration: Any,
    namespace: str,
    pod: str,
    container: str,
    command: list[str],
    timeout: float,
) -> ExecResult:
    """`command` in `container` of `pod`; ExecFailed when it could not run to an exit status.

    `configuration`: the `kubernetes.client.Configuration` of the cluster. Reading the output
    may take `timeout` seconds; the whole call at most about twice that.
    """
    outcome: list[ExecResult | BaseException] = []

    def work() -> None:
        try:
            outcome.append(_run(configuration, namespace, pod, container, command, timeout))
        except BaseException as error:  # handed to the caller's thread
            outcome.append(error)

    thread = threading.Thread(target=work, name=f"exec {namespace}/{pod}", daemon=True)
    thread.start()
    thread.join(2 * timeout + 1)
    if not outcome:
        raise ExecFailed(f"the API server did not answer the exec request within {timeout:g}s")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _run(
    configuration: Any,
    namespace: str,
    pod: str,
    container: str,
    command: list[str],
    timeout: float,
) -> ExecResult:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from kubernetes.stream import stream
    from websocket import WebSocketException

    with client.ApiClient(configuration) as api_client:
        core = client.CoreV1Api(api_client)
        try:
            session = stream(
                core.connect_get_namespaced_pod_exec,
                pod,
                namespace,
                command=command,
                container=container,
                stdin=False,
                stdout=True,
                stderr=True,
                tty=False,
                binary=True,
                _preload_content=False,
            )
        except ApiException as error:
            raise _refused(error, configuration.host) from None
        try:
            session.sock.settimeout(timeout)  # a stalled frame cannot block a read forever
            session.run_forever(timeout=timeout)
            if session.is_open():
                raise ExecFailed(f"the command did not finish within {timeout:g}s")
            stdout = session.read_stdout()
            stderr = session.read_stderr()
            status = session.read_channel(STATUS_CHANNEL)
        except (WebSocketException, OSError) as error:
            raise ExecFailed(f"the exec stream broke: {_one_line(str(error))}") from None
        finally:
            session.close()
    return ExecResult(bytes(stdout), bytes(stderr), _exit_code(bytes(status)))


def _exit_code(status: bytes) -> int:
    """The exit code from the kubelet's Status on channel 3."""
    if not status:
        raise ExecFailed("the exec stream ended without an exit status")
    try:
        body = json.loads(status)
    except ValueError:
        raise ExecFailed("the exec stream's status is not JSON") from None
    if not isinstance(body, dict):
        raise ExecFailed("the exec stream's status is not a Status object")
    if body.get("status") == "Success":
        return 0
    if body.get("reason") == "NonZeroExitCode":
        for cause in (body.get("details") or {}).get("causes") or []:
            if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
                try:
                    return int(str(cause.get("message")))
                except (TypeError, ValueError):
                    break
    raise ExecFailed(_one_line(str(body.get("message") or "the command could not be run")))


def _refused(error: Any, host: str) -> ExecFailed:
    """Why the API server did not open the stream: its Status message, or the network's."""
    from websocket import WebSocketBadStatusException

    # stream() wraps the WebSocket library's exception; Python keeps it as the context.
    cause = error.__context__
    if isinstance(cause, WebSocketBadStatusException):
        code = cause.status_code
        message = ""
        try:
            body = json.loads(cause.resp_body or b"")
            if isinstance(body, dict):
                message = str(body.get("message") or "")
        except ValueError:
            message = ""
        message = _one_line(message or str(cause.status_message or ""))
        if code in (401, 403):
            what = "credentials rejected" if code == 401 else "access denied"
            return ExecFailed(f"{what}: {message} ({code})", denied=True)
        return ExecFailed(f"{message} ({code})")
    from webhook.cluster.client import reason_of

    return ExecFailed(
        f"cannot reach the Kubernetes API at {host}: {reason_of(cause or error)}",
        unreachable_api=True,
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())
