"""The Istio injection template form: rendered from Settings, quoted safely, valid YAML.

What `make test` can check without Go:
- golden files: the template and the values that install it, for the default and for
  changed settings, byte for byte;
- the template rendered by a tiny evaluator of exactly the Go template constructs it uses
  (tests/gotemplate.py) for classic and native sidecars and an opted-out pod, loaded as YAML
  and compared with the strategic merge patch it must be;
- the quoting of every value, and the command line.
The real check is tests/e2e/test_template_e2e.py (`make e2e`): Go's text/template and
Kubernetes' strategic merge code (e2e/templatecheck) apply it to every shared fixture pod and
the result must be the webhook's rewrite.

Regenerate the golden files after an intended change with:
    B=.venv/bin/istio-spiffe-webhook C=tests/golden/template-custom-settings.yaml
    $B template > tests/golden/template-default.txt
    $B template --gateway > tests/golden/template-gateway.txt
    $B template --config $C > tests/golden/template-custom.txt
    $B template --values helm > tests/golden/template-values-helm.txt
    $B template --values istio-operator --revision canary --config $C \
        > tests/golden/template-values-istio-operator-custom.txt
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.gotemplate import FUNCTIONS, render, template_data
from tests.shapes import CONTRACT_FIELDS
from webhook.cli import main
from webhook.config import Settings, load_settings
from webhook.template import (
    ISTIO_CERTS_MOUNT_PATH,
    TemplateError,
    go_string,
    installation,
    render_template,
    render_values,
    yaml_string,
)

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
CUSTOM_SETTINGS = GOLDEN / "template-custom-settings.yaml"
DEFAULT = Settings()
# Every contract value changed, with what YAML and Go templates must not misread.
CUSTOM = load_settings(CUSTOM_SETTINGS)
NATIVE = "sidecar.istio.io/nativeSidecar"


def cli(*args: str, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(main, ["template", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.output


# --- Golden files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "golden"),
    [
        ([], "template-default.txt"),
        (["--gateway"], "template-gateway.txt"),
        (["--config", str(CUSTOM_SETTINGS)], "template-custom.txt"),
        (["--values", "helm"], "template-values-helm.txt"),
        (
            [
                "--values",
                "istio-operator",
                "--revision",
                "canary",
                "--config",
                str(CUSTOM_SETTINGS),
            ],
            "template-values-istio-operator-custom.txt",
        ),
    ],
)
def test_command_output_matches_the_golden_file(args: list[str], golden: str) -> None:
    assert cli(*args) == (GOLDEN / golden).read_text()


def test_settings_file_from_the_environment_gives_the_same_template() -> None:
    env = {"ISTIO_SPIFFE_WEBHOOK_CONFIG": str(CUSTOM_SETTINGS)}
    assert cli(env=env) == (GOLDEN / "template-custom.txt").read_text()


def test_command_prints_exactly_what_the_domain_renders() -> None:
    assert cli() == render_template(DEFAULT)
    assert cli("--gateway") == render_template(DEFAULT, "containers")
    assert cli("--certs-mount-path", "/etc/certs") == render_template(
        DEFAULT, certs_mount_path="/etc/certs"
    )
    assert cli("--values", "helm", "--name", "spire-rotate", "--no-default-templates") == (
        render_values(DEFAULT, "helm", "spire-rotate", default_templates=False)
    )


# --- The patch it renders to, per sidecar mode --------------------------------------------


def app_pod(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> Any:
    """A pod as submitted: two containers of its own (names a YAML reader could misread)."""
    return {
        "metadata": {"labels": labels or {}, "annotations": annotations or {}},
        "spec": {"containers": [{"name": "app"}, {"name": 'on: "x"'}]},
    }


def patch_of(settings: Settings, *, native: bool, own: list[str]) -> dict[str, Any]:
    """The strategic merge patch the template must render to."""
    s = settings
    certs_mount = {"mountPath": ISTIO_CERTS_MOUNT_PATH, "$patch": "delete"}
    proxy = {
        "name": s.proxy_container,
        "env": [
            {"name": s.cert_provider_env, "$patch": "delete"},
            {"name": s.ca_addr_env, "$patch": "delete"},
            {"name": s.cert_provider_env, "value": s.cert_provider},
            {"name": s.ca_addr_env, "value": s.ca_addr},
        ],
        "volumeMounts": [
            certs_mount,
            {"mountPath": s.socket_mount_path, "name": s.socket_volume, "readOnly": True},
        ],
    }
    containers = [{"name": name, "volumeMounts": [certs_mount]} for name in own]
    return {
        "metadata": {"labels": {s.identity_label: s.identity_label_value}},
        "spec": {
            ("initContainers" if native else "containers"): [*containers, proxy],
            "volumes": [
                {"name": s.certs_volume, "$patch": "delete"},
                {
                    "name": s.socket_volume,
                    "$retainKeys": ["csi", "name"],
                    "csi": {
                        "driver": s.csi_driver,
                        "readOnly": True,
                        "fsType": None,
                        "volumeAttributes": None,
                        "nodePublishSecretRef": None,
                    },
                },
            ],
        },
    }


def rendered(settings: Settings, pod: Any, native_sidecars: bool, proxy_in: Any = "auto") -> Any:
    return yaml.safe_load(
        render(render_template(settings, proxy_in), template_data(pod, native_sidecars))
    )


@pytest.mark.parametrize("settings", [DEFAULT, CUSTOM], ids=["default", "custom"])
def test_classic_sidecar_patch_names_the_proxy_and_the_pods_own_containers(
    settings: Settings,
) -> None:
    pod = app_pod()
    pod["spec"]["containers"].append({"name": settings.proxy_container})  # a user override
    assert rendered(settings, pod, False) == patch_of(
        settings, native=False, own=["app", 'on: "x"']
    )


@pytest.mark.parametrize("settings", [DEFAULT, CUSTOM], ids=["default", "custom"])
def test_native_sidecar_patch_puts_the_proxy_under_init_containers_alone(
    settings: Settings,
) -> None:
    assert rendered(settings, app_pod(), True) == patch_of(settings, native=True, own=[])


# Istio's `sidecar` template: native unless (the annotation, else .NativeSidecars) is "false".
@pytest.mark.parametrize(
    ("annotation", "native_sidecars", "native"),
    [
        (None, False, False),
        (None, True, True),
        ("true", False, True),
        ("false", True, False),
        ("", True, True),
        ("", False, False),
        ("FALSE", False, True),
        ("no", False, True),
    ],
)
def test_sidecar_mode_is_decided_as_istios_sidecar_template_decides(
    annotation: str | None, native_sidecars: bool, native: bool
) -> None:
    annotations = {} if annotation is None else {NATIVE: annotation}
    patch = rendered(DEFAULT, app_pod(annotations=annotations), native_sidecars)
    assert set(patch["spec"]) == {"initContainers" if native else "containers", "volumes"}


@pytest.mark.parametrize("native_sidecars", [False, True])
@pytest.mark.parametrize("annotation", [None, "true", "false"])
def test_gateway_variant_always_patches_containers(
    native_sidecars: bool, annotation: str | None
) -> None:
    annotations = {} if annotation is None else {NATIVE: annotation}
    patch = rendered(DEFAULT, app_pod(annotations=annotations), native_sidecars, "containers")
    assert patch == patch_of(DEFAULT, native=False, own=["app", 'on: "x"'])
    native = rendered(DEFAULT, app_pod(annotations=annotations), native_sidecars, "initContainers")
    assert native == patch_of(DEFAULT, native=True, own=[])


@pytest.mark.parametrize("settings", [DEFAULT, CUSTOM], ids=["default", "custom"])
@pytest.mark.parametrize("native_sidecars", [False, True])
def test_opted_out_pod_gets_an_empty_patch(settings: Settings, native_sidecars: bool) -> None:
    pod = app_pod(labels={settings.inject_label: settings.inject_disabled_value})
    assert rendered(settings, pod, native_sidecars) == {}
    other = app_pod(labels={settings.inject_label: settings.inject_enabled_value})
    assert rendered(settings, other, native_sidecars) != {}


@pytest.mark.parametrize("native_sidecars", [False, True])
def test_pod_without_containers_of_its_own_gets_the_proxy_entry_and_no_null_list(
    native_sidecars: bool,
) -> None:
    # `containers:` with no entries would read as null, which deletes the pod's containers.
    patch = rendered(DEFAULT, {"metadata": {}, "spec": {}}, native_sidecars)
    assert patch == patch_of(DEFAULT, native=native_sidecars, own=[])


# --- One source of truth, quoted ------------------------------------------------------------

# Double-quoted YAML scalars and Go string literals (the same escapes for our strings).
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def test_every_contract_value_reaches_the_template_quoted() -> None:
    text = render_template(CUSTOM)
    for name in CONTRACT_FIELDS:
        value = getattr(CUSTOM, name)
        assert yaml_string(value) in text or go_string(value) in text, name


def test_no_default_value_is_left_when_every_setting_changed() -> None:
    literals = set(QUOTED.findall(render_template(CUSTOM)))
    for name in CONTRACT_FIELDS:
        value = getattr(DEFAULT, name)
        assert not {yaml_string(value), go_string(value)} & literals, name


def test_quoted_literals_are_the_only_place_settings_enter_the_template() -> None:
    assert QUOTED.sub('""', render_template(DEFAULT)) == QUOTED.sub('""', render_template(CUSTOM))


def test_template_uses_only_gos_builtin_functions() -> None:
    for proxy_in in ("auto", "containers", "initContainers"):
        text = render_template(CUSTOM, proxy_in)
        actions = re.findall(r"\{\{-? (.*?) ?-?\}\}", QUOTED.sub('""', text), re.S)
        words = {
            w
            for a in actions
            if not a.startswith("/*")
            for w in re.findall(r"(?<![.$\w])[a-z]\w*", a)
        }
        assert words <= FUNCTIONS | {"if", "else", "end", "range"}, words


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("workload-socket", '"workload-socket"'),
        ('a"b\\c', '"a\\"b\\\\c"'),
        ("{{ .Values }}", '"\\u007b\\u007b .Values }}"'),
        ("tab\tnew\nline\x7f\u2028", '"tab\\u0009new\\u000aline\\u007f\\u2028"'),
        ("ключ/🐙~: #", '"ключ/🐙~: #"'),
        ("", '""'),
    ],
)
def test_yaml_string_quotes_odd_values(value: str, quoted: str) -> None:
    assert yaml_string(value) == quoted


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("istio-proxy", '"istio-proxy"'),
        ('off "}}{{" ñ', '"off \\"}}{{\\" ñ"'),
        ("a\\b\nc\x00\U000e0001", '"a\\\\b\\u000ac\\u0000\\U000e0001"'),
    ],
)
def test_go_string_quotes_odd_values(value: str, literal: str) -> None:
    assert go_string(value) == literal


# Lone surrogates (undecodable bytes in an environment variable) are refused, not written.
TEXT = st.text(st.characters(blacklist_categories=["Cs"]))


@given(TEXT)
@hsettings(max_examples=300, deadline=None)
def test_yaml_string_reads_back_as_the_value_and_cannot_open_an_action(value: str) -> None:
    quoted = yaml_string(value)
    assert yaml.safe_load(f"key: {quoted}\n") == {"key": value}
    assert "{" not in quoted
    assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", quoted)


@given(TEXT)
@hsettings(max_examples=300, deadline=None)
def test_go_string_is_a_literal_of_exactly_the_value(value: str) -> None:
    literal = go_string(value)
    # Its escapes (\\ \" \uXXXX \UXXXXXXXX) mean the same in Go and Python.
    assert ast.literal_eval(literal) == value
    assert "\n" not in literal and "\r" not in literal


def test_a_lone_surrogate_is_refused_with_the_settings_name() -> None:
    with pytest.raises(TemplateError, match=r"^cert_provider: not valid Unicode text"):
        render_template(Settings(cert_provider="spiffe\udcff"))
    result = CliRunner().invoke(
        main, ["template"], env={"ISTIO_SPIFFE_WEBHOOK_CA_ADDR": "unix:///\udcff"}
    )
    assert (result.exit_code, result.output) == (
        1,
        "Error: ca_addr: not valid Unicode text (a lone surrogate)\n",
    )


def test_an_empty_opt_out_value_is_refused_because_go_cannot_tell_it_from_a_missing_label() -> None:
    with pytest.raises(TemplateError, match=r"^inject_disabled_value: the template cannot tell"):
        render_template(Settings(inject_disabled_value=""))


def test_relative_certs_mount_path_is_refused() -> None:
    with pytest.raises(TemplateError, match=r"^certs_mount_path: must be an absolute path"):
        render_template(DEFAULT, certs_mount_path="var/run")


# --- The values that install it -------------------------------------------------------------


def test_helm_values_add_both_templates_and_make_the_sidecar_one_a_default() -> None:
    values = yaml.safe_load(render_values(CUSTOM, "helm"))
    assert values == {
        "sidecarInjectorWebhook": {
            "templates": {
                "spiffe": render_template(CUSTOM),
                "spiffe-gateway": render_template(CUSTOM, "containers"),
            },
            "defaultTemplates": ["sidecar", "spiffe"],
        }
    }
    assert values == installation(CUSTOM)


def test_istio_operator_carries_the_same_values_and_the_revision() -> None:
    operator = yaml.safe_load(render_values(DEFAULT, "istio-operator", "rotate", "canary"))
    values = installation(DEFAULT, "rotate")
    assert operator == {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "spec": {"revision": "canary", "values": values},
    }
    helm = yaml.safe_load(render_values(DEFAULT, "helm", "rotate", "canary"))
    assert helm == {"revision": "canary", **values}


def test_without_default_templates_pods_must_ask_for_the_template() -> None:
    values = yaml.safe_load(render_values(DEFAULT, "helm", default_templates=False))
    assert set(values["sidecarInjectorWebhook"]) == {"templates"}


def test_templates_survive_istios_injector_config_map() -> None:
    """istiod's chart (templates/istiod-injector-configmap.yaml) writes each template as
    `{{ $val | trim | indent 8 }}` under a literal block and `defaultTemplates` as `- NAME`."""
    webhook = installation(CUSTOM)["sidecarInjectorWebhook"]
    assert isinstance(webhook, dict)
    lines = ["defaultTemplates:", *(f"- {n}" for n in webhook["defaultTemplates"]), "templates:"]
    for name, text in webhook["templates"].items():
        lines.append(f"  {name}: |")
        lines += [f"        {line}" if line else "" for line in text.strip().splitlines()]
    config = yaml.safe_load("\n".join(lines) + "\n")
    assert config["defaultTemplates"] == ["sidecar", "spiffe"]
    for name, text in webhook["templates"].items():
        assert config["templates"][name].strip() == text.strip()


# --- The command line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "status", "message"),
    [
        (["--revision", "canary"], {}, 2, "--revision only applies with --values"),
        (["--name", "x"], {}, 2, "--name only applies with --values"),
        (["--no-default-templates"], {}, 2, "--default-templates only applies with --values"),
        (["--values", "helm", "--gateway"], {}, 2, "--values includes both"),
        (["--values", "yaml"], {}, 2, "'yaml' is not one of 'helm', 'istio-operator'"),
        (["--values", "helm", "--name", "Spiffe"], {}, 2, "'Spiffe' is not a DNS label"),
        (["--values", "helm", "--name", "a" * 56], {}, 2, "of at most 55 characters"),
        (["--values", "helm", "--revision", "1.24"], {}, 2, "'1.24' is not a DNS label"),
        (["--certs-mount-path", "x"], {}, 1, "certs_mount_path: must be an absolute path"),
        ([], {"ISTIO_SPIFFE_WEBHOOK_INJECT_DISABLED_VALUE": ""}, 1, "inject_disabled_value"),
        ([], {"ISTIO_SPIFFE_WEBHOOK_CERTS_VOLUME": "workload-socket"}, 1, "must differ"),
        (["--config", "/nonexistent/x.yaml"], {}, 1, "config file /nonexistent/x.yaml"),
    ],
)
def test_template_command_rejects_bad_input_in_one_line(
    args: list[str], env: dict[str, str], status: int, message: str
) -> None:
    result = CliRunner().invoke(main, ["template", *args], env=env)
    assert result.exit_code == status
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
