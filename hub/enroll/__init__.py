"""``edgefleet-hub enroll``: install, configure and start the agent on a host over SSH.

The steps are listed in :data:`hub.enroll.options.DESCRIPTION` (the command's help).
Modules, one job each: :mod:`.options` (flags -> Settings; imports nothing heavy, so
the CLI stays light), :mod:`.steps` (the orchestration), :mod:`.ssh` (the remote
session, host-key trust), :mod:`.agentconf` (agent.toml from a typed value, checked by
``agent.config``), :mod:`.watch` (the first-status wait).
"""

from __future__ import annotations

from hub.errors import HubError


class EnrollError(HubError):
    """Enrollment stopped; the message says where and why (auth, host key, OS, ...)."""


def say(step: str, detail: str) -> None:
    """One progress line of the enrollment."""
    print(f"  {step:<12} {detail}", flush=True)
