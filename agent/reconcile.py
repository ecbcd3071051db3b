"""The reconcile pipeline: poll -> fetch -> trust -> desired -> plan -> apply -> health.

One straight pipeline with a guaranteed report (try/finally), as in Flux's
kustomize-controller. A no-op reconcile (head unchanged) reads one ref and writes
nothing. Failures roll back to the last good commit and mark the bad one so it is not
retried until the branch moves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent import __version__
from agent.activation import ActivationGate
from agent.changeset import ChangeSet
from agent.config import AgentConfig
from agent.desired import DesiredState
from agent.drift import correct_drift, find_drift
from agent.errors import (
    ApplyError,
    EdgefleetError,
    FetchError,
    PlanError,
    SourceError,
    StateError,
    TransientError,
    TrustError,
    UnavailableError,
)
from agent.healthwait import wait_healthy
from agent.policy import check_move
from agent.signcheck import SignatureChecker
from agent.state import NodeState, Owned, StateStore
from agent.targets.base import ApplyContext, HealthProblem, Target
from common.backoff import ErrorKind
from common.status import Health, NodeReport
from common.status import HealthProblem as ReportedProblem
from common.wire import DriftItem, State

log = logging.getLogger(__name__)


class Source(Protocol):
    """What the pipeline needs from agent.source.GitSource."""

    async def remote_head(self) -> str: ...
    async def fetch(self, want: str | None = None) -> str: ...
    def has_commit(self, sha: str) -> bool: ...
    def tree_ids(self, commit: str) -> dict[str, str | None]: ...
    def read_desired(self, commit: str) -> DesiredState: ...
    def signed_payload(self, commit: str) -> tuple[bytes, bytes | None]: ...
    async def is_ancestor(self, ancestor: str, descendant: str) -> bool: ...


class Reporting(Protocol):
    """What the pipeline needs from agent.report.Reporter."""

    def publish_status(self, report: NodeReport) -> None: ...
    def emit_event(self, type: str, commit: str | None, details: dict[str, Any]) -> int: ...


@dataclass
class Outcome:
    """What one reconcile ended in; ``state`` is the node's status afterwards."""

    state: State
    reason: str = ""
    message: str = ""
    commit: str | None = None
    changes: dict[str, ChangeSet] = field(default_factory=dict)
    retry: ErrorKind | None = None
    """Set when the failure may clear by itself (e.g. Git unreachable): retry with backoff."""
    until: float | None = None
    """State ``deferred``: when the hold is expected to end."""


class Reconciler:
    def __init__(
        self,
        cfg: AgentConfig,
        source: Source,
        verifier: SignatureChecker,
        targets: Sequence[Target],
        store: StateStore,
        report: Reporting | None = None,
        activation: ActivationGate | None = None,
    ) -> None:
        self.cfg = cfg
        self.activation = activation
        self.source = source
        self.verifier = verifier
        self.targets = list(targets)
        self.store = store
        self.report = report
        self.state: NodeState = store.load()
        self.desired_head: str | None = None
        self.outcome = Outcome("progressing", "Starting", "no reconcile yet")
        self.drift: list[DriftItem] = []
        self.health: list[HealthProblem] = []
        self._refused: str | None = None
        self._fetch_failing = False
        self._applied_desired: DesiredState | None = None
        self.recipient: str | None = None
        """This node's age recipient (agent.render), reported so the hub can list it."""
        self.lock = asyncio.Lock()

    # -- status -------------------------------------------------------------------

    def node_report(self) -> NodeReport:
        """The node's side of its status; the reporter adds the delivery fields."""
        o = self.outcome
        return NodeReport(
            node=self.cfg.node,
            state=o.state,
            labels=dict(self.cfg.labels),
            version=__version__,
            branch=self.cfg.git.branch,
            paths=tuple(self.cfg.git.paths),
            desired=self.desired_head,
            applied=self.state.applied,
            last_good=self.state.last_good,
            reason=o.reason,
            message=o.message,
            drift=tuple(self.drift),
            drift_total=len(self.drift),
            resources=self.state.counts(),
            deferred_until=o.until,
            health=Health(
                ok=not self.health,
                problems=tuple(ReportedProblem(p.target, p.subject, p.reason) for p in self.health),
            ),
            recipient=self.recipient,
        )

    def _publish(self) -> None:
        if self.report is not None:
            self.report.publish_status(self.node_report())

    def _event(self, type_: str, commit: str | None, **details: Any) -> None:
        log.info("event %s %s %s", type_, (commit or "")[:12], details or "")
        if self.report is not None:
            try:
                self.report.emit_event(type_, commit, details)
            except StateError as err:
                # A full disk must not stop the reconcile; the status still carries the news.
                log.error("event %s not stored: %s", type_, err)

    def _save(self) -> None:
        """Write the whole state; this also compacts the inventory journal into it."""
        self.store.save(self.state)

    def _record(self, target: str, subject: str, owned: Owned | None) -> None:
        # One journal line per object: an apply of N objects writes O(N) bytes, not O(N^2).
        objs = self.state.owned(target)
        if owned is None:
            objs.pop(subject, None)
        else:
            objs[subject] = owned
        self.store.record(target, subject, owned)

    def _ctx(self, commit: str, changes: dict[str, ChangeSet]) -> ApplyContext:
        return ApplyContext(commit=commit, record=self._record, changes=changes, log=log)

    # -- the pipeline -------------------------------------------------------------

    async def reconcile(self, head: str | None = None, dry_run: bool = False) -> Outcome:
        """One full reconcile (steps 1-9 of docs/design.md). Always reports."""
        async with self.lock:
            before = self._fingerprint()
            try:
                self.outcome = await self._reconcile(head, dry_run)
            except StateError as err:
                self.outcome = Outcome("error", "StateError", str(err))
            finally:
                # A no-op reconcile publishes nothing: the reporter's heartbeat covers it.
                if not dry_run and self._fingerprint() != before:
                    log.info("reconcile: %s %s", self.outcome.state, self.outcome.message)
                    self._publish()
            return self.outcome

    def _fingerprint(self) -> tuple[object, ...]:
        o = self.outcome
        return (o.state, o.reason, o.message, self.state.applied, self.desired_head)

    async def _reconcile(self, hint: str | None, dry_run: bool) -> Outcome:
        try:
            head = await self.source.remote_head()
            if hint is not None and hint != head:
                log.debug("ref notification %s is not the remote head %s", hint[:12], head[:12])
            if self._fetch_failing:
                self._fetch_failing = False
                log.warning("git: %s reachable again", self.cfg.git.url)
                self._event("recovered", head, what="git")
        except FetchError as err:
            if not self._fetch_failing:
                self._fetch_failing = True
                log.warning("git unreachable, keeping the applied state: %s", err)
                self._event("error", None, reason="GitUnreachable", message=str(err))
            return Outcome(
                "error", "GitUnreachable", str(err), self.state.applied, retry=ErrorKind.TRANSIENT
            )
        except SourceError as err:
            return Outcome("error", "SourceError", str(err), self.state.applied)
        self.desired_head = head

        resuming = self.state.applying is not None
        if head == self.state.applied and not resuming and not dry_run:
            return self._steady(head)
        if head in self.state.bad and not dry_run:
            return Outcome(
                "failed",
                "KnownBadCommit",
                f"{head[:12]} failed on this node before; waiting for a new commit",
                head,
            )
        if head == self._refused and not dry_run:
            return self.outcome

        planned = await self.prepare(head, advance=not resuming and not dry_run, dry_run=dry_run)
        if isinstance(planned, Outcome):
            return planned
        desired, plans = planned
        if dry_run:
            return Outcome("progressing", "DryRun", f"would apply {head[:12]}", head, plans)
        hold = None if self.activation is None else self.activation.hold(desired)
        if hold is not None:  # pre-staged: fetched, verified and planned, nothing applied
            return Outcome(hold.state, hold.reason, hold.message, head, plans, until=hold.until)
        return await self._apply(head, desired, plans)

    async def prepare(
        self, head: str, advance: bool, candidate: bool = False, dry_run: bool = False
    ) -> Outcome | tuple[DesiredState, dict[str, ChangeSet]]:
        """Steps 2-5 for ``head``: fetch, trust, desired state, plan; an Outcome where
        that ends the reconcile. ``advance``: a move that leaves this node's paths alone
        is applied right here. ``candidate``: a hub plan (:mod:`agent.planrun`, which
        fetched the commit), whose refusal is neither remembered nor sent as an event."""
        refuse = _refusal if candidate else self._refuse
        try:
            await self.source.fetch(head)
            await self._check_trust(head)
            desired = await asyncio.to_thread(self.source.read_desired, head)
        except FetchError as err:
            return Outcome("error", "GitUnreachable", str(err), head, retry=ErrorKind.TRANSIENT)
        except TrustError as err:
            return refuse(head, "Untrusted", str(err))
        except SourceError as err:
            return refuse(head, "InvalidCommit", str(err))

        pin = desired.options.agent
        if pin is not None and pin.version != __version__ and not candidate:
            from agent.upgrade.step import upgrade_agent  # noqa: PLC0415 - RSS only when pinned

            return await upgrade_agent(self, head, pin, dry_run)

        if advance and self._paths_unchanged(head):
            # The branch moved but not this node's paths: nothing to apply, just advance.
            self.state.applied = head
            self.state.mark_good(head)
            self._save()
            return Outcome("synced", "Applied", f"{head[:12]}: no changes for this node", head)

        try:
            plans = {t.name: await t.plan(desired, self.state.owned(t.name)) for t in self.targets}
        except PlanError as err:
            return refuse(head, "InvalidCommit", str(err))
        except TransientError as err:  # e.g. the k3s API server is down: retry later
            return Outcome("error", "PlanFailed", str(err), head)
        return desired, plans

    def _steady(self, head: str) -> Outcome:
        state: State = "drifted" if self.drift else "synced"
        if self.outcome.state == state and self.outcome.commit == head:
            return self.outcome
        reason = "Drifted" if self.drift else "Applied"
        return Outcome(state, reason, f"{head[:12]} applied", head)

    def _refuse(self, head: str, reason: str, message: str) -> Outcome:
        self._refused = head
        log.error("refusing %s: %s", head[:12], message.removeprefix(f"commit {head[:12]}: "))
        self._event("refused", head, reason=reason, message=message)
        return Outcome("refused", reason, message, head)

    async def _check_trust(self, head: str) -> None:
        payload, signature = await asyncio.to_thread(self.source.signed_payload, head)
        await self.verifier.verify(head, payload, signature)
        current = self.state.applied
        policy = self.cfg.trust.non_fast_forward
        fast_forward = True
        if current is not None and current != head and policy != "always":
            fast_forward = await self.source.is_ancestor(current, head)
        check_move(policy, current, head, fast_forward, self.state.good)

    def _paths_unchanged(self, head: str) -> bool:
        applied = self.state.applied
        if applied is None or not self.source.has_commit(applied):
            return False
        return self.source.tree_ids(applied) == self.source.tree_ids(head)

    async def _apply(
        self, head: str, desired: DesiredState, plans: dict[str, ChangeSet]
    ) -> Outcome:
        self.state.applying = head
        self.state.last_attempted = head
        self._save()
        self.outcome = Outcome("progressing", "Applying", f"applying {head[:12]}", head, plans)
        self._publish()
        try:
            await self._apply_plans(desired, plans)
            problems = await self._wait_healthy(desired, plans)
        except UnavailableError as err:
            # Cut off, not failed: `applying` stays set so the next reconcile resumes it.
            log.error("apply of %s interrupted: %s", head[:12], err)
            return Outcome("error", "TargetUnavailable", str(err), head, plans)
        except ApplyError as err:
            return await self._rollback(head, "ApplyFailed", str(err), plans)
        if problems:
            text = "; ".join(f"{p.target}:{p.subject}: {p.reason}" for p in problems)
            if all(p.unavailable for p in problems):
                # Health could not be checked at all: no verdict on the commit, so no
                # rollback and no bad mark; `applying` stays set and the next run resumes.
                log.error("health of %s unknown: %s", head[:12], text)
                return Outcome("error", "TargetUnavailable", text, head, plans)
            return await self._rollback(head, "HealthCheckFailed", text, plans)
        self.state.applied = head
        self.state.applying = None
        self.state.mark_good(head)
        self._save()
        self._applied_desired = desired
        self.health = []
        summary = "; ".join(p.summary() for p in plans.values())
        self._event("applied", head, changes={n: p.counts() for n, p in plans.items()})
        return Outcome("synced", "Applied", f"{head[:12]} applied ({summary})", head, plans)

    async def _apply_plans(self, desired: DesiredState, plans: dict[str, ChangeSet]) -> None:
        ctx = self._ctx(desired.commit, plans)
        try:
            for target in self.targets:
                await target.apply(plans[target.name], desired, ctx)
                self.store.sync()
            for target in reversed(self.targets):
                await target.prune(plans[target.name], ctx)
                self.store.sync()
        finally:
            # What a failed step did record must be durable too: the rollback plans from it.
            self.store.sync()

    async def _wait_healthy(
        self, desired: DesiredState, plans: dict[str, ChangeSet]
    ) -> list[HealthProblem]:
        problems = await wait_healthy(
            self.targets, desired, self._ctx(desired.commit, plans), plans, self.cfg.health
        )
        if problems:
            self.health = problems
        return problems

    async def _rollback(
        self, bad: str, reason: str, message: str, plans: dict[str, ChangeSet]
    ) -> Outcome:
        self.state.mark_bad(bad)
        good = self.state.last_good
        log.error("%s on %s: %s", reason, bad[:12], message)
        if good is None or good == bad:
            self.state.applying = None
            self._save()
            self._event("failed", bad, reason=reason, message=message, rolled_back=False)
            return Outcome("failed", reason, f"{message} (no good commit to roll back to)", bad)
        try:
            desired = await asyncio.to_thread(self.source.read_desired, good)
            back = {t.name: await t.plan(desired, self.state.owned(t.name)) for t in self.targets}
            await self._apply_plans(desired, back)
            problems = await self._wait_healthy(desired, back)
        except EdgefleetError as err:
            self.state.applying = None
            self._save()
            self._event(
                "failed",
                bad,
                reason=reason,
                message=message,
                rolled_back=False,
                rollback_error=str(err),
            )
            return Outcome(
                "failed", reason, f"{message}; rollback to {good[:12]} failed: {err}", bad
            )
        self.state.applied = good
        self.state.applying = None
        self._save()
        self._applied_desired = desired
        self._event("rollback", bad, reason=reason, message=message, to=good, healthy=not problems)
        return Outcome("failed", reason, f"{message}; rolled back to {good[:12]}", bad, plans)

    # -- drift --------------------------------------------------------------------

    async def applied_desired(self) -> DesiredState | None:
        applied = self.state.applied
        if applied is None:
            return None
        if self._applied_desired is None or self._applied_desired.commit != applied:
            if not self.source.has_commit(applied):
                await self.source.fetch(applied)
            self._applied_desired = await asyncio.to_thread(self.source.read_desired, applied)
        return self._applied_desired

    async def check_drift(self, correct: bool | None = None) -> list[DriftItem]:
        """Compare live state with the applied commit; correct it per drift.mode."""
        if correct is None:
            correct = self.cfg.drift.mode == "correct"
        async with self.lock:
            try:
                desired = await self.applied_desired()
            except EdgefleetError as err:
                log.warning("drift check skipped: %s", err)
                return self.drift
            if desired is None:
                return []
            try:
                found = await find_drift(self.targets, desired, self.state)
            except TransientError as err:
                # e.g. k3s restarting: keep the last result rather than crash the drift loop.
                log.warning("drift check failed: %s", err)
                return self.drift
            if found and correct:
                ctx = self._ctx(desired.commit, {})
                remaining = await correct_drift(self.targets, found, desired, ctx, self.state)
                self._event(
                    "drift_corrected", desired.commit, drift=list(found), remaining=len(remaining)
                )
                found = remaining
            elif found and found != self.drift:
                self._event("drift_detected", desired.commit, drift=list(found))
            changed = found != self.drift
            self.drift = found
            if self.outcome.state in ("synced", "drifted"):
                state: State = "drifted" if found else "synced"
                self.outcome = Outcome(
                    state,
                    "Drifted" if found else "Applied",
                    f"{len(found)} drifted object(s)" if found else self.outcome.message,
                    self.outcome.commit,
                    self.outcome.changes,
                )
            if changed:
                self._publish()
            return found


def _refusal(head: str, reason: str, message: str) -> Outcome:
    """A refusal only answered to the hub (a plan): no event, not remembered."""
    return Outcome("refused", reason, message, head)
