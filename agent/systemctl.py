"""A small async client for systemd: ``systemctl`` run through a configurable command prefix.

The prefix (``SystemdConfig.systemctl``) is ``["systemctl"]`` on a node, or e.g.
``["nsenter", "-t", PID, "-a", "systemctl"]`` to drive the systemd of a container. Verbs
take many units at once so a reconcile costs a handful of processes, not one per unit.
Every failure becomes an :class:`ApplyError` naming the verb, the units and stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from agent.errors import ApplyError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0
SHOW_PROPERTIES = (
    "Id",
    "LoadState",
    "ActiveState",
    "SubState",
    "Result",
    "NRestarts",
    "UnitFileState",
    "Type",
    "RemainAfterExit",
)


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str


class Systemctl:
    """Runs ``prefix + args``; ``journalctl`` is reached by swapping the last prefix word."""

    def __init__(self, prefix: Sequence[str], timeout: float = DEFAULT_TIMEOUT) -> None:
        if not prefix:
            raise ValueError("systemctl prefix must not be empty")
        self.prefix = tuple(prefix)
        self.timeout = timeout
        self.calls = 0
        """Processes started so far (for tests and benchmarks of batching)."""

    @property
    def journalctl_prefix(self) -> tuple[str, ...] | None:
        """The same prefix ending in journalctl, when the prefix ends in systemctl."""
        if os.path.basename(self.prefix[-1]) != "systemctl":
            return None
        return (*self.prefix[:-1], self.prefix[-1][: -len("systemctl")] + "journalctl")

    async def _exec(self, argv: Sequence[str], what: str, limit: float | None = None) -> Completed:
        self.calls += 1
        limit = self.timeout if limit is None else limit
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as err:
            raise ApplyError(f"{what}: cannot run {argv[0]!r}: {err.strerror}") from err
        try:
            async with asyncio.timeout(limit):
                out, err_out = await proc.communicate()
        except TimeoutError as err:
            raise ApplyError(f"{what}: no answer from systemd within {limit:g}s") from err
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                # Reap it even when cancelled, so no zombie outlives the call.
                await asyncio.shield(proc.wait())
        assert proc.returncode is not None
        return Completed(
            proc.returncode, out.decode(errors="replace"), err_out.decode(errors="replace")
        )

    async def run(
        self,
        *args: str,
        units: Sequence[str] = (),
        check: bool = True,
        limit: float | None = None,
    ) -> Completed:
        """``systemctl ARGS -- UNITS``; raises ApplyError on a non-zero exit when ``check``."""
        argv = [*self.prefix, *args]
        if units:
            argv += ["--", *units]
        what = f"systemctl {' '.join(args)} {' '.join(units)}".rstrip()
        done = await self._exec(argv, what, limit)
        if check and done.returncode != 0:
            detail = done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}"
            raise ApplyError(f"{what}: {detail}")
        return done

    async def daemon_reload(self) -> None:
        await self.run("daemon-reload")

    async def verb(self, verb: str, units: Sequence[str], *flags: str) -> None:
        """One call of ``systemctl VERB [FLAGS] -- UNITS`` for all units; no-op when empty."""
        if units:
            await self.run(verb, *flags, units=sorted(set(units)))

    async def show(
        self, units: Sequence[str], properties: Sequence[str] = SHOW_PROPERTIES
    ) -> dict[str, dict[str, str]]:
        """Properties of many units in ONE call: {unit: {property: value}}."""
        if not units:
            return {}
        props = ("Id", *(p for p in properties if p != "Id"))
        done = await self.run("show", "-p", ",".join(props), units=list(units))
        blocks = [b for b in done.stdout.split("\n\n") if b.strip()]
        if len(blocks) != len(units):
            raise ApplyError(
                f"systemctl show {' '.join(units)}: expected {len(units)} answers, "
                f"got {len(blocks)}"
            )
        # systemctl answers in the order asked; Id may differ (aliases), so zip by order.
        return {
            unit: dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            for unit, block in zip(units, blocks, strict=True)
        }

    async def journal(self, unit: str, lines: int = 5) -> str:
        """The unit's last journal lines, or "" when journalctl is unavailable."""
        prefix = self.journalctl_prefix
        if prefix is None:
            return ""
        argv = [*prefix, "-u", unit, "-n", str(lines), "--no-pager", "-o", "cat", "-q"]
        try:
            done = await self._exec(argv, f"journalctl -u {unit}", limit=5.0)
        except ApplyError as err:
            log.debug("no journal for %s: %s", unit, err)
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""
