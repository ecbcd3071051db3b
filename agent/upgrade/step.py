"""The reconcile step for a commit whose ``[agent]`` pin names another version than the
running one: check, download, keep the running package, start the watchdog unit.

Nothing on the node changes before the package is known good (pinned hash, edgefleet,
the pinned version, this architecture); a package that is not is the commit's fault and
refuses it whole. The rest of the commit is applied by the NEW agent, after its restart.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from agent import __version__
from agent.agentpin import AgentPin
from agent.errors import ApplyError
from agent.reconcile import Outcome
from agent.report import Reporter
from agent.upgrade import record as rec_file
from agent.upgrade.fetch import PackageRefused, PackageUnreachable, fetch_package
from agent.upgrade.package import (
    check_package,
    installed_version,
    keep_running_package,
    package_path,
    prune_packages,
)
from agent.upgrade.transient import launch, unit_active, unit_name
from agent.upgrade.version import compare

if TYPE_CHECKING:
    from agent.reconcile import Reconciler

log = logging.getLogger(__name__)


async def upgrade_agent(rec: Reconciler, head: str, pin: AgentPin, dry_run: bool) -> Outcome:
    """Outcome of ``head`` on this node while it pins agent ``pin.version``."""
    try:
        return await _upgrade(rec, head, pin, dry_run)
    except OSError as err:
        # The state dir (full disk?) or a tool; the running agent stays as it is.
        log.error("agent upgrade to %s: %s", pin.version, err)
        return Outcome("error", "AgentUpgradeError", f"agent upgrade to {pin.version}: {err}", head)


async def _upgrade(rec: Reconciler, head: str, pin: AgentPin, dry_run: bool) -> Outcome:
    running = __version__
    state_dir = rec.cfg.state_dir
    earlier = rec_file.load(state_dir)
    if earlier is not None and earlier.sha256 == pin.sha256 and not dry_run:
        return await _earlier_attempt(rec, head, pin, earlier)
    installed = await installed_version()
    if installed is None:
        return rec._refuse(
            head,
            "AgentNotUpgradable",
            f"the agent was installed without dpkg (packaging/install.sh): it cannot install "
            f"the pinned edgefleet {pin.version} package; upgrade it with install.sh",
        )
    dest = package_path(state_dir, pin.version)
    before = rec_file.previous(state_dir)
    if compare(pin.version, running) < 0 and not pin.allow_downgrade and pin.version != before:
        return rec._refuse(
            head,
            "AgentDowngradeRefused",
            f"the commit pins agent {pin.version}, older than the running {running} (and not "
            f"the version this node ran before, {before}): set allow_downgrade = true in "
            "[agent] to downgrade",
        )
    if dry_run:
        return Outcome("progressing", "DryRun", f"would upgrade the agent to {pin.version}", head)
    try:
        await fetch_package(pin.package, pin.sha256, dest)
        await check_package(dest, pin.version)
    except PackageRefused as err:
        dest.unlink(missing_ok=True)
        return rec._refuse(head, "AgentPackageRefused", str(err))
    except PackageUnreachable as err:
        log.warning("agent package not downloaded yet: %s", err)
        return Outcome("error", "PackageUnreachable", str(err), head)
    try:
        prev = await keep_running_package(state_dir, installed)
    except ApplyError as err:
        return Outcome("failed", "AgentUpgradeFailed", f"no package to roll back to: {err}", head)
    prune_packages(state_dir, {installed, pin.version, before or installed})
    broker = isinstance(rec.report, Reporter) and rec.report.connected
    record = rec_file.UpgradeRecord(
        source=installed,
        target=pin.version,
        sha256=pin.sha256,
        commit=head,
        unit=unit_name(pin.version),
        broker=broker,
        timeout=pin.upgrade_timeout,
    )
    rec_file.clear_result(state_dir)
    rec_file.save(state_dir, record)
    message = f"upgrading the agent {installed} -> {pin.version} for {head[:12]}"
    rec._event("agent_upgrade", head, source=installed, target=pin.version)
    # Said before the unit starts: its dpkg stops this agent within seconds.
    rec.outcome = Outcome("progressing", "UpgradingAgent", message, head)
    rec._publish()
    try:
        await launch(state_dir, record.unit, dest, prev, pin.upgrade_timeout)
    except ApplyError as err:
        rec_file.clear_result(state_dir)
        (state_dir / "upgrade" / "record.json").unlink(missing_ok=True)
        return Outcome("failed", "AgentUpgradeFailed", str(err), head)
    log.info("%s (unit %s)", message, record.unit)
    return rec.outcome


async def _earlier_attempt(
    rec: Reconciler, head: str, pin: AgentPin, earlier: rec_file.UpgradeRecord
) -> Outcome:
    """The verdict on this package from an attempt before (running, or failed)."""
    state_dir = rec.cfg.state_dir
    if rec_file.result(state_dir) is None:
        if await unit_active(earlier.unit):
            return Outcome(
                "progressing",
                "UpgradingAgent",
                f"agent upgrade {earlier.source} -> {pin.version} in progress ({earlier.unit})",
                head,
            )
        # Read again: the unit may have said its result just before it ended.
        if rec_file.result(state_dir) is None:
            rec_file.write_result(
                state_dir, f"failed: {earlier.unit} ended without a result (see its journal)"
            )
    result = rec_file.result(state_dir) or ""
    reason = result.removeprefix("failed: ")
    if result == "ok":
        reason = f"edgefleet {pin.version} was installed, but the agent reports {__version__}"
    if not earlier.reported:
        earlier.reported = True
        rec_file.save(rec.cfg.state_dir, earlier)
        rec._event(
            "agent_upgrade_failed", head, source=earlier.source, target=pin.version, reason=reason
        )
    # Not retried (not even on later commits) until the pin names another package.
    rec._refused = head
    return Outcome(
        "failed",
        "AgentUpgradeFailed",
        f"agent {pin.version} rolled back to {__version__}: {reason}",
        head,
    )
