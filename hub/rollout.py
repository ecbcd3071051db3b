"""Staged rollouts: the promotion engine, halt, rollback and the audit log.

A stage with ``promote_from`` takes the head of its source stage (the candidate) when
:func:`hub.gate.evaluate_gate` opens; the soak is tracked per candidate in the store,
so a restarted hub or a new leader continues it (no restart, no double promotion).

:class:`Rollout` runs the loop: it records stage heads, halts a pipeline whose stage
fails on its head beyond ``max_failed`` (and with ``auto_rollback`` moves that stage
back to its previous commit), promotes ``auto`` stages whose gate is open inside their
window, and serves the manual promote/rollback/resume calls. Every decision that moves
or blocks a branch lands in the audit table with the evidence behind it. Only the
leader (:mod:`hub.leader`) runs the loop; every branch move and resume is fenced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from hub.config import HubConfig, Stage
from hub.errors import BranchMoved, HubError, PromoteError, RolloutRefused
from hub.gate import GateResult, blocked_by, evaluate_gate, failed_on
from hub.leader import Leadership, NotLeader
from hub.plan import PlanJson, plan_evidence, refusal_summary
from hub.promote import StageGit
from hub.rolloutview import audit_history, pause_json, stage_status
from hub.shapes import AuditJson, PromoteJson, ResumeJson, RollbackJson, StageRollout
from hub.store import AuditRow, NodeState, Pause, RolloutStore
from hub.waves import Announce, Waves, WaveStore, pause_after_rollback

log = logging.getLogger(__name__)

AUTO = "auto"


# -- the rollout loop -----------------------------------------------------------------


Moved = Callable[[str, str], None]
"""Called with (branch, new head) after a push: announce it to the agents now."""
Audited = Callable[[AuditRow], Awaitable[None]]
"""Called with each audit row once it is stored (notifications)."""
PlanCall = Callable[[str], Awaitable[PlanJson]]
"""Plans the candidate of a stage on its nodes (hub.plan.Planner.plan)."""


class AlreadyThere(RolloutRefused):
    """The stage branch is at the candidate already (nothing to do, nothing audited)."""


class Rollout:
    def __init__(
        self,
        cfg: HubConfig,
        store: RolloutStore,
        git: StageGit | None,
        heads: Callable[[], Mapping[str, str]],
        moved: Moved,
        clock: Callable[[], float] = time.time,
        tick: float = 0.5,
        leader: Leadership | None = None,
        audited: Audited | None = None,
        wave_store: WaveStore | None = None,
        announce: Announce | None = None,
    ) -> None:
        self._cfg = cfg
        self._store = store
        self._git = git
        self._heads = heads
        self._moved = moved
        self._clock = clock
        self._tick = tick
        self._leader = leader or Leadership()
        self._audited = audited
        self._recorded: dict[str, str] = {}
        self._auto_failed: dict[str, tuple[str, str | None]] = {}
        """stage -> (candidate, stage head) of an automatic promotion that failed: not
        retried (or re-audited) until either moves."""
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._waves = (
            Waves(wave_store, git, clock, self._audit, moved, announce, self._leader.fence)
            if wave_store is not None and git is not None
            else None
        )
        self.planner: PlanCall | None = None
        """For gates with ``require_plan``; without it such a gate never opens."""

    def poke(self) -> None:
        """New node reports were stored: re-evaluate now rather than at the next tick."""
        self._wake.set()

    # -- evaluation -----------------------------------------------------------------

    async def _nodes(self, stage: Stage) -> list[NodeState]:
        return await self._store.stage_nodes(stage.branch, self._clock())

    async def evaluate(self, stage: Stage, track: bool = False) -> GateResult:
        """The gate into ``stage``; ``track`` (the loop) advances the soak bookkeeping."""
        source = self._source(stage)
        candidate = self._heads().get(source.branch)
        held = (await self._store.gate_holding()).get(stage.name)
        since = held[1] if held is not None and held[0] == candidate else None
        result = evaluate_gate(
            stage.gate, candidate, await self._nodes(source), since, self._clock()
        )
        if track:
            holding = (
                None
                if result.holding_since is None or result.candidate is None
                else (result.candidate, result.holding_since)
            )
            if holding != held:
                await self._store.set_gate_holding(stage.name, holding)
        return result

    def _source(self, stage: Stage) -> Stage:
        source = self._cfg.stage(stage.promote_from) if stage.promote_from else None
        if source is None:
            raise RolloutRefused(f"stage {stage.name} has no promote_from: nothing to promote")
        return source

    async def status(self) -> dict[str, StageRollout]:
        """Per stage: gate (if it has a source), pause, what blocks auto promotion."""
        return await stage_status(
            self._cfg, self._store, self._heads(), self._clock(), self.evaluate, self._waves
        )

    # -- the loop -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        if self._git is None or not self._cfg.stages:
            return
        while not stop.is_set():
            try:
                if self._leader.is_leader():
                    await self.tick()
            except HubError as err:
                log.warning("rollout check failed: %s", err)
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({waiter, stopper}, timeout=self._tick,
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            finally:
                waiter.cancel()
                stopper.cancel()
            self._wake.clear()

    async def tick(self) -> None:
        """One pass: record heads, halt failing stages, promote open auto gates."""
        heads = self._heads()
        for stage in self._cfg.stages:
            head = heads.get(stage.branch)
            if head is not None and self._recorded.get(stage.name) != head:
                await self._store.record_head(stage.name, head, self._clock())
                self._recorded[stage.name] = head
                self._auto_failed.pop(stage.name, None)
            if head is not None:
                await self._check_halt(stage, head)
        for stage in self._cfg.stages:
            if stage.waves and self._waves is not None:
                async with self._lock:
                    await self._waves.tick(stage)
        pauses = await self._store.pauses()
        for stage in self._cfg.stages:
            if stage.promote_from is None:
                continue
            if stage.waves and self._waves is not None and await self._waves.active(stage):
                continue  # the running waves finish (or halt) first
            gate = await self.evaluate(stage, track=True)
            if not (stage.auto and gate.open and gate.candidate is not None):
                continue
            current = heads.get(stage.branch)
            if current == gate.candidate or blocked_by(self._cfg, stage, pauses):
                continue
            if stage.window is not None and not stage.window.contains(self._clock()):
                continue
            if self._auto_failed.get(stage.name) == (gate.candidate, current):
                continue
            if stage.gate.require_plan and not await self._plan_allows(stage, gate, current):
                continue
            try:
                await self._promote(stage, gate, current, AUTO, "gate open", forced=False)
            except AlreadyThere:
                continue
            except NotLeader:
                return  # the new leader decides
            except (RolloutRefused, PromoteError) as err:
                self._auto_failed[stage.name] = (gate.candidate, current)
                log.warning("automatic promotion into %s not done: %s", stage.name, err)

    async def _plan_allows(self, stage: Stage, gate: GateResult, current: str | None) -> bool:
        """``require_plan``: plan the candidate on ``stage``'s nodes; a node that would
        refuse it halts the stage (audited) instead of promoting."""
        candidate = gate.candidate
        assert candidate is not None
        if self.planner is None:
            log.warning("%s requires a plan, but this hub cannot plan", stage.name)
            return False
        try:
            plan = await self.planner(stage.name)
        except HubError as err:  # e.g. the broker is down: try again at the next tick
            log.warning("plan before promoting %s not made: %s", stage.name, err)
            return False
        if plan["to"] != candidate:
            return False  # the source moved meanwhile: the next tick decides afresh
        reason = refusal_summary(plan)
        if reason is None:
            return True
        log.error("halting %s before promotion: %s", stage.name, reason)
        now = self._clock()
        await self._store.set_pause(Pause(stage.name, "halt", candidate, now, AUTO, reason))
        evidence = {**gate.evidence(), "plan": plan_evidence(plan)}
        await self._audit("halt", stage, AUTO, current, candidate, "done", reason, evidence)
        return False

    async def _check_halt(self, stage: Stage, head: str) -> None:
        failed = failed_on(await self._nodes(stage), head)
        if len(failed) <= stage.gate.max_failed:
            return
        pause = (await self._store.pauses()).get(stage.name)
        if pause is not None and pause.kind == "halt" and pause.commit == head:
            return
        reason = (
            f"{len(failed)} node{'s' * (len(failed) != 1)} failed on {head[:7]} "
            f"(max {stage.gate.max_failed}): {', '.join(failed[:5])}"
        )
        log.error("halting rollouts at %s: %s", stage.name, reason)
        now = self._clock()
        evidence = {"failed": failed, "max_failed": stage.gate.max_failed, "head": head}
        await self._store.set_pause(Pause(stage.name, "halt", head, now, AUTO, reason))
        await self._audit("halt", stage, AUTO, head, None, "done", reason, evidence)
        if stage.auto_rollback:
            with contextlib.suppress(RolloutRefused, PromoteError):  # audited inside
                await self.rollback(stage.name, AUTO, f"auto rollback: {reason}", pause=False)

    # -- actions --------------------------------------------------------------------

    async def _audit(
        self,
        action: str,
        stage: Stage,
        who: str,
        from_commit: str | None,
        to_commit: str | None,
        outcome: str,
        reason: str,
        evidence: Mapping[str, Any],
        forced: bool = False,
        on_behalf: str | None = None,
    ) -> None:
        row = AuditRow(self._clock(), action, stage.name, who, from_commit, to_commit, outcome,
                       forced, reason, json.dumps(evidence, sort_keys=True), on_behalf)  # fmt: skip
        await self._store.add_audit(row)
        if self._audited is not None:
            await self._audited(row)

    def _need_git(self) -> StageGit:
        if self._git is None:
            raise RolloutRefused("no [git] url configured: the hub cannot move stage branches")
        return self._git

    async def promote(
        self, name: str, who: str, reason: str, force: bool = False, on_behalf: str | None = None
    ) -> PromoteJson:
        """Manual promotion into stage ``name``; RolloutRefused says why it was not done."""
        stage = self._stage(name)
        await self._leader.refuse_if_standby()
        gate = await self.evaluate(stage)
        if gate.candidate is None:
            raise RolloutRefused(gate.reason, gate.evidence())
        current = self._heads().get(stage.branch)
        if current == gate.candidate:
            raise RolloutRefused(f"{name} is at {gate.candidate[:7]} already", gate.evidence())
        if self._waves is not None and await self._waves.active(stage):
            raise RolloutRefused(f"the waves of {name} are rolling: roll back first")
        if not force:
            blocked = blocked_by(self._cfg, stage, await self._store.pauses())
            if blocked:
                raise RolloutRefused(f"{blocked} (or use --force)", gate.evidence())
            if not gate.open:
                raise RolloutRefused(f"gate closed: {gate.reason}", gate.evidence())
            if stage.window is not None and not stage.window.contains(self._clock()):
                raise RolloutRefused(
                    f"outside the maintenance window of {name} (use --force)", gate.evidence()
                )
        return await self._promote(stage, gate, current, who, reason, force, on_behalf)

    def _stage(self, name: str) -> Stage:
        stage = self._cfg.stage(name)
        if stage is None:
            raise RolloutRefused(f"unknown stage {name!r}")
        return stage

    async def _promote(
        self,
        stage: Stage,
        gate: GateResult,
        expected: str | None,
        who: str,
        reason: str,
        forced: bool,
        on_behalf: str | None = None,
    ) -> PromoteJson:
        """Fast-forward ``stage`` from ``expected`` (the head the decision saw) to the
        candidate; a branch that moved since is reported, audited, never overwritten."""
        git = self._need_git()
        candidate = gate.candidate
        assert candidate is not None
        source = self._source(stage)
        evidence = gate.evidence()
        async with self._lock:
            try:
                await self._push_promotion(git, source, stage, expected, candidate)
            except (AlreadyThere, NotLeader):
                raise
            except (PromoteError, RolloutRefused) as err:
                outcome = "refused" if isinstance(err, BranchMoved | RolloutRefused) else "failed"
                await self._audit("promote", stage, who, expected, candidate, outcome,
                                  f"{reason}: {err}", evidence, forced, on_behalf)  # fmt: skip
                if isinstance(err, RolloutRefused):
                    raise
                raise RolloutRefused(str(err), evidence) from err
            if not stage.waves or self._waves is None:
                self._moved(stage.branch, candidate)
            await self._audit("promote", stage, who, expected, candidate, "done", reason,
                              evidence, forced, on_behalf)  # fmt: skip
        log.info("promoted %s: %s -> %s by %s%s", stage.name, _short(expected), candidate[:12],
                 who, " (forced)" if forced else "")  # fmt: skip
        return {"stage": stage.name, "from": expected, "to": candidate, "forced": forced,
                "gate": evidence}  # fmt: skip

    async def _push_promotion(
        self, git: StageGit, source: Stage, stage: Stage, expected: str | None, candidate: str
    ) -> None:
        fresh = await asyncio.to_thread(git.fetch, (source.branch, stage.branch))
        if fresh.get(stage.branch) == candidate:
            # Our own earlier push, seen before the watcher caught up: not news.
            raise AlreadyThere(f"{stage.name} is at {candidate[:7]} already")
        if fresh.get(stage.branch) != expected:
            raise BranchMoved(
                f"branch {stage.branch} was moved by someone else since the gate was "
                f"checked ({_short(expected)} -> {_short(fresh.get(stage.branch))}); "
                "nothing was pushed"
            )
        if expected is not None and not await asyncio.to_thread(
            git.is_ancestor, expected, candidate
        ):
            raise RolloutRefused(
                f"{candidate[:7]} does not descend from {stage.branch} head "
                f"{expected[:7]}: not a fast-forward (promotion never rewrites history)"
            )
        await self._leader.fence()
        if stage.waves and self._waves is not None:
            await self._waves.start(stage, expected, candidate)
        else:
            await asyncio.to_thread(git.update, stage.branch, expected, candidate)

    async def _previous(self, stage: Stage, head: str) -> str | None:
        """The commit ``stage`` had before ``head``: the promotion's origin, else the
        previous head the hub saw."""
        origin = await self._store.promotion_origin(stage.name, head)
        if origin:
            return origin
        return next((c for c in await self._store.head_history(stage.name) if c != head), None)

    async def rollback(
        self,
        name: str,
        who: str,
        reason: str,
        to: str | None = None,
        pause: bool = True,
        on_behalf: str | None = None,
    ) -> RollbackJson:
        """Move ``name`` back (a forced push, old value checked) and pause it."""
        stage = self._stage(name)
        await self._leader.refuse_if_standby()
        git = self._need_git()
        async with self._lock:
            fresh = await asyncio.to_thread(git.fetch, (stage.branch,))
            head = fresh.get(stage.branch)
            if head is None:
                raise RolloutRefused(f"branch {stage.branch} does not exist")
            waves = self._waves
            running = await waves.active(stage) if waves is not None else None
            if waves is not None and running is not None and to is None:
                return await waves.rollback(stage, running, head, who, reason, pause, on_behalf)
            target = to or await self._previous(stage, head)
            if target is None:
                raise RolloutRefused(f"no previous commit of {name} is known; name one with --to")
            if target == head:
                raise RolloutRefused(f"{name} is at {head[:7]} already")
            known = target in await self._store.head_history(stage.name)
            if not known and not await asyncio.to_thread(git.is_ancestor, target, head):
                raise RolloutRefused(
                    f"{target[:12]} is neither a previous head of {name} nor in its history"
                )
            evidence = {"head": head, "target": target, "previous_head": known}
            await self._leader.fence()
            try:
                await asyncio.to_thread(git.update, stage.branch, head, target)
            except PromoteError as err:
                outcome = "refused" if isinstance(err, BranchMoved) else "failed"
                await self._audit("rollback", stage, who, head, target, outcome,
                                  f"{reason}: {err}", evidence, on_behalf=on_behalf)  # fmt: skip
                raise RolloutRefused(str(err), evidence) from err
            self._moved(stage.branch, target)
            if self._waves is not None:
                await self._waves.move_all(stage, target)
            if pause:
                await pause_after_rollback(self._store, stage, target, who, reason, self._clock())
            await self._audit("rollback", stage, who, head, target, "done", reason, evidence,
                              on_behalf=on_behalf)  # fmt: skip
        log.warning("rolled back %s: %s -> %s by %s (%s)", name, head[:12], target[:12], who,
                    reason)  # fmt: skip
        return {"stage": name, "from": head, "to": target, "paused": True}

    async def resume(
        self, name: str, who: str, reason: str, on_behalf: str | None = None
    ) -> ResumeJson:
        stage = self._stage(name)
        await self._leader.refuse_if_standby()
        pause = (await self._store.pauses()).get(name)
        if pause is None:
            raise RolloutRefused(f"stage {name} is not paused")
        await self._leader.fence()
        await self._store.clear_pause(name)
        self._auto_failed.pop(name, None)
        if self._waves is not None:
            await self._waves.resume(stage)
        await self._audit("resume", stage, who, None, None, "done", reason,
                          {"lifted": pause_json(pause)}, on_behalf=on_behalf)  # fmt: skip
        log.info("resumed %s (was paused: %s) by %s", name, pause.reason, who)
        self._wake.set()
        return {"stage": name, "resumed": True, "was": pause_json(pause)}

    async def history(self, stage: str | None = None, limit: int = 100) -> list[AuditJson]:
        return await audit_history(self._store, stage, limit)


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "(none)"
