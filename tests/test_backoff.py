"""common.backoff: the one retry policy, pure logic."""

from __future__ import annotations

import random

from common.backoff import STABLE_SESSION, Backoff, ErrorKind


def test_transient_failures_double_to_the_cap_with_jitter() -> None:
    backoff = Backoff(initial=1.0, maximum=60.0, jitter=0.2, rng=random.Random(1))
    for base in [1, 2, 4, 8, 16, 32, 60, 60, 60]:
        delay = backoff.failure(ErrorKind.TRANSIENT)
        assert 0.8 * base <= delay <= 1.2 * base
    assert backoff.failing


def test_terminal_failure_waits_the_longest_delay_at_once() -> None:
    backoff = Backoff(initial=1.0, maximum=60.0, jitter=0.2, rng=random.Random(2))
    assert 48.0 <= backoff.failure(ErrorKind.TERMINAL) <= 72.0


def test_success_starts_over() -> None:
    backoff = Backoff(initial=1.0, maximum=60.0, jitter=0.0)
    for _ in range(5):
        backoff.failure()
    backoff.success()
    assert not backoff.failing
    assert backoff.failure() == 1.0


def test_jitter_spreads_a_fleet() -> None:
    delays = {Backoff(rng=random.Random(seed)).failure() for seed in range(20)}
    assert len(delays) == 20 and all(0.8 <= d <= 1.2 for d in delays)


def test_a_short_session_counts_as_a_failure_a_stable_one_starts_over() -> None:
    backoff = Backoff(initial=1.0, maximum=60.0, jitter=0.0)
    assert [backoff.session_ended(0.1) for _ in range(3)] == [1.0, 2.0, 4.0]
    assert backoff.session_ended(STABLE_SESSION) == 0.0  # reconnect at once
    assert not backoff.failing and backoff.session_ended(0.1) == 1.0
