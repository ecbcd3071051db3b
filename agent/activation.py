"""When a node may apply: update locks, the maintenance window, free disk space.

The reconcile pipeline asks :meth:`ActivationGate.hold` right before an apply, after
the new commit was fetched, verified, read and planned. A hold turns the apply into
state ``deferred`` (or ``error`` for missing disk space); the commit stays pre-staged
in the Git cache, and :class:`PrestagedSource` lets the next reconcile apply it even
when Git is unreachable then. The daemon re-checks :meth:`ActivationGate.blocked`
every ``[activation] poll`` seconds while deferred (no inotify in the stdlib; listing
two small dirs is cheap) and not at all otherwise.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from agent.atomic import write_atomic
from agent.config import AgentConfig
from agent.desired import DesiredState
from agent.errors import FetchError
from agent.inhibit import Lock, scan
from agent.sourcewrap import SourceWrapper
from common.windows import Schedule, WindowError, parse_schedule, parse_window, zone

if TYPE_CHECKING:
    from agent.reconcile import Source

log = logging.getLogger(__name__)
MEMORY_FILE = "activation.json"
OVERRIDE_VALID = 60.0
"""Seconds a hub override waits for an apply to use it (it names no commit)."""

Emit = Callable[[str, dict[str, Any]], None]
"""(event type, details) -> None: an event in the node's stream."""


@dataclass(frozen=True)
class Hold:
    """Why the apply of a planned commit does not happen now."""

    state: Literal["deferred", "error"]
    reason: str
    """Locked | OutsideWindow | DiskSpace"""
    message: str
    until: float | None
    """When the hold is expected to end (lock expiry, window opening); None: unknown."""


@functools.lru_cache(maxsize=8)
def _schedule(window: tuple[str, ...], tz_name: str | None) -> Schedule:
    return parse_schedule(window, tz_name)


@dataclass(frozen=True)
class Memory:
    staged: str | None = None
    window: tuple[str, ...] | None = None
    """The fleet repo's [activation] window of the last commit planned (None: unset)."""
    timezone: str | None = None


def _load_memory(path: Path) -> Memory:
    try:
        doc = json.loads(path.read_bytes())
        window = doc["window"]
        memory = Memory(doc["staged"], None if window is None else tuple(window), doc["timezone"])
        for spec in memory.window or ():
            parse_window(spec)
        if memory.window:  # a zone is only read (and zoneinfo loaded) for a window
            zone(memory.timezone)
    except FileNotFoundError:
        return Memory()
    except (OSError, ValueError, KeyError, TypeError, WindowError) as err:
        log.warning("ignoring %s: %s", path, err)
        return Memory()
    staged_ok = memory.staged is None or re.fullmatch(r"[0-9a-f]{40}", str(memory.staged))
    if not staged_ok or not isinstance(memory.timezone, str | None):
        log.warning("ignoring %s: not what this agent writes", path)
        return Memory()
    return memory


def _mib(size: float) -> str:
    return f"{size / 1024**2:.0f} MiB"


class ActivationGate:
    def __init__(self, cfg: AgentConfig, emit: Emit, clock: Callable[[], float] = time.time):
        self.cfg = cfg.activation
        self.dirs = (self.cfg.inhibit_dir, self.cfg.persistent_inhibit_dir)
        self.disk_roots = (
            (cfg.state_dir, *cfg.targets.files.allowed_roots)
            if cfg.targets.files.enabled
            else (cfg.state_dir,)
        )
        self.emit = emit
        self.clock = clock
        self.memory_path = cfg.state_dir / MEMORY_FILE
        self.memory = _load_memory(self.memory_path)
        """The staged commit and the repo's window, kept across restarts: after a reboot
        the node applies offline and keeps the repo's window before any new commit."""
        self._override: tuple[str, float] | None = None
        self._expired_seen: set[tuple[Path, float]] = set()

    # -- the pipeline's question ------------------------------------------------------

    def hold(self, desired: DesiredState) -> Hold | None:
        """None: apply ``desired`` now. Else why not (and the commit stays staged)."""
        repo = desired.options.activation
        self._remember(replace(self.memory, window=repo.window, timezone=repo.timezone))
        disk = self._disk_problem()
        if disk is not None:
            return Hold("error", "DiskSpace", disk, None)
        hold = self.blocked()
        override = self._take_override()
        if hold is not None and override is not None:
            log.warning("applying %s despite %s: hub override (%s)", desired.commit[:12],
                        hold.message, override)  # fmt: skip
            self.emit("override", {"reason": override, "held_by": hold.message})
            hold = None
        self._remember(replace(self.memory, staged=desired.commit if hold is not None else None))
        return hold

    @property
    def staged(self) -> str | None:
        """The commit held back, pre-staged in the Git cache."""
        return self.memory.staged

    def blocked(self) -> Hold | None:
        """The lock or window holding applies back now (drift is report-only then)."""
        now = self.clock()
        locks = self._live_locks(now)
        if locks:
            text = "; ".join(lock.describe() for lock in locks)
            end = max(lock.expires for lock in locks)
            return Hold("deferred", "Locked", f"locked: {text}", None if math.isinf(end) else end)
        window, tz_name = self.window()
        if window:
            schedule = _schedule(window, tz_name)
            if not schedule.contains(now):
                where = tz_name or "host local time"
                return Hold("deferred", "OutsideWindow",
                            f"outside window {', '.join(window)} {where}",
                            schedule.next_change(now))  # fmt: skip
        return None

    def window(self) -> tuple[tuple[str, ...], str | None]:
        """The window and zone in force: the fleet repo's unless agent.toml pins its own."""
        if self.cfg.pin:
            return self.cfg.window, self.cfg.timezone
        window = self.cfg.window if self.memory.window is None else self.memory.window
        return window, self.memory.timezone or self.cfg.timezone

    def _remember(self, memory: Memory) -> None:
        if memory == self.memory:
            return
        self.memory = memory
        try:
            write_atomic(self.memory_path, json.dumps(asdict(memory)).encode(), 0o600)
        except OSError as err:  # only the offline apply after a restart is lost
            log.warning("cannot write %s: %s", self.memory_path, err.strerror)

    # -- hub override -----------------------------------------------------------------

    def request_override(self, reason: object) -> None:
        """The hub's ``sync --override REASON``: the next apply ignores lock and window."""
        if not isinstance(reason, str) or not reason.strip():
            log.warning("ignoring a sync override without a reason")
            return
        reason = reason.strip()[:500]
        if not self.cfg.respect_override:
            log.warning("refusing hub override (%s): [activation] respect_override = false", reason)
            self.emit("override_refused", {"reason": reason})
            return
        log.info("hub override requested: %s", reason)
        self._override = (reason, self.clock() + OVERRIDE_VALID)

    def _take_override(self) -> str | None:
        override, self._override = self._override, None
        if override is None or override[1] < self.clock():
            return None
        return override[0]

    # -- locks and disk ---------------------------------------------------------------

    def locks(self) -> list[Lock]:
        return scan(self.dirs, self.cfg.max_ttl)

    def _live_locks(self, now: float) -> list[Lock]:
        live = []
        for lock in self.locks():
            if lock.expires > now:
                live.append(lock)
            elif (lock.path, lock.expires) not in self._expired_seen:
                # Reported once per lock file version, then ignored.
                self._expired_seen.add((lock.path, lock.expires))
                log.warning("update lock %s expired; ignoring it", lock.describe())
                self.emit("lock_expired",
                          {"name": lock.name, "reason": lock.reason, "expired_at": lock.expires,
                           "file": str(lock.path)})  # fmt: skip
        return live

    def _disk_problem(self) -> str | None:
        need = self.cfg.min_free
        if need <= 0:
            return None
        for root in self.disk_roots:
            existing = next((p for p in (root, *root.parents) if p.exists()), Path("/"))
            try:
                free = shutil.disk_usage(existing).free
            except OSError as err:
                return f"cannot read free space of {existing}: {err.strerror}"
            if free < need:
                return (f"only {_mib(free)} free on {existing}, need {_mib(need)} "
                        "([activation] min_free); nothing applied")  # fmt: skip
        return None


class PrestagedSource(SourceWrapper):
    """The pipeline's Git source, falling back to the staged commit when Git is down.

    Without it a node whose lock is released while Git is unreachable would wait for
    Git, although the commit it held back is verified and complete in its cache (the
    rest is the cache, which works offline: passed through).
    """

    def __init__(self, source: Source, gate: ActivationGate) -> None:
        super().__init__(source)
        self.gate = gate
        self._offline = False

    async def remote_head(self) -> str:
        try:
            head = await self.source.remote_head()
        except FetchError as err:
            staged = self.gate.staged
            if staged is None or not self.source.has_commit(staged):
                raise
            if not self._offline:
                log.warning("git unreachable (%s); continuing with pre-staged %s", err, staged[:12])
            self._offline = True
            return staged
        self._offline = False
        return head
