"""Wiring and supervision: build the agent from its config and run it.

``Agent`` owns the components (source, verifier, targets, reporter, reconciler). ``run``
supervises named tasks in a TaskGroup: the poll loop (cheap ls-remote with jitter, or
at once on a ref notification / ``sync`` command), the drift loop and the systemd
watchdog. SIGTERM sets a stop event; tasks get a bounded grace, then are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import random
import signal
import time
from pathlib import Path
from typing import Any, TextIO

from agent import sdnotify
from agent.activation import ActivationGate, PrestagedSource
from agent.agentpin import upgrade_pending
from agent.config import AgentConfig
from agent.errors import StateError
from agent.planrun import PlanRunner
from agent.reconcile import Outcome, Reconciler
from agent.render.seal import ContentSeal
from agent.render.source import NodeFacts, RenderingSource, recipient
from agent.report import Reporter
from agent.signcheck import SignatureChecker
from agent.source import GitSource
from agent.state import StateStore
from agent.targets.base import Target
from agent.targets.files import FilesTarget
from agent.waveref import WaveSource
from common.backoff import Backoff

log = logging.getLogger(__name__)
MAX_BACKOFF = 300.0
STOP_GRACE = 5.0
REPACK_AFTER_PACKS = 16
"""Every fetch that brings objects adds a pack to the Git cache; past this many the daemon
repacks it, so a long-lived node's cache (and each object lookup) stays small."""


def jittered(seconds: float, spread: float = 0.1) -> float:
    """Spread polls of a whole fleet so they do not hit the Git server in step."""
    return seconds * random.uniform(1 - spread, 1 + spread)  # noqa: S311 - not crypto


def build_targets(cfg: AgentConfig) -> list[Target]:
    """Targets in apply order; heavy clients are imported only when enabled."""
    targets: list[Target] = []
    if cfg.targets.files.enabled:
        targets.append(FilesTarget(cfg.targets.files, ContentSeal(cfg.state_dir)))
    if cfg.targets.systemd.enabled:
        from agent.targets.systemd import SystemdTarget  # noqa: PLC0415

        targets.append(SystemdTarget(cfg.targets.systemd, cfg.health))
    if cfg.targets.k3s.enabled:
        # kubernetes_asyncio costs ~48 MB of RSS: only nodes running k3s pay for it.
        from agent.targets.k3s import K3sTarget  # noqa: PLC0415

        targets.append(K3sTarget(cfg.targets.k3s, cfg.state_dir, node=cfg.node))
    return targets


class StateLock:
    """An flock on state_dir/lock: one agent process (daemon or ``sync``) at a time."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "lock"
        self.file: TextIO | None = None

    def acquire(self) -> None:
        self.file = self.path.open("a")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            self.file.close()
            self.file = None
            raise StateError(f"another edgefleet-agent holds {self.path}; stop it first") from err

    def release(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class Agent:
    def __init__(self, cfg: AgentConfig, with_reporter: bool = True) -> None:
        self.cfg = cfg
        self.store = StateStore(cfg.state_dir)
        self.store.ensure_dir()
        self.lock = StateLock(cfg.state_dir)
        self.lock.acquire()
        self.wake = asyncio.Event()
        self.hint: str | None = None
        self.source = GitSource(cfg.git, cfg.state_dir, cfg.targets.files)
        self.repack_after = REPACK_AFTER_PACKS
        self.targets = build_targets(cfg)
        self.reporter: Reporter | None = None
        if with_reporter and cfg.mqtt.url:
            self.reporter = Reporter(
                cfg.mqtt, cfg.node, cfg.git.branch, cfg.state_dir, self._on_ref, self._on_cmd,
                on_wave=self._on_wave,
            )  # fmt: skip
        checker = SignatureChecker(cfg.trust)
        checker.check_config()
        self.activation = ActivationGate(cfg, self._activation_event)
        rendering = RenderingSource(self.source, NodeFacts.of(cfg))
        self.waves = WaveSource(rendering, self.source, cfg.git.branch, self._wave_event)
        self.reconciler = Reconciler(
            cfg,
            PrestagedSource(self.waves, self.activation),
            checker,
            self.targets,
            self.store,
            self.reporter,
            self.activation,
        )
        self.reconciler.recipient = recipient(cfg.secrets.identity)
        self.plans: PlanRunner | None = None
        if self.reporter is not None:
            self.plans = PlanRunner(cfg.node, self.reconciler, self.source, self.reporter.send_now)
        for target in self.targets:
            if isinstance(target, FilesTarget):
                target.cleanup(self.reconciler.state.owned(target.name))

    def _on_ref(self, commit: str) -> None:
        if commit != self.reconciler.state.applied:
            log.info("ref notification: %s is at %s", self.cfg.git.branch, commit[:12])
            self.hint = commit
            self.wake.set()

    def _on_wave(self, payload: bytes) -> None:
        if self.waves.set_wave(payload):
            self.wake.set()

    def _wave_event(self, head: str, why: str) -> None:
        self.reconciler._event("wave", head or None, following="branch", reason=why)

    def _on_cmd(self, cmd: dict[str, Any]) -> None:
        op = cmd.get("op")
        if op == "sync":
            log.info("sync requested by the hub")
            if "override" in cmd:
                self.activation.request_override(cmd["override"])
            self.wake.set()
        elif op == "plan" and self.plans is not None:
            self.plans.submit(cmd)
        else:
            log.warning("ignoring unknown command %r", op)

    def _activation_event(self, type_: str, details: dict[str, Any]) -> None:
        self.reconciler._event(type_, self.reconciler.desired_head, **details)

    def _drift_correction(self) -> bool | None:
        """Report-only while a lock or the window holds applies back; else per drift.mode."""
        return False if self.activation.blocked() is not None else None

    async def start_reporting(self) -> None:
        if self.reporter is not None:
            await self.reporter.start()

    async def sync_once(self, dry_run: bool = False) -> Outcome:
        outcome = await self.reconciler.reconcile(dry_run=dry_run)
        if not dry_run and outcome.state in ("synced", "drifted"):
            await self.reconciler.check_drift(self._drift_correction())
            outcome = self.reconciler.outcome
        return outcome

    async def close(self) -> None:
        if self.reporter is not None:
            await self.reporter.close()
        for target in self.targets:
            await target.close()
        self.source.close()
        self.lock.release()

    # -- daemon -------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        # Retry soon after a blip, then back off to spare a flaky or metered link.
        interval = self.cfg.git.interval
        backoff = Backoff(
            initial=2 * min(interval, 5.0), maximum=max(interval, MAX_BACKOFF), jitter=0.2
        )
        while True:
            hint, self.hint = self.hint, None
            applied = self.reconciler.state.applied
            outcome = await self.reconciler.reconcile(head=hint)
            if self.reconciler.state.applied != applied:  # never after a no-op reconcile
                await self._repack_git_cache()
            sdnotify.notify(f"STATUS={outcome.state}: {outcome.message[:200]}")
            if outcome.retry is None:
                backoff.success()
                delay = jittered(interval)
            else:
                delay = backoff.failure(outcome.retry)
            self.wake.clear()
            await self._sleep(delay, outcome.state == "deferred")

    async def _sleep(self, delay: float, deferred: bool) -> None:
        """Until woken or ``delay`` is over; while deferred also until the hold lifts (lock
        released or expired, window open), looked at every ``[activation] poll`` seconds."""
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(
                    min(left, self.cfg.activation.poll) if deferred else left
                ):
                    await self.wake.wait()
            except TimeoutError:
                if deferred and self.activation.blocked() is None:
                    return
            else:
                return

    async def _repack_git_cache(self) -> None:
        """Repack the Git cache once packs piled up, keeping what is applied and last good
        (a rollback and the drift check read them offline)."""
        packs = self.source.pack_count()
        if packs <= self.repack_after:
            return
        state = self.reconciler.state
        keep = [c for c in (state.applied, state.last_good) if c is not None]
        try:
            async with self.reconciler.lock:  # no fetch or tree read while packs are replaced
                await asyncio.to_thread(self.source.maintain, keep)
        except StateError as err:
            log.warning("Git cache not repacked: %s", err)
        else:
            log.info("Git cache repacked: %d packs into 1", packs)

    async def _drift_loop(self) -> None:
        while True:
            await asyncio.sleep(jittered(self.cfg.drift.interval))
            await self.reconciler.check_drift(self._drift_correction())

    async def _watchdog_loop(self, interval: float) -> None:
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def run(self, stop: asyncio.Event) -> None:
        await self.start_reporting()
        upgrading = None
        if upgrade_pending(self.cfg.state_dir):
            from agent.upgrade import watch  # noqa: PLC0415 - only mid-upgrade

            upgrading = await watch.resume_cut_off(self.reconciler)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._poll_loop(), name="poll"),
                    tg.create_task(self._drift_loop(), name="drift"),
                ]
                if self.plans is not None:
                    tasks.append(tg.create_task(self.plans.run(), name="plan"))
                if upgrading is not None:
                    confirm = watch.confirm_healthy(self.reconciler, self.reporter, upgrading)
                    tasks.append(tg.create_task(confirm, name="upgrade"))
                watchdog = sdnotify.watchdog_interval()
                if watchdog is not None:
                    tasks.append(tg.create_task(self._watchdog_loop(watchdog), name="watchdog"))
                sdnotify.notify("READY=1")
                log.info(
                    "edgefleet-agent %s running: node %s, branch %s, paths %s",
                    os.environ.get("EDGEFLEET_VERSION", ""),
                    self.cfg.node,
                    self.cfg.git.branch,
                    ",".join(self.cfg.git.paths),
                )
                await stop.wait()
                sdnotify.notify("STOPPING=1")
                # Let an apply in flight finish (bounded); a cut-off apply resumes next start.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.reconciler.lock.acquire(), STOP_GRACE)
                for task in tasks:
                    task.cancel()
        finally:
            await asyncio.shield(self.close())


async def run_forever(cfg: AgentConfig) -> None:
    """The ``run`` command: until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(cfg)
    await agent.run(stop)
