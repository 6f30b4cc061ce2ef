"""The MutatingAdmissionPolicy form: rendered from Settings, valid, and the same rewrite.

No API server runs here, so the policy is checked four ways:
- golden files: the render for the default and for changed settings, byte for byte, and the
  committed kustomize component is the default render;
- the Kubernetes strict JSON schemas (v1 for 1.36+, v1beta1 for 1.34-1.35);
- its CEL evaluated by the CEL C++ implementation (`cel-expr-python`) on every fixture pod
  (also in Istio's documented `sidecar,spire` shapes) and on generated pods, the patch
  applied with `jsonpatch` and compared with the oracle, the webhook's result and the API
  server's checks; the Kubernetes-only parts of the CEL environment are a small shim (below);
- its text, for the one construct that panics kube-apiserver 1.36 and that no CEL
  evaluation here can show: a typed `Object...{}` construction inside a list value;
- `tests/e2e/test_policy_e2e.py` against a real 1.36 API server (E2E=1).

Regenerate the golden files after an intended change with:
    .venv/bin/istio-spiffe-webhook policy > tests/golden/policy-default.yaml
    cp tests/golden/policy-default.yaml manifests/components/policy/mutatingadmissionpolicy.yaml
    ISTIO_SPIFFE_WEBHOOK_CONFIG=tests/golden/policy-custom-settings.yaml \
        .venv/bin/istio-spiffe-webhook policy > tests/golden/policy-custom.yaml
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from kubernetes.client import ApiClient, V1Pod

from tests.oracle import all_fixture_pods, assert_rewritten, expected, in_scope, proxies
from tests.shapes import (
    CONTRACT_FIELDS,
    ORDERS,
    SPIRE_MOUNT_PATH,
    add_spire_mount,
    renamed,
    renames,
    spire_variants,
)
from webhook.cli import main
from webhook.config import Settings, load_settings
from webhook.policy import POLICY_NAME, cel_string, render_policy, to_yaml
from webhook.rewrite import Contract, rewrite

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
COMPONENT = ROOT / "manifests" / "components" / "policy"
OVERLAY = ROOT / "manifests" / "overlays" / "policy"
DEFAULT = Settings()
DEFAULT_CONTRACT = Contract.from_settings(DEFAULT)
# Every contract value changed, with quotes, backslashes, '~' and '/' that CEL literals and
# JSON Pointers must survive (the file is also the golden file's input).
CUSTOM = load_settings(GOLDEN / "policy-custom-settings.yaml")
CUSTOM_CONTRACT = Contract.from_settings(CUSTOM)


def render_text(*args: str, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(main, ["policy", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


# --- Golden files, the manifests, the schemas ------------------------------------------


def test_default_render_matches_the_golden_file() -> None:
    assert render_text() == (GOLDEN / "policy-default.yaml").read_text()


def test_render_with_changed_settings_matches_the_golden_file() -> None:
    env = {"ISTIO_SPIFFE_WEBHOOK_CONFIG": str(GOLDEN / "policy-custom-settings.yaml")}
    assert render_text(env=env) == (GOLDEN / "policy-custom.yaml").read_text()
    assert (
        render_text("--config", env["ISTIO_SPIFFE_WEBHOOK_CONFIG"])
        == (GOLDEN / "policy-custom.yaml").read_text()
    )


def test_committed_policy_component_is_the_default_render() -> None:
    committed = (COMPONENT / "mutatingadmissionpolicy.yaml").read_text()
    assert committed == to_yaml(render_policy(DEFAULT))


def test_printed_yaml_loads_back_to_the_rendered_objects() -> None:
    for settings in (DEFAULT, CUSTOM):
        assert list(yaml.safe_load_all(to_yaml(render_policy(settings)))) == render_policy(settings)


RENDERED_KINDS = ("MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding")


def kustomize(folder: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is a prerequisite of this project (README, Quick start)"
    built = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    return list(yaml.safe_load_all(built.stdout))


def test_policy_overlay_installs_the_base_and_the_policy_and_nothing_that_runs() -> None:
    base = kustomize(ROOT / "manifests" / "base")
    objects = kustomize(OVERLAY)
    assert sorted(o["kind"] for o in objects) == sorted(
        [o["kind"] for o in base] + ["MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding"]
    )
    assert [o for o in objects if o["kind"] not in RENDERED_KINDS] == base
    assert not {"Deployment", "Service", "Secret", "MutatingWebhookConfiguration"} & {
        o["kind"] for o in objects
    }
    base_labels = yaml.safe_load((ROOT / "manifests" / "base" / "kustomization.yaml").read_text())
    labels = base_labels["labels"][0]["pairs"]
    rendered = {o["kind"]: o for o in render_policy(DEFAULT)}
    for kind in RENDERED_KINDS:
        [built_object] = [o for o in objects if o["kind"] == kind]
        assert built_object["metadata"].pop("labels") == labels
        assert built_object == rendered[kind]


@pytest.mark.parametrize("version", ["1.36.0", "1.37.0"])
@pytest.mark.parametrize("settings", [DEFAULT, CUSTOM], ids=["default", "custom"])
def test_v1_objects_validate_against_the_strict_kubernetes_schemas(
    settings: Settings, version: str
) -> None:
    for obj in render_policy(settings, "v1"):
        assert kubernetes_validate.validate(obj, version, strict=True) == version[:4]


@pytest.mark.parametrize("version", ["1.34.0", "1.35.0"])
def test_v1beta1_objects_validate_against_the_strict_schemas_of_1_34_and_1_35(
    version: str,
) -> None:
    for obj in render_policy(DEFAULT, "v1beta1"):
        assert kubernetes_validate.validate(obj, version, strict=True) == version[:4]


def test_v1_api_does_not_exist_before_1_36() -> None:
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(render_policy(DEFAULT, "v1")[0], "1.35.0", strict=True)


def test_v1beta1_render_differs_from_v1_only_in_api_version() -> None:
    beta = render_policy(DEFAULT, "v1beta1")
    assert [o.pop("apiVersion") for o in beta] == ["admissionregistration.k8s.io/v1beta1"] * 2
    v1 = render_policy(DEFAULT, "v1")
    assert [o.pop("apiVersion") for o in v1] == ["admissionregistration.k8s.io/v1"] * 2
    assert beta == v1


def test_policy_matches_like_the_webhook_and_is_reinvoked_after_istio() -> None:
    policy, binding = render_policy(CUSTOM)
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["reinvocationPolicy"] == "IfNeeded"
    assert "matchConditions" not in spec  # a failed match condition is never re-evaluated
    assert "paramKind" not in spec
    assert spec["matchConstraints"] == {
        "resourceRules": [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE"],
                "resources": ["pods"],
            }
        ],
        "namespaceSelector": {
            "matchLabels": {CUSTOM.inject_label: CUSTOM.inject_enabled_value},
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "NotIn",
                    "values": ["kube-system", CUSTOM.namespace],
                }
            ],
        },
        "objectSelector": {
            "matchExpressions": [
                {
                    "key": CUSTOM.inject_label,
                    "operator": "NotIn",
                    "values": [CUSTOM.inject_disabled_value],
                }
            ]
        },
    }
    assert [m["patchType"] for m in spec["mutations"]] == ["JSONPatch"]
    assert binding == {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": POLICY_NAME},
        "spec": {"policyName": POLICY_NAME},
    }


# --- One source of truth ----------------------------------------------------------------


def cel_text(settings: Settings) -> str:
    spec = render_policy(settings)[0]["spec"]
    parts = [v["expression"] for v in spec["variables"]]
    parts += [m["jsonPatch"]["expression"] for m in spec["mutations"]]
    return "\n".join(parts)


def test_every_contract_value_reaches_the_cel_as_a_quoted_literal() -> None:
    text = cel_text(CUSTOM)
    for name in CONTRACT_FIELDS:
        assert cel_string(getattr(CUSTOM, name)) in text, name


def test_no_default_value_is_left_in_the_cel_when_every_setting_changed() -> None:
    text = cel_text(CUSTOM)
    for name in CONTRACT_FIELDS:
        default = cel_string(getattr(DEFAULT, name))
        assert default not in text, (name, default)


def test_string_literals_are_the_only_place_settings_enter_the_cel() -> None:
    # Remove every CEL string literal: what is left is the same for any settings.
    literal = re.compile(r'"(?:[^"\\]|\\.)*"')
    assert literal.sub('""', cel_text(DEFAULT)) == literal.sub('""', cel_text(CUSTOM))


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("workload-socket", '"workload-socket"'),
        ('a"b', '"a\\"b"'),
        ("a\\b", '"a\\\\b"'),
        ('\\"', '"\\\\\\""'),
        ("line\nbreak\ttab\rcr", '"line\\nbreak\\ttab\\rcr"'),
        ("\x00\x1f\x7f", '"\\u0000\\u001f\\u007f"'),
        ("ключ/🐙~", '"ключ/🐙~"'),
        ("", '""'),
        ("'${x}'", "\"'${x}'\""),
    ],
)
def test_cel_string_quotes_odd_values(value: str, literal: str) -> None:
    assert cel_string(value) == literal


@given(st.text())
@hsettings(max_examples=200, deadline=None)
def test_cel_string_is_a_literal_of_exactly_the_value(value: str) -> None:
    literal = cel_string(value)
    # The escapes used (\\ \" \n \r \t \uXXXX) mean the same in CEL and JSON.
    assert json.loads(literal) == value
    assert not re.search(r"[\x00-\x1f\x7f]", literal)
    assert re.fullmatch(r'"(?:[^"\\]|\\.)*"', literal, re.S)


# --- The command line --------------------------------------------------------------------


def test_policy_command_takes_settings_from_the_environment() -> None:
    out = render_text(env={"ISTIO_SPIFFE_WEBHOOK_CSI_DRIVER": "csi.example.org"})
    assert out == to_yaml(render_policy(Settings(csi_driver="csi.example.org")))


def test_policy_command_prints_v1beta1_and_a_chosen_name() -> None:
    out = render_text("--api-version", "v1beta1", "--name", "spiffe.example-1")
    assert out == to_yaml(render_policy(DEFAULT, "v1beta1", "spiffe.example-1"))


@pytest.mark.parametrize(
    ("args", "env", "status", "message"),
    [
        (["--api-version", "v2"], {}, 2, "'v2' is not one of 'v1', 'v1beta1'"),
        (["--name", "Bad_Name"], {}, 2, "'Bad_Name' is not a DNS subdomain name"),
        ([], {"ISTIO_SPIFFE_WEBHOOK_CERTS_VOLUME": "workload-socket"}, 1, "must differ"),
        (["--config", "/nonexistent/x.yaml"], {}, 1, "config file /nonexistent/x.yaml"),
    ],
)
def test_policy_command_rejects_bad_input_in_one_line(
    args: list[str], env: dict[str, str], status: int, message: str
) -> None:
    result = CliRunner().invoke(main, ["policy", *args], env=env)
    assert result.exit_code == status
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


# --- The CEL, evaluated -------------------------------------------------------------------
# cel-expr-python wraps the CEL C++ implementation (cel-cpp), here with only the two-variable
# comprehensions, optional types and the strings extension that Kubernetes has had since 1.32
# (not the lists extension: `flatten()` and `lists.range()` are not in 1.34's CEL for new
# expressions). What
# only Kubernetes has is shimmed: `object` and `variables` are dyn, `jsonpatch.escapeKey`
# is RFC 6901 escaping, and typed constructions (`JSONPatch{op: ...}`,
# `Object.spec.volumes{name: ...}`, with `?field:` entries) become map literals with the
# same entries, after checking Kubernetes' rule that a nested object's type name is its
# parent's name plus the field name. Everything else in the expressions runs unchanged.

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def struct_literals_to_maps(expression: str) -> str:
    """`Name{a: x, ?b: y}` -> `{"a": x, ?"b": y}` for `JSONPatch` and `Object...` types."""
    out: list[str] = []
    stack: list[str | None] = []  # the type name of each open struct literal, else None
    entry_start = False  # just after `{` or `,` of a struct literal
    field: str | None = None  # the field whose value is being written
    i = 0
    while i < len(expression):
        char = expression[i]
        if char == '"':
            end = i + 1
            while expression[end] != '"':
                end += 2 if expression[end] == "\\" else 1
            out.append(expression[i : end + 1])
            i = end + 1
            entry_start = False
            continue
        ident = IDENT.match(expression, i)
        if ident and (i == 0 or not re.match(r"[\w.]", expression[i - 1])):
            name = ident.group()
            after = ident.end()
            while after < len(expression) and expression[after].isspace():
                after += 1
            if (
                after < len(expression)
                and expression[after] == "{"
                and (name == "JSONPatch" or name.startswith("Object"))
            ):
                parent = next((n for n in reversed(stack) if n is not None), None)
                if field is not None and stack and stack[-1] not in (None, "JSONPatch"):
                    assert name == f"{parent}.{field}", (name, parent, field)
                stack.append(name)
                out.append("{")
                i = after + 1
                entry_start, field = True, None
                continue
            if entry_start and stack and stack[-1] is not None:
                colon = re.compile(r"\s*:").match(expression, ident.end())
                assert colon, expression[i : i + 40]
                out.append(json.dumps(name) + ":")
                i = colon.end()
                entry_start, field = False, name
                continue
            out.append(name)
            i = ident.end()
            entry_start = False
            continue
        if char in "([{":
            stack.append(None)
        elif char in ")]}":
            stack.pop()
        elif char == "," and stack and stack[-1] is not None:
            entry_start, field = True, None
            out.append(char)
            i += 1
            continue
        if not char.isspace() and not (char == "?" and entry_start):
            entry_start = False
        out.append(char)
        i += 1
    assert not stack
    return "".join(out)


class PolicyEvaluator:
    """The policy's variables and JSON patch expression, compiled once, run on pods."""

    def __init__(self, settings: Settings) -> None:
        cel = pytest.importorskip(
            "cel_expr_python.cel",
            reason="cel-expr-python (the CEL C++ implementation) is not installed: add "
            "`cel-expr-python>=0.1.3` to the dev extra to evaluate the policy's CEL",
        )
        config = cel.NewEnvConfigFromYaml(
            "name: kubernetes-mutating-admission-policy-shim\n"
            "extensions:\n"
            "  - name: cel.lib.ext.comprev2\n"
            "  - name: optional\n"
            "  - name: cel.lib.ext.strings\n"
        )
        escape_key = cel.FunctionDecl(
            "jsonpatch.escapeKey",
            [
                cel.Overload(
                    "jsonpatch_escapeKey_string",
                    return_type=cel.Type.STRING,
                    parameters=[cel.Type.STRING],
                    impl=lambda key: key.replace("~", "~0").replace("/", "~1"),
                )
            ],
        )
        env = cel.NewEnv(
            config=config,
            variables={"object": cel.Type.DYN, "variables": cel.Type.DYN},
            functions=[escape_key],
        )
        spec = render_policy(settings)[0]["spec"]
        self.variables = [
            (v["name"], env.compile(struct_literals_to_maps(v["expression"])))
            for v in spec["variables"]
        ]
        [mutation] = spec["mutations"]
        self.patch = env.compile(struct_literals_to_maps(mutation["jsonPatch"]["expression"]))

    def ops(self, pod: dict[str, Any]) -> list[dict[str, Any]]:
        values: dict[str, Any] = {}
        for name, program in self.variables:
            values[name] = program.eval(data={"object": pod, "variables": values}).plain_value()
        result = self.patch.eval(data={"object": pod, "variables": values}).plain_value()
        assert isinstance(result, list)
        return result

    def apply(self, pod: dict[str, Any]) -> dict[str, Any]:
        patched = jsonpatch.apply_patch(pod, self.ops(pod))
        assert isinstance(patched, dict)
        return patched


@pytest.fixture(scope="module")
def default_policy() -> PolicyEvaluator:
    return PolicyEvaluator(DEFAULT)


@pytest.fixture(scope="module")
def custom_policy() -> PolicyEvaluator:
    return PolicyEvaluator(CUSTOM)


_API = ApiClient()


def to_v1pod(pod: dict[str, Any]) -> V1Pod:
    loaded = _API._ApiClient__deserialize(pod, "V1Pod")  # type: ignore[attr-defined]
    assert isinstance(loaded, V1Pod)
    return loaded


def as_api_server_sends(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod as the policy's `object` sees it: decoded into a typed Pod and encoded back.

    So Istio's `{"name": "workload-socket"}` volume without a source stays as it is (the API
    server would default it to emptyDir, which the contract treats the same), and lists and
    maps are never null.
    """
    return _API.sanitize_for_serialization(to_v1pod(copy.deepcopy(pod)))  # type: ignore[no-any-return]


FIXTURES = {name: as_api_server_sends(pod) for name, pod in all_fixture_pods().items()}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_policy_rewrites_every_fixture_pod_exactly_like_the_contract(
    name: str, default_policy: PolicyEvaluator
) -> None:
    pod = FIXTURES[name]
    before = copy.deepcopy(pod)
    patched = default_policy.apply(pod)
    assert pod == before
    assert_rewritten(pod, patched, DEFAULT)
    to_v1pod(patched)
    # The webhook agrees, positions included, and a second run of either changes nothing.
    assert patched == jsonpatch.apply_patch(pod, rewrite(pod, DEFAULT_CONTRACT).ops)
    assert default_policy.apply(patched) == patched
    assert rewrite(patched, DEFAULT_CONTRACT).ops == []


def test_fixtures_cover_pods_in_and_out_of_scope() -> None:
    scoped = {name for name, pod in FIXTURES.items() if in_scope(pod, DEFAULT)}
    assert FIXTURES.keys() - scoped == {"custom-template--0", "hello-ignore--0"}


# Every fixture in Istio's documented `sidecar,spire` shapes (tests/shapes.py): istio-proxy
# mounts the socket volume twice, the spire template's mount before or after its own.
SPIRE_SHAPED = {
    f"{name}:{variant}": (name, shaped)
    for name, pod in FIXTURES.items()
    if in_scope(pod, DEFAULT)
    for variant, shaped in spire_variants(pod).items()
}


def socket_mount_paths(pod: dict[str, Any]) -> list[list[str]]:
    return [
        [m["mountPath"] for m in proxy["volumeMounts"] if m["name"] == DEFAULT.socket_volume]
        for proxy in proxies(pod, DEFAULT)
    ]


@pytest.mark.parametrize("name", sorted(SPIRE_SHAPED))
def test_spire_shape_of_every_fixture_keeps_both_socket_mounts_in_place_in_both_forms(
    name: str, default_policy: PolicyEvaluator
) -> None:
    fixture, pod = SPIRE_SHAPED[name]
    assert [len(paths) for paths in socket_mount_paths(pod)] == [2] * len(proxies(pod, DEFAULT))
    result = rewrite(pod, DEFAULT_CONTRACT)
    by_webhook = jsonpatch.apply_patch(pod, result.ops)
    assert_rewritten(pod, by_webhook, DEFAULT)
    # No socket mount moved (so no two share a path), and the shape adds no warning.
    assert socket_mount_paths(by_webhook) == socket_mount_paths(pod)
    assert result.warnings == rewrite(FIXTURES[fixture], DEFAULT_CONTRACT).warnings
    assert default_policy.apply(pod) == by_webhook
    assert rewrite(by_webhook, DEFAULT_CONTRACT).ops == []
    assert default_policy.apply(by_webhook) == by_webhook


@pytest.mark.parametrize("name", ["hello--0", "hello-old-version--0", "review:gateway"])
def test_opted_out_pod_gets_an_empty_patch(name: str, default_policy: PolicyEvaluator) -> None:
    pod = copy.deepcopy(FIXTURES[name])
    pod["metadata"].setdefault("labels", {})[DEFAULT.inject_label] = "disabled"
    assert default_policy.ops(pod) == []


@pytest.mark.parametrize("name", ["custom-template--0", "hello-ignore--0"])
def test_pod_without_istio_proxy_gets_an_empty_patch(
    name: str, default_policy: PolicyEvaluator
) -> None:
    assert default_policy.ops(FIXTURES[name]) == []


def test_pod_without_labels_gets_the_labels_map(default_policy: PolicyEvaluator) -> None:
    pod = copy.deepcopy(FIXTURES["gateway--0"])
    del pod["metadata"]["labels"]
    assert default_policy.ops(pod)[-1] == {
        "op": "add",
        "path": "/metadata/labels",
        "value": {DEFAULT.identity_label: DEFAULT.identity_label_value},
    }
    assert default_policy.apply(pod) == expected(pod, DEFAULT)


CUSTOM_NAMES = renames(DEFAULT, CUSTOM)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_policy_with_changed_settings_rewrites_renamed_fixtures_like_the_contract(
    name: str, custom_policy: PolicyEvaluator
) -> None:
    pod = renamed(FIXTURES[name], CUSTOM_NAMES)
    patched = custom_policy.apply(pod)
    assert_rewritten(pod, patched, CUSTOM)
    assert patched == jsonpatch.apply_patch(pod, rewrite(pod, CUSTOM_CONTRACT).ops)
    assert custom_policy.apply(patched) == patched


def test_default_policy_leaves_pods_of_changed_settings_alone(
    default_policy: PolicyEvaluator,
) -> None:
    pod = renamed(FIXTURES["hello--0"], CUSTOM_NAMES)
    assert default_policy.ops(pod) == []


# Pods as the API server hands them to a policy: names and mount paths always there, no
# null lists; contract names often, duplicated, in any order, with and without the proxy;
# sometimes Istio's documented `sidecar,spire` shape (a second socket mount, either order).
def _names(*contract: str) -> st.SearchStrategy[str]:
    return st.sampled_from([*contract, *contract, "istio-envoy", "data", "x/y~z"])


def _mount(s: Settings) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "name": _names(s.certs_volume, s.socket_volume),
            "mountPath": st.sampled_from(["/a", "/b", SPIRE_MOUNT_PATH, s.socket_mount_path]),
        },
        optional={
            "readOnly": st.booleans(),
            "subPath": st.just("sub"),
            "mountPropagation": st.just("HostToContainer"),
            "recursiveReadOnly": st.just("IfPossible"),
            "subPathExpr": st.just("$(POD)"),
        },
    )


def _env(s: Settings) -> st.SearchStrategy[dict[str, Any]]:
    name = _names(s.cert_provider_env, s.ca_addr_env)
    return st.one_of(
        st.builds(lambda n, v: {"name": n, "value": v}, name, st.sampled_from(["", "v"])),
        st.builds(lambda n: {"name": n}, name),
        st.builds(
            lambda n: {"name": n, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}, name
        ),
        st.sampled_from(
            [
                {"name": s.cert_provider_env, "value": s.cert_provider},
                {"name": s.ca_addr_env, "value": s.ca_addr},
            ]
        ),
    )


@st.composite
def _container(draw: st.DrawFn, s: Settings) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": draw(st.sampled_from([s.proxy_container, s.proxy_container, "app", "init"])),
        "image": "img",
    }
    for key, strategy in (("volumeMounts", _mount(s)), ("env", _env(s))):
        items = draw(st.lists(strategy, max_size=4))
        if items:
            container[key] = items
    return container


@st.composite
def api_pods(draw: st.DrawFn, s: Settings) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": draw(st.lists(_container(s), min_size=1, max_size=3))}
    init = draw(st.lists(_container(s), max_size=3))
    if init:
        spec["initContainers"] = init
    if draw(st.integers(0, 3)) == 0:
        # Istio's documented `sidecar,spire` shape: two socket mounts in istio-proxy.
        order = draw(st.sampled_from(ORDERS))
        for container in [*spec["containers"], *init]:
            if container["name"] == s.proxy_container:
                add_spire_mount(container, order, s)
    sources = st.sampled_from(
        [
            {},
            {"emptyDir": {}},
            {"csi": {"driver": s.csi_driver, "readOnly": True}},
            {"csi": {"driver": "other", "readOnly": True}},
            {"hostPath": {"path": "/run"}},
        ]
    )
    volumes = draw(
        st.lists(
            st.builds(
                lambda n, src: {"name": n, **src}, _names(s.certs_volume, s.socket_volume), sources
            ),
            max_size=5,
        )
    )
    if volumes:
        spec["volumes"] = volumes
    metadata: dict[str, Any] = {"generateName": "p-"}
    labels = draw(
        st.dictionaries(
            st.sampled_from(["app", s.identity_label, s.inject_label, "a/b~c"]),
            st.sampled_from(["x", s.identity_label_value, s.inject_disabled_value]),
            max_size=3,
        )
    )
    if labels:
        metadata["labels"] = labels
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


@given(pod=api_pods(DEFAULT))
@hsettings(max_examples=60, deadline=None)
def test_policy_agrees_with_the_oracle_and_the_webhook_on_generated_pods(
    pod: dict[str, Any],
) -> None:
    policy = _evaluators["default"]
    patched = policy.apply(pod)
    assert_rewritten(pod, patched, DEFAULT)
    assert patched == jsonpatch.apply_patch(pod, rewrite(pod, DEFAULT_CONTRACT).ops)
    if not in_scope(pod, DEFAULT):
        assert policy.ops(pod) == []
    assert policy.apply(patched) == patched


@given(pod=api_pods(CUSTOM))
@hsettings(max_examples=40, deadline=None)
def test_policy_with_changed_settings_agrees_with_the_oracle_on_generated_pods(
    pod: dict[str, Any],
) -> None:
    policy = _evaluators["custom"]
    patched = policy.apply(pod)
    assert_rewritten(pod, patched, CUSTOM)
    assert policy.apply(patched) == patched


class _Lazy(dict[str, PolicyEvaluator]):
    """Evaluators for the hypothesis tests (which cannot take module fixtures)."""

    def __missing__(self, key: str) -> PolicyEvaluator:
        self[key] = PolicyEvaluator(DEFAULT if key == "default" else CUSTOM)
        return self[key]


_evaluators = _Lazy()


def test_struct_literal_shim_rewrites_only_typed_constructions() -> None:
    source = (
        'x ? [JSONPatch{op: "a,b", value: Object.spec.volumes{name: f(a, b), '
        '?csi: Object.spec.volumes.csi{driver: "d"}}}] : {"k": Object.x{y: [1, 2]}}'
    )
    assert struct_literals_to_maps(source) == (
        'x ? [{"op": "a,b", "value": {"name": f(a, b), '
        '?"csi": {"driver": "d"}}}] : {"k": {"y": [1, 2]}}'
    )
    with pytest.raises(AssertionError):
        struct_literals_to_maps("Object.spec.volumes{csi: Object.spec.csi{}}")


# --- What the API server's CEL must never see -------------------------------------------
# kube-apiserver 1.36 panics when a JSON patch value is a list holding a typed `Object...{}`
# construction (its ConvertToNative answers *structpb.Struct where a list element must be a
# *structpb.Value; kubernetes#142181), e.g. `object.spec.volumes.map(v, c ? Object...{} : v)`
# or `[Object...{}]` alone, and the panic fails every pod in scope. cel-cpp cannot show it,
# so this is checked on the text: a typed construction is only ever the whole value of a
# JSONPatch, or of a field of another typed construction.


def misplaced_typed_constructions(expression: str) -> list[str]:
    """The typed constructions of `expression` that are not a whole JSONPatch value or the
    whole value of a typed construction's field, each with the text that leads to it."""
    misplaced: list[str] = []
    # Open brackets: (typed construction name or None, its current field, where that
    # field's value starts, whether this construction must be followed by `,` or `}`).
    stack: list[tuple[str | None, str | None, int, bool]] = []
    entry_start = False
    i = 0
    while i < len(expression):
        char = expression[i]
        if char == '"':
            end = i + 1
            while expression[end] != '"':
                end += 2 if expression[end] == "\\" else 1
            i, entry_start = end + 1, False
            continue
        ident = IDENT.match(expression, i)
        if ident and (i == 0 or not re.match(r"[\w.]", expression[i - 1])):
            name = ident.group()
            after = ident.end()
            while after < len(expression) and expression[after].isspace():
                after += 1
            typed = name == "JSONPatch" or name.startswith("Object")
            if typed and after < len(expression) and expression[after] == "{":
                whole_value = False
                if name != "JSONPatch":
                    parent = stack[-1] if stack else None
                    whole_value = (
                        parent is not None
                        and parent[0] is not None
                        and (parent[0] != "JSONPatch" or parent[1] == "value")
                        and not expression[parent[2] : i].strip()
                    )
                    if not whole_value:
                        misplaced.append(expression[max(0, i - 60) : after + 1])
                stack.append((name, None, after + 1, whole_value))
                i, entry_start = after + 1, True
                continue
            if entry_start and stack and stack[-1][0] is not None:
                colon = re.compile(r"\s*:").match(expression, ident.end())
                assert colon, expression[i : i + 40]
                frame = stack.pop()
                stack.append((frame[0], name, colon.end(), frame[3]))
                i, entry_start = colon.end(), False
                continue
            i, entry_start = ident.end(), False
            continue
        if char in "([{":
            stack.append((None, None, i + 1, False))
        elif char in ")]}":
            name, _, _, whole_value = stack.pop()
            rest = expression[i + 1 :].lstrip()
            if whole_value and rest[:1] not in (",", "}"):
                misplaced.append(f"{name}{{...}} followed by {rest[:20]!r}")
        elif char == "," and stack and stack[-1][0] is not None:
            entry_start = True
            i += 1
            continue
        if not char.isspace() and not (char == "?" and entry_start):
            entry_start = False
        i += 1
    return misplaced


@pytest.mark.parametrize("settings", [DEFAULT, CUSTOM], ids=["default", "custom"])
def test_typed_constructions_are_only_whole_patch_values_never_list_items(
    settings: Settings,
) -> None:
    spec = render_policy(settings)[0]["spec"]
    [mutation] = spec["mutations"]
    expression = mutation["jsonPatch"]["expression"]
    assert expression.count("Object.") >= 6
    assert misplaced_typed_constructions(expression) == []
    # Variables cannot use the types at all (only mutations can).
    assert [v["name"] for v in spec["variables"] if "Object." in v["expression"]] == []


@pytest.mark.parametrize(
    "value",
    [
        # The reduced form of issue 10's panic, and the shapes of the render it panicked on.
        'object.spec.volumes.map(v, v.name == "x" ? Object.spec.volumes{name: "x"} : v)',
        'object.spec.volumes.filter(v, v.name != "x") + [Object.spec.volumes{name: "x"}]',
        '[Object.spec.volumes{name: "x"}]',
        'c ? Object.spec.volumes{name: "x"} : object.spec.volumes[0]',
        'Object.spec.volumes{name: "x"} == v ? 1 : 2',
    ],
)
def test_misplaced_typed_construction_check_finds_typed_items_in_lists(value: str) -> None:
    expression = f'[JSONPatch{{op: "add", path: "/spec/volumes", value: {value}}}]'
    assert len(misplaced_typed_constructions(expression)) == 1


def test_misplaced_typed_construction_check_accepts_whole_values_and_their_fields() -> None:
    expression = (
        '[JSONPatch{op: "add", path: "/spec/volumes/-", value: Object.spec.volumes{'
        'name: "x", csi: Object.spec.volumes.csi{driver: "d", readOnly: true}}}]'
        ' + object.spec.volumes.map(v, JSONPatch{op: "remove", path: "/spec/volumes/0"})'
    )
    assert misplaced_typed_constructions(expression) == []


# --- Switching between the two forms ----------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_webhook_after_the_policy_changes_nothing(name: str) -> None:
    # The policy leaves exactly expected(pod) (proved above with the CEL evaluated).
    assert rewrite(expected(FIXTURES[name], DEFAULT), DEFAULT_CONTRACT).ops == []


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_policy_after_the_webhook_changes_nothing(
    name: str, default_policy: PolicyEvaluator
) -> None:
    pod = FIXTURES[name]
    by_webhook = jsonpatch.apply_patch(pod, rewrite(pod, DEFAULT_CONTRACT).ops)
    assert default_policy.apply(by_webhook) == by_webhook
