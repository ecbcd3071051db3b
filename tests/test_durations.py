"""The one duration parser (common/durations.py): what operators write, and hostile input."""

from __future__ import annotations

import math

import pytest

from common.durations import DurationError, parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (30, 30.0),
        (0, 0.0),
        (2.5, 2.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("2d", 172800.0),
        ("500ms", 0.5),
        ("1m500ms", 60.5),
        ("1.5h", 5400.0),
        ("1d2h3m4s5ms", 93784.005),
        (" 10s ", 10.0),
    ],
)
def test_accepts_seconds_and_unit_text(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


def test_negative_numbers_are_left_to_the_callers_range_check() -> None:
    assert parse_duration(-1) == -1.0


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "30",  # a bare number as text: ambiguous, say the unit or write a number
        "s",
        "5x",
        "5 m",
        "1h 30m",
        "-5s",
        "+5s",
        "5M",  # months or minutes? neither
        "30m1h",  # units out of order
        "5m5m",  # a unit twice
        ".5s",
        "5.s",
        "1e3s",
        "nan",
        "inf",
        "infs",
        "٣s",  # a non-ASCII digit
        "1" * 100 + "s",
        "9" * 400 + "d",
    ],
)
def test_refuses_text_that_is_no_duration(value: str) -> None:
    with pytest.raises(DurationError, match="is not a duration"):
        parse_duration(value)


def test_a_quoted_number_is_told_to_add_a_unit_or_drop_the_quotes() -> None:
    with pytest.raises(DurationError) as info:
        parse_duration("30")
    assert str(info.value) == (
        "'30' is not a duration: text needs a unit (\"30s\"), "
        "or write the seconds as a number without quotes (30)"
    )


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400])
def test_refuses_non_finite_numbers(value: float) -> None:
    with pytest.raises(DurationError, match="finite"):
        parse_duration(value)


def test_longest_text_is_still_finite() -> None:
    # The length limit keeps every accepted text finite; the caller's maximum bounds it.
    assert math.isfinite(parse_duration("9" * 63 + "d"))


@pytest.mark.parametrize("value", [True, False, None, [30], {"s": 30}, b"30s"])
def test_refuses_other_types(value: object) -> None:
    with pytest.raises(DurationError, match="must be a duration"):
        parse_duration(value)
