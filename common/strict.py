"""The one strict parser of node messages (statuses and events), used by the hub and tests.

Each payload is parsed once: UTF-8, one JSON object, no duplicate keys (Python keeps the
last, SQLite's json_extract the first), no NaN/Infinity, no lone surrogates, every field
of its contract type; anything else raises :class:`ContractError`, whose ``reason`` is
the hub's drop counter. Hot path: plain loops and ``type(x) is`` checks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any, Final, NoReturn, cast

from common.status import (
    ContractError,
    Event,
    Health,
    HealthProblem,
    NodeReport,
    Status,
    details_json,
)
from common.wire import SCHEMA, DriftItem, DriftKind, valid_incarnation

MAX_INT: Final = 2**63 - 1
"""SQLite's INTEGER range: a larger seq could not be stored."""
MAX_EVENT_TYPE: Final = 64
MAX_STATE: Final = 32
"""A state longer than this is garbage, not a newer agent's state name."""


def _bad(detail: str) -> NoReturn:
    raise ContractError("bad_type", detail)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Python keeps the last of duplicate keys, SQLite's json_extract the first: refuse.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ContractError("bad_json", f"duplicate key {key[:64]!r}")
            seen.add(key)
    return obj


def _no_constant(name: str) -> NoReturn:
    raise ContractError("bad_type", f"{name} is not a JSON number")


_decode = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant).decode


def load_object(payload: bytes) -> dict[str, Any]:
    """Decode a JSON object strictly: UTF-8, unique keys, finite numbers, no lone surrogates."""
    try:
        text = payload.decode("utf-8")
        doc = _decode(text)
    except (ValueError, RecursionError) as err:  # RecursionError: deeply nested input
        raise ContractError("bad_json", str(err)[:80]) from err
    if type(doc) is not dict:
        raise ContractError("bad_json", f"top level is {type(doc).__name__}, not an object")
    # Strict UTF-8 decoding refuses encoded surrogates, so a lone one can only come from
    # a \\uD8xx-\\uDFxx escape; only then is the decoded document checked as a whole.
    if "\\ud" in text or "\\uD" in text:
        try:
            json.dumps(doc, ensure_ascii=False).encode()
        except UnicodeEncodeError as err:
            raise ContractError("bad_type", "a string is not valid Unicode") from err
        except RecursionError as err:
            raise ContractError("bad_json", "nested too deeply") from err
    return doc


def _header(doc: dict[str, Any], node: str) -> int:
    schema = doc.get("schema")
    if type(schema) is not int or schema != SCHEMA:
        raise ContractError("bad_schema", f"schema {str(schema)[:32]!r} (want {SCHEMA})")
    payload_node = doc.get("node")
    if type(payload_node) is not str:
        _bad("node is not a string")
    if payload_node != node:
        raise ContractError(
            "node_mismatch", f"payload node {payload_node[:64]!r} on topic of {node!r}"
        )
    seq = doc.get("seq")
    if type(seq) is not int or not 0 <= seq <= MAX_INT:
        _bad(f"seq {str(seq)[:32]!r} is not an integer in 0..2^63-1")
    return seq


def _str(value: object, key: str) -> str | None:
    if value is None or type(value) is str:
        return value
    _bad(f"{key} is {type(value).__name__}, not a string")


def _number(value: object, key: str) -> float | None:
    # bool is an int in Python; JSON true is not a number here
    if value is None:
        return None
    if type(value) is float:
        if math.isfinite(value):  # 1e999 parses as inf
            return value
    elif type(value) is int and abs(value) <= MAX_INT:
        return float(value)
    _bad(f"{key} is not a finite number")


def _incarnation(value: object) -> str | None:
    if value is None or (type(value) is str and valid_incarnation(value)):
        return value
    _bad("incarnation must be 1 to 64 of A-Z a-z 0-9 _ -")


def _only(values: Iterable[object], kind: type) -> bool:
    """Every value is exactly a ``kind`` (bool is no int); a loop, as all() over a
    generator costs several times more on this hot path."""
    for v in values:  # noqa: SIM110 - see above
        if type(v) is not kind:
            return False
    return True


def _str_map(value: object, key: str) -> dict[str, str]:
    if value is None:
        return {}
    if type(value) is dict and _only(value.values(), str):
        return value
    _bad(f"{key} must map strings to strings")


def _str_list(value: object, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if type(value) is list and _only(value, str):
        return tuple(value)
    _bad(f"{key} must be a list of strings")


def _drift(value: object) -> tuple[DriftItem, ...]:
    if value is None:
        return ()
    if type(value) is not list:
        _bad("drift must be a list of items with target, subject, kind")
    items: list[DriftItem] = []
    for item in value:
        if type(item) is not dict:
            _bad("drift must be a list of items with target, subject, kind")
        target, subject, kind = item.get("target"), item.get("subject"), item.get("kind")
        detail = item.get("detail", "")
        if type(target) is not str or type(subject) is not str or type(kind) is not str:
            _bad("drift must be a list of items with target, subject, kind")
        if type(detail) is not str:
            _bad("drift detail must be a string")
        # kind is not checked against today's kinds: a newer agent may report new ones
        items.append({"target": target, "subject": subject, "kind": cast(DriftKind, kind),
                      "detail": detail})  # fmt: skip
    return tuple(items)


def _count(value: object, key: str) -> int | None:
    if value is None or (type(value) is int and 0 <= value <= MAX_INT):
        return value
    _bad(f"{key} must be an integer in 0..2^63-1")


def _resources(value: object) -> dict[str, int]:
    if value is None:
        return {}
    if type(value) is dict and _only(value.values(), int):
        return value
    _bad("resources must map strings to integers")


_HEALTHY: Final = Health()
"""Shared by the statuses of healthy nodes (nearly all): one object fewer to build each."""


def _health(value: object) -> Health:
    if value is None:
        return _HEALTHY
    if type(value) is not dict:
        _bad("health must be an object")
    items = value.get("problems", [])
    if type(items) is not list:
        _bad("health problems must be a list")
    problems: list[HealthProblem] = []
    for item in items:
        parts = (
            (item.get("target"), item.get("subject"), item.get("reason"))
            if type(item) is dict
            else ()
        )
        if len(parts) != 3 or not _only(parts, str):
            _bad("health problems must be objects with target, subject, reason")
        problems.append(HealthProblem(*cast(tuple[str, str, str], parts)))
    ok = value.get("ok", not problems)
    if type(ok) is not bool:
        _bad("health ok must be true or false")
    return Health(ok, tuple(problems)) if problems or not ok else _HEALTHY


def parse_status(node: str, payload: bytes) -> Status:
    """Validate a status for the node of its topic; raises ContractError.

    Unknown fields are ignored (a newer agent may send more) and not kept. Old agents'
    statuses (no drift_total, no incarnation) are accepted: the drift total is then
    ``len(drift) + drift_omitted``.
    """
    doc = load_object(payload)
    seq = _header(doc, node)
    get = doc.get
    # A state this hub does not know (a newer agent's) is kept as sent: the hub shows it
    # as ``unknown`` with the raw value (hub.states) instead of dropping the node.
    state = _str(get("state"), "state")
    if not state or len(state) > MAX_STATE:
        _bad(f"state {str(state)[:32]!r} is not a string of 1 to {MAX_STATE} characters")
    drift = _drift(get("drift"))
    total = _count(get("drift_total"), "drift_total")
    if total is None:
        total = len(drift) + (_count(get("drift_omitted"), "drift_omitted") or 0)
    elif total < len(drift):
        _bad(f"drift_total {total} is less than the {len(drift)} drift items sent")
    report = NodeReport(
        node=node,
        state=state,
        labels=_str_map(get("labels"), "labels"),
        version=_str(get("version"), "version"),
        branch=_str(get("branch"), "branch"),
        paths=_str_list(get("paths"), "paths"),
        desired=_str(get("desired"), "desired"),
        applied=_str(get("applied"), "applied"),
        last_good=_str(get("last_good"), "last_good"),
        reason=_str(get("reason"), "reason") or "",
        message=_str(get("message"), "message") or "",
        drift=drift,
        drift_total=total,
        resources=_resources(get("resources")),
        health=_health(get("health")),
        deferred_until=_number(get("deferred_until"), "deferred_until"),
        recipient=_str(get("recipient"), "recipient"),
    )
    heartbeat = _number(get("heartbeat"), "heartbeat") or 0.0
    return Status(
        report,
        seq,
        observed_at=_number(get("observed_at"), "observed_at"),
        heartbeat=max(heartbeat, 0.0),
        incarnation=_incarnation(get("incarnation")),
    )


def parse_event(node: str, payload: bytes) -> Event:
    """Validate an event for the node of its topic; raises ContractError."""
    doc = load_object(payload)
    seq = _header(doc, node)
    type_ = doc.get("type")
    if type(type_) is not str or not 0 < len(type_) <= MAX_EVENT_TYPE:
        _bad(f"type must be a non-empty string of at most {MAX_EVENT_TYPE} characters")
    details = doc.get("details")
    if details is not None and type(details) is not dict:
        _bad("details must be an object")
    event = Event(
        node=node,
        seq=seq,
        type=type_,
        at=_number(doc.get("at"), "at"),
        commit=_str(doc.get("commit"), "commit"),
        details=details or {},
        incarnation=_incarnation(doc.get("incarnation")),
    )
    try:
        details_json(event)  # 1e999 decodes as inf: refused here, not when stored
    except (ValueError, RecursionError) as err:
        _bad(f"details cannot be stored: {str(err)[:80]}")
    return event
