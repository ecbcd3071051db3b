"""Shared settings of the property-based fuzz suite (tests/test_fuzz_*.py).

Bounded: each property runs a fixed number of cases with no per-case deadline (this
machine is shared; a slow case is not a failure). Under CI (``CI`` set, as .ci/run is
started) the cases are derandomized, so a red run reproduces exactly; on a developer's
machine every run explores new cases and a failure prints the ``@reproduce_failure``
blob. No example database is written (nothing to clean, nothing to commit).

Also the values config files can hold (what tomllib returns) and :func:`mutated`, which
changes a few places of a valid document, so that most cases get past the first check.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st


def fuzz(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=bool(os.environ.get("CI")),
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# Text that reaches the parsers' special cases: durations, URLs, paths, windows, ports.
ODD_TEXT = (
    "", " ", "30s", "1h30m", "5m5m", "500ms", "-1", "1e400", "1" * 80 + "s", "mqtt://h:1883",
    "mqtts://[::1]:8883", "mqtt://[::1", "mqtt://h:99999", "mqtt://h:port", "mqtt://:1",
    "ssh://git@h/x.git", "git@h:x.git", "https://h/x", "ftp://h", "postgresql://db",
    "/", "/etc", "/etc/hostname", "/" + "a" * 300, "/" + "a/" * 3000, "rel/path", "a\0b",
    "..", "../x", "a//b", "mon-fri 09:00-17:00", "sun-mon 22:00-02:00", "25:00-26:00",
    "09:00-09:00", "127.0.0.1:8080", "h:\u00b2", "h:\u0661\u0662", "[::1]:80", ":0",
    "canary", "stable", "refs/x", "a b", "x/+/#", "\U0001f600", "\u202e", "é" * 70,
)  # fmt: skip
ODD_NUMBERS = (0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**400, 0.5, -0.0, 1e308, float("inf"),
               float("-inf"), float("nan"))  # fmt: skip
# TOML integers are unbounded: a hex literal may pass the 4300 digits repr can print.
huge_ints = st.sampled_from((100, 4000)).map(lambda hex_digits: int("f" * hex_digits, 16))
toml_scalars = st.one_of(
    st.sampled_from(ODD_TEXT),
    st.sampled_from(ODD_NUMBERS),
    st.text(max_size=20),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.datetimes(timezones=st.none() | st.just(dt.UTC)),
    st.dates(),
    st.times(),
)
odd_text, odd_numbers = st.sampled_from(ODD_TEXT), st.sampled_from(ODD_NUMBERS)
toml_values = st.one_of(
    odd_text,
    odd_text,
    odd_text,
    odd_numbers,
    huge_ints,
    toml_scalars,
    st.recursive(
        toml_scalars,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=6,
    ),
)

Where = tuple[str | int, ...]


def places(doc: Any, where: Where = ()) -> list[Where]:
    """The path of every value in ``doc`` (keys and list indexes), tables included."""
    children: list[tuple[str | int, Any]] = (
        list(doc.items()) if isinstance(doc, dict) else list(enumerate(doc))
        if isinstance(doc, list) else []
    )  # fmt: skip
    out = [where] if where else []
    for key, value in children:
        out.extend(places(value, (*where, key)))
    return out


def lookup(doc: Any, where: Where) -> Any:
    """The value at ``where`` in ``doc``, None when an earlier mutation took it away."""
    for step in where:
        if isinstance(doc, dict) and isinstance(step, str):
            doc = doc.get(step)
        elif isinstance(doc, list) and isinstance(step, int) and step < len(doc):
            doc = doc[step]
        else:
            return None
    return doc


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with one to three values replaced or removed, or keys added, at any depth."""
    doc = copy.deepcopy(base)
    spots = places(base)
    names = sorted({str(w[-1]) for w in spots})
    for where in draw(st.lists(st.sampled_from(spots), min_size=1, max_size=3)):
        parent = lookup(doc, where[:-1])
        key = where[-1]
        if lookup(parent, (key,)) is None:
            continue  # replaced or removed by an earlier mutation
        action = draw(st.sampled_from(("replace", "replace", "drop", "add")))
        if action == "replace":
            parent[key] = draw(toml_values)
        elif action == "drop" and isinstance(parent, dict):
            del parent[key]
        elif isinstance(parent[key], dict):
            parent[key][draw(st.sampled_from(names) | st.text(max_size=8))] = draw(toml_values)
    return doc
