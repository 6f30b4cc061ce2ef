"""`webhook.mutate.mutate_text`, the function behind `istio-spiffe-webhook mutate`, called
directly: text in, rewritten text and warnings out, BadInput for bad input."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.oracle import expected, istio_pods
from webhook.config import Settings
from webhook.mutate import BadInput, Mutation, mutate_text
from webhook.rewrite import Contract, rewrite

SETTINGS = Settings()
CONTRACT = Contract.from_settings(SETTINGS)
PODS = istio_pods()
HELLO = PODS["hello--0"]  # native sidecar, no warnings
GRPC = PODS["grpc-agent--0"]  # the app container `traffic` mounts workload-certs


def test_a_json_pod_comes_back_rewritten_as_indented_json_without_warnings() -> None:
    assert mutate_text(json.dumps(HELLO), "pod.json", SETTINGS) == Mutation(
        json.dumps(expected(HELLO, SETTINGS), indent=2, ensure_ascii=False) + "\n", []
    )


def test_the_patch_is_the_rewrites_ops_and_warnings_name_the_pod() -> None:
    mutation = mutate_text(json.dumps(GRPC), "pod.json", SETTINGS, patch=True)
    assert mutation.text == json.dumps(rewrite(GRPC, CONTRACT).ops, indent=2) + "\n"
    assert mutation.warnings == [
        "Pod/grpc: removed the workload-certs mount from container traffic"
    ]


def test_a_yaml_stream_comes_back_as_yaml_document_by_document() -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hello"}}
    text = yaml.safe_dump_all([HELLO, service], sort_keys=False)
    mutation = mutate_text(text, "app.yaml", SETTINGS)
    assert list(yaml.safe_load_all(mutation.text)) == [expected(HELLO, SETTINGS), service]
    assert mutation.warnings == []


@pytest.mark.parametrize(
    ("text", "patch", "message"),
    [
        (
            "kind: Pod\n---\nkind: Service\n",
            True,
            "app.yaml: --patch needs a single document, the input has 2"
            " (wrap them in a kind: List, or run without --patch)",
        ),
        ("- just\n- a list\n", False, "app.yaml: not a mapping but a list"),
        (
            "kind: Pod\nspec: {containers: [{name: istio-proxy}], volumes: 3}\n",
            False,
            "app.yaml (Pod): spec.volumes: must be a JSON array",
        ),
    ],
)
def test_bad_input_raises_bad_input_with_the_line_the_user_sees(
    text: str, patch: bool, message: str
) -> None:
    with pytest.raises(BadInput) as caught:
        mutate_text(text, "app.yaml", SETTINGS, patch=patch)
    assert str(caught.value) == message
