"""The rewrite contract as an Istio injection template: nothing to run, no Kubernetes 1.36.

istiod renders every injection template of a pod (Go `text/template`) and merges each result
into the pod in turn with Kubernetes' strategic merge patch, with `corev1.Pod`'s patch
metadata (istio/istio `pkg/kube/inject/inject.go` `RunTemplate`, `webhook.go`
`applyOverlayYAML`; checked on master of 2026-08-22, the 1.32 development line). Listed after
`sidecar` (`defaultTemplates: [sidecar, spiffe]`), the template rendered here carries out
the contract of `webhook.rewrite` on the pod Istio just injected:

1. `workload-certs`: the volume is deleted (`$patch: delete`, keyed by `name`); mounts are
   keyed by `mountPath`, so what is deleted is the mount at Istio's credentials path
   (/var/run/secrets/workload-spiffe-credentials, where Istio's templates mount it), in
   istio-proxy and, when the proxy is a classic container, in the pod's own containers
   (Istio's `grpc-agent` template mounts it there too);
2. `workload-socket` keeps only `name` and `csi` (`$retainKeys`, which `Pod.spec.volumes`
   supports) and gets exactly `{driver, readOnly: true}` (the CSI fields it may have had are
   set to null);
3. istio-proxy's mount at the configured path is merged into the read-only socket mount, or
   added;
4. every env entry of the two names is deleted (`$patch: delete`, keyed by `name`) and one
   of each added with its value: merged by name instead, a later entry of the same name
   (Istio's sidecar template appends `proxyMetadata` after its own `PILOT_CERT_PROVIDER` and
   `CA_ADDR`) would keep its value and win at run time;
5. the identity label is added.

istio-proxy is under `initContainers` when it is a native sidecar, decided exactly as Istio's
`sidecar` template decides it (`files/injection-template.yaml`): the
`sidecar.istio.io/nativeSidecar` annotation, else `.NativeSidecars`. Istio's `gateway` and
`grpc-agent` templates always put the proxy under `containers`; `proxy_in="containers"`
renders the variant for them. A pod labelled with the opt-out label gets an empty patch.

Only Go's builtin template functions are used (`index`, `eq`, `ne`, `or`, `printf`), not
the Sprig functions istiod also offers, so any Go program can check it. Every name and value
comes from `Settings`: in YAML text as a double-quoted scalar that cannot open a template
action (`yaml_string`), inside actions as a Go string literal (`go_string`).

What a template cannot do like the webhook is in docs/template.md (it only sees the pod as
the user submitted it, and a merge patch can neither move an entry nor look before it acts).
"""

from __future__ import annotations

import re
from typing import Literal

from webhook.config import Settings
from webhook.yaml_text import literal_block_yaml

TEMPLATE_NAME = "spiffe"
# Where Istio's own templates mount `workload-certs` (files/injection-template.yaml,
# gateway-injection-template.yaml, grpc-agent.yaml); the merge deletes mounts by this key.
ISTIO_CERTS_MOUNT_PATH = "/var/run/secrets/workload-spiffe-credentials"
NATIVE_SIDECAR_ANNOTATION = "sidecar.istio.io/nativeSidecar"
ProxyIn = Literal["auto", "containers", "initContainers"]
PROXY_IN: tuple[ProxyIn, ...] = ("auto", "containers", "initContainers")
ValuesForm = Literal["helm", "istio-operator"]
VALUES_FORMS: tuple[ValuesForm, ...] = ("helm", "istio-operator")
GATEWAY_SUFFIX = "-gateway"
# Template names go into istiod's config unquoted and into a comma-separated annotation;
# revisions into object names. Both must be DNS labels.
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# Not printable in YAML (or line breaks to YAML 1.1 readers): written as \u escapes.
_YAML_ESCAPED = re.compile('[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff{\\\\"]')
_SURROGATES = re.compile("[\ud800-\udfff]")


class TemplateError(ValueError):
    """A setting or an option cannot be written into the template; says which and why."""


def _checked(value: str, what: str) -> str:
    if _SURROGATES.search(value):
        raise TemplateError(f"{what}: not valid Unicode text (a lone surrogate)")
    return value


def yaml_string(value: str, what: str = "value") -> str:
    """`value` as a double-quoted YAML scalar that reads back as exactly `value`, and that
    Go's template parser passes through as text.

    `\\` and `"` are escaped, and so is `{` (as `\\u007b`), so no value can open a template
    action; characters YAML does not allow as they are become `\\u` escapes; everything else
    is written as itself (UTF-8).
    """

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        return "\\" + char if char in '\\"' else f"\\u{ord(char):04x}"

    return '"' + _YAML_ESCAPED.sub(escape, _checked(value, what)) + '"'


def go_string(value: str, what: str = "value") -> str:
    """`value` as a Go interpreted string literal, for the inside of a template action."""
    out = ['"']
    for char in _checked(value, what):
        if char in '\\"':
            out.append("\\" + char)
        elif char.isprintable() and char not in "\u2028\u2029":
            out.append(char)
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    out.append('"')
    return "".join(out)


_HEADER = """\
{{- /* istio-spiffe-webhook: the SPIFFE rewrite as an Istio injection template, made by
`istio-spiffe-webhook template`. Do not edit: change the settings and render it again.
List it after the template that injects the proxy. Go text/template builtins only. */ -}}
"""

# `or` returns its first non-empty argument: Sprig's `default` in Istio's own condition.
_NATIVE = (
    "{{- $native := ne (or (index .ObjectMeta.Annotations $annotation)"
    ' (printf "%t" .NativeSidecars)) "false" }}\n'
)


def render_template(
    settings: Settings,
    proxy_in: ProxyIn = "auto",
    certs_mount_path: str = ISTIO_CERTS_MOUNT_PATH,
) -> str:
    """The template text, as istiod expects it under `sidecarInjectorWebhook.templates`.

    `proxy_in`: `auto` decides classic or native as Istio's `sidecar` template does;
    `containers` (for the `gateway` and `grpc-agent` templates) or `initContainers` fix it.
    """
    if proxy_in not in PROXY_IN:
        raise TemplateError(f"proxy_in: must be one of {', '.join(PROXY_IN)}")
    if not certs_mount_path.startswith("/"):
        raise TemplateError("certs_mount_path: must be an absolute path")
    if not settings.inject_disabled_value:
        # `index` gives "" for a missing label too, and Go's builtins cannot tell them apart.
        raise TemplateError(
            "inject_disabled_value: the template cannot tell an empty label value from a"
            " missing label; choose a non-empty opt-out value"
        )
    s = settings
    q = yaml_string
    proxy_name = go_string(s.proxy_container, "proxy_container")
    certs_mount = (
        f"    - mountPath: {q(certs_mount_path, 'certs_mount_path')}\n      $patch: delete\n"
    )
    lines = [_HEADER]
    if proxy_in == "auto":
        lines.append(_NATIVE.replace("$annotation", go_string(NATIVE_SIDECAR_ANNOTATION)))
    lines.append(
        f"{{{{- if eq (index .ObjectMeta.Labels {go_string(s.inject_label, 'inject_label')})"
        f" {go_string(s.inject_disabled_value, 'inject_disabled_value')} }}}}\n"
        "{}\n"
        "{{- else }}\n"
        "metadata:\n"
        "  labels:\n"
        f"    {q(s.identity_label, 'identity_label')}:"
        f" {q(s.identity_label_value, 'identity_label_value')}\n"
        "spec:\n"
    )
    # In a classic pod the pod's own containers drop their mount at the credentials path too
    # (named by .Spec, the pod as submitted); a native proxy has the list to itself, which
    # is never empty, so the patch never writes `containers: null`.
    own_containers = (
        f"{{{{- range .Spec.Containers }}}}{{{{ if ne .Name {proxy_name} }}}}\n"
        '  - name: {{ printf "%q" .Name }}\n'
        "    volumeMounts:\n"
        f"{certs_mount}"
        "{{- end }}{{ end }}\n"
    )
    if proxy_in == "auto":
        lines.append(
            "{{- if $native }}\n"
            "  initContainers:\n"
            "{{- else }}\n"
            "  containers:\n"
            f"{own_containers}"
            "{{- end }}\n"
        )
    elif proxy_in == "containers":
        lines.append(f"  containers:\n{own_containers}")
    else:
        lines.append("  initContainers:\n")
    socket = q(s.socket_volume, "socket_volume")
    provider_env = q(s.cert_provider_env, "cert_provider_env")
    ca_env = q(s.ca_addr_env, "ca_addr_env")
    lines.append(
        f"  - name: {q(s.proxy_container, 'proxy_container')}\n"
        "    env:\n"
        f"    - name: {provider_env}\n"
        "      $patch: delete\n"
        f"    - name: {ca_env}\n"
        "      $patch: delete\n"
        f"    - name: {provider_env}\n"
        f"      value: {q(s.cert_provider, 'cert_provider')}\n"
        f"    - name: {ca_env}\n"
        f"      value: {q(s.ca_addr, 'ca_addr')}\n"
        "    volumeMounts:\n"
        f"{certs_mount}"
        f"    - mountPath: {q(s.socket_mount_path, 'socket_mount_path')}\n"
        f"      name: {socket}\n"
        "      readOnly: true\n"
        "  volumes:\n"
        f"  - name: {q(s.certs_volume, 'certs_volume')}\n"
        "    $patch: delete\n"
        f"  - name: {socket}\n"
        "    $retainKeys: [csi, name]\n"
        "    csi:\n"
        f"      driver: {q(s.csi_driver, 'csi_driver')}\n"
        "      readOnly: true\n"
        "      fsType: null\n"
        "      volumeAttributes: null\n"
        "      nodePublishSecretRef: null\n"
        "{{- end }}\n"
    )
    return "".join(lines)


def check_name(value: str, what: str) -> str:
    """`value` if it is a DNS label (what template names and revisions must be)."""
    if len(value) > 63 or not DNS_LABEL.fullmatch(value):
        raise TemplateError(
            f"{what}: {value!r} is not a DNS label (lower case letters, digits and '-',"
            " at most 63 characters)"
        )
    return value


def installation(
    settings: Settings,
    name: str = TEMPLATE_NAME,
    revision: str | None = None,
    default_templates: bool = True,
    certs_mount_path: str = ISTIO_CERTS_MOUNT_PATH,
) -> dict[str, object]:
    """istiod's Helm values that install the templates (as a dict, for a values file).

    `name` is the template for `sidecar` pods (classic or native, as Istio decides);
    `name-gateway` the one for `gateway` and `grpc-agent` pods, which keep the proxy under
    `containers`. With `default_templates`, every pod injected with the default templates
    gets `name` after `sidecar`; without, pods ask for it with `inject.istio.io/templates`.
    With a `revision`, only that revision's istiod (namespaces labelled
    `istio.io/rev=REVISION`) applies them.
    """
    check_name(name, "name")
    gateway = check_name(name + GATEWAY_SUFFIX, "name")
    webhook: dict[str, object] = {
        "templates": {
            name: render_template(settings, "auto", certs_mount_path),
            gateway: render_template(settings, "containers", certs_mount_path),
        }
    }
    if default_templates:
        webhook["defaultTemplates"] = ["sidecar", name]
    values: dict[str, object] = {}
    if revision is not None:
        values["revision"] = check_name(revision, "revision")
    values["sidecarInjectorWebhook"] = webhook
    return values


def render_values(
    settings: Settings,
    form: ValuesForm = "helm",
    name: str = TEMPLATE_NAME,
    revision: str | None = None,
    default_templates: bool = True,
    certs_mount_path: str = ISTIO_CERTS_MOUNT_PATH,
) -> str:
    """The templates as Helm values for istiod's chart, or as an IstioOperator (YAML)."""
    if form not in VALUES_FORMS:
        raise TemplateError(f"form: must be one of {', '.join(VALUES_FORMS)}")
    values = installation(settings, name, revision, default_templates, certs_mount_path)
    if form == "helm":
        header = (
            "# istiod Helm values (chart istio/istiod) that add istio-spiffe-webhook's\n"
            "# injection templates, made by `istio-spiffe-webhook template --values helm`.\n"
        )
        document: dict[str, object] = values
    else:
        header = (
            "# An IstioOperator (istioctl install -f) that adds istio-spiffe-webhook's\n"
            "# injection templates, made by `istio-spiffe-webhook template --values"
            " istio-operator`.\n"
        )
        spec: dict[str, object] = {}
        if "revision" in values:
            spec["revision"] = values.pop("revision")
        spec["values"] = values
        document = {
            "apiVersion": "install.istio.io/v1alpha1",
            "kind": "IstioOperator",
            "spec": spec,
        }
    return header + literal_block_yaml([document])
