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

    @property
    def failing(self) -> bool:
        return self.failures > 0
