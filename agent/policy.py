"""May the applied commit move to a new head? ``trust.non_fast_forward`` as a pure function."""

from __future__ import annotations

from collections.abc import Sequence

from agent.config import NonFastForward
from agent.errors import TrustError


def check_move(
    policy: NonFastForward,
    current: str | None,
    new: str,
    fast_forward: bool,
    known_good: Sequence[str],
) -> None:
    """Refuse (TrustError) moving the applied commit ``current`` to ``new`` against policy.

    A first apply, no move and fast-forwards are always fine. Otherwise ``never`` refuses,
    ``known-good`` accepts only a commit this node applied successfully before (a hub
    rollback) and ``always`` accepts anything.
    """
    if current is None or new == current or fast_forward or policy == "always":
        return
    move = f"branch moved from {current[:12]} to {new[:12]}, which is not a fast-forward"
    if policy == "never":
        raise TrustError(new, f"{move} (trust.non_fast_forward = never)")
    if new not in known_good:
        raise TrustError(
            new,
            f"{move} and not a commit this node applied successfully before "
            "(trust.non_fast_forward = known-good)",
        )
