"""Plan contract and hub-side logic: strict parsing of answers and requests, the cut of
oversized answers, grouping, stable sampling, Markdown, and the API's bad requests
against a real hub process (the fleet-wide story is tests/test_plan_e2e.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from common import wire
from common.plan import (
    PlanAnswer,
    PlanChange,
    PlanRequest,
    Refusal,
    parse_answer,
    parse_request,
    valid_ref,
)
from common.status import ContractError
from hub.plan import Sample, aggregate, pick, refusal_summary
from hub.planview import markdown_plan, show_plan
from tests.testbed.hubproc import HubProc, Publisher, status_doc
from tests.testbed.mosquitto import Mosquitto
from tests.testbed.mqtt import Watcher

SHA = "c" * 40


def answer_doc(**extra: object) -> dict[str, object]:
    doc: dict[str, object] = {"id": "abc", "node": "n1", "commit": SHA, "ok": True,
                              "changes": [{"target": "files", "subject": "/etc/a",
                                           "action": "created"}],
                              "refused": None}  # fmt: skip
    doc.update(extra)
    return doc


def test_answer_round_trip() -> None:
    answer = PlanAnswer("abc", "n1", SHA, (PlanChange("files", "/etc/a", "created"),))
    assert parse_answer("n1", answer.payload()) == answer
    refused = PlanAnswer("abc", "n1", SHA, refused=Refusal("Untrusted", "bad signature"))
    assert parse_answer("n1", refused.payload()) == refused


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"id": "a", "id": "b"}', "bad_json"),
        (json.dumps(answer_doc()).replace('"ok": true', '"ok": NaN').encode(), "bad_type"),
        (b"[1]", "bad_json"),
        (b"\xff", "bad_json"),
        (json.dumps(answer_doc(node="n2")).encode(), "node_mismatch"),
        (json.dumps(answer_doc(ok=1)).encode(), "bad_type"),
        (json.dumps(answer_doc(commit="abc")).encode(), "bad_type"),
        (json.dumps(answer_doc(id="a/b")).encode(), "bad_type"),
        (json.dumps(answer_doc(changes={})).encode(), "bad_type"),
        (json.dumps(answer_doc(changes=[{"target": "files", "subject": "/x",
                                         "action": "unchanged"}])).encode(), "bad_type"),
        (json.dumps(answer_doc(changes=[{"target": 1, "subject": "/x",
                                         "action": "created"}])).encode(), "bad_type"),
        (json.dumps(answer_doc(ok=False)).encode(), "bad_type"),
        (json.dumps(answer_doc(refused={"reason": "x"})).encode(), "bad_type"),
        (json.dumps(answer_doc(omitted=-1)).encode(), "bad_type"),
        (b" " * (wire.MAX_PAYLOAD + 1), "too_large"),
    ],
)  # fmt: skip
def test_bad_answers_are_refused(payload: bytes, reason: str) -> None:
    with pytest.raises(ContractError) as err:
        parse_answer("n1", payload)
    assert err.value.reason == reason


def test_oversized_answer_is_cut_and_counted() -> None:
    changes = tuple(PlanChange("files", f"/etc/app/{i:06d}-" + "x" * 200, "created")
                    for i in range(5000))  # fmt: skip
    payload = PlanAnswer("abc", "n1", SHA, changes).payload()
    assert len(payload) <= wire.MAX_PAYLOAD
    parsed = parse_answer("n1", payload)
    assert 0 < len(parsed.changes) < 5000
    assert len(parsed.changes) + parsed.omitted == 5000


def test_requests_are_checked() -> None:
    request = PlanRequest("r1", SHA, "refs/pull/7/head")
    assert parse_request(json.loads(request.payload())) == request
    assert parse_request({"op": "plan", "id": "r1", "commit": SHA}).ref is None
    for bad in ({"id": "r1"}, {"id": "", "commit": SHA}, {"id": "r1", "commit": SHA[:39]},
                {"id": "r1", "commit": SHA, "ref": "main"},
                {"id": "r1", "commit": SHA, "ref": "refs/heads/../x"}):  # fmt: skip
        with pytest.raises(ValueError, match=r"id|commit|ref"):
            parse_request(bad)


@pytest.mark.parametrize(
    ("ref", "ok"),
    [("refs/heads/main", True), ("refs/tags/v1.2", True), ("refs/pull/7/head", True),
     ("refs/merge-requests/3/head", True), ("main", False), ("refs/heads/a..b", False),
     ("refs/heads/-x y", False), ("refs//x", False), ("refs/heads/x.lock", False),
     ("refs/heads/*", False)],
)  # fmt: skip
def test_ref_names(ref: str, ok: bool) -> None:
    assert valid_ref(ref) is ok


def test_aggregate_groups_changes_refusals_and_silence() -> None:
    changed = (
        PlanChange("files", "/etc/a", "configured"),
        PlanChange("files", "/etc/b", "created"),
    )
    answers = {f"n{i}": PlanAnswer("r", f"n{i}", SHA, changed[: 1 + i % 2]) for i in range(8)}
    answers["bad"] = PlanAnswer("r", "bad", SHA, refused=Refusal("Untrusted", "no signature"))
    plan = aggregate("beta", "a" * 40, SHA, [*answers, "quiet"], answers)
    assert (plan["asked"], plan["answered"], plan["silent"]) == (10, 9, ["quiet"])
    assert [(c["subject"], c["action"], c["nodes"]) for c in plan["changes"]] == [
        ("/etc/a", "configured", 8), ("/etc/b", "created", 4)]  # fmt: skip
    assert plan["changes"][0]["examples"] == ["n0", "n1", "n2", "n3", "n4"]
    assert plan["refused"] == [{"node": "bad", "reason": "Untrusted", "message": "no signature"}]
    assert refusal_summary(plan) == f"1 node would refuse {SHA[:7]}: bad (Untrusted)"


def test_sample_is_stable_and_sized() -> None:
    nodes = [f"node-{i}" for i in range(100)]
    first = pick(nodes, Sample.parse("10"))
    assert len(first) == 10
    assert pick(list(reversed(nodes)), Sample.parse("10")) == first
    assert set(pick(nodes, Sample.parse("20"))) >= set(first)
    assert len(pick(nodes, Sample.parse("25%"))) == 25
    assert len(pick(nodes[:3], Sample.parse("1%"))) == 1
    assert pick(nodes[:3], None) == nodes[:3]
    for bad in ("0", "-1", "0%", "101%", "nan%", "x"):
        with pytest.raises(ValueError):
            Sample.parse(bad)


def test_markdown_escapes_cells() -> None:
    change = PlanChange("files", "/etc/a|b", "created")
    plan = aggregate("beta", None, SHA, ["n|1"], {"n|1": PlanAnswer("r", "n|1", SHA, (change,))})
    md = markdown_plan(plan)
    assert "| created | files | `/etc/a\\|b` | 1 | n\\|1 |" in md
    assert "(none) ->" in md
    assert "created  files   /etc/a|b" in show_plan(plan)


def test_plan_api_bad_requests(hub_factory: Callable[..., HubProc]) -> None:
    hub = hub_factory()
    token = hub.token

    def post(stage: str, body: object, auth: str | None = token) -> tuple[int, object]:
        return hub.request("POST", f"/api/v1/stages/{stage}/plan", auth, json.dumps(body).encode())

    assert post("beta", {}, auth=None)[0] == 401
    assert hub.request("GET", "/api/v1/stages/beta/plan")[0] == 404
    assert hub.request("GET", "/api/v1/plans")[1] == {"plans": {}}
    for body, status, words in [
        ({"sample": "0"}, 400, "sample"),
        ({"sample": True}, 400, "sample"),
        ({"timeout": 0}, 400, "timeout"),
        ({"timeout": 1e9}, 400, "timeout"),
        ({"commit": 5}, 400, "commit"),
        ({"commit": "no such ref"}, 409, "neither"),
        ({"commit": "main"}, 409, "no [git] url"),
        ({}, 503, "not known yet"),
    ]:
        status_got, data = post("beta", body)
        assert status_got == status and words in data["error"], (body, data)  # type: ignore[index]
    assert post("nope", {})[0] == 400
    assert post("canary", {})[0] == 409  # no promote_from: nothing to promote
    # a full commit id needs no Git server; no node online: nobody asked
    status, data = post("beta", {"commit": SHA, "timeout": 1})
    assert status == 200, data
    assert data == {**data, "asked": 0, "answered": 0, "to": SHA, "changes": []}  # type: ignore[dict-item]
    assert hub.get("/api/v1/stages/beta/plan")["to"] == SHA


async def test_a_plan_made_on_one_replica_is_shown_by_every_replica(
    hub_factory: Callable[..., HubProc], mosquitto: Mosquitto, pg_database: str
) -> None:
    """Two replicas on PostgreSQL: the nodes' answers come to every replica (plan topics
    are not shared), the asking one collects them, and the other shows the plan kept
    in the database."""
    hubs = [hub_factory(database=pg_database) for _ in range(2)]
    nodes = ("n1", "n2")
    node_side = Watcher(mosquitto.port, [wire.cmd_topic(n) for n in nodes])
    publisher = Publisher(mosquitto).connect(mosquitto)
    try:
        await node_side.ready()
        for node in nodes:
            publisher.status(status_doc(node, 1, branch="beta"))
        for hub in hubs:
            await asyncio.to_thread(
                hub.wait_for, lambda h=hub: h.get("/api/v1/summary")["nodes"] == len(nodes)
            )
        body = json.dumps({"commit": SHA, "timeout": 9}).encode()
        path = "/api/v1/stages/beta/plan"
        asked = asyncio.create_task(
            asyncio.to_thread(hubs[1].request, "POST", path, hubs[1].token, body)
        )
        for _ in nodes:
            cmd = await node_side.next(10)
            node = cmd.topic.split("/")[-2]
            request = parse_request(json.loads(cmd.payload))
            change = PlanChange("files", "/etc/motd", "configured")
            answer = PlanAnswer(request.id, node, request.commit, (change,))
            await node_side.publish(wire.plan_topic(node), answer.payload())
        status, made = await asked
        assert status == 200, made
        assert (made["asked"], made["answered"], made["silent"]) == (2, 2, [])
        assert made["changes"] == [{**made["changes"][0], "nodes": 2}]
        shown = await asyncio.to_thread(hubs[0].get, "/api/v1/plans")
        assert shown == {"plans": {"beta": made}}
    finally:
        publisher.close()
        node_side.close()
