"""The status contract through a real hub: hostile payloads the strict parser must stop
(each used to break the API or hide a node), re-imaged nodes, true drift totals."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import wire
from common.status import NodeReport, Status, encode_status
from hub.config import MqttSettings
from hub.enroll.watch import StatusWatch
from hub.store import Batch, EventRow, Store
from hub.store.schema import MIGRATIONS
from tests.testbed.hubproc import HubProc, Publisher, event_doc, status_doc
from tests.testbed.mosquitto import Mosquitto


def strict_get(hub: HubProc, path: str) -> Any:
    """GET that fails on any non-200 answer and on JSON that is not strict (Infinity)."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{path} emitted {name}, which is not JSON")

    with urllib.request.urlopen(hub.url + path, timeout=10) as resp:  # raises on 4xx/5xx
        assert resp.status == 200
        return json.loads(resp.read().decode("utf-8"), parse_constant=refuse)


def dropped(hub: HubProc, reason: str) -> float:
    for line in hub.get("/metrics").splitlines():
        if line.startswith(f'edgefleet_hub_messages_dropped_total{{reason="{reason}"}} '):
            return float(line.split()[-1])
    return 0.0


def labelled(node: str, seq: int, first_labels: str) -> bytes:
    """A valid status whose ``labels`` key comes twice: a hostile value first."""
    doc = wire.encode(status_doc(node, seq, labels={"site": "berlin"}))
    return b'{"labels":' + first_labels.encode() + b"," + doc[1:]


def hub_with_victim(
    hub_factory: Callable[..., HubProc], publisher: Publisher, **extra: Any
) -> HubProc:
    """A hub that has stored status seq 1 of node "victim"."""
    hub = hub_factory()
    publisher.status(status_doc("victim", 1, **extra))
    hub.wait_for(lambda: hub.get("/api/v1/summary")["nodes"] == 1)
    return hub


def publish_then_marker(hub: HubProc, publisher: Publisher, topic: str, payload: bytes) -> None:
    publisher.publish(topic, payload)
    publisher.status(status_doc("marker", 1))  # ingested after the hostile message
    hub.wait_for(
        lambda: any(n["node"] == "marker" for n in strict_get(hub, "/api/v1/nodes")["nodes"])
    )


def test_duplicate_keys_cannot_break_the_fleet_listing(
    hub_factory: Callable[..., HubProc], publisher: Publisher
) -> None:
    """H1: ingest checked the last ``labels``, SQLite's json_extract read the first:
    /api/v1/nodes answered 500 for the whole fleet, or emitted Infinity."""
    hub = hub_with_victim(hub_factory, publisher, labels={"site": "paris"})
    topic = wire.status_topic("victim")
    publisher.publish(topic, labelled("victim", 2, '"not json"'))
    publish_then_marker(hub, publisher, topic, labelled("victim", 3, '{"site":1e999}'))
    nodes = {n["node"]: n for n in strict_get(hub, "/api/v1/nodes")["nodes"]}
    assert (nodes["victim"]["seq"], nodes["victim"]["labels"]) == (1, {"site": "paris"})
    assert strict_get(hub, "/api/v1/nodes?label=site=paris")["total"] == 1
    assert dropped(hub, "bad_json") == 2


def test_lone_surrogate_label_cannot_break_the_label_summary(
    hub_factory: Callable[..., HubProc], publisher: Publisher
) -> None:
    """L1: a label value "\\ud800" made /api/v1/summary?label=site answer 500."""
    hub = hub_with_victim(hub_factory, publisher, labels={"site": "paris"})
    hostile = wire.encode(status_doc("victim", 2, labels={"site": "\ud800"}))
    assert b"\\ud800" in hostile
    publish_then_marker(hub, publisher, wire.status_topic("victim"), hostile)
    summary = strict_get(hub, "/api/v1/summary?label=site")
    assert summary["labels"]["site"]["paris"]["nodes"] == 1
    assert strict_get(hub, "/api/v1/nodes/victim")["seq"] == 1
    assert dropped(hub, "bad_type") == 1


def test_mistyped_paths_are_refused_and_the_node_page_keeps_working(
    hub_factory: Callable[..., HubProc], publisher: Publisher
) -> None:
    """L3: ``paths: {}`` was accepted; the dashboard's node page threw on it."""
    hub = hub_with_victim(hub_factory, publisher)
    publish_then_marker(
        hub, publisher, wire.status_topic("victim"), wire.encode(status_doc("victim", 2, paths={}))
    )
    node = strict_get(hub, "/api/v1/nodes/victim")
    assert (node["seq"], node["status"]["paths"]) == (1, ["common"])
    assert dropped(hub, "bad_type") == 1


def test_stored_status_is_the_validated_reencoding(
    hub_factory: Callable[..., HubProc], publisher: Publisher
) -> None:
    """Fields the contract does not know are not stored or served back."""
    hub = hub_factory()
    publisher.status(status_doc("n1", 1, surprise={"deep": [1, 2, 3]}, labels={"k": "ü"}))
    hub.wait_for(lambda: hub.get("/api/v1/summary")["nodes"] == 1)
    status = strict_get(hub, "/api/v1/nodes/n1")["status"]
    assert "surprise" not in status
    assert status["labels"] == {"k": "ü"} and status["drift_total"] == 0


def test_reimaged_node_replaces_its_old_life(
    hub_factory: Callable[..., HubProc], publisher: Publisher
) -> None:
    """M4: state dir lost, seqs restart at 1: the hub kept the old life (seq 5000) and
    dropped the new statuses and events as late or duplicates."""
    hub = hub_factory()
    old, new = "a" * 32, "b" * 32
    publisher.status(status_doc("pi", 5000, "failed", incarnation=old))
    for seq in (1, 2):
        publisher.event(event_doc("pi", seq, "applied", incarnation=old))
    hub.wait_for(lambda: hub.try_get("/api/v1/nodes/pi").get("seq") == 5000)
    hub.wait_for(lambda: len(hub.get("/api/v1/events?node=pi")["events"]) == 2)

    publisher.status(status_doc("pi", 1, "synced", incarnation=new))
    for seq in (1, 2):
        publisher.event(event_doc("pi", seq, "rollback", incarnation=new))
    hub.wait_for(lambda: hub.try_get("/api/v1/nodes/pi").get("seq") == 1)
    assert hub.get("/api/v1/nodes/pi")["state"] == "synced"
    hub.wait_for(lambda: len(hub.get("/api/v1/events?node=pi")["events"]) == 4)
    events = hub.get("/api/v1/events?node=pi")["events"]
    assert sorted((e["type"], e["seq"]) for e in events) == [
        ("applied", 1), ("applied", 2), ("rollback", 1), ("rollback", 2),
    ]  # fmt: skip

    # the new life is ordered by seq again, also after a hub restart
    hub.stop()
    hub.start()
    publisher.status(status_doc("pi", 2, "drifted", incarnation=new))
    hub.wait_for(lambda: hub.try_get("/api/v1/nodes/pi").get("seq") == 2)
    publisher.status(status_doc("pi", 1, "failed", incarnation=new))  # late: ignored
    publisher.event(event_doc("pi", 2, "rollback", incarnation=new))  # redelivery: deduped
    publisher.status(status_doc("marker", 1))
    hub.wait_for(lambda: hub.get("/api/v1/summary")["nodes"] == 2)
    assert (hub.get("/api/v1/nodes/pi")["state"], hub.get("/api/v1/nodes/pi")["seq"]) == (
        "drifted",
        2,
    )
    assert len(hub.get("/api/v1/events?node=pi")["events"]) == 4


def test_status_without_incarnation_keeps_seq_order(
    hub_factory: Callable[..., HubProc], publisher: Publisher
) -> None:
    """Older agents send no incarnation: a lower seq is still a late delivery."""
    hub = hub_factory()
    publisher.status(status_doc("old", 5000, "failed"))
    hub.wait_for(lambda: hub.try_get("/api/v1/nodes/old").get("seq") == 5000)
    publisher.status(status_doc("old", 1, "synced"))
    publisher.status(status_doc("marker", 1))
    hub.wait_for(lambda: hub.get("/api/v1/summary")["nodes"] == 2)
    assert hub.get("/api/v1/nodes/old")["seq"] == 5000


def test_drift_count_is_the_true_total_when_the_list_is_cut(
    hub_factory: Callable[..., HubProc], publisher: Publisher
) -> None:
    """500 drifted objects used to show as drift_count 200 (cut twice, total lost)."""
    hub = hub_factory()
    drift: tuple[wire.DriftItem, ...] = tuple(
        {"target": "files", "subject": f"/etc/app/{i}", "kind": "modified", "detail": "x" * 900}
        for i in range(500)
    )
    report = NodeReport("big", "drifted", drift=drift, drift_total=len(drift))
    payload = encode_status(Status(report, 1))
    assert len(payload) <= wire.MAX_PAYLOAD < len(encode_status(Status(report, 1), limit=10**9))
    publisher.publish(wire.status_topic("big"), payload)
    # an old agent: the cut list plus drift_omitted, no drift_total
    old = status_doc("old", 1, "drifted", drift=list(drift[:200]), drift_omitted=300)
    del old["drift_total"]
    publisher.status(old)
    hub.wait_for(lambda: hub.get("/api/v1/summary")["nodes"] == 2)
    nodes = {n["node"]: n for n in hub.get("/api/v1/nodes")["nodes"]}
    assert nodes["big"]["drift_count"] == 500
    assert nodes["old"]["drift_count"] == 500
    big = hub.get("/api/v1/nodes/big")
    assert 0 < len(big["drift"]) < 500 and big["status"]["drift_total"] == 500


async def test_events_migrate_to_per_incarnation_dedup(tmp_path: Path) -> None:
    """A database of the previous schema keeps its events; dedup becomes per life."""
    db = tmp_path / "hub.db"
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for version, statements in enumerate(MIGRATIONS[:2], start=1):
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
        conn.execute(
            "INSERT INTO events (node, seq, at, type, details, received) "
            "VALUES ('pi', 1, 1.0, 'applied', '{}', 1.0)"
        )
    store = await Store.open(db)
    try:
        again = EventRow("pi", 1, 2.0, "applied", None, "{}", 2.0)  # an old agent's redelivery
        new_life = EventRow("pi", 1, 3.0, "rollback", None, "{}", 3.0, "b" * 32)
        assert await store.write_batch(Batch(events=[again, new_life])) == (1, 2)
        rows = await store.events(node="pi")
        assert [(r.type, r.seq) for r in rows] == [("rollback", 1), ("applied", 1)]
    finally:
        await store.close()


async def test_enrollment_reads_the_first_status_with_the_strict_parser(
    mosquitto: Mosquitto, publisher: Publisher
) -> None:
    """`edgefleet-hub enroll` waits for the node's first status: a payload ingest would
    drop (duplicate keys) is skipped there too, the next valid one is taken."""
    watcher = await StatusWatch.open(MqttSettings(url=mosquitto.url), "fresh")
    try:
        publisher.publish(wire.status_topic("fresh"), labelled("fresh", 1, '"not json"'))
        publisher.status(status_doc("fresh", 2, "synced"), retain=False)
        doc = await watcher.first(accept_retained=True, within=10)
    finally:
        watcher.close()
    assert (doc["seq"], doc["state"], doc["labels"]) == (2, "synced", {})
