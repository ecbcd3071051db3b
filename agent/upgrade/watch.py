"""The agent's side of an upgrade in flight, loaded only when ``state_dir/upgrade``
holds a record without a result (agent.agentpin.upgrade_pending).

- :func:`resume_cut_off`, before the agent's loops start: the watchdog unit died with
  the node (power cut, kill -9), so start it again. Its script first runs
  ``dpkg --configure -a``, then installs the new package again and waits, so a
  half-installed package ends either installed and healthy or rolled back.
- :func:`confirm_healthy`, a task of the new agent: once a reconcile ends synced (and the
  broker is reachable, when it was before the upgrade), write the ``healthy`` marker the
  watchdog waits for, and say so.
"""

from __future__ import annotations

import asyncio
import logging
import os

from agent import __version__
from agent.errors import ApplyError
from agent.reconcile import Reconciler
from agent.report import Reporter
from agent.upgrade import record as rec_file
from agent.upgrade.package import package_path
from agent.upgrade.record import MAX_ATTEMPTS, UpgradeRecord
from agent.upgrade.transient import launch, unit_active

log = logging.getLogger(__name__)
PASS_POLL = 0.5


async def resume_cut_off(reconciler: Reconciler) -> UpgradeRecord | None:
    """The pending upgrade if this agent is its new version (it must confirm it)."""
    try:
        return await _resume(reconciler)
    except OSError as err:
        # The agent must come up whatever: the watchdog unit, if alive, still decides.
        log.error("cannot resume the agent upgrade: %s", err)
        return None


async def _resume(reconciler: Reconciler) -> UpgradeRecord | None:
    state_dir = reconciler.cfg.state_dir
    record = rec_file.load(state_dir)
    if record is None:
        return None
    if not await unit_active(record.unit):
        if record.attempts >= MAX_ATTEMPTS:
            log.error(
                "agent upgrade to %s cut off %d times: giving up", record.target, MAX_ATTEMPTS
            )
            rec_file.write_result(
                state_dir, f"failed: the install was cut off {MAX_ATTEMPTS} times"
            )
            return None
        record.attempts += 1
        rec_file.save(state_dir, record)
        log.warning("agent upgrade to %s was cut off; resuming it", record.target)
        new, prev = package_path(state_dir, record.target), package_path(state_dir, record.source)
        try:
            await launch(state_dir, record.unit, new, prev, record.timeout)
        except ApplyError as err:
            rec_file.write_result(state_dir, f"failed: cannot resume the install: {err}")
            return None
    # The previous agent (rolled back, or the install had not started): the unit decides.
    return record if __version__ == record.target else None


async def confirm_healthy(
    reconciler: Reconciler, reporter: Reporter | None, record: UpgradeRecord
) -> None:
    # No pass event in the pipeline; a local attribute read, and only mid-upgrade.
    while reconciler.outcome.state not in ("synced", "drifted"):  # noqa: ASYNC110
        await asyncio.sleep(PASS_POLL)
    if record.broker and reporter is not None:
        while not await reporter.wait_connected(timeout=record.timeout):
            log.warning("agent %s: broker not reachable yet, not healthy", __version__)
    state_dir = reconciler.cfg.state_dir
    rec_file.set_previous(state_dir, record.source)
    rec_file.mark_healthy(state_dir, __version__, os.getpid())
    log.info("agent upgraded %s -> %s: healthy", record.source, __version__)
    reconciler._event(
        "agent_upgraded", reconciler.outcome.commit, source=record.source, target=__version__
    )
