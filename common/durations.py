"""Durations as operators write them: a number of seconds, or ``"30s"``, ``"5m"``, ``"1h30m"``,
``"2d"``, ``"500ms"``.

One parser for agent.toml, fleet.toml and the fleet repository's edgefleet.toml. Pure: no
I/O, no config knowledge; the caller turns :class:`DurationError` into its own error that
names the file and the key.
"""

from __future__ import annotations

import math
import re

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": MINUTE, "h": HOUR, "d": DAY}
# Each unit at most once and in descending order ("1h30m", never "30m1h" or "1m1m"):
# an operator's slip such as "5m5m" is refused rather than summed.
_DURATION_RE = re.compile(
    r"(?:(?P<d>\d+(?:\.\d+)?)d)?(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)s)?(?:(?P<ms>\d+(?:\.\d+)?)ms)?"
)
_MAX_TEXT = 64
"""Longer text is no duration (and keeps the regex's work bounded)."""


class DurationError(ValueError):
    """The value is not a duration; the message says what was expected."""


def parse_duration(value: object) -> float:
    """Seconds for an int or float, or for a duration string.

    Booleans are refused (``true`` is an int in Python). The result is always finite; a
    negative number is returned as is, for the caller's range check to name its bounds.
    """
    if isinstance(value, bool):
        raise DurationError('must be a duration (e.g. 30, "30s", "5m"), got a boolean')
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond float range; repr fails past 4300 digits
            raise DurationError("must be a finite duration, got a huge integer") from None
    elif isinstance(value, str):
        seconds = _parse_text(value)
    else:
        raise DurationError(
            f'must be a duration (e.g. 30, "30s", "5m"), got {type(value).__name__} {value!r}'
        )
    if not math.isfinite(seconds):
        raise DurationError(f"must be a finite duration, got {value!r}")
    return seconds


def _parse_text(text: str) -> float:
    problem = f'{text!r} is not a duration: write seconds (30) or e.g. "30s", "5m", "1h30m"'
    compact = text.strip()
    if not compact or len(compact) > _MAX_TEXT or not compact.isascii():
        raise DurationError(problem)
    if re.fullmatch(r"\d+(?:\.\d+)?", compact):  # "30": the unit is what is missing
        raise DurationError(
            f'{text!r} is not a duration: text needs a unit ("{compact}s"), '
            f"or write the seconds as a number without quotes ({compact})"
        )
    match = _DURATION_RE.fullmatch(compact)
    if match is None or not any(match.groupdict().values()):
        raise DurationError(problem)
    return sum(float(amount) * UNIT_SECONDS[unit] for unit, amount in match.groupdict().items()
               if amount is not None)  # fmt: skip
