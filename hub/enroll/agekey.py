"""Enrollment step: the node's age identity, made on the node, its recipient recorded here.

The identity never leaves the host: ``edgefleet-agent keygen`` creates it there (or
prints the existing one's recipient), over the SSH session whose host key was checked,
so the recipient recorded in the hub's database is one the operator can trust for
``edgefleet-hub recipients`` (see :mod:`hub.recipients`).
"""

from __future__ import annotations

import asyncio
import shlex

from hub.enroll import EnrollError, say
from hub.enroll.agentconf import AgentToml
from hub.enroll.options import Settings
from hub.enroll.ssh import Remote
from hub.errors import HubError
from hub.recipients import RECIPIENT, Enrolled, record


async def node_recipient(remote: Remote, conf: AgentToml, settings: Settings) -> str:
    """Run keygen on the host (idempotent: an existing identity is kept); returns the
    recipient. Before the agent starts, which reads the identity once at start."""
    out = await remote.sh(f"edgefleet-agent keygen --config {shlex.quote(str(conf.path))}")
    lines = out.strip().splitlines()
    recipient = lines[-1].strip() if lines else ""
    if RECIPIENT.fullmatch(recipient) is None:
        raise EnrollError(f"{settings.target}: keygen printed no age recipient: {out[-200:]!r}")
    return recipient


async def record_recipient(recipient: str, conf: AgentToml, settings: Settings) -> None:
    """Record the recipient in the hub's database. Called once the agent runs its new
    configuration: a database that is down then fails only this step, which enrolling
    again redoes (failing before the restart, a re-run would find the files written and
    leave the agent on its old configuration)."""
    if settings.database is None:
        say("age key", f"{recipient} (not recorded: no fleet.toml, so no hub database)")
        return
    entry = Enrolled(conf.node, recipient, settings.branch, dict(settings.labels))
    try:
        await asyncio.to_thread(record, settings.database, entry)
    except HubError as err:  # the database is down or refuses: enroll again later
        raise EnrollError(
            f"{settings.target}: age recipient {recipient} not recorded: {err} "
            "(enroll again once the database answers: it is idempotent)"
        ) from err
    say("age key", f"{recipient} recorded in {settings.database}")
