"""Kubernetes manifests from the fleet repository: parsing, identity, ownership, diffs.

Pure logic, no API calls. An object is keyed ``group/kind/namespace/name`` with the
core group spelled ``core`` and an empty namespace for cluster-scoped objects.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from agent.desired import DesiredFile
from agent.errors import PlanError
from agent.state import digest
from common.tomlconf import shown

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "edgefleet"
SOURCE_ANNOTATION = "edgefleet.io/source"
"""``<node>@<commit>`` of the apply that last changed the object."""
SUFFIXES = (".yaml", ".yml")
CRD_GROUP = "apiextensions.k8s.io"

# Fields the API server owns: never part of a comparison between desired and live.
_VOLATILE_METADATA = (
    "managedFields",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "uid",
    "selfLink",
)

Obj = dict[str, Any]

MAX_ALIAS_NODES = 100_000
"""Nodes YAML aliases may add to the manifests of one commit once expanded. Anchors are
legal YAML (``<<: *defaults``), but a few hundred bytes of nested aliases expand to
gigabytes when the object is copied or serialised ("billion laughs"), so the expansion
is bounded, for all documents together (many small bombs add up too)."""


@dataclass
class _AliasBudget:
    left: int = MAX_ALIAS_NODES


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that spends ``alias_budget`` on the nodes aliases add; YAMLError past it."""

    def __init__(self, text: str, alias_budget: _AliasBudget) -> None:
        super().__init__(text)
        self.alias_budget = alias_budget

    def compose_document(self) -> yaml.Node | None:
        node: yaml.Node | None = super().compose_document()
        if node is not None:
            distinct, expanded = _sizes(node)
            self.alias_budget.left -= expanded - distinct
            if self.alias_budget.left < 0:
                raise yaml.YAMLError(
                    f"aliases expand to {expanded:,} nodes from {distinct:,}, past the "
                    f"{MAX_ALIAS_NODES:,} nodes aliases may add to a commit's manifests"
                )
        return node


def _sizes(root: yaml.Node) -> tuple[int, int]:
    """(distinct nodes, nodes once every alias is expanded); YAMLError on a cycle.

    Iterative, each node visited once: sizes of shared (aliased) nodes are memoized.
    """
    size: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            open_.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
        elif key not in size:
            if key in open_:
                raise yaml.YAMLError("an alias refers to a node that contains it (a cycle)")
            open_.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in size)
    return len(size), size[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


@dataclass(frozen=True)
class Manifest:
    """One document of one manifest file, as the operator wrote it."""

    body: Obj
    origin: str
    """``manifests/<file>#<index>`` (0-based document index), for messages."""

    @property
    def api_version(self) -> str:
        return str(self.body["apiVersion"])

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"].get("namespace") or "")


def subject(group: str, kind: str, namespace: str, name: str) -> str:
    return f"{group or 'core'}/{kind}/{namespace}/{name}"


def split_subject(key: str) -> tuple[str, str, str, str]:
    """Inverse of :func:`subject`: (group, kind, namespace, name); core group is ''."""
    group, kind, namespace, name = key.split("/", 3)
    return ("" if group == "core" else group), kind, namespace, name


def rank(group: str, kind: str) -> int:
    """Apply order: Namespaces, then CRDs, then everything else (prune reverses it)."""
    if group == "" and kind == "Namespace":
        return 0
    if group == CRD_GROUP and kind == "CustomResourceDefinition":
        return 1
    return 2


def parse(files: Mapping[str, DesiredFile]) -> list[Manifest]:
    """Every object of every manifest file, in file order; PlanError on anything odd."""
    out: list[Manifest] = []
    alias_budget = _AliasBudget()
    for path in sorted(files):
        where = f"manifests/{path}"
        if not path.endswith(SUFFIXES):
            raise PlanError(f"{where}: only *.yaml and *.yml files may be under manifests/")
        out.extend(_documents(where, files[path].data, alias_budget))
    return out


def _documents(where: str, data: bytes, alias_budget: _AliasBudget) -> Iterator[Manifest]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PlanError(f"{where}: not UTF-8 text") from err
    try:
        loader = _BoundedLoader(text, alias_budget)
    except yaml.YAMLError as err:  # the reader refuses control characters up front
        raise PlanError(f"{where}: invalid YAML: {err}") from err
    try:
        yield from _checked(where, loader)
    finally:
        loader.dispose()


def _checked(where: str, loader: _BoundedLoader) -> Iterator[Manifest]:
    index = 0
    while True:
        try:
            if not loader.check_data():  # type: ignore[no-untyped-call]  # untyped stub
                return
            doc = loader.get_data()
        except yaml.YAMLError as err:
            raise PlanError(f"{where}: document {index}: invalid YAML: {err}") from err
        except ValueError as err:  # a scalar its tag cannot hold: 2024-13-45, 5000 digits
            raise PlanError(f"{where}: document {index}: invalid YAML value: {err}") from err
        except RecursionError as err:
            raise PlanError(f"{where}: document {index}: nested too deeply") from err
        if doc is not None:
            yield _check(f"{where}#{index}", doc)
        index += 1


def _check(origin: str, doc: Any) -> Manifest:
    def bad(problem: str) -> PlanError:
        return PlanError(f"{origin.replace('#', ': document ')}: {problem}")

    if not isinstance(doc, dict):
        raise bad(f"must be a mapping (a Kubernetes object), got {type(doc).__name__}")
    for key in ("apiVersion", "kind"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise bad(f"{key} is required")
    if doc["kind"].endswith("List"):
        raise bad(f"{doc['kind']} is not supported; write one document per object")
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise bad("metadata.name is required (generateName is not supported)")
    if "namespace" in meta and not isinstance(meta["namespace"], str):
        raise bad("metadata.namespace must be a string")
    if problem := _not_json(doc):
        raise bad(problem)
    return Manifest(body=doc, origin=origin)


_JSON_SCALARS = (str, int, bool, type(None))


def _not_json(doc: Obj) -> str | None:
    """Why ``doc`` is no JSON object (what the API server takes), else None.

    YAML has more: dates (``release: 2024-01-01``), binary, non-string keys (``on:`` is
    true), .nan, .inf, integers of any size; they would fail later, in the digest or the
    API call, with no file or line. Iterative; aliases may repeat nodes, but their
    expansion is bounded (MAX_ALIAS_NODES).
    """
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    return f"key {shown(key)} under {path or '.'} is not a string (quote it)"
                stack.append((f"{path}.{key}", item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, float):
            if not math.isfinite(value):
                return f"{path} is {value}, not a finite number"
        elif isinstance(value, int) and not -(2**63) <= value < 2**63:
            return f"{path} is an integer beyond 64 bits"
        elif not isinstance(value, _JSON_SCALARS):
            return (
                f"{path} is a YAML {type(value).__name__}, which JSON cannot carry "
                "(quote it to make it a string)"
            )
    return None


def desired_body(manifest: Manifest, namespace: str, node: str, commit: str) -> Obj:
    """The object edgefleet applies: namespace made explicit, ownership label and source."""
    body = copy.deepcopy(manifest.body)
    meta = body["metadata"]
    if namespace:
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)
    meta["labels"] = {**(meta.get("labels") or {}), MANAGED_BY_LABEL: MANAGED_BY}
    meta["annotations"] = {**(meta.get("annotations") or {}), SOURCE_ANNOTATION: f"{node}@{commit}"}
    return body


def body_digest(body: Obj) -> str:
    """Digest of what the operator asked for; the per-commit source annotation is left out."""
    return digest(json.dumps(_without_source(body), sort_keys=True).encode())


def owner_of(live: Obj) -> tuple[str | None, str | None]:
    """(managed-by label, node of the source annotation) of a live object."""
    meta = live.get("metadata") or {}
    label = (meta.get("labels") or {}).get(MANAGED_BY_LABEL)
    source = (meta.get("annotations") or {}).get(SOURCE_ANNOTATION)
    node = source.rpartition("@")[0] if isinstance(source, str) and "@" in source else None
    return label, node


def normalize(obj: Obj) -> Obj:
    """A live or dry-run object without the fields the server rewrites on every write."""
    out = _without_source(obj)
    out.pop("status", None)
    meta = out.get("metadata") or {}
    for key in _VOLATILE_METADATA:
        meta.pop(key, None)
    return out


def _without_source(obj: Obj) -> Obj:
    out = copy.deepcopy(obj)
    annotations = (out.get("metadata") or {}).get("annotations")
    if isinstance(annotations, dict):
        annotations.pop(SOURCE_ANNOTATION, None)
        if not annotations:
            del out["metadata"]["annotations"]
    return out


def diff(want: Any, have: Any, path: str = "", limit: int = 5) -> list[str]:
    """Paths (``.spec.replicas``) where two normalized objects differ, at most ``limit``."""
    found: list[str] = []
    _diff(want, have, path, found, limit)
    return found


def _diff(want: Any, have: Any, path: str, found: list[str], limit: int) -> None:
    if len(found) >= limit or want == have:
        return
    # An emptied map disappears from the object: compare it as {} to name the key.
    if isinstance(want, dict) and have is None:
        have = {}
    elif isinstance(have, dict) and want is None:
        want = {}
    if isinstance(want, dict) and isinstance(have, dict):
        for key in sorted(set(want) | set(have)):
            _diff(want.get(key), have.get(key), f"{path}.{key}", found, limit)
    elif isinstance(want, list) and isinstance(have, list) and len(want) == len(have):
        for i, (w, h) in enumerate(zip(want, have, strict=True)):
            _diff(w, h, f"{path}[{i}]", found, limit)
    else:
        found.append(path or ".")
