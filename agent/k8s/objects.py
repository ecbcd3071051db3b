"""The objects the k3s target plans with and how its failures read: a manifest resolved
to a served kind, its inventory entry, readiness checks, and ApplyErrors that say
whether the API server was down (resume) or the objects failed (roll back)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.errors import ApplyError, UnavailableError
from agent.k8s import manifests as mf
from agent.k8s.client import Kind, KubeRequestError
from agent.state import Owned

Obj = dict[str, Any]


@dataclass
class PlannedObject:
    """One desired object, resolved against the API server."""

    manifest: mf.Manifest
    kind: Kind
    namespace: str
    subject: str
    body: Obj
    digest: str
    pending: bool = False
    """The kind is defined by a CRD of this same commit that the server does not serve yet."""

    @property
    def rank(self) -> int:
        return mf.rank(self.kind.group, self.kind.kind)

    def owned(self, commit: str) -> Owned:
        meta = {
            "apiVersion": self.manifest.api_version,
            "kind": self.kind.kind,
            "plural": self.kind.plural,
            "namespaced": self.kind.namespaced,
        }
        return Owned(digest=self.digest, commit=commit, meta=meta)


@dataclass
class ReadyCheck:
    """Outcome of one dry-run apply."""

    result: Obj | None = None
    """What the object would look like; None when validation had to wait (new CRD/namespace)."""
    error: str | None = None
    forced: str | None = None
    """Conflict with another field manager that apply will override."""
    live: Obj | None = None
    """The live object the result was computed from (same resourceVersion)."""


def resource_version(obj: Obj) -> str | None:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    return str(rv) if rv is not None else None


def kind_of(owned: Owned, subject: str) -> Kind:
    group, _kind, _ns, _name = mf.split_subject(subject)
    meta = owned.meta
    return Kind(
        group=group,
        version=str(meta["apiVersion"]).rpartition("/")[2],
        kind=str(meta["kind"]),
        plural=str(meta["plural"]),
        namespaced=bool(meta["namespaced"]),
    )


def crd_kind(crds: Mapping[tuple[str, str], mf.Manifest], m: mf.Manifest) -> Kind | None:
    """The kind a CRD of this commit will serve for ``m``, or None."""
    crd = crds.get((m.group, m.kind))
    if crd is None:
        return None
    spec = crd.body.get("spec") or {}
    version = m.api_version.rpartition("/")[2]
    versions = {v.get("name") for v in spec.get("versions") or () if isinstance(v, dict)}
    plural = (spec.get("names") or {}).get("plural")
    if version not in versions or not isinstance(plural, str):
        return None
    return Kind(m.group, version, m.kind, plural, spec.get("scope") == "Namespaced")


def crd_key(m: mf.Manifest) -> tuple[str, str] | None:
    if mf.rank(m.group, m.kind) != 1:
        return None
    spec = m.body.get("spec") or {}
    group, kind = spec.get("group"), (spec.get("names") or {}).get("kind")
    return (group, kind) if isinstance(group, str) and isinstance(kind, str) else None


def listing(title: str, lines: list[str]) -> str:
    return f"{title}:\n  " + "\n  ".join(lines)


def error_for(err: KubeRequestError) -> type[ApplyError]:
    """UnavailableError when the API server is down: resume later, do not roll back."""
    return UnavailableError if err.unavailable else ApplyError


def failure(title: str, failed: list[tuple[str, Any]]) -> ApplyError:
    """An ApplyError listing the failed objects; UnavailableError if the API server was down."""
    down = [r for _s, r in failed if isinstance(r, KubeRequestError) and r.unavailable]
    if down:
        # One cause for every object: say it once, not once per object.
        return UnavailableError(f"{title}: {down[0]} ({len(failed)} object(s) left to retry)")
    return ApplyError(listing(title, [f"{s}: {r}" for s, r in failed]))
