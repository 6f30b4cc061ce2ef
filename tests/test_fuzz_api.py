"""`POST /mutate` cannot be crashed or tricked.

- schemathesis generates requests from the app's own OpenAPI document (positive and
  negative data) and calls the ASGI app: no 5xx, the schema's checks pass, and every answer
  is a well-formed AdmissionReview (uid echoed, allowed) or a 4xx `{"error": ...}`.
- hypothesis builds raw bodies and POSTs them to the real server over TLS: wrong types and
  missing fields at every envelope and pod field, deep nesting, huge strings, invalid UTF-8,
  duplicate keys, other kinds / operations / API versions, objects that are not pods.
  Each answer is exactly right: a 200 carries the contract's patch (checked with the
  oracle) or none; a 400 names the field that is wrong; the process stays up.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import jsonpatch
import pytest
import schemathesis
from hypothesis import HealthCheck, given, note
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.oracle import admission_reviews, expected
from tests.serving import ServerHandle, running_server
from webhook.app import WebhookApp
from webhook.config import Settings

SETTINGS = Settings()
BASE = admission_reviews()["hello-classic"]  # istio-proxy is containers[1]
API_VERSION = "admission.k8s.io/v1"

# --- schemathesis on the app's OpenAPI document ---------------------------------------

SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", WebhookApp(SETTINGS))
MUTATE = SCHEMA["/mutate"]["POST"]
SCHEMA_RUNS = hsettings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def check_answer(review: Any, status: int, body: Any, path: str | None = None) -> None:
    """The answer to `review` is exactly right (see the module's docstring).

    `path` (dotted, list indexes as numbers) is the field a test broke: a 400 must name it,
    a field inside it, or a field that contains it.
    """
    if status == 200:
        assert set(body) == {"apiVersion", "kind", "response"}
        assert (body["apiVersion"], body["kind"]) == (API_VERSION, "AdmissionReview")
        response = body["response"]
        request = review["request"]
        assert response["uid"] == request["uid"]
        assert response["allowed"] is True
        kind = request["kind"]
        pod_create = (
            kind["kind"] == "Pod"
            and kind.get("group", "") == ""
            and request["operation"] == "CREATE"
        )
        if "patch" in response:
            assert pod_create
            assert response["patchType"] == "JSONPatch"
            ops = json.loads(base64.b64decode(response["patch"], validate=True))
            pod = request["object"]
            assert jsonpatch.apply_patch(pod, ops) == expected(pod, SETTINGS)
        else:
            assert set(response) <= {"uid", "allowed", "warnings"}
            if pod_create:
                assert unchanged_by_contract(request["object"])
    else:
        assert status in (400, 413), (status, body)
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
        if path is not None and status == 400:
            named = re.sub(r"\[(\d+)\]", r".\1", body["error"].split(": ", 1)[0])
            assert named.startswith(path) or path.startswith(named), (path, body["error"])


def unchanged_by_contract(pod: dict[str, Any]) -> bool:
    """The contract leaves this pod alone (no proxy among its containers, opted out, or
    already compliant); containers that are not objects are no proxy."""
    spec = pod["spec"]
    proxies = [
        c
        for key in ("initContainers", "containers")
        for c in spec.get(key) or []
        if isinstance(c, dict) and c.get("name") == SETTINGS.proxy_container
    ]
    if not proxies:
        return True
    return bool(expected(pod, SETTINGS) == pod)


@SCHEMA_RUNS
@given(case=MUTATE.as_strategy(GenerationMode.POSITIVE))
def test_schema_valid_reviews_get_a_well_formed_answer(case: Any) -> None:
    response = case.call_and_validate()
    check_answer(case.body, response.status_code, response.json())


@SCHEMA_RUNS
@given(case=MUTATE.as_strategy(GenerationMode.NEGATIVE))
def test_schema_invalid_reviews_get_a_4xx_with_the_reason(case: Any) -> None:
    response = case.call_and_validate()
    assert 400 <= response.status_code < 500
    check_answer(case.body, response.status_code, response.json())


# --- raw bodies against the real server ---------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    with running_server(tmp_path_factory.mktemp("fuzz-api")) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(server: ServerHandle) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


def post(
    server: ServerHandle, client: httpx.Client, body: bytes, **headers: str
) -> tuple[int, Any]:
    response = client.post("/mutate", content=body, headers=headers)
    assert response.headers["content-type"] == "application/json"
    assert server.process.poll() is None, "the server died"
    return response.status_code, response.json()


FUZZ = hsettings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

# Every field the envelope or the rewrite reads, as a path into BASE.
FIELDS: list[tuple[str | int, ...]] = [
    ("apiVersion",),
    ("kind",),
    ("request",),
    ("request", "uid"),
    ("request", "kind"),
    ("request", "kind", "group"),
    ("request", "kind", "version"),
    ("request", "kind", "kind"),
    ("request", "operation"),
    ("request", "namespace"),
    ("request", "name"),
    ("request", "dryRun"),
    ("request", "object"),
    ("request", "object", "kind"),
    ("request", "object", "metadata"),
    ("request", "object", "metadata", "labels"),
    ("request", "object", "spec"),
    ("request", "object", "spec", "containers"),
    ("request", "object", "spec", "containers", 0),
    ("request", "object", "spec", "containers", 0, "name"),
    ("request", "object", "spec", "containers", 0, "volumeMounts"),
    ("request", "object", "spec", "containers", 1),
    ("request", "object", "spec", "containers", 1, "name"),
    ("request", "object", "spec", "containers", 1, "env"),
    ("request", "object", "spec", "containers", 1, "env", 0),
    ("request", "object", "spec", "containers", 1, "env", 0, "name"),
    ("request", "object", "spec", "containers", 1, "volumeMounts"),
    ("request", "object", "spec", "containers", 1, "volumeMounts", 0),
    ("request", "object", "spec", "containers", 1, "volumeMounts", 0, "name"),
    ("request", "object", "spec", "initContainers"),
    ("request", "object", "spec", "initContainers", 0),
    ("request", "object", "spec", "volumes"),
    ("request", "object", "spec", "volumes", 0),
    ("request", "object", "spec", "volumes", 0, "name"),
]


def dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(part) for part in path)


def parent(review: dict[str, Any], path: tuple[str | int, ...]) -> Any:
    node: Any = review
    for part in path[:-1]:
        node = node[part]
    return node


def with_uid(review: dict[str, Any], uid: str) -> dict[str, Any]:
    out = copy.deepcopy(review)
    out["request"]["uid"] = uid
    return out


@hsettings(FUZZ, max_examples=150)
@given(path=st.sampled_from(FIELDS), value=json_values)
def test_any_value_at_any_field_gets_the_contract_or_a_400_naming_the_field(
    server: ServerHandle, client: httpx.Client, path: tuple[str | int, ...], value: Any
) -> None:
    note(f"{dotted(path)} = {value!r}")
    review = copy.deepcopy(BASE)
    parent(review, path)[path[-1]] = value
    status, body = post(server, client, json.dumps(review).encode())
    check_answer(review, status, body, dotted(path))


def present(path: tuple[str | int, ...]) -> bool:
    try:
        parent(BASE, path)[path[-1]]
    except (KeyError, IndexError):
        return False
    return True


@pytest.mark.parametrize("path", [p for p in FIELDS if present(p)], ids=dotted)
def test_a_missing_field_gets_the_contract_or_a_400_naming_the_field(
    server: ServerHandle, client: httpx.Client, path: tuple[str | int, ...]
) -> None:
    review = copy.deepcopy(BASE)
    del parent(review, path)[path[-1]]
    status, body = post(server, client, json.dumps(review).encode())
    check_answer(review, status, body, dotted(path))


@hsettings(FUZZ, max_examples=10)
@given(depth=st.integers(min_value=1025, max_value=50_000), opener=st.sampled_from(["[", '{"a":']))
def test_nesting_deeper_than_1024_gets_400(
    server: ServerHandle, client: httpx.Client, depth: int, opener: str
) -> None:
    closer = "]" if opener == "[" else "}"
    deep = opener * depth + "1" * (opener != "[") + closer * depth
    review = json.dumps(BASE).replace('"userInfo":', f'"deep": {deep}, "userInfo":', 1)
    status, body = post(server, client, review.encode())
    assert status == 400
    assert body["error"].startswith("body is not JSON: depth limit exceeded")


@hsettings(FUZZ, max_examples=10)
@given(depth=st.integers(min_value=1, max_value=1020))
def test_nesting_up_to_the_limit_in_a_field_nobody_reads_is_served(
    server: ServerHandle, client: httpx.Client, depth: int
) -> None:
    review = copy.deepcopy(BASE)
    text = json.dumps(review).replace('"userInfo":', '"deep": ' + "[" * depth + "]" * depth + ", "
                                      '"userInfo":', 1)  # fmt: skip
    status, body = post(server, client, text.encode())
    check_answer(review, status, body)
    assert "patch" in body["response"]


@hsettings(FUZZ, max_examples=6)
@given(
    size=st.integers(min_value=64 * 1024, max_value=2 * 1024 * 1024),
    where=st.sampled_from(["label", "uid", "env"]),
)
def test_huge_strings_under_the_body_limit_are_served(
    server: ServerHandle, client: httpx.Client, size: int, where: str
) -> None:
    review = copy.deepcopy(BASE)
    huge = "x" * size
    if where == "label":
        review["request"]["object"]["metadata"]["labels"]["huge"] = huge
    elif where == "uid":
        review["request"]["uid"] = huge
    else:
        review["request"]["object"]["spec"]["containers"][1]["env"][0]["value"] = huge
    status, body = post(server, client, json.dumps(review).encode())
    check_answer(review, status, body)
    assert status == 200 and "patch" in body["response"]


def test_a_huge_string_over_the_body_limit_gets_413(
    server: ServerHandle, client: httpx.Client
) -> None:
    review = copy.deepcopy(BASE)
    review["request"]["object"]["metadata"]["labels"]["huge"] = "x" * SETTINGS.max_body_bytes
    status, body = post(server, client, json.dumps(review).encode())
    assert (status, body) == (413, {"error": f"body exceeds {SETTINGS.max_body_bytes} bytes"})


def invalid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@FUZZ
@given(junk=st.binary(min_size=1, max_size=12).filter(invalid_utf8))
def test_invalid_utf8_inside_a_string_gets_400(
    server: ServerHandle, client: httpx.Client, junk: bytes
) -> None:
    review = copy.deepcopy(BASE)
    review["request"]["object"]["metadata"]["labels"]["fuzz"] = "MARKER"
    body = (
        json.dumps(review).encode().replace(b"MARKER", junk.replace(b'"', b"").replace(b"\\", b""))
    )
    status, answer = post(server, client, body)
    assert status == 400
    assert answer["error"].startswith("body is not JSON")


@FUZZ
@given(data=st.binary(max_size=256))
def test_arbitrary_bytes_get_400(server: ServerHandle, client: httpx.Client, data: bytes) -> None:
    status, answer = post(server, client, data)
    assert status == 400
    assert set(answer) == {"error"}
    assert answer["error"].startswith(("body is not JSON", "body is not an AdmissionReview"))


def dumps_with_duplicate(obj: Any, path: tuple[str | int, ...], first: Any) -> str:
    """JSON of `obj` where the key at `path` appears twice: first `first`, then its value."""
    if not path:
        return json.dumps(obj)
    if isinstance(obj, list):
        items = [
            dumps_with_duplicate(v, path[1:], first) if i == path[0] else json.dumps(v)
            for i, v in enumerate(obj)
        ]
        return "[" + ", ".join(items) + "]"
    parts = []
    for key, value in obj.items():
        if len(path) == 1 and key == path[0]:
            parts.append(f"{json.dumps(key)}: {json.dumps(first)}")
        inner = (
            dumps_with_duplicate(value, path[1:], first) if key == path[0] else json.dumps(value)
        )
        parts.append(f"{json.dumps(key)}: {inner}")
    return "{" + ", ".join(parts) + "}"


@FUZZ
@given(
    path=st.sampled_from([p for p in FIELDS if isinstance(p[-1], str)]),
    first=json_values,
)
def test_duplicate_keys_are_read_as_the_last_one_like_any_json_decoder(
    server: ServerHandle, client: httpx.Client, path: tuple[str | int, ...], first: Any
) -> None:
    text = dumps_with_duplicate(BASE, path, first)
    assert json.loads(text) == BASE
    assert post(server, client, text.encode()) == post(server, client, json.dumps(BASE).encode())


@FUZZ
@given(
    kind=st.fixed_dictionaries(
        {
            "group": st.sampled_from(["", "apps", "batch"]),
            "version": st.just("v1"),
            "kind": st.sampled_from(["Pod", "Deployment", "Service", "pod", ""]),
        }
    ),
    operation=st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT", "create", ""]),
)
def test_another_kind_or_operation_is_allowed_unchanged(
    server: ServerHandle, client: httpx.Client, kind: dict[str, str], operation: str
) -> None:
    review = copy.deepcopy(BASE)
    review["request"]["kind"] = kind
    review["request"]["operation"] = operation
    status, body = post(server, client, json.dumps(review).encode())
    check_answer(review, status, body)
    is_pod_create = (kind["kind"], kind["group"], operation) == ("Pod", "", "CREATE")
    assert ("patch" in body["response"]) is is_pod_create


@FUZZ
@given(api_version=st.text(max_size=30).filter(lambda v: v != API_VERSION))
def test_another_api_version_gets_400_naming_it(
    server: ServerHandle, client: httpx.Client, api_version: str
) -> None:
    review = {**BASE, "apiVersion": api_version}
    status, body = post(server, client, json.dumps(review).encode())
    assert (status, body) == (
        400,
        {"error": f"apiVersion: expected {API_VERSION}, got {api_version!r}"},
    )


@FUZZ
@given(obj=json_values.filter(lambda v: not isinstance(v, dict)))
def test_an_object_that_is_not_a_json_object_gets_400(
    server: ServerHandle, client: httpx.Client, obj: Any
) -> None:
    review = copy.deepcopy(BASE)
    review["request"]["object"] = obj
    status, body = post(server, client, json.dumps(review).encode())
    assert (status, body) == (
        400,
        {"error": "request.object: a Pod CREATE must carry the pod as a JSON object"},
    )


@FUZZ
@given(kind=json_values.filter(lambda v: v != "Pod"))
def test_an_object_of_another_kind_gets_400_naming_its_kind(
    server: ServerHandle, client: httpx.Client, kind: Any
) -> None:
    review = copy.deepcopy(BASE)
    review["request"]["object"]["kind"] = kind
    status, body = post(server, client, json.dumps(review).encode())
    assert (status, body) == (400, {"error": f"request.object.kind: expected Pod, got {kind!r}"})


@FUZZ
@given(
    content_type=st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
    )
    .map(str.strip)  # what an HTTP client can send: no surrounding blanks
    .filter(bool)
)
def test_any_content_type_gets_the_same_answer(
    server: ServerHandle, client: httpx.Client, content_type: str
) -> None:
    body = json.dumps(BASE).encode()
    assert post(server, client, body, **{"content-type": content_type}) == post(
        server, client, body
    )
