"""The systemd target: unit files and drop-ins from ``systemd/`` of the desired state.

Unit files are written straight into ``unit_dir`` (atomically) and systemd is driven
through :class:`agent.systemctl.Systemctl`, batching every verb over all units so a
reconcile or a drift check costs a few systemctl processes, not a few per unit.

Inventory subjects are unit file names (``app.service``) and drop-ins
(``app.service.d/10-env.conf``). A unit entry's meta holds the enablement and state
that were made live; an entry written but not yet (re)started carries ``pending`` so a
crash between the write and the restart is resumed by the next plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agent.atomic import write_atomic
from agent.changeset import Action, ChangeSet
from agent.config import HealthConfig, SystemdConfig
from agent.desired import GIT_MODE_SYMLINK, DesiredFile, DesiredState, UnitOptions
from agent.errors import ApplyError, PlanError
from agent.state import Owned, digest
from agent.systemctl import Systemctl
from agent.targets.base import ApplyContext, HealthProblem
from agent.targets.systemdunits import (
    ADOPTED,
    CONTENT,
    DROPIN_SUFFIX,
    ENABLED_STATES,
    JOURNAL_LINES,
    MASKED_STATES,
    OPTIONS,
    PENDING,
    REMOVED_SUFFIX,
    Intent,
    change_details,
    drift_item,
    has_install_section,
    is_template,
    is_unit_file,
    matches,
    prop_int,
    running,
    state_text,
    subject_problem,
    unit_name_problem,
    unit_of,
)
from common.wire import DriftItem, DriftKind


class SystemdTarget:
    name = "systemd"

    def __init__(self, cfg: SystemdConfig, health: HealthConfig) -> None:
        self.unit_dir = cfg.unit_dir
        # Start and restart jobs are waited for; they get as long as health allows.
        self.systemctl = Systemctl(cfg.systemctl, timeout=max(30.0, health.timeout))
        self._restarts: dict[str, int] = {}
        """NRestarts per unit when it was last applied: health fails when it grows."""

    # -- desired state -------------------------------------------------------------------

    def _desired(self, desired: DesiredState) -> dict[str, DesiredFile]:
        units = desired.under("systemd")
        for subject, f in sorted(units.items()):
            where = f"{f.origin}/systemd/{subject}"
            if f.git_mode == GIT_MODE_SYMLINK:
                raise PlanError(f"{where}: symlinks are not allowed under systemd/")
            problem = subject_problem(subject)
            if problem:
                raise PlanError(f"{where}: invalid unit file name: {problem}")
        for unit in desired.options.units:
            problem = unit_name_problem(unit)
            if problem:
                raise PlanError(f"edgefleet.toml: units.{unit!r}: invalid unit name: {problem}")
        return units

    def _intent(self, desired: DesiredState, unit: str, data: bytes) -> Intent:
        if is_template(unit):
            return Intent(enabled=False, started=False)
        opts = desired.options.units.get(unit, UnitOptions())
        enabled = has_install_section(data) if opts.enable is None else opts.enable
        return Intent(enabled=enabled, started=opts.state == "started")

    def _meta(self, desired: DesiredState, subject: str, f: DesiredFile) -> dict[str, Any]:
        if not is_unit_file(subject):
            return {}
        return self._intent(desired, subject, f.data).meta()

    def _managed(self, units: Mapping[str, DesiredFile]) -> list[str]:
        """Unit files the agent enables and starts (templates have no instance to run)."""
        return sorted(s for s in units if is_unit_file(s) and not is_template(s))

    # -- plan ----------------------------------------------------------------------------

    async def plan(self, desired: DesiredState, owned: Mapping[str, Owned]) -> ChangeSet:
        units = self._desired(desired)
        cs = ChangeSet(self.name)
        for subject, f in sorted(units.items()):
            entry = owned.get(subject)
            if entry is None:
                adopted = self._check_unmanaged(subject, f)
                cs.add(subject, Action.CREATED, ADOPTED if adopted else "")
                continue
            reasons = []
            if entry.digest != digest(f.data) or entry.meta.get(PENDING):
                reasons.append(CONTENT)
            want = self._meta(desired, subject, f)
            if {k: entry.meta.get(k) for k in want} != want:
                reasons.append(OPTIONS)
            cs.add(subject, Action.CONFIGURED if reasons else Action.UNCHANGED, ", ".join(reasons))
        for subject in sorted(set(owned) - set(units)):
            cs.add(subject, Action.DELETED)
        return cs

    def _check_unmanaged(self, subject: str, f: DesiredFile) -> bool:
        """True to adopt identical bytes already on disk; PlanError for anything else there."""
        path = self.unit_dir / subject
        if not path.is_symlink() and not path.exists():
            return False
        if not path.is_symlink() and path.is_file():
            with contextlib.suppress(OSError):
                if path.read_bytes() == f.data:
                    return True
        kind = "unit" if is_unit_file(subject) else "drop-in"
        raise PlanError(
            f"{f.origin}/systemd/{subject}: refusing to overwrite unmanaged {kind} {subject} "
            f"({path} exists and edgefleet does not own it)"
        )

    # -- apply ---------------------------------------------------------------------------

    async def _write(self, subject: str, data: bytes) -> None:
        path = self.unit_dir / subject
        try:
            await asyncio.to_thread(_write_unit, path, data)
        except OSError as err:
            raise ApplyError(f"cannot write {subject} to {path}: {err.strerror}") from err

    async def apply(self, plan: ChangeSet, desired: DesiredState, ctx: ApplyContext) -> None:
        units = self._desired(desired)
        changes = {c.subject: c for c in plan.of(Action.CREATED, Action.CONFIGURED)}
        written = [
            s
            for s, c in changes.items()
            if c.action is Action.CREATED or CONTENT in change_details(c)
        ]
        for subject in written:
            f = units[subject]
            await self._write(subject, f.data)
            ctx.record(self.name, subject, Owned(digest(f.data), desired.commit, {PENDING: True}))

        managed = self._managed(units)
        intents = {u: self._intent(desired, u, units[u].data) for u in managed}
        content_units = {unit_of(s) for s in written}
        option_units = {s for s, c in changes.items() if OPTIONS in change_details(c)}
        touched = [u for u in managed if u in content_units or u in option_units]
        created = {s for s, c in changes.items() if c.action is Action.CREATED}

        enable = [u for u in touched if intents[u].enabled]
        disable = [u for u in touched if not intents[u].enabled and u not in created]
        stop = [u for u in touched if not intents[u].started]
        restart = [u for u in managed if u in content_units and intents[u].started]
        start = [u for u in option_units if u in intents and intents[u].started]
        start = [u for u in start if u not in restart]
        # Drop-ins for units the agent does not own (e.g. a distro nginx.service):
        # restart them only if they run.
        try_restart = sorted(u for u in content_units if u not in intents and not is_template(u))
        reload, try_reload = self._file_triggers(desired, ctx, intents, restart, try_restart)

        sc = self.systemctl
        await sc.verb("enable", enable, "--no-reload")
        await sc.verb("disable", disable, "--no-reload")
        if written or enable or disable:
            await sc.daemon_reload()
        await sc.verb("stop", stop)
        await sc.verb("restart", restart)
        await sc.verb("start", start)
        await sc.verb("try-restart", try_restart)
        await sc.verb("reload-or-restart", reload)
        await sc.verb("try-reload-or-restart", try_reload)

        for subject in changes:
            f = units[subject]
            meta = self._meta(desired, subject, f)
            ctx.record(self.name, subject, Owned(digest(f.data), desired.commit, meta))
        if changes or restart or try_restart or reload or try_reload:
            await self._remember_restarts(desired, units)

    def _file_triggers(
        self,
        desired: DesiredState,
        ctx: ApplyContext,
        intents: Mapping[str, Intent],
        restart: list[str],
        try_restart: list[str],
    ) -> tuple[list[str], list[str]]:
        """Add units whose restart_on/reload_on globs match a changed managed file.

        Returns (reload, try_reload); restarts are appended to the lists given.
        """
        files = ctx.changes.get("files")
        paths = [c.subject for c in files.writes] if files is not None else []
        reload: list[str] = []
        try_reload: list[str] = []
        if not paths:
            return reload, try_reload
        for unit, opts in sorted(desired.options.units.items()):
            if is_template(unit) or unit in restart or unit in try_restart:
                continue
            if unit in intents and not intents[unit].started:
                continue
            owned = unit in intents
            if matches(paths, opts.restart_on):
                (restart if owned else try_restart).append(unit)
            elif matches(paths, opts.reload_on):
                (reload if owned else try_reload).append(unit)
        return reload, try_reload

    async def _remember_restarts(
        self, desired: DesiredState, units: Mapping[str, DesiredFile]
    ) -> None:
        watched = [
            u for u in self._managed(units) if self._intent(desired, u, units[u].data).started
        ]
        props = await self.systemctl.show(watched, ("NRestarts",))
        self._restarts = {u: prop_int(p.get("NRestarts")) for u, p in props.items()}

    # -- prune ---------------------------------------------------------------------------

    async def prune(self, plan: ChangeSet, ctx: ApplyContext) -> None:
        deleted = [c.subject for c in plan.of(Action.DELETED)]
        if not deleted:
            return
        units = [s for s in deleted if is_unit_file(s) and not is_template(s)]
        sc = self.systemctl
        props = await sc.show(units, ("LoadState", "ActiveState", "UnitFileState"))
        await sc.verb(
            "stop",
            [
                u
                for u, p in props.items()
                if p.get("LoadState") == "loaded" and p.get("ActiveState") != "inactive"
            ],
        )
        await sc.verb(
            "disable",
            [u for u, p in props.items() if p.get("UnitFileState") in ENABLED_STATES],
            "--no-reload",
        )
        try:
            await asyncio.to_thread(self._delete, deleted)
        except OSError as err:
            raise ApplyError(f"cannot delete unit file {err.filename}: {err.strerror}") from err
        await sc.daemon_reload()
        await sc.verb(
            "reset-failed", [u for u, p in props.items() if p.get("ActiveState") == "failed"]
        )
        for subject in deleted:
            ctx.record(self.name, subject, None)
        # A removed drop-in changes the unit it configured: restart it if it runs.
        remaining = {unit_of(s) for s in deleted if not is_unit_file(s)} - set(deleted)
        await sc.verb("try-restart", [u for u in remaining if not is_template(u)])

    def _delete(self, subjects: Iterable[str]) -> None:
        dirs: set[Path] = set()
        for subject in subjects:
            path = self.unit_dir / subject
            path.unlink(missing_ok=True)
            dirs.add(path.parent if not is_unit_file(subject) else Path(f"{path}{DROPIN_SUFFIX}"))
        for d in dirs:
            # Only an empty drop-in dir goes: files placed by others stay.
            with contextlib.suppress(FileNotFoundError, OSError):
                d.rmdir()

    # -- health --------------------------------------------------------------------------

    async def health(self, desired: DesiredState, ctx: ApplyContext) -> list[HealthProblem]:
        units = desired.under("systemd")
        watched = [
            u for u in self._managed(units) if self._intent(desired, u, units[u].data).started
        ]
        problems: list[HealthProblem] = []
        props = await self.systemctl.show(watched)
        for unit, p in props.items():
            now = prop_int(p.get("NRestarts"))
            before = self._restarts.setdefault(unit, now)
            if now < before:  # a manual start resets the counter
                self._restarts[unit] = before = now
            if not running(p):
                reason = f"{unit} is {state_text(p)}"
            elif now > before:
                reason = f"{unit} restarted {now - before} time(s) since it was applied"
            else:
                continue
            if len(problems) < 3:  # journal lines only for the first few: keep it cheap
                lines = await self.systemctl.journal(unit, JOURNAL_LINES)
                if lines:
                    reason += "; journal: " + " | ".join(lines.splitlines())
            problems.append(HealthProblem(self.name, unit, reason))
        return problems

    # -- drift ---------------------------------------------------------------------------

    async def drift(self, desired: DesiredState, owned: Mapping[str, Owned]) -> list[DriftItem]:
        units = desired.under("systemd")
        subjects = sorted(s for s in owned if s in units)
        items: list[DriftItem] = []
        file_state = await asyncio.to_thread(self._file_drift, subjects, owned)
        for subject, (kind, detail) in file_state.items():
            items.append(drift_item(subject, kind, detail))
        managed = [s for s in self._managed(units) if s in owned]
        props = await self.systemctl.show(managed)
        for unit, p in props.items():
            if unit in file_state and file_state[unit][0] in ("masked", "missing"):
                continue  # the file is the problem; its live state follows from it
            intent = self._intent(desired, unit, units[unit].data)
            if p.get("LoadState") == "masked" or p.get("UnitFileState") in MASKED_STATES:
                items.append(drift_item(unit, "masked", "unit is masked"))
                continue
            if intent.enabled and p.get("UnitFileState") not in ENABLED_STATES:
                items.append(
                    drift_item(unit, "disabled", f"UnitFileState={p.get('UnitFileState')}")
                )
            if intent.started and not running(p) and p.get("ActiveState") != "activating":
                items.append(drift_item(unit, "stopped", state_text(p)))
        extras = await asyncio.to_thread(self._extra_dropins, managed, owned)
        items.extend(drift_item(s, "extra", "drop-in not managed by edgefleet") for s in extras)
        return items

    def _file_drift(
        self, subjects: Iterable[str], owned: Mapping[str, Owned]
    ) -> dict[str, tuple[DriftKind, str]]:
        found: dict[str, tuple[DriftKind, str]] = {}
        for subject in subjects:
            path = self.unit_dir / subject
            if path.is_symlink():
                target = os.readlink(path)
                kind: DriftKind = "masked" if target == "/dev/null" else "modified"
                found[subject] = (kind, f"replaced by a symlink to {target}")
                continue
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                found[subject] = ("missing", f"{path} does not exist")
                continue
            except OSError as err:
                found[subject] = ("modified", f"{path} unreadable: {err.strerror}")
                continue
            if digest(data) != owned[subject].digest:
                found[subject] = ("modified", "bytes differ from the applied commit")
        return found

    def _extra_dropins(self, managed: Iterable[str], owned: Mapping[str, Owned]) -> list[str]:
        extras = []
        for unit in managed:
            d = self.unit_dir / f"{unit}{DROPIN_SUFFIX}"
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                for conf in sorted(d.iterdir()):
                    subject = f"{unit}{DROPIN_SUFFIX}/{conf.name}"
                    if conf.name.endswith(".conf") and subject not in owned:
                        extras.append(subject)
        return extras

    # -- correct -------------------------------------------------------------------------

    async def correct(
        self, drift: list[DriftItem], desired: DesiredState, ctx: ApplyContext
    ) -> None:
        mine = [d for d in drift if d["target"] == self.name]
        if not mine:
            return
        units = desired.under("systemd")
        rewrite = sorted(
            {
                d["subject"]
                for d in mine
                if d["kind"] in ("modified", "missing", "masked")
                and d["subject"] in units
                and (d["kind"] != "masked" or (self.unit_dir / d["subject"]).is_symlink())
            }
        )
        extra = sorted({d["subject"] for d in mine if d["kind"] == "extra"})
        for subject in rewrite:
            await self._write(subject, units[subject].data)
        try:
            await asyncio.to_thread(self._move_aside, extra)
        except OSError as err:
            raise ApplyError(f"cannot move {err.filename} aside: {err.strerror}") from err

        managed = self._managed(units)
        intents = {u: self._intent(desired, u, units[u].data) for u in managed}
        changed = {unit_of(s) for s in [*rewrite, *extra]}
        masked = {d["subject"] for d in mine if d["kind"] == "masked"}
        disabled = {d["subject"] for d in mine if d["kind"] == "disabled"}
        # A rewritten file may have lost its enablement links too: enable is idempotent.
        enable = [u for u in intents if intents[u].enabled and (u in disabled or u in rewrite)]
        restart = [u for u in managed if u in changed and intents[u].started]
        start = [
            d["subject"]
            for d in mine
            if d["kind"] in ("stopped", "masked")
            and d["subject"] in intents
            and intents[d["subject"]].started
            and d["subject"] not in restart
        ]
        sc = self.systemctl
        await sc.verb("unmask", [u for u in masked if not (self.unit_dir / u).is_symlink()])
        await sc.verb("enable", enable, "--no-reload")
        if rewrite or extra or enable or masked:
            await sc.daemon_reload()
        await sc.verb("restart", restart)
        await sc.verb("start", start)
        # Same bytes as recorded, except for a template re-rendered with changed facts:
        # then the inventory must follow, or the unit drifts again on every check. Recorded
        # after the restart, so a failed one is retried as drift.
        for subject in rewrite:
            f = units[subject]
            meta = self._meta(desired, subject, f)
            ctx.record(self.name, subject, Owned(digest(f.data), desired.commit, meta))
        if restart or start:
            await self._remember_restarts(desired, units)

    def _move_aside(self, subjects: Iterable[str]) -> None:
        # An operator's hand-made drop-in is kept next to where it was, just inactive.
        for subject in subjects:
            path = self.unit_dir / subject
            os.replace(path, path.with_name(path.name + REMOVED_SUFFIX))

    async def close(self) -> None:
        """Nothing to release: every systemctl call is its own short-lived process."""


def _write_unit(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, 0o644)
