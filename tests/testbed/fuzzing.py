"""Shared settings of the property-based fuzz suite (tests/test_fuzz_*.py).

Bounded: each property runs a fixed number of cases with no per-case deadline (this
machine is shared; a slow case is not a failure). Under CI (``CI`` set, as .ci/run is
started) the cases are derandomized, so a red run reproduces exactly; on a developer's
machine every run explores new cases and a failure prints the ``@reproduce_failure``
blob. No example database is written (nothing to clean, nothing to commit).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings


def fuzz(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=bool(os.environ.get("CI")),
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
