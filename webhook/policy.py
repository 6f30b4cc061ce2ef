"""The rewrite contract as a MutatingAdmissionPolicy: no server, no certificates.

`render_policy(settings)` returns a MutatingAdmissionPolicy and its binding whose CEL carries
out the same contract as `webhook.rewrite`, with every name and value taken from the same
`Settings` and quoted as CEL string literals by `cel_string()`. `istio-spiffe-webhook policy`
prints them as YAML for `kubectl apply -f -`.

How the CEL agrees with the webhook (facts measured on a real kube-apiserver 1.36, issue 7):
- Policies run before every mutating webhook, so on the first pass the pod has no
  `istio-proxy` yet. `reinvocationPolicy: IfNeeded` runs the policy again after Istio's
  injector changed the pod. A policy whose `matchConditions` failed on the first pass is not
  run again, so "has istio-proxy" is a variable, and the patch is empty without it.
- The selectors are the webhook's: the namespace opt-in label (never kube-system nor the
  webhook's namespace), and the pod opt-out label (checked again in CEL, as `rewrite()`
  does).
- The patch replaces whole `volumes`, `volumeMounts` and `env` lists with a copy in which
  kept entries keep their place, the first socket volume, socket mount and env variables are
  rewritten where they stand, duplicates are dropped and missing entries are appended in the
  webhook's order. So the pod comes out exactly as the webhook would leave it, and a second
  run leaves it unchanged.
- `object` is untyped (dyn) in the policy's CEL; new entries are typed constructions
  (`Object.spec.volumes{...}`), because CEL maps may not mix value types. Variables cannot
  use those types (only mutations can), so variables hold plain data only.
"""

from __future__ import annotations

from string import Template
from typing import Any, Literal

from webhook.config import Settings

POLICY_NAME = "istio-spiffe-webhook"
API_GROUP = "admissionregistration.k8s.io"
ApiVersion = Literal["v1", "v1beta1"]
API_VERSIONS: tuple[ApiVersion, ...] = ("v1", "v1beta1")

HEADER = (
    "# The MutatingAdmissionPolicy form of istio-spiffe-webhook (Kubernetes 1.36+), made by\n"
    "# `istio-spiffe-webhook policy`. Do not edit: change the settings and render it again.\n"
)


def cel_string(value: str) -> str:
    """`value` as a double-quoted CEL string literal that evaluates to exactly `value`.

    Backslashes and double quotes are escaped, and so is every control character (as
    `\\uXXXX`, or `\\n`, `\\r`, `\\t`); everything else is written as itself (CEL source is
    UTF-8). The result is also a valid JSON string with the same value.
    """
    out = ['"']
    for char in value:
        if char == "\\":
            out.append("\\\\")
        elif char == '"':
            out.append('\\"')
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 or char in "\u2028\u2029":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


# --- The CEL ---------------------------------------------------------------------------
# `$name` placeholders are CEL string literals made by cel_string() (or, for $list and
# $type, fixed identifiers); Template substitutes once, so values are never re-scanned.

_VARIABLES = (
    (
        "optedOut",
        "has(object.metadata.labels) && $inject_label in object.metadata.labels"
        " && object.metadata.labels[$inject_label] == $inject_disabled",
    ),
    (
        "initContainers",
        "has(object.spec.initContainers) && object.spec.initContainers != null"
        " ? object.spec.initContainers : []",
    ),
    (
        "containers",
        "has(object.spec.containers) && object.spec.containers != null"
        " ? object.spec.containers : []",
    ),
    (
        "hasProxy",
        "variables.initContainers.exists(c, c.name == $proxy)"
        " || variables.containers.exists(c, c.name == $proxy)",
    ),
    ("active", "variables.hasProxy && !variables.optedOut"),
    (
        "volumes",
        "has(object.spec.volumes) && object.spec.volumes != null ? object.spec.volumes : []",
    ),
    ("socketVolumeIndexes", "variables.volumes.transformList(i, v, v.name == $socket, i)"),
)

_SOCKET_VOLUME = (
    "Object.spec.volumes{name: $socket,"
    " csi: Object.spec.volumes.csi{driver: $driver, readOnly: true}}"
)

_VOLUMES_PATCH = """\
JSONPatch{
  op: "add",
  path: "/spec/volumes",
  value: variables.volumes.transformList(i, v,
      v.name != $certs && (v.name != $socket || i == variables.socketVolumeIndexes[0]),
      v.name == $socket ? $socket_volume : v)
    + (size(variables.socketVolumeIndexes) == 0 ? [$socket_volume] : [])
}"""

# Per container list, one patch per matching container: the proxy's mounts, the proxy's env,
# and the mounts of any other container that mounts the certificates volume. (Three lists
# rather than one flattened: `flatten()` reached the Kubernetes CEL environment only in 1.34,
# which 1.34 API servers do not yet accept in new expressions.)
_PROXY_MOUNTS_PATCHES = """\
variables.$list.transformList(i, c, c.name == $proxy, JSONPatch{
  op: "add",
  path: "/spec/$list/" + string(i) + "/volumeMounts",
  value: (has(c.volumeMounts) ? c.volumeMounts : []).transformList(j, m,
      m.name != $certs,
      m.name != $socket ? m : $type.volumeMounts{
        name: m.name,
        mountPath: j == c.volumeMounts.transformList(k, x, x.name == $socket, k)[0]
          ? $mount_path : m.mountPath,
        readOnly: true,
        ?subPath: m.?subPath,
        ?subPathExpr: m.?subPathExpr,
        ?mountPropagation: m.?mountPropagation,
        ?recursiveReadOnly: m.?recursiveReadOnly
      })
    + (has(c.volumeMounts) && c.volumeMounts.exists(m, m.name == $socket) ? [] : [
        $type.volumeMounts{name: $socket, mountPath: $mount_path, readOnly: true}
      ])
})"""

_PROXY_ENV_PATCHES = """\
variables.$list.transformList(i, c, c.name == $proxy, JSONPatch{
  op: "add",
  path: "/spec/$list/" + string(i) + "/env",
  value: (has(c.env) ? c.env : []).transformList(j, e,
      (e.name != $provider_env
          || j == c.env.transformList(k, x, x.name == $provider_env, k)[0])
        && (e.name != $ca_env
          || j == c.env.transformList(k, x, x.name == $ca_env, k)[0]),
      e.name == $provider_env ? $type.env{name: $provider_env, value: $provider}
        : e.name == $ca_env ? $type.env{name: $ca_env, value: $ca} : e)
    + (has(c.env) && c.env.exists(e, e.name == $provider_env) ? [] : [
        $type.env{name: $provider_env, value: $provider}
      ])
    + (has(c.env) && c.env.exists(e, e.name == $ca_env) ? [] : [
        $type.env{name: $ca_env, value: $ca}
      ])
})"""

_OTHER_MOUNTS_PATCHES = """\
variables.$list.transformList(i, c,
  c.name != $proxy
    && has(c.volumeMounts) && c.volumeMounts.exists(m, m.name == $certs),
  JSONPatch{
    op: "add",
    path: "/spec/$list/" + string(i) + "/volumeMounts",
    value: c.volumeMounts.filter(m, m.name != $certs)
  })"""

_LABEL_PATCH = """\
has(object.metadata.labels)
  ? JSONPatch{
    op: "add",
    path: "/metadata/labels/" + jsonpatch.escapeKey($label),
    value: $label_value
  }
  : JSONPatch{op: "add", path: "/metadata/labels", value: {$label: $label_value}}"""


def _literals(settings: Settings) -> dict[str, str]:
    values = {
        "proxy": settings.proxy_container,
        "certs": settings.certs_volume,
        "socket": settings.socket_volume,
        "mount_path": settings.socket_mount_path,
        "driver": settings.csi_driver,
        "provider_env": settings.cert_provider_env,
        "provider": settings.cert_provider,
        "ca_env": settings.ca_addr_env,
        "ca": settings.ca_addr,
        "label": settings.identity_label,
        "label_value": settings.identity_label_value,
        "inject_label": settings.inject_label,
        "inject_disabled": settings.inject_disabled_value,
    }
    return {name: cel_string(value) for name, value in values.items()}


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line else line for line in text.splitlines())


def patch_expression(settings: Settings) -> str:
    """The mutation's `jsonPatch.expression`: the contract's patch, empty when out of scope."""
    lit = _literals(settings)
    socket_volume = Template(_SOCKET_VOLUME).substitute(lit)
    volumes = Template(_VOLUMES_PATCH).substitute(lit, socket_volume=socket_volume)
    containers = [
        Template(template).substitute(lit, list=name, type=f"Object.spec.{name}")
        for name in ("initContainers", "containers")
        for template in (_PROXY_MOUNTS_PATCHES, _PROXY_ENV_PATCHES, _OTHER_MOUNTS_PATCHES)
    ]
    label = Template(_LABEL_PATCH).substitute(lit)
    return "\n".join(
        [
            "!variables.active ? [] :",
            "[",
            _indent(volumes, 2),
            "]",
            *("+ " + patches for patches in containers),
            "+ [",
            _indent(label, 2),
            "]",
        ]
    )


def variables(settings: Settings) -> list[dict[str, str]]:
    lit = _literals(settings)
    return [
        {"name": name, "expression": Template(expression).substitute(lit)}
        for name, expression in _VARIABLES
    ]


def render_policy(
    settings: Settings, api_version: ApiVersion = "v1", name: str = POLICY_NAME
) -> list[dict[str, Any]]:
    """The MutatingAdmissionPolicy and its MutatingAdmissionPolicyBinding, as plain dicts."""
    if api_version not in API_VERSIONS:
        raise ValueError(f"api_version: must be one of {', '.join(API_VERSIONS)}")
    group_version = f"{API_GROUP}/{api_version}"
    policy = {
        "apiVersion": group_version,
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "reinvocationPolicy": "IfNeeded",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                    }
                ],
                # The webhook's selectors: opted-in namespaces, never kube-system nor the
                # webhook's own namespace; pods not opted out.
                "namespaceSelector": {
                    "matchLabels": {settings.inject_label: settings.inject_enabled_value},
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "NotIn",
                            "values": ["kube-system", settings.namespace],
                        }
                    ],
                },
                "objectSelector": {
                    "matchExpressions": [
                        {
                            "key": settings.inject_label,
                            "operator": "NotIn",
                            "values": [settings.inject_disabled_value],
                        }
                    ]
                },
            },
            "variables": variables(settings),
            "mutations": [
                {
                    "patchType": "JSONPatch",
                    "jsonPatch": {"expression": patch_expression(settings)},
                }
            ],
        },
    }
    binding = {
        "apiVersion": group_version,
        "kind": "MutatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name},
    }
    return [policy, binding]


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """A YAML multi-document stream; multi-line strings (the CEL) as literal blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, represent_str)
    body = yaml.dump_all(
        objects,
        Dumper=Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=4096,
        explicit_start=True,
    )
    return HEADER + body
