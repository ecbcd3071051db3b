"""The install runs in a TRANSIENT systemd unit, not in the agent: the package's prerm
stops the agent, and a broken new agent cannot be trusted to undo itself. The unit's
script is the watchdog: it installs the new package, waits for the new agent's
"healthy" marker (written after its first synced reconcile) and, if none comes within
the pin's ``upgrade_timeout``, reinstalls the kept previous package. It is written by the
agent that starts the upgrade, so it never depends on the version being installed.
"""

from __future__ import annotations

import re
from pathlib import Path

from agent.atomic import write_atomic
from agent.errors import ApplyError
from agent.upgrade.package import run

LOCK_WAIT = 600
"""Seconds dpkg waits for apt-daily / unattended-upgrades to release dpkg's lock."""

# dpkg's lock is an fcntl lock: flock(1) would not exclude apt, so retry dpkg itself while
# it says the lock is held. --force-confold keeps operator-edited conffiles, unasked.
SCRIPT = r"""#!/bin/sh
# edgefleet agent upgrade (transient unit).
# usage: upgrade.sh NEW.deb PREV.deb STATE_DIR TIMEOUT LOCK_WAIT
set -u
new=$1 prev=$2 dir=$3 timeout=$4 lock_wait=$5
up=$dir/upgrade
say() { echo "edgefleet-upgrade: $*"; }
finish() { printf '%s\n' "$1" >"$up/result.tmp" && mv "$up/result.tmp" "$up/result"; }
# The line after "error processing" says why (e.g. "... post-installation script ...").
why() {
    printf '%s\n' "$1" | grep -A1 -m1 'error processing' | tail -n 1 | sed 's/^ *//' | grep . ||
        printf '%s\n' "$1" | tail -n 1
}
dpkg_wait() {
    end=$(( $(date +%s) + lock_wait ))
    while :; do
        out=$(DEBIAN_FRONTEND=noninteractive \
            dpkg --force-confdef --force-confold "$@" 2>&1 </dev/null)
        rc=$?
        printf '%s\n' "$out"
        [ $rc = 0 ] && return 0
        case $out in
            *"locked by another process"*) ;;
            *) last=$(why "$out"); return 1 ;;
        esac
        [ "$(date +%s)" -lt "$end" ] || { last="dpkg lock held for ${lock_wait}s"; return 1; }
        say "dpkg is locked (apt?); waiting"
        sleep 2
    done
}
# Healthy = the marker names the agent's current main process (not one restarted since).
healthy() {
    pid=$(systemctl show -p MainPID --value edgefleet-agent.service)
    [ -e "$up/healthy" ] && [ "$pid" != 0 ] && [ "$(cut -d' ' -f1 "$up/healthy")" = "$pid" ]
}

rm -f "$up/healthy" "$up/result"
last=
# An install cut off earlier (power loss, kill -9) first gets finished, as dpkg asks.
dpkg_wait --configure -a || say "dpkg --configure -a: $last"
if dpkg_wait -i "$new"; then
    waited=0
    while [ "$waited" -lt "$timeout" ]; do
        if healthy; then say "new agent healthy"; finish ok; exit 0; fi
        sleep 1
        waited=$((waited + 1))
    done
    reason="the new agent was not healthy within ${timeout}s"
else
    reason="dpkg -i failed: $last"
fi
say "$reason; reinstalling $prev"
# The result goes first: the previous agent, restarted by its postinst, reads it.
finish "failed: $reason"
if dpkg_wait -i "$prev"; then exit 1; fi
finish "failed: $reason; reinstalling the previous package failed too: $last"
exit 2
"""


def unit_name(version: str) -> str:
    """``edgefleet-upgrade-<version>`` with what systemd forbids in unit names replaced."""
    return "edgefleet-upgrade-" + re.sub(r"[^A-Za-z0-9:_.-]", "_", version)


async def launch(state_dir: Path, unit: str, new: Path, prev: Path, healthy_within: float) -> None:
    """Start the watchdog unit; returns at once (the unit will stop this agent)."""
    script = state_dir / "upgrade" / "upgrade.sh"
    write_atomic(script, SCRIPT.encode(), 0o700)
    # A failed run of an earlier attempt would block the name.
    await run("systemctl", "reset-failed", unit)
    rc, _, err = await run(
        "systemd-run",
        "--unit",
        unit,
        "--collect",
        "--quiet",
        "--description=edgefleet agent upgrade",
        # dpkg must never be killed half-way by a stop timeout; the script bounds itself.
        "--property=TimeoutStopSec=infinity",
        "--property=KillMode=process",
        "/bin/sh",
        str(script),
        str(new),
        str(prev),
        str(state_dir),
        str(int(healthy_within)),
        str(LOCK_WAIT),
    )
    if rc != 0:
        raise ApplyError(f"systemd-run {unit} failed: {err.strip()}")


async def unit_active(unit: str) -> bool:
    _, out, _ = await run("systemctl", "is-active", unit)
    return out.strip() in ("active", "activating", "deactivating")
