"""The status contract as pure logic: the one builder (common.status) and the one strict
parser (common.strict) agree, cut drift honestly and refuse what SQLite would misread."""

from __future__ import annotations

import json

import pytest

from common import wire
from common.status import (
    ContractError,
    Health,
    HealthProblem,
    NodeReport,
    Status,
    encode_status,
    status_json,
)
from common.strict import parse_event, parse_status
from tests.testbed.hubproc import event_doc, status_doc

DRIFT: tuple[wire.DriftItem, ...] = tuple(
    {"target": "files", "subject": f"/etc/f{i}", "kind": "modified", "detail": "x" * 200}
    for i in range(5000)
)


def full_status(**report: object) -> Status:
    fields: dict[str, object] = {
        "node": "pi-01",
        "state": "drifted",
        "labels": {"site": "berlin"},
        "version": "1.2.3",
        "branch": "stable",
        "paths": ("common", "nodes/pi-01"),
        "desired": "b" * 40,
        "applied": "a" * 40,
        "last_good": "a" * 40,
        "reason": "Drifted",
        "message": "2 drifted object(s)",
        "drift": DRIFT[:2],
        "drift_total": 2,
        "resources": {"files": 3},
        "health": Health(False, (HealthProblem("systemd", "nginx.service", "inactive"),)),
        **report,
    }
    return Status(NodeReport(**fields), 7, 1700000000.5, 30.0, "c" * 32)  # type: ignore[arg-type]


def test_builder_and_parser_round_trip() -> None:
    status = full_status()
    assert parse_status("pi-01", encode_status(status)) == status
    assert parse_status("pi-01", status_json(status).encode()) == status


def test_cut_keeps_the_true_total_and_fits() -> None:
    status = full_status(drift=DRIFT, drift_total=len(DRIFT))
    data = encode_status(status)
    assert len(data) <= wire.MAX_PAYLOAD
    doc = json.loads(data)
    assert doc["drift_total"] == 5000
    assert doc["drift_omitted"] == 5000 - len(doc["drift"]) > 0
    assert parse_status("pi-01", data).report.drift_total == 5000
    assert "drift_omitted" not in json.loads(encode_status(full_status()))


def test_old_agent_without_drift_total_or_incarnation() -> None:
    doc = status_doc("n1", 1, drift=list(DRIFT[:3]), drift_omitted=497)
    del doc["drift_total"]
    status = parse_status("n1", wire.encode(doc))
    assert status.report.drift_total == 500 and status.incarnation is None


def test_lone_surrogate_from_an_undecodable_file_name_is_replaced_not_fatal() -> None:
    item: wire.DriftItem = {"target": "files", "subject": "/etc/\udcff", "kind": "extra",
                            "detail": ""}  # fmt: skip
    parsed = parse_status("pi-01", encode_status(full_status(drift=(item,), drift_total=1)))
    assert parsed.report.drift[0]["subject"] == "/etc/?"


def test_unknown_fields_are_dropped_from_what_is_stored() -> None:
    doc = status_doc("n1", 1, future_field={"x": 1})
    assert "future_field" not in status_json(parse_status("n1", wire.encode(doc)))


BASE = wire.encode(status_doc("n1", 1))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"labels":"not json",' + BASE[1:], "bad_json"),  # duplicate key, bad one first
        (b'{"labels":{"site":1e999},' + BASE[1:], "bad_json"),
        (BASE[:-1] + b',"seq":2}', "bad_json"),  # duplicate seq
        (BASE.replace(b'"labels":{}', b'"labels":{"a":"1","a":"2"}'), "bad_json"),  # nested
        (BASE.replace(b'"labels":{}', b'"labels":{"site":"\\ud800"}'), "bad_type"),
        (BASE.replace(b'"labels":{}', b'"labels":{"\\udc00":"x"}'), "bad_type"),  # in a key
        (BASE.replace(b'"labels":{}', b'"labels":{"x":Infinity}'), "bad_type"),
        (wire.encode(status_doc("n1", 1, paths={})), "bad_type"),
        (wire.encode(status_doc("n1", 1, paths=[1])), "bad_type"),
        (wire.encode(status_doc("n1", 1, resources={"files": 1.5})), "bad_type"),
        (wire.encode(status_doc("n1", 1, health=[])), "bad_type"),
        (wire.encode(status_doc("n1", 1, health={"ok": "yes"})), "bad_type"),
        (wire.encode(status_doc("n1", 1, health={"problems": [{"target": "x"}]})), "bad_type"),
        (wire.encode(status_doc("n1", 1, health={"problems": {}})), "bad_type"),
        (wire.encode(status_doc("n1", 1, drift_total=-1)), "bad_type"),
        (wire.encode(status_doc("n1", 1, drift=list(DRIFT[:2]), drift_total=1)), "bad_type"),
        (wire.encode(status_doc("n1", 1, drift=[{**DRIFT[0], "detail": 5}])), "bad_type"),
        (wire.encode(status_doc("n1", 1, reason=["x"])), "bad_type"),
        (wire.encode(status_doc("n1", 1, incarnation="")), "bad_type"),
        (wire.encode(status_doc("n1", 1, incarnation="a/b")), "bad_type"),
        (wire.encode(status_doc("n1", 1, incarnation=7)), "bad_type"),
    ],
)
def test_strict_parser_refuses(payload: bytes, reason: str) -> None:
    with pytest.raises(ContractError) as info:
        parse_status("n1", payload)
    assert info.value.reason == reason


def test_valid_surrogate_pair_and_escaped_backslash_pass_the_unicode_check() -> None:
    payload = BASE.replace(b'"labels":{}', b'"labels":{"a":"\\ud83d\\ude00","b":"\\\\ud800"}')
    assert dict(parse_status("n1", payload).report.labels) == {"a": "😀", "b": "\\ud800"}


def test_event_parser() -> None:
    event = parse_event("n1", wire.encode(event_doc("n1", 3, incarnation="d" * 32)))
    assert (event.seq, event.type, event.incarnation) == (3, "applied", "d" * 32)
    with pytest.raises(ContractError, match="duplicate key"):
        parse_event("n1", b'{"details":[],' + wire.encode(event_doc("n1", 3))[1:])
    with pytest.raises(ContractError):
        parse_event("n1", wire.encode(event_doc("n1", 3, details={"x": "\ud800"})))
