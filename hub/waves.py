"""Waves inside a stage: a promotion moves wave refs one after the other, the branch last.

Each wave's desired commit is a ref of the fleet repository
(:func:`hub.waveconf.wave_ref`), moved fast-forward only through the same
compare-and-swap push as stage branches. The next wave starts when the previous one's
gate (the stage gate with the wave's overrides) held for its soak; a failure beyond
``max_failed`` halts the later waves and pauses the stage. The stage branch moves last,
so nodes in no wave (and agents that know nothing of waves) form the last wave. The run
(current wave, soak clock) and each node's wave live in the store, so a hub restart
continues where it was.

The caller (:class:`hub.rollout.Rollout`) holds its rollout lock around every call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from common import wire
from hub.config import Gate, Stage
from hub.errors import PromoteError, RolloutRefused
from hub.gate import GateResult, evaluate_gate, failed_on
from hub.promote import StageGit
from hub.shapes import RollbackJson
from hub.store import NodeRow, NodeState, Pause
from hub.store.waves import DONE, HALTED, ROLLING, WaveRecords, WaveRun
from hub.waveconf import Wave, wave_of, wave_ref

log = logging.getLogger(__name__)

ALL_NODES = 1_000_000
AUTO = "auto"

WaveAudit = Callable[..., Awaitable[None]]
"""Rollout's audit: (action, stage, who, from, to, outcome, reason, evidence, on_behalf=)."""
Announce = Callable[[str, str | None, str | None], None]
"""(node, its wave ref or None, the ref's new commit if it just moved): tell a node
which ref to follow (retained MQTT; the commit wakes it at once)."""


class PauseStore(Protocol):
    async def pauses(self) -> dict[str, Pause]: ...

    async def set_pause(self, pause: Pause) -> None: ...


class WaveStore(WaveRecords, PauseStore, Protocol):
    async def stage_nodes(self, branch: str, now: float) -> list[NodeState]: ...

    async def list_nodes(
        self,
        now: float,
        branches: list[str] | None = None,
        state: str | None = None,
        labels: dict[str, str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[NodeRow]]: ...


def announce_wave(
    publish: Callable[..., bool], node: str, ref: str | None, commit: str | None = None
) -> None:
    """Retained ``node/<node>/wave``; an empty payload clears it (the node is in no wave
    and follows its stage branch)."""
    doc = {"ref": ref, **({"commit": commit} if commit else {})}
    payload = wire.encode(doc) if ref is not None else b""
    if not publish(wire.wave_topic(node), payload, qos=1, retain=True):
        log.warning("wave of %s not announced (MQTT down): it follows its stage branch", node)


async def pause_after_rollback(
    store: PauseStore, stage: Stage, target: str, who: str, reason: str, now: float
) -> None:
    """A rolled-back stage pauses, unless a halt (which also blocks downstream) holds it."""
    current = (await store.pauses()).get(stage.name)
    if current is None or current.kind != "halt":
        await store.set_pause(Pause(stage.name, "rollback", target, now, who, reason))


def wave_gate(stage: Stage, wave: Wave) -> Gate:
    """The stage gate with the wave's overrides; a wave needs one node at least."""
    gate = stage.gate
    return Gate(
        min_nodes=1,
        min_ready_ratio=gate.min_ready_ratio if wave.min_ready_ratio is None
        else wave.min_ready_ratio,
        max_failed=gate.max_failed if wave.max_failed is None else wave.max_failed,
        soak=gate.soak if wave.soak is None else wave.soak,
    )  # fmt: skip


class Waves:
    def __init__(
        self,
        store: WaveStore,
        git: StageGit,
        clock: Callable[[], float],
        audit: WaveAudit,
        moved: Callable[[str, str], None],
        announce: Announce | None = None,
        fence: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``fence``: raises unless this hub is (still) the leader; awaited before
        every ref move (:meth:`hub.leader.Leadership.fence`)."""
        self._store = store
        self._git = git
        self._clock = clock
        self._audit = audit
        self._moved = moved
        self._announce: Announce = announce or (lambda _node, _ref, _commit: None)
        self._fence = fence

    async def _update(self, ref: str, old: str | None, new: str) -> None:
        """Move ``ref`` from ``old`` to ``new``, only while this hub leads."""
        if self._fence is not None:
            await self._fence()
        await asyncio.to_thread(self._git.update, ref, old, new)

    async def _members(self, stage: Stage) -> dict[str, str]:
        _, rows = await self._store.list_nodes(
            self._clock(), branches=[stage.branch], limit=ALL_NODES
        )
        members = {}
        for row in rows:
            wave = wave_of(stage.waves, row.node, row.labels)
            self._announce(row.node, None if wave is None else wave_ref(stage.name, wave), None)
            if wave is not None:
                members[row.node] = wave
        return members

    async def start(self, stage: Stage, origin: str | None, candidate: str) -> None:
        """A promotion into ``stage``: fix each node's wave, move the first non-empty
        wave's ref (or the branch when every wave is empty)."""
        if self._fence is not None:
            await self._fence()  # the wave announcements below are the leader's too
        members = await self._members(stage)
        await self._store.set_wave_members(stage.name, members)
        run = WaveRun(stage.name, candidate, origin, -1, self._clock(), None, ROLLING, "")
        await self._next_wave(stage, run, members)

    async def _next_wave(self, stage: Stage, run: WaveRun, members: Mapping[str, str]) -> None:
        """Move the candidate into the wave after ``run.wave`` that has nodes. The last
        one moves with the stage branch: its nodes that know nothing of waves (and the
        nodes in no wave) follow the branch, so waiting for them first would never end."""
        index = run.wave + 1
        while index < len(stage.waves):
            wave = stage.waves[index]
            if wave.name in members.values():
                break
            await self._audit("wave", stage, AUTO, run.origin, run.candidate, "skipped",
                              f"wave {wave.name} has no nodes", {"wave": wave.name})  # fmt: skip
            index += 1
        later = {w.name for w in stage.waves[index + 1 :]} & set(members.values())
        if index < len(stage.waves):
            await self._move_wave(stage, run, stage.waves[index], members)
        if index < len(stage.waves) and later:
            name = stage.waves[index].name
            await self._store.save_wave_run(replace(run, wave=index, moved_at=self._clock(),
                                                    holding_since=None, state=ROLLING,
                                                    reason=f"wave {name}"))  # fmt: skip
            return
        await self._update(stage.branch, run.origin, run.candidate)
        self._moved(stage.branch, run.candidate)
        await self._store.save_wave_run(replace(run, wave=index, moved_at=self._clock(),
                                                holding_since=None, state=DONE,
                                                reason="all waves started"))  # fmt: skip
        await self._audit("wave", stage, AUTO, run.origin, run.candidate, "done",
                          f"last wave started: {stage.branch} moved", {"wave": None})  # fmt: skip

    async def _move_wave(
        self, stage: Stage, run: WaveRun, wave: Wave, members: Mapping[str, str]
    ) -> None:
        """Fast-forward the wave's ref to the candidate and wake its nodes."""
        ref = wave_ref(stage.name, wave.name)
        current = (await asyncio.to_thread(self._git.refs_under, ref)).get(ref)
        if current is not None and current != run.candidate:
            await asyncio.to_thread(self._git.fetch, (stage.branch,))
            if not await asyncio.to_thread(self._git.is_ancestor, current, run.candidate):
                raise PromoteError(
                    f"{ref} is at {current[:12]}, not an ancestor of {run.candidate[:12]}: "
                    "not a fast-forward (roll the stage back first)"
                )
        await self._update(ref, current, run.candidate)
        nodes = [n for n, w in members.items() if w == wave.name]
        for node in nodes:
            self._announce(node, ref, run.candidate)
        count = len(nodes)
        await self._audit("wave", stage, AUTO, run.origin, run.candidate, "done",
                          f"wave {wave.name} started ({count} nodes)",
                          {"wave": wave.name, "nodes": count})  # fmt: skip

    async def _evaluate(self, stage: Stage, run: WaveRun, members: Mapping[str, str]) -> GateResult:
        wave = stage.waves[run.wave]
        nodes = [n for n in await self._store.stage_nodes(stage.branch, self._clock())
                 if members.get(n.node) == wave.name]  # fmt: skip
        return evaluate_gate(wave_gate(stage, wave), run.candidate, nodes,
                             run.holding_since, self._clock())  # fmt: skip

    async def tick(self, stage: Stage) -> None:
        """Advance or halt the stage's running waves."""
        run = await self._store.wave_run(stage.name)
        if run is None or run.state != ROLLING:
            return
        members = await self._store.wave_members(stage.name)
        gate = await self._evaluate(stage, run, members)
        wave = stage.waves[run.wave]
        if gate.failed > wave_gate(stage, wave).max_failed:
            await self._halt(stage, run, gate, members)
        elif gate.open:
            try:
                await self._next_wave(stage, run, members)
            except PromoteError as err:
                log.warning("next wave of %s not started: %s", stage.name, err)
        elif gate.holding_since != run.holding_since:
            await self._store.save_wave_run(replace(run, holding_since=gate.holding_since))

    async def _halt(
        self, stage: Stage, run: WaveRun, gate: GateResult, members: Mapping[str, str]
    ) -> None:
        wave = stage.waves[run.wave]
        nodes = [n for n in await self._store.stage_nodes(stage.branch, self._clock())
                 if members.get(n.node) == wave.name]  # fmt: skip
        failed = failed_on(nodes, run.candidate)
        reason = f"wave {wave.name}: {gate.reason}: {', '.join(failed[:5])}; later waves halted"
        log.error("halting waves of %s: %s", stage.name, reason)
        await self._store.save_wave_run(replace(run, state=HALTED, reason=reason))
        await self._store.set_pause(
            Pause(stage.name, "halt", run.candidate, self._clock(), AUTO, reason)
        )
        await self._audit("halt", stage, AUTO, run.origin, run.candidate, "done", reason,
                          {"wave": wave.name, "failed": failed})  # fmt: skip

    async def active(self, stage: Stage) -> WaveRun | None:
        """The stage's run while waves hold a commit the branch does not have yet."""
        run = await self._store.wave_run(stage.name)
        return run if run is not None and run.state != DONE else None

    async def resume(self, stage: Stage) -> None:
        """A halted run continues with its current wave (its soak starts over)."""
        run = await self._store.wave_run(stage.name)
        if run is not None and run.state == HALTED:
            await self._store.save_wave_run(
                replace(run, state=ROLLING, holding_since=None, reason="resumed")
            )

    async def rollback(
        self, stage: Stage, run: WaveRun, head: str, who: str, reason: str, pause: bool,
        on_behalf: str | None,
    ) -> RollbackJson:  # fmt: skip
        """Waves are rolling: every wave goes back to the stage head (the branch never
        moved)."""
        try:
            await self.move_all(stage, head)
        except PromoteError as err:
            await self._audit("rollback", stage, who, run.candidate, head, "failed",
                              f"{reason}: {err}", {"waves": True}, on_behalf=on_behalf)  # fmt: skip
            raise RolloutRefused(str(err)) from err
        if pause:
            await pause_after_rollback(self._store, stage, head, who, reason, self._clock())
        await self._audit("rollback", stage, who, run.candidate, head, "done", reason,
                          {"waves": True, "target": head}, on_behalf=on_behalf)  # fmt: skip
        log.warning("rolled back the waves of %s to %s by %s (%s)", stage.name, head[:12], who,
                    reason)  # fmt: skip
        return {"stage": stage.name, "from": run.candidate, "to": head, "paused": True}

    async def move_all(self, stage: Stage, target: str) -> None:
        """Rollback: every wave ref that exists goes to ``target`` (forced, old checked)."""
        prefix = f"refs/edgefleet/waves/{stage.name}/"
        for ref, current in (await asyncio.to_thread(self._git.refs_under, prefix)).items():
            if current != target:
                await self._update(ref, current, target)
        run = await self._store.wave_run(stage.name)
        if run is not None and run.state != DONE:
            await self._store.save_wave_run(
                replace(run, state=DONE, reason=f"rolled back to {target[:12]}")
            )

    async def status(self, stage: Stage) -> list[dict[str, Any]]:
        """Per wave: nodes, on the candidate, gate state, soak left, state."""
        run = await self._store.wave_run(stage.name)
        members = await self._store.wave_members(stage.name) if run is not None else {}
        nodes = {n.node: n for n in await self._store.stage_nodes(stage.branch, self._clock())}
        out: list[dict[str, Any]] = []
        for index, wave in enumerate(stage.waves):
            mine = [nodes[n] for n, w in members.items() if w == wave.name and n in nodes]
            entry: dict[str, Any] = {"name": wave.name, "nodes": len(mine), "on_candidate": 0,
                                     "gate": None, "soak_left": None, "state": "idle"}  # fmt: skip
            if run is not None:
                entry["on_candidate"] = sum(n.applied == run.candidate for n in mine)
                entry["state"] = _wave_state(run, index, bool(mine))
                if index == run.wave and run.state == ROLLING:
                    gate = await self._evaluate(stage, run, members)
                    entry["gate"] = gate.reason
                    entry["soak_left"] = gate.soak_left
            out.append(entry)
        return out


def _wave_state(run: WaveRun, index: int, has_nodes: bool) -> str:
    if not has_nodes:
        return "skipped" if run.state != ROLLING or index <= run.wave else "empty"
    if index < run.wave or run.state == DONE:
        return "done"
    if index == run.wave:
        return run.state
    return "halted" if run.state == HALTED else "waiting"
