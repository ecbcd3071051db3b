"""Ingest end to end: real mosquitto, real hub process, messages published with paho."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from common import wire
from common.status import ContractError
from common.strict import parse_event, parse_status
from hub.ingest import Rejected, parse_online
from tests.testbed.hubproc import HubProc, Publisher, event_doc, status_doc

pytestmark = pytest.mark.both_backends  # every hub here runs on SQLite, then PostgreSQL


def summary(hub: HubProc) -> dict[str, Any]:
    return hub.get("/api/v1/summary")


def metric(hub: HubProc, name: str) -> float:
    for line in hub.get("/metrics").splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"metric {name} not exposed")


# -- pure validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[1, 2]", "bad_json"),
        (wire.encode(status_doc("n1", 1, schema=2)), "bad_schema"),
        (wire.encode(status_doc("n1", 1, schema=True)), "bad_schema"),
        (wire.encode(status_doc("other", 1)), "node_mismatch"),
        (wire.encode(status_doc("n1", "7")), "bad_type"),
        (wire.encode(status_doc("n1", -1)), "bad_type"),
        (wire.encode(status_doc("n1", 1, state="x" * 33)), "bad_type"),
        (wire.encode(status_doc("n1", 1, state="")), "bad_type"),
        (wire.encode(status_doc("n1", 1, labels={"a": 1})), "bad_type"),
        (wire.encode(status_doc("n1", 1, drift=[{"target": "files"}])), "bad_type"),
        (wire.encode(status_doc("n1", 1, heartbeat="30")), "bad_type"),
        (wire.encode(status_doc("n1", 1, applied=5)), "bad_type"),
        (b'{"schema":1,"node":"n1","seq":1,"state":"synced","heartbeat":NaN}', "bad_type"),
        # each of these used to escape as a Python exception (a wedged read loop or a
        # failed batch) instead of a counted drop:
        (b"[" * 100_000, "bad_json"),  # RecursionError
        (b'{"a":' * 50_000, "bad_json"),
        (wire.encode(status_doc("n1", 1, state=["synced"])), "bad_type"),  # unhashable
        (wire.encode(status_doc("n1", 2**63)), "bad_type"),  # beyond SQLite INTEGER
        (wire.encode(status_doc("n1", 1, heartbeat=10**400)), "bad_type"),  # OverflowError
        (wire.encode(status_doc("n1", 1, observed_at=10**400)), "bad_type"),
        (wire.encode(status_doc("n1", 1, observed_at=1e999)), "bad_type"),  # inf
        (wire.encode(status_doc("n1", 1, branch="\ud800")), "bad_type"),  # not UTF-8-able
        (wire.encode(status_doc("n1", 1, applied="x\udfff")), "bad_type"),
        # NaN anywhere: stored, it makes SQLite's json functions fail every API query
        (wire.encode(status_doc("n1", 1, resources={"files": float("nan")})), "bad_type"),
        (wire.encode(status_doc("n1", 1, health={"x": float("-inf")})), "bad_type"),
    ],
)
def test_parse_status_rejects(payload: bytes, reason: str) -> None:
    with pytest.raises(ContractError) as info:
        parse_status("n1", payload)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "doc",
    [
        event_doc("n1", 1, at=10**400),
        event_doc("n1", 1, type_="\ud800"),
        event_doc("n1", 1, commit="\udc00"),
        event_doc("n1", 2**64),
        event_doc("n1", 1, details={"big": 1e999}),
    ],
)
def test_parse_event_rejects(doc: dict[str, Any]) -> None:
    with pytest.raises(ContractError) as info:
        parse_event("n1", wire.encode(doc))
    assert info.value.reason == "bad_type"


def test_parse_keeps_unicode_and_extremes_that_are_valid() -> None:
    doc = status_doc("n1", 2**63 - 1, branch="zweig-ü", applied="😀", heartbeat=0)
    status = parse_status("n1", wire.encode(doc))
    assert (status.seq, status.report.branch, status.report.applied) == (2**63 - 1, "zweig-ü", "😀")
    # a valid surrogate pair in JSON is one character, not a lone surrogate
    status = parse_status("n1", wire.encode(doc).replace("😀".encode(), b"\\ud83d\\ude00"))
    assert status.report.applied == "😀"


def test_parse_valid_documents() -> None:
    doc = status_doc("n1", 3, drift=[{"target": "files", "subject": "/etc/a", "kind": "modified",
                                      "detail": ""}], heartbeat=5)  # fmt: skip
    status = parse_status("n1", wire.encode(doc))
    r = status.report
    assert (status.seq, r.state, r.drift_total, status.heartbeat) == (3, "synced", 1, 5)
    event = parse_event("n1", wire.encode(event_doc("n1", 9, details={"x": 1})))
    assert (event.seq, event.type, event.details) == (9, "applied", {"x": 1})
    assert parse_online(b"0") == 0
    with pytest.raises(Rejected):
        parse_online(b"yes")
    with pytest.raises(ContractError):
        parse_event("n1", wire.encode(event_doc("n1", 1, type_="")))


# -- real hub ------------------------------------------------------------------------


def test_counts_per_state_and_stage(
    hub_factory: Callable[..., HubProc], publisher: Publisher
) -> None:
    hub = hub_factory()
    plan = {
        "c1": ("canary", "synced"),
        "c2": ("canary", "failed"),
        "b1": ("beta", "drifted"),
        "s1": ("stable", "synced"),
        "s2": ("stable", "progressing"),
        "x1": ("other", "error"),
        "d1": ("stable", "deferred"),
        "u1": ("stable", "hibernating"),  # a newer agent's state: shown, never dropped
    }
    for node, (branch, state) in plan.items():
        publisher.status(status_doc(node, 1, state, branch=branch))
    hub.wait_for(lambda: summary(hub).get("nodes") == 8)
    s = summary(hub)
    assert s["states"] == {"synced": 2, "progressing": 1, "failed": 1, "drifted": 1,
                           "refused": 0, "error": 1, "deferred": 1, "unknown": 1, "stale": 0,
                           "offline": 0}  # fmt: skip
    unknown = hub.get("/api/v1/nodes?state=unknown")["nodes"]
    assert [(n["node"], n["reported_state"]) for n in unknown] == [("u1", "hibernating")]
    assert s["stages"]["canary"]["nodes"] == 2
    assert s["stages"]["canary"]["states"]["failed"] == 1
    assert s["stages"]["stable"]["states"]["synced"] == 1
    assert s["stages"]["stable"]["states"]["deferred"] == 1
    assert s["unstaged"]["nodes"] == 1
    assert sum(s["states"].values()) == s["nodes"]  # every node in exactly one state

    # out-of-order: an older seq must not overwrite the newer state
    publisher.status(status_doc("s1", 5, "failed", branch="stable"))
    publisher.status(status_doc("s1", 4, "synced", branch="stable"))
    hub.wait_for(lambda: hub.get("/api/v1/nodes/s1")["seq"] == 5)
    assert hub.get("/api/v1/nodes/s1")["state"] == "failed"
    # seq 4 may come in the next batch: counted when that one is built
    hub.wait_for(lambda: metric(hub, "edgefleet_hub_status_out_of_order_total") == 1)
    publisher.status(status_doc("s1", 3, "synced", branch="stable"))  # late, in its own batch
    hub.wait_for(lambda: metric(hub, "edgefleet_hub_status_out_of_order_total") == 2)
    assert hub.get("/api/v1/nodes/s1")["state"] == "failed"


def test_lwt_marks_offline_and_overrides_state(
    hub_factory: Callable[..., HubProc], mosquitto: Any
) -> None:
    hub = hub_factory()
    node = Publisher(mosquitto).connect(mosquitto, will=(wire.online_topic("edge1"), b"0"))
    node.online("edge1", b"1")
    node.status(status_doc("edge1", 1, "synced"))
    hub.wait_for(lambda: summary(hub)["states"]["synced"] == 1)
    node.client.loop_stop()
    node.client.socket().close()  # die without DISCONNECT: the broker publishes the LWT
    hub.wait_for(lambda: summary(hub)["states"]["offline"] == 1)
    s = summary(hub)
    assert s["states"]["synced"] == 0 and s["nodes"] == 1
    assert hub.get("/api/v1/nodes?state=offline")["nodes"][0]["node"] == "edge1"
    assert hub.get("/api/v1/nodes/edge1")["reported_state"] == "synced"


def test_silence_makes_stale_and_heartbeat_recovers(
    hub_factory: Callable[..., HubProc], publisher: Publisher
) -> None:
    hub = hub_factory(heartbeat=0.5)
    publisher.status(status_doc("quiet", 1, "synced"))
    publisher.status(status_doc("slowbeat", 1, "synced", heartbeat=60))
    hub.wait_for(lambda: summary(hub)["nodes"] == 2)
    hub.wait_for(lambda: summary(hub)["states"]["stale"] == 1, timeout=10)
    s = summary(hub)
    # the node announcing a 60 s heartbeat gets 3 x 60 s, not the hub's 1.5 s
    assert s["states"]["synced"] == 1
    assert hub.get("/api/v1/nodes/quiet")["state"] == "stale"
    # a re-published status with the same seq is a heartbeat: fresh again
    publisher.status(status_doc("quiet", 1, "synced"))
    hub.wait_for(lambda: summary(hub)["states"]["synced"] == 2)


def test_drift_grouped_across_nodes(
    hub_factory: Callable[..., HubProc], publisher: Publisher
) -> None:
    hub = hub_factory()
    nginx = {"target": "systemd", "subject": "nginx.service", "kind": "modified", "detail": "x"}
    conf = {"target": "files", "subject": "/etc/app.conf", "kind": "missing", "detail": ""}
    for i in range(3):
        publisher.status(status_doc(f"s{i}", 1, "drifted", branch="stable", drift=[nginx]))
    publisher.status(status_doc("c0", 1, "drifted", branch="canary", drift=[nginx, conf]))
    publisher.status(status_doc("c1", 1, "synced", branch="canary"))
    hub.wait_for(lambda: summary(hub).get("nodes") == 5)
    drift = hub.get("/api/v1/drift")["drift"]
    assert drift[0]["subject"] == "nginx.service"
    assert drift[0]["nodes"] == 4
    assert drift[0]["by_stage"] == {"stable": 3, "canary": 1}
    assert sorted(drift[0]["examples"]) == ["c0", "s0", "s1", "s2"]
    assert (drift[1]["subject"], drift[1]["nodes"], drift[1]["kind"]) == ("/etc/app.conf", 1,
                                                                           "missing")  # fmt: skip
    assert [d["nodes"] for d in hub.get("/api/v1/drift?stage=canary")["drift"]] == [1, 1]
    # drift fixed on a node: its next status clears it from the aggregation
    publisher.status(status_doc("c0", 2, "synced", branch="canary"))
    hub.wait_for(lambda: len(hub.get("/api/v1/drift")["drift"]) == 1)


def test_hostile_payloads_change_nothing_and_are_counted(
    hub_factory: Callable[..., HubProc], publisher: Publisher
) -> None:
    hub = hub_factory()
    publisher.status(status_doc("victim", 1, "synced"))
    hub.wait_for(lambda: summary(hub).get("nodes") == 1)
    big = json.dumps(status_doc("victim", 99, "failed", message="x" * (10 * 1024 * 1024)))
    hostile = [
        (wire.status_topic("victim"), b"{not json"),
        (wire.status_topic("victim"), big.encode()),
        (wire.status_topic("victim"), wire.encode(status_doc("victim", "100", "failed"))),
        (wire.status_topic("victim"), wire.encode(status_doc("victim", 101, "failed", schema=7))),
        (wire.status_topic("attacker"), wire.encode(status_doc("victim", 102, "failed"))),
        (wire.events_topic("victim"), wire.encode(event_doc("attacker", 1))),
        (wire.online_topic("victim"), b"maybe"),
    ]
    for topic, payload in hostile:
        publisher.publish(topic, payload)
    publisher.status(status_doc("marker", 1, "synced"))  # processed after all of the above
    hub.wait_for(lambda: summary(hub).get("nodes") == 2)
    node = hub.get("/api/v1/nodes/victim")
    assert (node["state"], node["seq"]) == ("synced", 1)
    assert hub.get("/api/v1/events")["events"] == []
    text = hub.get("/metrics")
    for reason, count in (("bad_json", 1), ("too_large", 1), ("bad_type", 2), ("bad_schema", 1),
                          ("node_mismatch", 2)):  # fmt: skip
        assert f'edgefleet_hub_messages_dropped_total{{reason="{reason}"}} {count}' in text
    assert hub.proc is not None and hub.proc.poll() is None


def test_events_dedup_and_no_loss_across_restart(
    hub_factory: Callable[..., HubProc], publisher: Publisher
) -> None:
    hub = hub_factory()
    for seq in range(1, 6):
        publisher.event(event_doc("e1", seq))
    publisher.event(event_doc("e1", 3))  # an outbox re-delivery after reconnect
    hub.wait_for(lambda: len(hub.get("/api/v1/events?node=e1")["events"]) == 5)
    hub.stop()
    for seq in range(6, 206):  # the hub is down: the broker queues for its session
        publisher.event(event_doc("e1", seq))
    hub.start()
    hub.wait_for(lambda: len(hub.get("/api/v1/events?node=e1&limit=1000")["events"]) == 205)
    hub.kill()  # a crash: nothing acknowledged may be lost, redeliveries are deduplicated
    for seq in range(206, 306):
        publisher.event(event_doc("e1", seq))
    hub.start()
    hub.wait_for(lambda: len(hub.get("/api/v1/events?node=e1&limit=1000")["events"]) == 305)
    seqs = sorted(e["seq"] for e in hub.get("/api/v1/events?node=e1&limit=1000")["events"])
    assert seqs == list(range(1, 306))


def test_payloads_that_crashed_or_wedged_the_hub(
    hub_factory: Callable[..., HubProc], publisher: Publisher
) -> None:
    hub = hub_factory()
    publisher.status(status_doc("victim", 1, "synced"))
    hub.wait_for(lambda: summary(hub).get("nodes") == 1)
    topic = wire.status_topic("victim")
    hostile = [
        b"[" * 200_000,  # deeply nested: RecursionError in the MQTT read callback
        wire.encode(status_doc("victim", 2, "failed", branch="\ud800")),  # failed the batch
        wire.encode(status_doc("victim", 2**63, "failed")),  # failed the batch
        wire.encode(status_doc("victim", 3, "failed", resources={"x": float("nan")})),
        wire.encode(status_doc("victim", 4, "failed", heartbeat=10**400)),
        wire.encode(status_doc("victim", 5, ["failed"])),
    ]
    for payload in hostile:
        publisher.publish(topic, payload)
    publisher.event(event_doc("victim", 1, at=10**400))
    publisher.status(status_doc("marker", 1, "synced"))  # processed after all of the above
    hub.wait_for(lambda: summary(hub).get("nodes") == 2)
    node = hub.get("/api/v1/nodes/victim")
    assert (node["state"], node["seq"]) == ("synced", 1)
    assert hub.get("/api/v1/nodes")["total"] == 2  # json over every stored doc still works
    assert hub.get("/api/v1/events")["events"] == []
    text = hub.get("/metrics")
    assert 'edgefleet_hub_messages_dropped_total{reason="bad_json"} 1' in text
    assert 'edgefleet_hub_messages_dropped_total{reason="bad_type"} 6' in text
    assert "edgefleet_hub_batch_errors_total 0" in text
    assert "Traceback" not in hub.log_text()
    assert hub.proc is not None and hub.proc.poll() is None
