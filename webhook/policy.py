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
- The patch is made of the webhook's kinds of operation, at indexes of `object` (the pod
  before the patch): per-field `add`s on the socket mount (name, mountPath, readOnly),
  `replace` of the socket volume and of the env variables' first entries, then the
  removals, each index less the removals before it in the same list, then the appends. So
  the pod comes out exactly as the webhook would leave it, and a second run changes
  nothing. Lists the pod lacks are added empty first, then appended to.
- `object` is untyped (dyn) in the policy's CEL; new entries are typed constructions
  (`Object.spec.volumes{...}`), because CEL maps may not mix value types. Variables cannot
  use those types (only mutations can), so variables hold plain data only (ints, strings).
- A typed construction is only ever the whole `value` of a JSONPatch (or of a field of
  another typed construction), never an item of a list. kube-apiserver 1.36 converts a list
  value item by item, and a typed item converts to the wrong protobuf type: the API server
  panics (issue 10; kubernetes#142181). A conditional mixing `object` items with typed ones
  (`volumes.map(v, v.name == "x" ? Object.spec.volumes{...} : v)`) does it, and so does a
  bare `[Object.spec.volumes{...}]`, which `x + [...]` is when x is empty (cel-go's `+`
  then returns the other list as it is). A panic there is not a rejected pod but a failed
  request for every pod in scope, so it is an outage; tests/test_policy.py checks the
  rendered text for this rule, as no CEL implementation short of the API server shows it.
- A proxy needs a number of operations that depends on its mounts, and `flatten()` is not
  in Kubernetes' CEL for new expressions before 1.35: such paths are collected per
  container into a string, and the strings joined and split again (see `_flattened`).
"""

from __future__ import annotations

from string import Template
from typing import Any, Literal

from webhook.config import Settings
from webhook.yaml_text import literal_block_yaml

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

LISTS = ("initContainers", "containers")

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

# Per container of $list: the index of the mount that is or becomes the proxy's socket mount
# (the first at the socket's path that is not of the certificates volume, else the first of
# the socket volume), -1 when one is to be appended (and for other containers).
_SOCKET_MOUNTS = """\
variables.$list.map(c, c.name == $proxy && has(c.volumeMounts)
  ? (c.volumeMounts.transformList(j, m, m.mountPath == $mount_path && m.name != $certs, j)
      + c.volumeMounts.transformList(j, m, m.name == $socket, j) + [-1])[0]
  : -1)"""

# Per container of $list, JSON Pointers (flattened below): the proxy's socket mounts after
# the rewrite, whose readOnly is set ...
_READ_ONLY_PATHS = """\
c.name == $proxy && has(c.volumeMounts)
  ? c.volumeMounts.transformList(j, m,
      j == variables.${list}SocketMounts[i]
        || (m.name == $socket && m.mountPath != $mount_path),
      "/spec/$list/" + string(i) + "/volumeMounts/" + string(j) + "/readOnly")
  : []"""

# ... and the entries removed, in order, each index less the removals before it: every mount
# of the certificates volume, further mounts at the socket's path in the proxy, and repeated
# env entries of the variables the proxy gets.
_REMOVED_PATHS = """\
(has(c.volumeMounts) ? c.volumeMounts : []).transformList(j, m,
    m.name == $certs
      || (c.name == $proxy && m.mountPath == $mount_path
        && j != variables.${list}SocketMounts[i]),
    j)
  .transformList(n, j, "/spec/$list/" + string(i) + "/volumeMounts/" + string(j - n))
+ (c.name == $proxy && has(c.env) ? c.env : []).transformList(j, e,
    (e.name == $provider_env || e.name == $ca_env)
      && c.env.exists(k, x, k < j && x.name == e.name),
    j)
  .transformList(n, j, "/spec/$list/" + string(i) + "/env/" + string(j - n))"""


def _flattened(per_container: str, lit: dict[str, str]) -> str:
    """One list of JSON Pointers from a list of them per container of both lists.

    `flatten()` is not in Kubernetes' CEL for new expressions before 1.35, so the lists are
    joined with ',' and split again (a pointer here has no ',': fixed names and numbers).
    """
    parts = [
        f"variables.{name}.transformList(i, c, (\n"
        + _indent(Template(per_container).substitute(lit, list=name), 2)
        + '\n).join(","))'
        for name in LISTS
    ]
    return "(" + "\n+ ".join(parts) + ')\n.join(",").split(",").filter(p, p != "")'


_SOCKET_VOLUME = (
    "Object.spec.volumes{name: $socket,"
    " csi: Object.spec.volumes.csi{driver: $driver, readOnly: true}}"
)

_VOLUMES_PATCHES = """\
(has(object.spec.volumes) && object.spec.volumes != null ? [] : [
  JSONPatch{op: "add", path: "/spec/volumes", value: []}
])
+ (size(variables.socketVolumeIndexes) == 0 ? [] : [
  JSONPatch{
    op: "replace",
    path: "/spec/volumes/" + string(variables.socketVolumeIndexes[0]),
    value: $socket_volume
  }
])
+ variables.volumes.transformList(j, v,
    v.name == $certs || (v.name == $socket && j != variables.socketVolumeIndexes[0]),
    j)
  .transformList(n, j, JSONPatch{op: "remove", path: "/spec/volumes/" + string(j - n)})
+ (size(variables.socketVolumeIndexes) > 0 ? [] : [
  JSONPatch{op: "add", path: "/spec/volumes/-", value: $socket_volume}
])"""

# Per list of containers, on its proxies, before any removal: the socket mount's name and
# path, and the env variables' first entries (which replace keeps in place).
_MOUNT_FIELD_PATCHES = """\
variables.$list.transformList(i, c, c.name == $proxy && variables.${list}SocketMounts[i] >= 0,
  JSONPatch{
    op: "add",
    path: "/spec/$list/" + string(i) + "/volumeMounts/"
      + string(variables.${list}SocketMounts[i]) + "/$field",
    value: $value
  })"""

_ENV_REPLACE_PATCHES = """\
variables.$list.transformList(i, c,
  c.name == $proxy && has(c.env) && c.env.exists(e, e.name == $env),
  JSONPatch{
    op: "replace",
    path: "/spec/$list/" + string(i) + "/env/"
      + string(c.env.transformList(j, e, e.name == $env, j)[0]),
    value: $type.env{name: $env, value: $env_value}
  })"""

# Per list, after the removals: lists the proxy lacks, then the entries it lacks.
_APPEND_PATCHES = """\
variables.$list.transformList(i, c, c.name == $proxy && !has(c.volumeMounts), JSONPatch{
  op: "add", path: "/spec/$list/" + string(i) + "/volumeMounts", value: []
})
+ variables.$list.transformList(i, c, c.name == $proxy && variables.${list}SocketMounts[i] < 0,
  JSONPatch{
    op: "add",
    path: "/spec/$list/" + string(i) + "/volumeMounts/-",
    value: $type.volumeMounts{name: $socket, mountPath: $mount_path, readOnly: true}
  })
+ variables.$list.transformList(i, c, c.name == $proxy && !has(c.env), JSONPatch{
  op: "add", path: "/spec/$list/" + string(i) + "/env", value: []
})
+ variables.$list.transformList(i, c,
  c.name == $proxy && !(has(c.env) && c.env.exists(e, e.name == $provider_env)),
  JSONPatch{
    op: "add",
    path: "/spec/$list/" + string(i) + "/env/-",
    value: $type.env{name: $provider_env, value: $provider}
  })
+ variables.$list.transformList(i, c,
  c.name == $proxy && !(has(c.env) && c.env.exists(e, e.name == $ca_env)),
  JSONPatch{
    op: "add",
    path: "/spec/$list/" + string(i) + "/env/-",
    value: $type.env{name: $ca_env, value: $ca}
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
    """The mutation's `jsonPatch.expression`: the contract's patch, empty when out of scope.

    In order: the volumes; on each proxy, the socket mount's fields, readOnly on every socket
    mount and the env variables' first entries, all at the indexes of `object`; then every
    removal; then what is appended; last the label.
    """
    lit = _literals(settings)
    socket_volume = Template(_SOCKET_VOLUME).substitute(lit)

    def per_list(template: str, **extra: str) -> list[str]:
        return [
            Template(template).substitute(lit, list=name, type=f"Object.spec.{name}", **extra)
            for name in LISTS
        ]

    # One parenthesized group per step keeps the `+` chain shallow for CEL parsers' depth
    # limits (cel-cpp's is 32).
    steps = [
        [Template(_VOLUMES_PATCHES).substitute(lit, socket_volume=socket_volume)],
        [
            *per_list(_MOUNT_FIELD_PATCHES, field="name", value=lit["socket"]),
            *per_list(_MOUNT_FIELD_PATCHES, field="mountPath", value=lit["mount_path"]),
            'variables.readOnlyMountPaths.map(p, JSONPatch{op: "add", path: p, value: true})',
        ],
        [
            *per_list(_ENV_REPLACE_PATCHES, env=lit["provider_env"], env_value=lit["provider"]),
            *per_list(_ENV_REPLACE_PATCHES, env=lit["ca_env"], env_value=lit["ca"]),
        ],
        ['variables.removedPaths.map(p, JSONPatch{op: "remove", path: p})'],
        per_list(_APPEND_PATCHES),
        ["[\n" + _indent(Template(_LABEL_PATCH).substitute(lit), 2) + "\n]"],
    ]
    groups = [
        parts[0] if len(parts) == 1 else "(\n" + _indent("\n+ ".join(parts), 2) + "\n)"
        for parts in steps
    ]
    return "!variables.active ? [] :\n" + "\n+ ".join(groups)


def variables(settings: Settings) -> list[dict[str, str]]:
    lit = _literals(settings)
    expressions = [(name, Template(expression).substitute(lit)) for name, expression in _VARIABLES]
    expressions += [
        (f"{name}SocketMounts", Template(_SOCKET_MOUNTS).substitute(lit, list=name))
        for name in LISTS
    ]
    expressions += [
        ("readOnlyMountPaths", _flattened(_READ_ONLY_PATHS, lit)),
        ("removedPaths", _flattened(_REMOVED_PATHS, lit)),
    ]
    return [{"name": name, "expression": expression} for name, expression in expressions]


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
    return HEADER + literal_block_yaml(objects, explicit_start=True)
