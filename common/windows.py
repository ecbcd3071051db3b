"""Time windows in a time zone, for the hub's stage windows and the agent's maintenance windows.

A window is ``"[DAYS ]HH:MM-HH:MM"``: DAYS is ``mon-fri``, ``sat``, ``mon,wed,fri-sun`` (default
every day) and names the day the window *starts* on; an end before the start crosses midnight
(``"mon-fri 22:00-05:00"`` holds Saturday 04:00). Times are local wall-clock times in the
schedule's zone, read per instant, so DST is handled by the zone database: on a spring-forward
day a window inside the skipped hour never opens, on a fall-back day a window in the repeated
hour is open for both passes of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPEC = re.compile(
    r"^(?:(?P<days>[a-z]{3}(?:-[a-z]{3})?(?:,[a-z]{3}(?:-[a-z]{3})?)*)\s+)?"
    r"(?P<h1>\d{1,2}):(?P<m1>\d{2})-(?P<h2>\d{1,2}):(?P<m2>\d{2})$"
)
_LOCALTIME = Path("/etc/localtime")


class WindowError(ValueError):
    """A window or time zone that cannot be used; the message says why."""


@dataclass(frozen=True)
class Window:
    days: frozenset[int]
    """Days the window starts on, 0 = Monday."""
    start: int
    """Minute of the day it opens."""
    end: int
    """Minute of the day it closes; before ``start``: the next day."""

    def holds(self, weekday: int, minute: int) -> bool:
        if self.start < self.end:
            return weekday in self.days and self.start <= minute < self.end
        if minute >= self.start:
            return weekday in self.days
        return minute < self.end and (weekday - 1) % 7 in self.days


def _days(text: str, spec: str) -> frozenset[int]:
    days: set[int] = set()
    for item in text.split(","):
        first, _, last = item.partition("-")
        last = last or first
        if first not in DAYS or last not in DAYS:
            raise WindowError(f"{spec!r}: unknown day in {item!r} (use {', '.join(DAYS)})")
        a, b = DAYS.index(first), DAYS.index(last)
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


def parse_window(spec: str) -> Window:
    raw = " ".join(spec.strip().lower().split())
    m = _SPEC.match(raw)
    if m is None:
        raise WindowError(f"{spec!r} must look like '09:00-17:00' or 'mon-fri 22:00-05:00'")
    h1, m1, h2, m2 = (int(m[k]) for k in ("h1", "m1", "h2", "m2"))
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or m2 > 59 or end > 1440:
        raise WindowError(f"{spec!r}: not a time of day")
    if start == end:
        raise WindowError(f"{spec!r} is empty (start equals end)")
    days = frozenset(range(7)) if m["days"] is None else _days(m["days"], spec)
    return Window(days=days, start=start, end=end)


def zone(name: str | None) -> tzinfo:
    """The named IANA zone, or (None) the host's /etc/localtime, else UTC."""
    # zoneinfo (and the sysconfig data it reads) costs the agent ~1 MB RSS: only a
    # node with a window pays it.
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # noqa: PLC0415

    if name is None:
        try:
            with _LOCALTIME.open("rb") as f:
                return ZoneInfo.from_file(f, key="localtime")
        except (OSError, ValueError):
            return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise WindowError(
            f"unknown time zone {name!r} (use an IANA name like 'Europe/Berlin')"
        ) from err


@dataclass(frozen=True)
class Schedule:
    """Any of ``windows``, read in ``tz``. An empty schedule is always open."""

    windows: tuple[Window, ...]
    tz: tzinfo

    def contains(self, ts: float) -> bool:
        if not self.windows:
            return True
        local = datetime.fromtimestamp(ts, self.tz)
        minute = local.hour * 60 + local.minute
        return any(w.holds(local.weekday(), minute) for w in self.windows)

    def next_change(self, ts: float) -> float | None:
        """When :meth:`contains` next flips after ``ts`` (to the second), or None if never."""
        if not self.windows:
            return None
        now = self.contains(ts)
        before = ts
        for candidate in self._boundaries(ts):
            if self.contains(candidate) != now:
                return self._bisect(before, candidate, now)
            before = candidate
        return None

    def _boundaries(self, ts: float) -> Iterator[float]:
        """Every wall-clock opening and closing in the next 8 days, as instants, in order."""
        day0 = datetime.fromtimestamp(ts, self.tz).date()
        instants: set[float] = set()
        for offset in range(-1, 9):
            day = day0 + timedelta(days=offset)
            for w in self.windows:
                for minute in (w.start, w.end):
                    date = day + timedelta(days=minute // 1440)
                    hour, minute_of_hour = divmod(minute % 1440, 60)
                    for fold in (0, 1):
                        wall = datetime(
                            date.year,
                            date.month,
                            date.day,
                            hour,
                            minute_of_hour,
                            tzinfo=self.tz,
                            fold=fold,
                        )
                        instants.add(wall.timestamp())
        yield from sorted(t for t in instants if t > ts)

    def _bisect(self, lo: float, hi: float, state: bool) -> float:
        # A DST jump can move a flip away from the wall-clock boundary: find the instant.
        while hi - lo > 1.0:
            mid = (lo + hi) / 2
            if self.contains(mid) == state:
                lo = mid
            else:
                hi = mid
        return hi


def parse_schedule(specs: str | Sequence[str], tz_name: str | None) -> Schedule:
    items = [specs] if isinstance(specs, str) else list(specs)
    return Schedule(tuple(parse_window(s) for s in items), zone(tz_name))
