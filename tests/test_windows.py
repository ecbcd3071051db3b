"""The one window parser (common.windows): grammar, midnight crossing, time zones, DST."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from common import windows
from common.windows import WindowError, parse_schedule, parse_window

BERLIN = "Europe/Berlin"


def at(text: str, tz: str = BERLIN) -> float:
    """An instant given as local wall time 'YYYY-MM-DD HH:MM' in ``tz``."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("spec", "days", "start", "end"),
    [
        ("09:00-17:00", set(range(7)), 540, 1020),
        ("mon-fri 22:00-05:00", {0, 1, 2, 3, 4}, 1320, 300),
        ("sat 00:00-24:00", {5}, 0, 1440),
        ("fri-mon 01:30-02:00", {4, 5, 6, 0}, 90, 120),
        ("mon,wed,fri-sat 8:00-9:00", {0, 2, 4, 5}, 480, 540),
        ("  MON-FRI   22:00-05:00 ", {0, 1, 2, 3, 4}, 1320, 300),
    ],
)
def test_grammar(spec: str, days: set[int], start: int, end: int) -> None:
    w = parse_window(spec)
    assert (set(w.days), w.start, w.end) == (days, start, end)


@pytest.mark.parametrize(
    "spec",
    ["", "22:00", "mon-fri", "xyz 10:00-11:00", "mon-fri 25:00-26:00", "10:60-11:00",
     "10:00-10:00", "00:00-24:01", "mon-fri 10:00-11:00 extra", "mon--fri 10:00-11:00"],
)  # fmt: skip
def test_bad_specs_are_refused_with_the_spec_named(spec: str) -> None:
    with pytest.raises(WindowError, match=repr(spec).replace("(", r"\(")[:8].replace("[", r"\[")):
        parse_window(spec)


def test_crossing_midnight_belongs_to_the_start_day() -> None:
    s = parse_schedule("mon-fri 22:00-05:00", BERLIN)
    assert s.contains(at("2026-12-04 23:00"))  # Friday night
    assert s.contains(at("2026-12-05 04:59"))  # Saturday morning: Friday's window
    assert not s.contains(at("2026-12-05 05:00"))
    assert not s.contains(at("2026-12-05 23:00"))  # Saturday night: no window starts
    assert not s.contains(at("2026-12-07 04:00"))  # Monday morning: Sunday started none
    assert s.contains(at("2026-12-08 04:00"))  # Tuesday morning: Monday's window


def test_the_zone_decides_not_utc() -> None:
    s = parse_schedule("10:00-11:00", BERLIN)
    assert s.contains(utc("2026-12-04 09:30"))  # 10:30 in Berlin (CET, UTC+1)
    assert not s.contains(utc("2026-12-04 10:30"))
    assert s.contains(utc("2026-07-04 08:30"))  # 10:30 in Berlin (CEST, UTC+2)
    assert not parse_schedule("10:00-11:00", "UTC").contains(utc("2026-12-04 09:30"))


def test_a_list_is_any_of_its_windows() -> None:
    s = parse_schedule(["mon 01:00-02:00", "wed 03:00-04:00"], "UTC")
    assert s.contains(utc("2026-12-07 01:30"))
    assert s.contains(utc("2026-12-09 03:30"))
    assert not s.contains(utc("2026-12-08 01:30"))


def test_an_empty_schedule_is_always_open() -> None:
    s = parse_schedule([], "UTC")
    assert s.contains(0.0)
    assert s.next_change(0.0) is None


def test_next_change_finds_opening_and_closing() -> None:
    s = parse_schedule("mon-fri 22:00-05:00", BERLIN)
    assert s.next_change(at("2026-12-04 12:00")) == at("2026-12-04 22:00")
    assert s.next_change(at("2026-12-04 23:00")) == at("2026-12-05 05:00")
    # Saturday noon: next opening is Monday 22:00.
    assert s.next_change(at("2026-12-05 12:00")) == at("2026-12-07 22:00")


# DST in Europe/Berlin, 2026: spring forward 29 March 02:00 -> 03:00 (01:00 UTC);
# fall back 25 October 03:00 -> 02:00 (01:00 UTC).


def test_spring_forward_window_inside_the_skipped_hour_never_opens() -> None:
    s = parse_schedule("sun 02:00-02:59", BERLIN)
    start, end = utc("2026-03-28 22:00"), utc("2026-03-29 06:00")
    assert not any(s.contains(start + i * 60) for i in range(int((end - start) // 60)))


def test_spring_forward_window_across_the_jump_is_shorter() -> None:
    s = parse_schedule("sun 01:30-03:30", BERLIN)
    opened = s.next_change(utc("2026-03-28 12:00"))
    assert opened == utc("2026-03-29 00:30")  # 01:30 CET
    closed = s.next_change(opened)
    assert closed == utc("2026-03-29 01:30")  # 03:30 CEST: one real hour, not two


def test_fall_back_window_in_the_repeated_hour_holds_both_passes() -> None:
    s = parse_schedule("sun 02:00-03:00", BERLIN)
    opened = s.next_change(utc("2026-10-24 12:00"))
    assert opened == utc("2026-10-25 00:00")  # first 02:00 (CEST)
    closed = s.next_change(opened)
    assert closed == utc("2026-10-25 02:00")  # 03:00 CET: two real hours
    assert s.contains(utc("2026-10-25 01:30"))  # second pass of 02:30


def test_window_ending_at_midnight_with_24_00() -> None:
    s = parse_schedule("sat 20:00-24:00", "UTC")
    assert s.contains(utc("2026-12-05 23:59"))
    assert not s.contains(utc("2026-12-06 00:00"))
    assert s.next_change(utc("2026-12-05 21:00")) == utc("2026-12-06 00:00")


def test_unknown_zone_is_refused() -> None:
    with pytest.raises(WindowError, match="Mars/Olympus"):
        parse_schedule("10:00-11:00", "Mars/Olympus")


def test_host_zone_comes_from_localtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tzfile = Path("/usr/share/zoneinfo/Asia/Tokyo")
    link = tmp_path / "localtime"
    link.symlink_to(tzfile)
    monkeypatch.setattr(windows, "_LOCALTIME", link)
    s = parse_schedule("10:00-11:00", None)
    assert s.contains(utc("2026-12-04 01:30"))  # 10:30 in Tokyo
    monkeypatch.setattr(windows, "_LOCALTIME", tmp_path / "missing")
    assert parse_schedule("10:00-11:00", None).tz is UTC
