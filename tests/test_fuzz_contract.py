"""Fuzzing the MQTT contract: the one builder (common.status) and the one strict parser
(common.strict) the hub runs on every message.

Properties: a status the builder makes round-trips exactly; any payload at all either
parses or raises ContractError with a reason the hub counts; whatever parses re-encodes
to strict JSON (no NaN, no lone surrogate, no duplicate key) that parses to the same,
and the hub's stored text (common.canonical's shortcut) is always that re-encoding.
"""

from __future__ import annotations

import json
import math
import operator
import string
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from common import wire
from common.canonical import _CANONICAL, stored_status_json
from common.status import (
    ContractError,
    Event,
    Health,
    HealthProblem,
    NodeReport,
    Status,
    details_json,
    encode_status,
    status_json,
)
from common.strict import MAX_INT, parse_event, parse_status
from hub.ingest import DROP_REASONS
from tests.testbed.fuzzing import fuzz

NODE = "pi-01"
DRIFT_KINDS = ("modified", "missing", "stopped", "extra", "disabled", "masked")

# -- what a real agent builds ----------------------------------------------------------

# Keys come from config or target names (TOML text: never a surrogate); values may hold
# undecodable file names (lone surrogates), which the builder replaces.
keys = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=24)
ALNUM = string.ascii_letters + string.digits
# Built from alphabets, not from_regex: several times cheaper to generate.
node_names = st.builds(operator.add, st.sampled_from(ALNUM), st.text(ALNUM + "._:-", max_size=127))
incarnations = st.none() | st.text(ALNUM + "_-", min_size=1, max_size=64)
finite = st.floats(allow_nan=False, allow_infinity=False)


def drift_items(text: st.SearchStrategy[str]) -> st.SearchStrategy[wire.DriftItem]:
    return st.fixed_dictionaries(
        {
            "target": text,
            "subject": text,
            "kind": st.sampled_from(DRIFT_KINDS) | text,
            "detail": text,
        }
    )  # type: ignore[return-value]


healths = st.just(Health()) | st.builds(
    Health,
    st.booleans(),
    st.lists(st.builds(HealthProblem, texts, texts, texts), max_size=3).map(tuple),
)


@st.composite
def statuses(draw: st.DrawFn, text: st.SearchStrategy[str] = texts) -> Status:
    drift = tuple(draw(st.lists(drift_items(text), max_size=4)))
    optional = st.none() | text
    report = NodeReport(
        node=draw(node_names),
        state=draw(st.sampled_from(wire.STATES)),
        labels=draw(st.dictionaries(keys, text, max_size=3)),
        version=draw(optional),
        branch=draw(optional),
        paths=tuple(draw(st.lists(text, max_size=3))),
        desired=draw(optional),
        applied=draw(optional),
        last_good=draw(optional),
        reason=draw(text),
        message=draw(text),
        drift=drift,
        drift_total=draw(st.integers(len(drift), MAX_INT)),
        resources=draw(st.dictionaries(keys, st.integers(-MAX_INT, MAX_INT), max_size=3)),
        health=draw(healths),
    )
    return Status(
        report,
        seq=draw(st.integers(0, MAX_INT)),
        observed_at=draw(st.none() | finite),
        heartbeat=draw(st.floats(min_value=0.0, allow_nan=False, allow_infinity=False)),
        incarnation=draw(incarnations),
    )


@fuzz(2000)
@given(statuses())
def test_built_status_round_trips_exactly(status: Status) -> None:
    node = status.report.node
    payload = encode_status(status)
    parsed = parse_status(node, payload)
    assert parsed == status
    assert parse_status(node, status_json(status).encode()) == status
    text = status_json(parsed)
    assert stored_status_json(parsed, payload) == text
    # The shortcut knows the builder's layout: it takes every canonical text without escapes.
    if text == payload.decode() and "\\" not in text:
        assert _CANONICAL.fullmatch(text)


@fuzz(1000)
@given(statuses(st.text(max_size=24)))
def test_status_with_undecodable_names_is_still_accepted(status: Status) -> None:
    parsed = parse_status(status.report.node, encode_status(status))
    assert parsed.seq == status.seq
    assert len(parsed.report.drift) == len(status.report.drift)


# -- anything a broker may deliver -----------------------------------------------------

STATUS_KEYS = (*wire.StatusDoc.__annotations__, "drift_omitted")
EVENT_KEYS = tuple(wire.EventDoc.__annotations__)
INNER_KEYS = ("target", "subject", "kind", "detail", "reason", "ok", "problems")
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=16)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(INNER_KEYS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
# JSON text Python's json.dumps never writes, spliced into payloads.
TOKENS = (
    "1e999", "-1e999", "NaN", "Infinity", "-Infinity", '"\\ud800"', '"a\\udfff"',
    '"\\uD83D\\uDE00"', '"\\ud83d\\ude00"', str(2**63), str(-(2**63) - 1), "1" + "0" * 400,
    "[" * 100_000 + "]" * 100_000, '{"a":1,"a":2}', "0.0e-999", "-0", "true", "null",
    '"\\u0000"', "[" * 500 + "]" * 500,
)  # fmt: skip
VALID_STATUS = encode_status(
    Status(NodeReport(NODE, "drifted", drift=({"target": "files", "subject": "/x",
                                              "kind": "extra", "detail": ""},), drift_total=1,
                      health=Health(False, (HealthProblem("a", "b", "c"),))),
           3, 1.5, 30.0, "inc-1")
)  # fmt: skip
VALID_EVENT = wire.encode(
    {
        "schema": 1,
        "node": NODE,
        "seq": 1,
        "at": 1.5,
        "type": "applied",
        "commit": "b" * 40,
        "details": {"n": 1},
        "incarnation": "inc-1",
    }
)


@st.composite
def payloads(draw: st.DrawFn, valid: bytes, field_keys: tuple[str, ...]) -> bytes:
    """A valid payload with fields replaced, removed, duplicated or made non-JSON."""
    doc: dict[str, Any] = json.loads(valid)
    for key in draw(st.lists(st.sampled_from(field_keys), max_size=4)):
        if draw(st.booleans()):
            doc[key] = draw(json_values)
        else:
            doc.pop(key, None)
    separators = draw(st.sampled_from(((",", ":"), (", ", ": "))))
    # Floats may come out as NaN or Infinity; compact and ASCII: maybe the agent's layout.
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()), separators=separators)
    for key, token in draw(
        st.lists(st.tuples(st.sampled_from(field_keys), st.sampled_from(TOKENS)), max_size=2)
    ):
        text = f'{text[:-1]},"{key}":{token}}}' if text.endswith("}") else text
    data = text.encode("utf-8", "surrogatepass")  # a lone surrogate as raw bytes
    return draw(st.sampled_from((data, data, data, b"\xef\xbb\xbf" + data, data[:-1])))


def strict_loads(text: str) -> Any:
    """json.loads that refuses what the hub must never store or serve."""

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        assert len({k for k, _ in pairs}) == len(pairs), f"duplicate key in {pairs}"
        return dict(pairs)

    def constant(name: str) -> Any:
        raise AssertionError(f"{name} in stored JSON")

    text.encode("utf-8")  # UnicodeEncodeError on a lone surrogate
    return json.loads(text, object_pairs_hook=unique, parse_constant=constant)


def check_status(status: Status, payload: bytes) -> None:
    text = status_json(status)
    assert stored_status_json(status, payload) == text
    strict_loads(text)
    assert parse_status(NODE, text.encode()) == status
    assert 0 <= status.seq <= MAX_INT and 0 <= status.report.drift_total <= MAX_INT
    assert math.isfinite(status.heartbeat) and status.heartbeat >= 0
    assert status.observed_at is None or math.isfinite(status.observed_at)


def check_event(event: Event) -> None:
    assert strict_loads(details_json(event)) == event.details
    assert 0 < len(event.type) <= 64 and 0 <= event.seq <= MAX_INT
    assert event.at is None or math.isfinite(event.at)


@fuzz(3000)
@given(payloads(VALID_STATUS, STATUS_KEYS) | st.binary(max_size=64))
def test_any_status_payload_parses_strictly_or_is_refused(payload: bytes) -> None:
    try:
        status = parse_status(NODE, payload)
    except ContractError as err:
        assert err.reason in DROP_REASONS
        return
    check_status(status, payload)


@fuzz(2000)
@given(payloads(VALID_EVENT, EVENT_KEYS) | st.binary(max_size=64))
def test_any_event_payload_parses_strictly_or_is_refused(payload: bytes) -> None:
    try:
        event = parse_event(NODE, payload)
    except ContractError as err:
        assert err.reason in DROP_REASONS
        return
    check_event(event)


def test_valid_seeds_parse() -> None:
    """The fuzzed payloads start from valid ones (else they would only test refusals)."""
    check_status(parse_status(NODE, VALID_STATUS), VALID_STATUS)
    assert _CANONICAL.fullmatch(VALID_STATUS.decode())
    check_event(parse_event(NODE, VALID_EVENT))
