"""One retry policy for every client (MQTT, Git, the agent's poll loop), driven by typed
error kinds rather than by reading reason strings.

``transient``: the server may answer later (down, timeout, refused connection) - retry
soon, then back off exponentially with jitter to spare flaky and metered links.
``terminal``: the same attempt would fail again (bad credentials, refused protocol, a
refused commit) - wait the longest delay; the operator or a new input has to act.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

STABLE_SESSION = 10.0
"""Default of :attr:`Backoff.stable`."""


class ErrorKind(enum.Enum):
    TRANSIENT = "transient"
    TERMINAL = "terminal"


class KindedError(Exception):
    """An error that says which retry policy applies to it."""

    kind: ErrorKind = ErrorKind.TRANSIENT


@dataclass
class Backoff:
    """Delays for consecutive failures: ``initial`` doubling up to ``maximum``, +-``jitter``.

    ``failure(kind)`` returns the delay before the next attempt; ``success()`` starts over.
    """

    initial: float = 1.0
    maximum: float = 60.0
    jitter: float = 0.2
    stable: float = STABLE_SESSION
    """Seconds a connection must have been up for its loss to reconnect at once."""
    failures: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def failure(self, kind: ErrorKind = ErrorKind.TRANSIENT) -> float:
        if kind is ErrorKind.TERMINAL:
            base = self.maximum
        else:
            base = min(self.maximum, self.initial * 2 ** min(self.failures, 30))
        self.failures += 1
        return base * self.rng.uniform(1 - self.jitter, 1 + self.jitter)

    def success(self) -> None:
        self.failures = 0

    def session_ended(self, lasted: float) -> float:
        """Delay before reconnecting after a connection that was up for ``lasted``
        seconds: none after a stable one (the failures start over), a failure's delay
        after a short one. A broker that drops us right after connecting, or a second
        client under the same id taking the session in turn, must not make two clients
        reconnect in a tight loop."""
        if lasted >= self.stable:
            self.success()
            return 0.0
        return self.failure()

    @property
    def failing(self) -> bool:
        return self.failures > 0
