"""k3s target: the node's ``manifests/`` applied to its Kubernetes API server.

Server-side apply with field manager ``edgefleet`` (force: Git wins over hand edits,
and the plan says which foreign fields it takes over). Every object carries the label
``app.kubernetes.io/managed-by: edgefleet`` and an ``edgefleet.io/source`` annotation
(``node@commit`` of the apply that last changed it). An object that exists but is
neither labelled for edgefleet nor in this agent's inventory is refused, never changed.

plan validates the whole set with a server-side dry-run apply before anything is
written; apply goes Namespaces, CRDs (waiting until Established), then the rest;
prune goes the other way round. Importing this module imports kubernetes_asyncio
(~48 MB RSS), so the agent imports it only when ``[targets.k3s] enabled = true``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from agent.changeset import Action, ChangeSet
from agent.config import K3sConfig
from agent.desired import DesiredState
from agent.errors import ApplyError, PlanError, TransientError, UnavailableError
from agent.k8s import health as k8s_health
from agent.k8s import manifests as mf
from agent.k8s.client import Kind, KubeClient, KubeRequestError
from agent.k8s.objects import (
    PlannedObject,
    ReadyCheck,
    crd_key,
    crd_kind,
    error_for,
    failure,
    kind_of,
    listing,
    resource_version,
)
from agent.state import Owned
from agent.targets.base import ApplyContext, HealthProblem
from common.wire import DriftItem

CONCURRENCY = 8
"""API requests in flight at once; enough to hide latency, gentle on a small k3s."""
ESTABLISH_TIMEOUT = 30.0
"""Seconds a new CRD has to become Established before its custom resources are applied."""
POLL = 0.1
FORCED = "forced over another field manager"
RV_RETRIES = 3
"""Dry-runs of one object while controllers keep changing it, before comparing anyway."""

Obj = dict[str, Any]
X = TypeVar("X")
R = TypeVar("R")


class K3sTarget:
    """Target "k3s"; see the module docstring. ``node`` defaults to the host name."""

    name = "k3s"

    def __init__(self, cfg: K3sConfig, state_dir: Path, node: str | None = None) -> None:
        self._cfg = cfg
        self._state_dir = state_dir
        self._node = node or socket.gethostname()
        self._kube: KubeClient | None = None
        self._sem = asyncio.Semaphore(CONCURRENCY)
        self._known: dict[str, Owned] = {}
        """Inventory seen by the last plan/drift: prune needs kinds of objects no longer desired."""

    # -- the Target protocol ---------------------------------------------------------

    async def plan(self, desired: DesiredState, owned: Mapping[str, Owned]) -> ChangeSet:
        self._known = dict(owned)
        kube = await self._client(TransientError)
        objs = await self._resolve(kube, desired)
        lives = await self._read(kube, objs, TransientError)
        refused = [r for o in objs if (r := self._refusal(o, lives[o.subject], owned))]
        if refused:
            raise PlanError(listing("k3s: objects not managed by edgefleet", refused))
        new_namespaces = frozenset(
            o.manifest.name for o in objs if o.rank == 0 and not lives[o.subject]
        )
        checks = await self._each(
            objs, lambda o: self._dry_run(kube, o, lives[o.subject], new_namespaces)
        )
        failed: list[str] = []
        for o, check in zip(objs, checks, strict=True):
            if isinstance(check, KubeRequestError):
                raise TransientError(f"k3s: dry-run of {o.subject}: {check}") from check
            if check.error:
                failed.append(f"{o.subject} ({o.manifest.origin}): {check.error}")
        if failed:
            raise PlanError(listing("k3s: dry-run rejected, nothing applied", failed))

        plan = ChangeSet(self.name)
        for o, check in sorted(zip(objs, checks, strict=True), key=lambda p: p[0].rank):
            assert isinstance(check, ReadyCheck)
            action, detail = self._action(o, lives[o.subject], check, owned.get(o.subject))
            plan.add(o.subject, action, detail)
        desired_keys = {o.subject for o in objs}
        for key in sorted(set(owned) - desired_keys):
            plan.add(key, Action.DELETED)
        return plan

    async def apply(self, plan: ChangeSet, desired: DesiredState, ctx: ApplyContext) -> None:
        writes = {c.subject for c in plan.of(Action.CREATED, Action.CONFIGURED)}
        if not writes:
            return
        for change in plan.writes:
            if FORCED in change.detail:
                ctx.log.warning("k3s: %s: %s", change.subject, change.detail)
        kube = await self._client(ApplyError)
        objs = [o for o in await self._resolve(kube, desired) if o.subject in writes]
        await self._apply_all(kube, objs, desired.commit, ctx)

    async def prune(self, plan: ChangeSet, ctx: ApplyContext) -> None:
        gone = [c.subject for c in plan.of(Action.DELETED)]
        if not gone:
            return
        kube = await self._client(ApplyError)
        failed: list[tuple[str, str | KubeRequestError]] = []
        # Reverse apply order: workloads first, then CRDs, namespaces last.
        for rank in (2, 1, 0):
            batch = [s for s in gone if mf.rank(*mf.split_subject(s)[:2]) == rank]
            results = await self._each(batch, lambda s: self._delete(kube, s, ctx))
            failed += [(s, r) for s, r in zip(batch, results, strict=True) if r]
        if failed:
            raise failure("k3s: delete failed (kept in the inventory)", failed)

    async def health(self, desired: DesiredState, ctx: ApplyContext) -> list[HealthProblem]:
        try:
            kube = await self._client(TransientError)
            objs = await self._resolve(kube, desired)
            lives = await self._read(kube, objs, TransientError)
        except TransientError as err:
            return [HealthProblem(self.name, "apiserver", str(err), unavailable=True)]
        problems = []
        for o in objs:
            live = lives[o.subject]
            reason = "missing" if live is None else k8s_health.problem(live)
            if reason:
                problems.append(HealthProblem(self.name, o.subject, reason))
        return problems

    async def drift(self, desired: DesiredState, owned: Mapping[str, Owned]) -> list[DriftItem]:
        self._known = dict(owned)
        kube = await self._client(TransientError)
        objs = [o for o in await self._resolve(kube, desired) if o.subject in owned]
        lives = await self._read(kube, objs, TransientError)
        checks = await self._each(
            objs, lambda o: self._dry_run(kube, o, lives[o.subject], force=True)
        )
        items: list[DriftItem] = []
        for o, check in zip(objs, checks, strict=True):
            if isinstance(check, KubeRequestError):
                raise TransientError(f"k3s: drift check of {o.subject}: {check}") from check
            if check.live is None:
                gone = "deleted" + (f" (cannot be restored: {check.error})" if check.error else "")
                items.append(
                    DriftItem(target=self.name, subject=o.subject, kind="missing", detail=gone)
                )
                continue
            if check.error:
                detail = f"cannot be restored: {check.error}"
            else:
                paths = mf.diff(mf.normalize(check.result or {}), mf.normalize(check.live))
                if not paths:
                    continue
                detail = "changed: " + ", ".join(paths)
            items.append(
                DriftItem(target=self.name, subject=o.subject, kind="modified", detail=detail)
            )
        return items

    async def correct(
        self, drift: list[DriftItem], desired: DesiredState, ctx: ApplyContext
    ) -> None:
        subjects = {d["subject"] for d in drift if d["target"] == self.name}
        if not subjects:
            return
        kube = await self._client(ApplyError)
        objs = [o for o in await self._resolve(kube, desired) if o.subject in subjects]
        await self._apply_all(kube, objs, desired.commit, ctx)

    async def close(self) -> None:
        if self._kube is not None:
            kube, self._kube = self._kube, None
            await kube.close()

    # -- internals ---------------------------------------------------------------------

    async def _client(self, error: type[TransientError]) -> KubeClient:
        if self._kube is None:
            try:
                self._kube = await KubeClient.connect(self._cfg.kubeconfig, self._state_dir)
            except KubeRequestError as err:
                raise (UnavailableError if err.unavailable else error)(f"k3s: {err}") from err
        return self._kube

    async def _each(
        self, items: list[X], fn: Callable[[X], Awaitable[R]]
    ) -> list[R | KubeRequestError]:
        """fn over items, CONCURRENCY at a time; API failures are returned, not raised."""

        async def one(item: X) -> R | KubeRequestError:
            async with self._sem:
                try:
                    return await fn(item)
                except KubeRequestError as err:
                    return err

        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(i)) for i in items]
        return [t.result() for t in tasks]

    async def _resolve(self, kube: KubeClient, desired: DesiredState) -> list[PlannedObject]:
        manifests = mf.parse(desired.under("manifests"))
        crds = {crd: m for m in manifests if (crd := crd_key(m))}
        objs: list[PlannedObject] = []
        seen: dict[str, str] = {}
        problems: list[str] = []
        for m in manifests:
            try:
                kind = await kube.kind(m.api_version, m.kind)
            except KubeRequestError as err:
                raise TransientError(f"k3s: discovery of {m.api_version} {m.kind}: {err}") from err
            pending = kind is None
            kind = kind or crd_kind(crds, m)
            if kind is None:
                problems.append(f"{m.origin}: unknown kind {m.kind} in {m.api_version} (no CRD?)")
                continue
            namespace = (m.namespace or "default") if kind.namespaced else ""
            key = mf.subject(kind.group, kind.kind, namespace, m.name)
            if key in seen:
                problems.append(f"{m.origin}: {key} is already defined in {seen[key]}")
                continue
            seen[key] = m.origin
            if refusal := self._forbidden(kind, namespace, m.name):
                problems.append(f"{m.origin}: {key}: {refusal}")
                continue
            body = mf.desired_body(m, namespace, self._node, desired.commit)
            objs.append(PlannedObject(m, kind, namespace, key, body, mf.body_digest(body), pending))
        if problems:
            raise PlanError(listing("k3s: manifests refused", problems))
        return objs

    def _forbidden(self, kind: Kind, namespace: str, name: str) -> str | None:
        allowed = self._cfg.namespaces
        if kind.namespaced:
            if allowed and namespace not in allowed:
                return f"namespace {namespace!r} is not in [targets.k3s] namespaces"
            return None
        if kind.group == "" and kind.kind == "Namespace" and name in allowed:
            return None
        if not self._cfg.allow_cluster_scoped:
            return "cluster-scoped objects need [targets.k3s] allow_cluster_scoped = true"
        return None

    async def _read(
        self, kube: KubeClient, objs: list[PlannedObject], error: type[TransientError]
    ) -> dict[str, Obj | None]:
        async def get(o: PlannedObject) -> Obj | None:
            if o.pending:
                return None
            return await kube.get(o.kind, o.namespace, o.manifest.name)

        lives: dict[str, Obj | None] = {}
        for o, live in zip(objs, await self._each(objs, get), strict=True):
            if isinstance(live, KubeRequestError):
                raise error(f"k3s: reading {o.subject}: {live}") from live
            lives[o.subject] = live
        return lives

    def _refusal(
        self, o: PlannedObject, live: Obj | None, owned: Mapping[str, Owned]
    ) -> str | None:
        if live is None:
            return None
        label, node = mf.owner_of(live)
        if label is not None and label != mf.MANAGED_BY:
            return f"{o.subject}: exists, managed by {label!r}"
        if o.subject in owned:
            return None  # ours; a removed label is drift and gets restored
        if label is None:
            return f"{o.subject}: exists and was not created by edgefleet"
        if node is not None and node != self._node:
            return f"{o.subject}: exists, managed by edgefleet on node {node!r}"
        return None

    async def _dry_run(
        self,
        kube: KubeClient,
        o: PlannedObject,
        live: Obj | None,
        new_namespaces: frozenset[str] = frozenset(),
        force: bool = False,
    ) -> ReadyCheck:
        """Dry-run apply of ``o``, paired with the live object it was computed from.

        Controllers write to objects all the time (a new Deployment gets its revision
        annotation): when the result is based on a newer resourceVersion than ``live``,
        live is read again so that the two are compared like with like.
        """
        if o.pending:
            return ReadyCheck()  # the server learns this kind only when its CRD is applied
        for _attempt in range(RV_RETRIES):
            check = await self._dry_run_once(kube, o, live, new_namespaces, force)
            if (
                check.result is None
                or live is None
                or resource_version(check.result) == resource_version(live)
            ):
                return check
            live = await kube.get(o.kind, o.namespace, o.manifest.name)
        return check

    async def _dry_run_once(
        self,
        kube: KubeClient,
        o: PlannedObject,
        live: Obj | None,
        new_namespaces: frozenset[str],
        force: bool,
    ) -> ReadyCheck:
        try:
            result = await kube.apply(o.kind, o.body, dry_run=True, force=force)
            return ReadyCheck(result=result, live=live)
        except KubeRequestError as err:
            if err.transient:
                raise
            if err.code == 409 and live is not None:
                result = await kube.apply(o.kind, o.body, dry_run=True, force=True)
                return ReadyCheck(result=result, live=live, forced=err.message)
            if (
                err.code == 404
                and err.details.get("kind") == "namespaces"
                and err.details.get("name") in new_namespaces
            ):
                return ReadyCheck()  # its namespace is created by this same commit
            return ReadyCheck(error=f"{err.reason}: {err.message}", live=live)

    def _action(
        self, o: PlannedObject, live: Obj | None, check: ReadyCheck, prev: Owned | None
    ) -> tuple[Action, str]:
        if check.result is not None:
            live = check.live  # read again if a controller changed it meanwhile
        if live is None:
            return Action.CREATED, ("was deleted outside edgefleet" if prev else "")
        notes = []
        if prev is None:
            notes.append("adopted (labelled for edgefleet, not in the inventory)")
        elif check.result is not None:
            paths = mf.diff(mf.normalize(check.result), mf.normalize(live))
            if paths:
                notes.append("changes " + ", ".join(paths))
        if prev is not None and prev.digest != o.digest and not notes:
            notes.append("manifest changed")
        if check.forced:
            notes.append(f"{FORCED}: {check.forced}")
        return (Action.CONFIGURED if notes else Action.UNCHANGED), "; ".join(notes)

    async def _apply_all(
        self, kube: KubeClient, objs: list[PlannedObject], commit: str, ctx: ApplyContext
    ) -> None:
        first = [o for o in objs if o.rank < 2]
        await self._write(kube, first, commit, ctx)
        await self._established(kube, [o for o in first if o.rank == 1])
        rest = [o for o in objs if o.rank == 2]
        for o in rest:
            if o.pending:
                o.kind = await self._served(kube, o)
                o.pending = False
        await self._write(kube, rest, commit, ctx)

    async def _write(
        self, kube: KubeClient, objs: list[PlannedObject], commit: str, ctx: ApplyContext
    ) -> None:
        async def one(o: PlannedObject) -> None:
            await kube.apply(o.kind, o.body, dry_run=False, force=True)
            ctx.record(self.name, o.subject, o.owned(commit))

        results = await self._each(objs, one)
        failed = [(o.subject, r) for o, r in zip(objs, results, strict=True) if r]
        if failed:
            raise failure(f"k3s: apply of {commit[:12]} failed", failed)

    async def _established(self, kube: KubeClient, crds: list[PlannedObject]) -> None:
        deadline = time.monotonic() + ESTABLISH_TIMEOUT
        for o in crds:
            while True:
                try:
                    live = await kube.get(o.kind, "", o.manifest.name)
                except KubeRequestError as err:
                    raise error_for(err)(f"k3s: waiting for {o.subject}: {err}") from err
                if live is not None and k8s_health.problem(live) is None:
                    break
                if time.monotonic() > deadline:
                    raise ApplyError(f"k3s: {o.subject} not Established after {ESTABLISH_TIMEOUT}s")
                await asyncio.sleep(POLL)

    async def _served(self, kube: KubeClient, o: PlannedObject) -> Kind:
        """The kind of a custom resource once its CRD is Established (discovery may lag)."""
        deadline = time.monotonic() + ESTABLISH_TIMEOUT
        while True:
            try:
                kind = await kube.kind(o.manifest.api_version, o.manifest.kind)
            except KubeRequestError as err:
                raise error_for(err)(f"k3s: discovery for {o.subject}: {err}") from err
            if kind is not None:
                return kind
            if time.monotonic() > deadline:
                raise ApplyError(f"k3s: {o.subject}: kind still not served by the API server")
            await asyncio.sleep(POLL)

    async def _delete(self, kube: KubeClient, key: str, ctx: ApplyContext) -> str:
        """Delete one owned object; returns why it failed ("" on success)."""
        owned = self._known.get(key)
        if owned is None or "plural" not in owned.meta:
            return "kind unknown (inventory entry without API metadata)"
        kind = kind_of(owned, key)
        _group, _kind, namespace, name = mf.split_subject(key)
        live = await kube.get(kind, namespace, name)
        if live is not None:
            label, _node = mf.owner_of(live)
            if label is not None and label != mf.MANAGED_BY:
                ctx.log.warning("k3s: %s now managed by %r: left in place", key, label)
            else:
                await kube.delete(kind, namespace, name)
        ctx.record(self.name, key, None)
        return ""
