"""The webhook's rewrite, offline, on files and pipes (`istio-spiffe-webhook mutate`).

    istioctl kube-inject -f app.yaml | istio-spiffe-webhook mutate - > app.injected.yaml

Input (a file or `-` for stdin) is JSON when it parses as JSON, else a YAML stream of one
or more documents. Each document may be:
- a Pod, or a workload whose pod template is rewritten: Deployment, StatefulSet, DaemonSet,
  Job, ReplicaSet, ReplicationController (`spec.template`), CronJob
  (`spec.jobTemplate.spec.template`) and PodTemplate (`template`);
- a `kind: List` (or `PodList`, `DeploymentList`, ...) whose `items` are any of the above;
- an AdmissionReview (a captured API server request): the output is the AdmissionReview
  the webhook answers to it, and `--patch` prints the patch inside that answer;
- anything else (a Service, a ConfigMap, ...): written back unchanged.

Every pod is rewritten with the webhook's own `rewrite()`; there is no namespace here, so
every pod counts as being in an opted-in namespace (the pod opt-out label still applies).
Output is in the input's format, key order kept. `--patch` prints one JSON array (RFC 6902)
for a single document, with paths into that document (`/spec/template/...` for a workload,
`/items/N/...` for a List); a stream of several documents is refused with `--patch`.
`mutate_text` does all of it and returns the text and the warnings; bad input raises
`BadInput`, whose message is the one line the user sees.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
import yaml

from webhook.config import Settings
from webhook.rewrite import Contract, InvalidPod, Op, escape, rewrite

# kind -> keys from the object to its pod template ("Pod" is the pod itself).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "PodTemplate": ("template",),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
ADMISSION_REVIEW = "AdmissionReview"
MAX_EXPANDED_VALUES = 10_000_000  # about 1 GB of output: far beyond any manifest


class BadInput(Exception):
    """The input cannot be rewritten; the message is the one line the user sees."""


@dataclass(frozen=True, slots=True)
class Mutation:
    """What `mutate_text` made: the text to write, and the warnings (`Kind/name: ...`)."""

    text: str
    warnings: list[str]


@dataclass(slots=True)
class Outcome:
    """One input document: what to write, the patch into it, and the rewrite's warnings."""

    output: Any
    ops: list[Op] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# --- Reading -----------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML as Kubernetes means it: timestamps stay strings, `=` is a plain string."""


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_source(source: str) -> str:
    """The text of a file, or of stdin for `-`."""
    name = "stdin" if source == "-" else source
    data: bytes
    try:
        if source == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(source, "rb") as stream:
                data = stream.read()
    except OSError as error:
        raise BadInput(f"{name}: cannot read: {error.strerror or error}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise BadInput(f"{name}: not UTF-8 text (byte {error.start})") from None


def parse_documents(text: str, source: str) -> tuple[bool, list[Any]]:
    """(is_json, documents): JSON when the text parses as JSON, else a YAML stream.

    Empty YAML documents (a trailing `---`, as `istioctl kube-inject` writes) are dropped.
    """
    try:
        return True, [json.loads(text)]
    except ValueError:
        pass
    except RecursionError:
        raise BadInput(f"{source}: nested too deeply") from None
    try:
        documents = [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    except yaml.YAMLError as error:
        raise BadInput(f"{source}: neither JSON nor YAML: {_yaml_problem(error)}") from None
    except RecursionError:
        raise BadInput(f"{source}: nested too deeply") from None
    if not documents:
        raise BadInput(f"{source}: no objects in the input")
    if _expanded_size(documents, {}) > MAX_EXPANDED_VALUES:
        raise BadInput(f"{source}: YAML aliases expand to more than {MAX_EXPANDED_VALUES} values")
    return False, documents


def _expanded_size(value: Any, seen: dict[int, int]) -> int:
    """How many values `value` has once YAML aliases are written out in full.

    An alias is a shared object after loading, so a few nested aliases can stand for
    billions of values ("billion laughs"); counting each shared object once keeps this
    linear in the input while the sum is what writing the output would cost.
    """
    if isinstance(value, dict | list):
        key = id(value)
        if key not in seen:
            seen[key] = MAX_EXPANDED_VALUES + 1  # a cycle (recursive alias) is too much too
            children = value.values() if isinstance(value, dict) else value
            total = 1
            for child in children:
                total += _expanded_size(child, seen)
                if total > MAX_EXPANDED_VALUES:
                    break
            seen[key] = total
        return seen[key]
    return 1


# --- Rewriting ---------------------------------------------------------------------------


def process(document: Any, contract: Contract, where: str) -> Outcome:
    """Rewrite one input document; `where` names it in error messages."""
    if not isinstance(document, dict):
        raise BadInput(f"{where}: not a mapping but {_type_name(document)}")
    if document.get("kind") == ADMISSION_REVIEW:
        return _review(document, contract, where)
    ops, warnings = object_ops(document, contract, where)
    if ops:
        # In place: an `add` of an existing key sets the value where the key is, so the
        # output keeps the input's key order.
        document = jsonpatch.apply_patch(document, ops, in_place=True)
    return Outcome(document, ops, warnings)


def object_ops(
    obj: dict[str, Any], contract: Contract, where: str, kind: Any = None
) -> tuple[list[Op], list[str]]:
    """The patch into `obj` (a Pod, a workload or a List) and the rewrite's warnings."""
    kind = obj.get("kind") or kind
    label = _label(obj, kind)
    if isinstance(kind, str) and kind.endswith("List"):
        return _list_ops(obj, contract, where, kind)
    path = TEMPLATES.get(kind) if isinstance(kind, str) else None
    if path is None:
        return [], []
    template: Any = obj
    for depth, key in enumerate(path):
        template = template.get(key)
        if template is None:
            return [], []  # nothing to rewrite, e.g. a workload without a template yet
        if not isinstance(template, dict):
            dotted = ".".join(path[: depth + 1])
            raise BadInput(f"{where} ({label}): {dotted}: must be a mapping")
    try:
        result = rewrite(template, contract)
    except InvalidPod as error:
        dotted = "".join(f"{key}." for key in path)
        raise BadInput(f"{where} ({label}): {dotted}{error}") from None
    prefix = "".join(f"/{escape(key)}" for key in path)
    ops = [{**op, "path": prefix + op["path"]} for op in result.ops]
    return ops, [f"{label}: {warning}" for warning in result.warnings]


def _list_ops(
    obj: dict[str, Any], contract: Contract, where: str, kind: str
) -> tuple[list[Op], list[str]]:
    items = obj.get("items")
    if items is None:
        return [], []
    if not isinstance(items, list):
        raise BadInput(f"{where} ({kind}): items: must be a list")
    item_kind = kind[: -len("List")] or None  # PodList items carry no kind of their own
    ops: list[Op] = []
    warnings: list[str] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise BadInput(f"{where}: items[{index}]: not a mapping but {_type_name(item)}")
        item_ops, item_warnings = object_ops(item, contract, f"{where}: items[{index}]", item_kind)
        ops.extend({**op, "path": f"/items/{index}{op['path']}"} for op in item_ops)
        warnings.extend(item_warnings)
    return ops, warnings


def _review(document: dict[str, Any], contract: Contract, where: str) -> Outcome:
    """The AdmissionReview answer the webhook gives to a captured request."""
    from webhook.review import BadReview, decide, parse

    try:
        body = json.dumps(document).encode()
    except (TypeError, ValueError) as error:
        raise BadInput(f"{where} (AdmissionReview): not JSON data: {error}") from None
    try:
        decision = decide(parse(body), contract)
    except BadReview as error:
        raise BadInput(f"{where} (AdmissionReview): {error.reason}") from None
    label = _label(decision.request["object"], "Pod") if decision.result.warnings else ""
    return Outcome(
        json.loads(decision.response_bytes()),
        decision.result.ops,
        [f"{label}: {warning}" for warning in decision.result.warnings],
    )


# --- Writing -----------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block YAML, multi-line strings as `|` blocks, no anchors or aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_UNICODE_BREAKS = frozenset("\x85\u2028\u2029")


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style: str | None = None
    if not _UNICODE_BREAKS.isdisjoint(data):
        # With allow_unicode PyYAML writes these raw in plain, quoted and block scalars,
        # and reads them back as line breaks; escaped in double quotes they survive.
        style = '"'
    elif "\n" in data:
        style = "|"
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def dump(documents: list[Any], as_json: bool) -> str:
    if as_json:
        return "".join(json.dumps(d, indent=2, ensure_ascii=False) + "\n" for d in documents)
    return yaml.dump_all(
        documents,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1 << 30,
    )


# --- All of it ---------------------------------------------------------------------------


def mutate_text(text: str, name: str, settings: Settings, *, patch: bool = False) -> Mutation:
    """Rewrite every document of `text` (JSON or YAML; `name` names it in messages).

    The text out is in the input's format, or with `patch` one JSON array: the patch into
    the single document. Raises BadInput; RecursionError when a document nests deeper than
    Python can walk.
    """
    as_json, documents = parse_documents(text, name)
    if patch and len(documents) > 1:
        raise BadInput(
            f"{name}: --patch needs a single document, the input has {len(documents)}"
            " (wrap them in a kind: List, or run without --patch)"
        )
    many = len(documents) > 1
    contract = Contract.from_settings(settings)
    outcomes = [
        process(doc, contract, f"{name}: document {n}" if many else name)
        for n, doc in enumerate(documents, 1)
    ]
    output = (
        json.dumps(outcomes[0].ops, indent=2) + "\n"
        if patch
        else dump([o.output for o in outcomes], as_json)
    )
    return Mutation(output, [warning for o in outcomes for warning in o.warnings])


def _label(obj: Any, kind: Any) -> str:
    """`Kind/name` (or generateName, or just the kind) for messages."""
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    name = None
    if isinstance(metadata, dict):
        name = metadata.get("name") or metadata.get("generateName")
    kind = kind if isinstance(kind, str) and kind else "object"
    return f"{kind}/{name}" if isinstance(name, str) and name else kind


def _type_name(value: Any) -> str:
    names = {list: "a list", str: "a string", bool: "a boolean", int: "a number"}
    names.update({float: "a number", type(None): "null"})
    return names.get(type(value), f"a {type(value).__name__}")


def _yaml_problem(error: yaml.YAMLError) -> str:
    """`line L, column C: problem` of a YAML error, on one line."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return _one_line(error)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())
