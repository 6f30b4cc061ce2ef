"""`istio-spiffe-webhook mutate`: every input shape, --patch, warnings and bad input.

Outputs are checked against the oracle (`tests.oracle.expected`) and patches are applied
with `jsonpatch`; one test runs the installed command in a real subprocess with stdin.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml
from click.testing import CliRunner, Result
from hypothesis import example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.oracle import (
    admission_reviews,
    all_fixture_pods,
    assert_rewritten,
    expected,
    istio_pods,
)
from tests.shapes import spire_variants
from webhook.commands.mutate import mutate_command
from webhook.config import Settings
from webhook.review import decide, parse
from webhook.rewrite import Contract, rewrite

SETTINGS = Settings()
CONTRACT = Contract.from_settings(SETTINGS)
PODS = istio_pods()
HELLO = PODS["hello--0"]  # native sidecar, no warnings
GRPC = PODS["grpc-agent--0"]  # the app container `traffic` mounts workload-certs
GRPC_WARNING = "removed the workload-certs mount from container traffic"
SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "hello"},
    "spec": {"selector": {"app": "hello"}, "ports": [{"port": 80, "targetPort": 8080}]},
}
WORKLOAD_PATHS = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "PodTemplate": ("template",),
}


def template_of(pod: dict[str, Any]) -> dict[str, Any]:
    """A pod template as a workload carries it (what kube-inject writes)."""
    metadata = {"creationTimestamp": None}
    metadata.update({k: v for k, v in pod["metadata"].items() if k not in ("name", "namespace")})
    return copy.deepcopy({"metadata": metadata, "spec": pod["spec"]})


def workload(kind: str, name: str, pod: dict[str, Any]) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "batch/v1" if kind in ("Job", "CronJob") else "apps/v1",
        "kind": kind,
        "metadata": {"creationTimestamp": None, "name": name},
    }
    node = obj
    path = WORKLOAD_PATHS[kind]
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = template_of(pod)
    obj["status"] = {}
    return obj


def get(obj: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def run(stdin: str | bytes, *args: str) -> Result:
    return CliRunner().invoke(mutate_command, [*args], input=stdin)


def as_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def as_yaml(*docs: Any) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def ordered(obj: Any) -> str:
    """Order-sensitive comparison key: equal only with the same keys in the same order."""
    return json.dumps(obj)


def assert_bad_input(result: Result, message: str) -> None:
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", f"Error: {message}\n")


# --- Pods -----------------------------------------------------------------------------------


def test_pod_json_in_gives_the_rewritten_pod_as_indented_json() -> None:
    result = run(json.dumps(HELLO))
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == as_json(expected(HELLO, SETTINGS))


def test_pod_json_patch_is_the_rewrite_ops_as_one_json_array() -> None:
    result = run(json.dumps(HELLO), "--patch")
    assert (result.exit_code, result.stderr) == (0, "")
    ops = rewrite(HELLO, CONTRACT).ops
    assert result.stdout == json.dumps(ops, indent=2) + "\n"
    assert_rewritten(HELLO, jsonpatch.apply_patch(HELLO, json.loads(result.stdout)), SETTINGS)


def test_pod_yaml_in_gives_yaml_out_with_key_order_kept() -> None:
    result = run(as_yaml(HELLO))
    assert (result.exit_code, result.stderr) == (0, "")
    assert not result.stdout.lstrip().startswith("{")
    out = yaml.safe_load(result.stdout)
    assert ordered(out) == ordered(expected(HELLO, SETTINGS))


def test_pod_file_argument_is_read(tmp_path: Path) -> None:
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(HELLO))
    result = CliRunner().invoke(mutate_command, [str(path), "--patch"])
    assert (result.exit_code, result.stderr) == (0, "")
    assert json.loads(result.stdout) == rewrite(HELLO, CONTRACT).ops


def test_warnings_go_to_stderr_one_per_line() -> None:
    result = run(json.dumps(GRPC))
    assert result.exit_code == 0
    assert result.stderr == f"warning: Pod/grpc: {GRPC_WARNING}\n"
    assert result.stdout == as_json(expected(GRPC, SETTINGS))


def test_warnings_go_to_stderr_with_patch_too() -> None:
    result = run(json.dumps(GRPC), "--patch")
    assert result.stderr == f"warning: Pod/grpc: {GRPC_WARNING}\n"
    assert json.loads(result.stdout) == rewrite(GRPC, CONTRACT).ops


@pytest.mark.parametrize("name", ["hello-ignore--0", "custom-template--0"])
def test_pod_without_istio_proxy_is_unchanged_and_its_patch_empty(name: str) -> None:
    text = as_json(PODS[name])
    assert (run(text).exit_code, run(text).stdout) == (0, text)
    result = run(text, "--patch")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "[]\n", "")


def test_compliant_pod_comes_out_byte_for_byte_and_patch_is_empty() -> None:
    text = as_json(expected(HELLO, SETTINGS))
    assert run(text).stdout == text
    assert run(text, "--patch").stdout == "[]\n"
    yaml_text = as_yaml(expected(HELLO, SETTINGS))
    assert yaml.safe_load(run(yaml_text).stdout) == expected(HELLO, SETTINGS)


def test_second_pass_over_the_output_is_a_no_op() -> None:
    once = run(as_yaml(HELLO)).stdout
    assert run(once, "--patch").stdout == "[]\n"
    assert run(once).stdout == once


def test_opted_out_pod_is_unchanged() -> None:
    pod = copy.deepcopy(HELLO)
    pod["metadata"]["labels"]["istio-spiffe-webhook/inject"] = "disabled"
    assert run(json.dumps(pod), "--patch").stdout == "[]\n"


def test_config_file_names_are_honoured(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("csi_driver: csi.example.org\n")
    result = run(json.dumps(HELLO), "--config", str(config))
    assert result.exit_code == 0
    settings = Settings(csi_driver="csi.example.org")
    assert result.stdout == as_json(expected(HELLO, settings))


# --- workloads ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(WORKLOAD_PATHS))
def test_workload_patch_paths_are_the_templates(kind: str) -> None:
    obj = workload(kind, "hello", HELLO)
    result = run(json.dumps(obj), "--patch")
    assert (result.exit_code, result.stderr) == (0, "")
    ops = json.loads(result.stdout)
    prefix = "".join(f"/{key}" for key in WORKLOAD_PATHS[kind])
    assert ops == [
        {**op, "path": prefix + op["path"]}
        for op in rewrite(get(obj, WORKLOAD_PATHS[kind]), CONTRACT).ops
    ]
    patched = jsonpatch.apply_patch(obj, ops)
    template = get(obj, WORKLOAD_PATHS[kind])
    assert get(patched, WORKLOAD_PATHS[kind]) == expected(template, SETTINGS)


@pytest.mark.parametrize("kind", sorted(WORKLOAD_PATHS))
def test_workload_output_has_the_rewritten_template_and_nothing_else_changed(kind: str) -> None:
    obj = workload(kind, "hello", HELLO)
    result = run(json.dumps(obj))
    assert result.exit_code == 0
    want = copy.deepcopy(obj)
    path = WORKLOAD_PATHS[kind]
    get(want, path[:-1])[path[-1]] = expected(get(obj, path), SETTINGS)
    assert result.stdout == as_json(want)


def test_workload_without_template_passes_through() -> None:
    obj = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}}
    assert run(json.dumps(obj)).stdout == as_json(obj)
    assert run(json.dumps(obj), "--patch").stdout == "[]\n"


def test_kube_inject_stream_keeps_null_timestamps_and_empty_status() -> None:
    deployment = workload("Deployment", "hello", HELLO)
    text = as_yaml(deployment) + "---\n"
    assert "  creationTimestamp: null\n" in text and "\nstatus: {}\n" in text
    result = run(text)
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout.startswith("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n")
    assert "\n  creationTimestamp: null\n" in result.stdout
    assert "\n      creationTimestamp: null\n" in result.stdout
    assert result.stdout.endswith("\nstatus: {}\n")
    out = yaml.safe_load(result.stdout)
    want = copy.deepcopy(deployment)
    want["spec"]["template"] = expected(deployment["spec"]["template"], SETTINGS)
    assert ordered(out) == ordered(want)


def test_multi_document_stream_rewrites_each_workload_and_passes_others_through() -> None:
    deployment = workload("Deployment", "hello", HELLO)
    cronjob = workload("CronJob", "nightly", GRPC)
    result = run("---\n" + as_yaml(deployment, SERVICE, cronjob) + "---\n")
    assert result.exit_code == 0
    assert result.stderr == f"warning: CronJob/nightly: {GRPC_WARNING}\n"
    assert result.stdout.count("\n---\n") == 2
    docs = list(yaml.safe_load_all(result.stdout))
    want_deployment = copy.deepcopy(deployment)
    want_deployment["spec"]["template"] = expected(deployment["spec"]["template"], SETTINGS)
    want_cronjob = copy.deepcopy(cronjob)
    template = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    want_cronjob["spec"]["jobTemplate"]["spec"]["template"] = expected(template, SETTINGS)
    assert [ordered(d) for d in docs] == [
        ordered(want_deployment),
        ordered(SERVICE),
        ordered(want_cronjob),
    ]


def test_patch_of_a_stream_of_several_documents_is_refused() -> None:
    text = as_yaml(workload("Deployment", "hello", HELLO), SERVICE)
    assert_bad_input(
        run(text, "--patch"),
        "stdin: --patch needs a single document, the input has 2"
        " (wrap them in a kind: List, or run without --patch)",
    )


def test_other_kinds_pass_through_unchanged() -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "line 1\nline 2\n"}}
    text = as_yaml(SERVICE, config_map)
    result = run(text)
    assert (result.exit_code, result.stderr) == (0, "")
    assert [ordered(d) for d in yaml.safe_load_all(result.stdout)] == [
        ordered(SERVICE),
        ordered(config_map),
    ]
    assert "  a: |\n    line 1\n    line 2\n" in result.stdout


def test_yaml_timestamps_and_equals_signs_stay_strings() -> None:
    text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  creationTimestamp: 2024-01-01T00:00:00Z\n"
    text += "data:\n  op: =\n"
    result = run(text)
    assert result.exit_code == 0
    out = yaml.safe_load(result.stdout)
    assert out["metadata"]["creationTimestamp"] == "2024-01-01T00:00:00Z"
    assert out["data"] == {"op": "="}


# --- lists ----------------------------------------------------------------------------------


def test_list_patch_addresses_items() -> None:
    items = [copy.deepcopy(HELLO), copy.deepcopy(SERVICE), workload("Deployment", "d", GRPC)]
    doc = {"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}
    result = run(json.dumps(doc), "--patch")
    assert result.exit_code == 0
    assert result.stderr == f"warning: Deployment/d: {GRPC_WARNING}\n"
    ops = json.loads(result.stdout)
    assert ops == [
        *({**op, "path": "/items/0" + op["path"]} for op in rewrite(HELLO, CONTRACT).ops),
        *(
            {**op, "path": "/items/2/spec/template" + op["path"]}
            for op in rewrite(items[2]["spec"]["template"], CONTRACT).ops
        ),
    ]
    patched = jsonpatch.apply_patch(doc, ops)
    assert patched["items"][0] == expected(HELLO, SETTINGS)
    assert patched["items"][1] == SERVICE
    assert patched["items"][2]["spec"]["template"] == expected(
        items[2]["spec"]["template"], SETTINGS
    )


def test_list_output_is_the_rewritten_list() -> None:
    doc = {"apiVersion": "v1", "kind": "List", "items": [copy.deepcopy(HELLO), SERVICE]}
    result = run(as_yaml(doc))
    assert result.exit_code == 0
    out = yaml.safe_load(result.stdout)
    assert ordered(out) == ordered({**doc, "items": [expected(HELLO, SETTINGS), SERVICE]})


def test_typed_list_items_without_kind_are_rewritten() -> None:
    pod = copy.deepcopy(HELLO)
    del pod["kind"], pod["apiVersion"]  # as the API server lists them
    doc = {"apiVersion": "v1", "kind": "PodList", "items": [pod]}
    result = run(json.dumps(doc))
    assert result.exit_code == 0
    assert json.loads(result.stdout)["items"] == [expected(pod, SETTINGS)]


# --- AdmissionReviews -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hello-native", "gateway-dry-run"])
def test_admission_review_gets_the_webhooks_answer(name: str) -> None:
    body = admission_reviews()[name]
    result = run(json.dumps(body))
    assert (result.exit_code, result.stderr) == (0, "")
    decision = decide(parse(json.dumps(body).encode()), CONTRACT)
    assert result.stdout == as_json(json.loads(decision.response_bytes()))
    assert json.loads(result.stdout)["response"]["uid"] == body["request"]["uid"]


def test_admission_review_patch_is_the_answers_patch() -> None:
    body = admission_reviews()["hello-classic"]
    result = run(json.dumps(body), "--patch")
    assert result.exit_code == 0
    ops = json.loads(result.stdout)
    pod = body["request"]["object"]
    assert ops == rewrite(pod, CONTRACT).ops
    assert_rewritten(pod, jsonpatch.apply_patch(pod, ops), SETTINGS)


def test_admission_review_in_yaml_is_answered_in_yaml() -> None:
    body = copy.deepcopy(admission_reviews()["hello-native"])
    body["request"]["object"] = copy.deepcopy(GRPC)
    result = run(as_yaml(body))
    assert result.exit_code == 0
    assert result.stderr == f"warning: Pod/grpc: {GRPC_WARNING}\n"
    decision = decide(parse(json.dumps(body).encode()), CONTRACT)
    assert yaml.safe_load(result.stdout) == json.loads(decision.response_bytes())


def test_admission_review_for_another_kind_is_allowed_without_patch() -> None:
    body = copy.deepcopy(admission_reviews()["hello-native"])
    body["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    result = run(json.dumps(body))
    assert json.loads(result.stdout) == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": body["request"]["uid"], "allowed": True},
    }
    assert run(json.dumps(body), "--patch").stdout == "[]\n"


def test_bad_admission_review_is_the_webhooks_400_reason() -> None:
    body = copy.deepcopy(admission_reviews()["hello-native"])
    del body["request"]["uid"]
    assert_bad_input(
        run(json.dumps(body)), "stdin (AdmissionReview): request.uid: required field is missing"
    )


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        (b"a: b: c\n", "stdin: neither JSON nor YAML: line 1, column 5: mapping values are not"
         " allowed here"),
        (b"{\"kind\": [\n", "stdin: neither JSON nor YAML: line 2, column 1: expected the node"
         " content, but found '<stream end>'"),
        (b"\xff\xfekind: Pod\n", "stdin: not UTF-8 text (byte 0)"),
        (b"", "stdin: no objects in the input"),
        (b"---\n---\n", "stdin: no objects in the input"),
        (b"[1, 2]", "stdin: not a mapping but a list"),
        (b"null", "stdin: not a mapping but null"),
        (b"2.5", "stdin: not a mapping but a number"),
        (b"- a\n- b\n", "stdin: not a mapping but a list"),
        (b"kind: Service\n---\njust text\n", "stdin: document 2: not a mapping but a string"),
        (b"kind: List\nitems: {}\n", "stdin (List): items: must be a list"),
        (b"kind: List\nitems: [3]\n", "stdin: items[0]: not a mapping but a number"),
        (
            b'{"kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": {}}}',
            "stdin (Pod/x): spec.containers: must be a JSON array",
        ),
        (
            b"kind: Pod\nmetadata: {generateName: x-}\nspec: {containers: [{name: istio-proxy,"
            b" env: {}}]}\n",
            "stdin (Pod/x-): spec.containers.0.env: must be a JSON array",
        ),
        (
            b"kind: Deployment\nmetadata: {name: d}\nspec: {template: text}\n",
            "stdin (Deployment/d): spec.template: must be a mapping",
        ),
        (
            b"kind: Service\n---\nkind: CronJob\nmetadata: {name: c}\nspec: {jobTemplate: {spec:"
            b" {template: {spec: {containers: [{name: istio-proxy}], volumes: {}}}}}}\n",
            "stdin: document 2 (CronJob/c): spec.jobTemplate.spec.template.spec.volumes:"
            " must be a JSON array",
        ),
        (
            b"kind: List\nitems:\n- kind: Pod\n  metadata: {labels: [a]}\n",
            "stdin: items[0] (Pod): metadata.labels: must be a JSON object",
        ),
    ],
    ids=[
        "not-yaml",
        "broken-json",
        "not-utf8",
        "empty",
        "only-separators",
        "json-array",
        "json-null",
        "json-number",
        "yaml-list",
        "scalar-document",
        "list-items-mapping",
        "list-item-number",
        "pod-containers",
        "pod-env",
        "template-string",
        "cronjob-volumes",
        "list-item-labels",
    ],
)  # fmt: skip
def test_bad_input_is_one_error_line_and_exit_1(stdin: bytes, message: str) -> None:
    assert_bad_input(run(stdin), message)


def test_missing_file_is_one_error_line(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    result = CliRunner().invoke(mutate_command, [str(path)])
    assert_bad_input(result, f"{path}: cannot read: No such file or directory")


def test_directory_is_one_error_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(mutate_command, [str(tmp_path)])
    assert_bad_input(result, f"{tmp_path}: cannot read: Is a directory")


def test_bad_config_is_one_error_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("csi_drvier: x\n")
    result = run(json.dumps(HELLO), "--config", str(config))
    assert_bad_input(result, "invalid configuration: csi_drvier: unknown setting")


def test_deeply_nested_input_is_one_error_line() -> None:
    assert_bad_input(run("[" * 100_000 + "]" * 100_000), "stdin: nested too deeply")


def test_yaml_alias_bomb_is_refused_before_it_is_written_out() -> None:
    lines = ["kind: ConfigMap", "data:", "  a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    assert_bad_input(
        run("\n".join(lines) + "\n"), "stdin: YAML aliases expand to more than 10000000 values"
    )


def test_recursive_yaml_alias_is_refused() -> None:
    assert_bad_input(
        run("kind: ConfigMap\ndata: &a [1, *a]\n"),
        "stdin: YAML aliases expand to more than 10000000 values",
    )


def test_ordinary_yaml_aliases_are_written_out_in_full() -> None:
    result = run("kind: ConfigMap\nx: &a {k: v}\ny: *a\n")
    assert (result.exit_code, result.stdout) == (0, "kind: ConfigMap\nx:\n  k: v\ny:\n  k: v\n")


def test_unknown_option_is_a_usage_error_exit_2() -> None:
    result = run("{}", "--frobnicate")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] in {
        "Error: No such option '--frobnicate'.",  # click 8.4+
        "Error: No such option: --frobnicate",  # click 8.2 and 8.3
    }


# --- the installed command, for real --------------------------------------------------------

COMMAND = str(Path(sys.executable).parent / "istio-spiffe-webhook")


def test_installed_command_rewrites_a_kube_inject_pipe() -> None:
    deployment = workload("Deployment", "hello", GRPC)
    text = as_yaml(deployment, SERVICE) + "---\n"
    done = subprocess.run(
        [COMMAND, "mutate", "-"], input=text, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (0, f"warning: Deployment/hello: {GRPC_WARNING}\n")
    docs = list(yaml.safe_load_all(done.stdout))
    want = copy.deepcopy(deployment)
    want["spec"]["template"] = expected(deployment["spec"]["template"], SETTINGS)
    assert [ordered(d) for d in docs] == [ordered(want), ordered(SERVICE)]


def test_installed_command_reports_bad_input_without_traceback() -> None:
    done = subprocess.run(
        [COMMAND, "mutate", "-", "--patch"],
        input='{"kind": "Pod", "spec": []}',
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        1,
        "",
        "Error: stdin (Pod): spec: must be a JSON object\n",
    )


# --- fidelity -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(all_fixture_pods()))
def test_every_fixture_round_trips_through_json_and_yaml(name: str) -> None:
    pod = all_fixture_pods()[name]
    # Key order as in the input, changed only where the patch changes it.
    patched = jsonpatch.apply_patch(pod, rewrite(pod, CONTRACT).ops)
    assert run(json.dumps(pod)).stdout == as_json(patched)
    out = yaml.safe_load(run(as_yaml(pod)).stdout)
    assert ordered(out) == ordered(patched)
    assert_rewritten(pod, out, SETTINGS)


SPIRE_SHAPED = {
    f"{name}:{variant}": shaped
    for name, pod in PODS.items()
    for variant, shaped in spire_variants(pod).items()
}


@pytest.mark.parametrize("name", sorted(SPIRE_SHAPED))
def test_spire_shaped_pod_comes_out_valid_with_or_without_patch(name: str) -> None:
    # Istio's documented `sidecar,spire` shape: two socket mounts in istio-proxy.
    pod = SPIRE_SHAPED[name]
    out = json.loads(run(json.dumps(pod)).stdout)
    assert_rewritten(pod, out, SETTINGS)
    result = run(json.dumps(pod), "--patch")
    assert result.exit_code == 0
    assert jsonpatch.apply_patch(pod, json.loads(result.stdout)) == out


@hsettings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=40), min_size=1, max_size=4))
@example(["a\x85b", "line\nnext\x85", "\u2028", "\n", " lead\ntrail \n"])  # NEL: PyYAML's trap
def test_any_annotation_text_survives_the_yaml_round_trip(texts: list[str]) -> None:
    pod = copy.deepcopy(HELLO)
    pod["metadata"]["annotations"] = {f"example.org/a{i}": text for i, text in enumerate(texts)}
    result = run(as_yaml(pod))
    assert result.exit_code == 0, result.stderr
    out = yaml.safe_load(result.stdout)
    assert out["metadata"]["annotations"] == pod["metadata"]["annotations"]
