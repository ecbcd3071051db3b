"""The HTTP API's error handling, auth and the CLI, against a real hub process."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from common import wire
from tests.testbed.hubproc import REPO_ROOT, HubProc, Publisher, event_doc, status_doc
from tests.testbed.mosquitto import Mosquitto, free_port
from tests.testbed.mqtt import stop_client


@pytest.fixture
def fleet_hub(hub_factory: Callable[..., HubProc], publisher: Publisher) -> HubProc:
    hub = hub_factory()
    publisher.status(status_doc("pi-01", 4, "synced", branch="canary", labels={"site": "berlin"}))
    publisher.status(status_doc("pi-02", 2, "failed", branch="stable", labels={"site": "paris"},
                                reason="HealthCheckFailed"))  # fmt: skip
    publisher.event(event_doc("pi-02", 1, "rollback"))
    publisher.event(event_doc("pi-01", 1, "applied"))
    hub.wait_for(lambda: hub.get("/api/v1/summary")["nodes"] == 2)
    hub.wait_for(lambda: len(hub.get("/api/v1/events")["events"]) == 2)
    return hub


BAD_REQUESTS = [
    ("/api/v1/nodes?stage=nope", 400),
    ("/api/v1/nodes?state=happy", 400),
    ("/api/v1/nodes?label=novalue", 400),
    ("/api/v1/nodes?label==x", 400),
    ("/api/v1/nodes?limit=0", 400),
    ("/api/v1/nodes?limit=abc", 400),
    ("/api/v1/nodes?limit=100000", 400),
    ("/api/v1/nodes?offset=-1", 400),
    ("/api/v1/nodes/bad%20name", 400),
    ("/api/v1/nodes/ghost", 404),
    ("/api/v1/drift?stage=nope", 400),
    ("/api/v1/events?since=yesterday", 400),
    ("/api/v1/events?since=nan", 400),
    ("/api/v1/events?limit=-5", 400),
    ("/api/v1/events?node=a/b", 400),
    ("/api/v1/summary?label=a%20b", 400),
    ("/api/v1/nothing", 404),
]


def test_bad_requests_get_json_4xx(fleet_hub: HubProc) -> None:
    for path, status in BAD_REQUESTS:
        got, body = fleet_hub.request("GET", path)
        assert got == status, path
        assert isinstance(body, dict) and body["error"], path
    got, body = fleet_hub.request("DELETE", "/api/v1/summary")
    assert got == 405 and "error" in body


def test_filters_paging_and_detail(fleet_hub: HubProc) -> None:
    hub = fleet_hub
    assert [n["node"] for n in hub.get("/api/v1/nodes")["nodes"]] == ["pi-01", "pi-02"]
    assert hub.get("/api/v1/nodes?stage=canary")["total"] == 1
    assert hub.get("/api/v1/nodes?state=failed")["nodes"][0]["node"] == "pi-02"
    assert hub.get("/api/v1/nodes?label=site=paris")["nodes"][0]["node"] == "pi-02"
    assert hub.get("/api/v1/nodes?label=site=rome")["total"] == 0
    page = hub.get("/api/v1/nodes?limit=1&offset=1")
    assert (page["total"], [n["node"] for n in page["nodes"]]) == (2, ["pi-02"])
    detail = hub.get("/api/v1/nodes/pi-02")
    assert detail["stage"] == "stable" and detail["status"]["reason"] == "HealthCheckFailed"
    assert [e["type"] for e in detail["events"]] == ["rollback"]
    assert hub.get("/api/v1/events?type=applied")["events"][0]["node"] == "pi-01"
    assert hub.get("/api/v1/events?since=4102444800")["events"] == []  # year 2100
    by_site = hub.get("/api/v1/summary?label=site")["labels"]["site"]
    assert by_site["berlin"]["states"]["synced"] == 1
    stages = hub.get("/api/v1/stages")["stages"]
    assert [s["name"] for s in stages] == ["canary", "beta", "stable"]
    assert stages[1]["promote_from"] == "canary"
    metrics = hub.get("/metrics")
    assert 'edgefleet_hub_nodes{state="failed"} 1' in metrics
    assert 'edgefleet_hub_stage_nodes{stage="canary",state="synced"} 1' in metrics


def test_sync_needs_token_and_publishes_cmd(fleet_hub: HubProc, mosquitto: Mosquitto) -> None:
    got: list[bytes] = []
    subscribed, received = threading.Event(), threading.Event()
    sub = paho.Client(CallbackAPIVersion.VERSION2)
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_message = lambda _c, _u, m: (got.append(m.payload), received.set())
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe(wire.cmd_topic("pi-01"), qos=1)
    sub.loop_start()
    try:
        assert subscribed.wait(5)
        path = "/api/v1/nodes/pi-01/sync"
        assert fleet_hub.request("POST", path)[0] == 401
        assert fleet_hub.request("POST", path, token="wrong")[0] == 401
        assert fleet_hub.request("POST", "/api/v1/nodes/ghost/sync", token="s3cret-token")[0] == 404
        status, body = fleet_hub.request("POST", path, token="s3cret-token")
        assert (status, body["op"]) == (202, "sync")
        assert received.wait(5)
        assert json.loads(got[0]) == {"op": "sync"}
    finally:
        stop_client(sub)


@pytest.mark.parametrize("token", ["\xff\xfe", "s3cret-t\u00f6ken", " "])
def test_undecodable_or_odd_bearer_tokens_get_401(fleet_hub: HubProc, token: str) -> None:
    # urllib sends the header latin-1 encoded: "\xff\xfe" arrives as those raw bytes
    status, body = fleet_hub.request("POST", "/api/v1/nodes/pi-01/sync", token=token)
    assert (status, body) == (401, {"error": "a valid bearer token is required"})


def test_every_response_carries_the_security_headers(fleet_hub: HubProc) -> None:
    for path in ("/", "/static/app.js", "/api/v1/summary", "/api/v1/nodes/ghost", "/metrics"):
        req = urllib.request.Request(fleet_hub.url + path)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                headers = resp.headers
        except urllib.error.HTTPError as err:
            headers = err.headers
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp, path
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp, path
        assert headers["X-Frame-Options"] == "DENY", path
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["Referrer-Policy"] == "no-referrer", path


def test_sync_refused_without_token_file(
    hub_factory: Callable[..., HubProc], publisher: Publisher
) -> None:
    hub = hub_factory(token=None)
    publisher.status(status_doc("n1", 1))
    hub.wait_for(lambda: hub.get("/api/v1/summary")["nodes"] == 1)
    assert hub.request("POST", "/api/v1/nodes/n1/sync", token="anything")[0] == 403


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=30, check=False,
    )  # fmt: skip


def test_cli_tables_and_json(fleet_hub: HubProc) -> None:
    cfg = str(fleet_hub.config)
    status = cli("status", "--config", cfg)
    assert status.returncode == 0, status.stderr
    assert "nodes: 2" in status.stdout and "canary" in status.stdout
    nodes = cli("nodes", "--config", cfg, "--state", "failed")
    assert nodes.returncode == 0 and "pi-02" in nodes.stdout and "pi-01" not in nodes.stdout
    data: Any = json.loads(cli("nodes", "--url", fleet_hub.url, "--json").stdout)
    assert data["total"] == 2
    assert json.loads(cli("stages", "--config", cfg, "--json").stdout)["stages"][0]["name"] == (
        "canary"
    )
    assert "rollback" in cli("events", "--config", cfg, "--node", "pi-02").stdout
    assert cli("drift", "--config", cfg).stdout.strip() == "no drift reported"
    bad = cli("nodes", "--config", cfg, "--stage", "nope")
    assert bad.returncode == 1 and "unknown stage" in bad.stderr


def test_cli_errors(tmp_path: Any) -> None:
    down = cli("status", "--url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "cannot reach the hub API" in down.stderr
    conf = tmp_path / "fleet.toml"
    conf.write_text("[hub]\nlisten = 'nowhere'\n")
    bad = cli("status", "--config", str(conf))
    assert bad.returncode == 2 and "hub.listen" in bad.stderr
    help_text = cli("nodes", "--help").stdout
    for option in ("--stage", "--state", "--label", "--limit", "--offset", "--json", "--url",
                   "--token-file", "--config"):  # fmt: skip
        assert option in help_text
