"""sd_notify(3) without a dependency: READY, STATUS, WATCHDOG and STOPPING to systemd.

systemd hands a Type=notify service ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an
abstract socket) and, with WatchdogSec=, ``$WATCHDOG_USEC``. Outside systemd both are
unset and every call is a cheap no-op, so the agent can always call it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        # '@' marks a Linux abstract socket, addressed with a leading NUL byte.
        self.address: str | None = ("\0" + raw[1:] if raw.startswith("@") else raw) or None
        self.watchdog_usec = _positive_int(env.get("WATCHDOG_USEC"))
        # WATCHDOG_PID names the process the watchdog is meant for (not a child of it).
        watchdog_pid = _positive_int(env.get("WATCHDOG_PID"))
        if watchdog_pid is not None and watchdog_pid != os.getpid():
            self.watchdog_usec = None
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half the watchdog timeout, as systemd advises."""
        if self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2_000_000

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines, e.g. ``notify(READY=1, STATUS="synced")``."""
        return self.send(*(f"{key}={_one_line(value)}" for key, value in fields.items()))

    def send(self, *assignments: str) -> bool:
        """Send raw ``KEY=value`` assignments in one datagram; returns whether it was sent.

        A dead socket is logged once and never raises: losing a status line must not
        stop the agent.
        """
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(assignments).encode(), self.address)
        except OSError as err:
            if not self._failed:
                log.warning("cannot notify systemd at %r: %s", self.address, err)
            self._failed = True
            return False
        if self._failed:
            log.info("notifying systemd works again")
        self._failed = False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def stopping(self) -> bool:
        return self.notify(STOPPING=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


_process_notifier: Notifier | None = None


def _default() -> Notifier:
    # Built on first use from this process's environment, as systemd set it at exec.
    global _process_notifier  # noqa: PLW0603
    if _process_notifier is None:
        _process_notifier = Notifier()
    return _process_notifier


def notify(*assignments: str) -> bool:
    """``notify("READY=1")``, ``notify("STATUS=synced")`` for this process's service."""
    return _default().send(*assignments)


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings for this process, or None without a watchdog."""
    return _default().watchdog_interval


def _one_line(value: str | int) -> str:
    # A newline would start a new assignment in the datagram.
    return str(value).replace("\n", " ")


def _positive_int(raw: str | None) -> int | None:
    if raw is None or not raw.isdigit() or int(raw) <= 0:
        return None
    return int(raw)
