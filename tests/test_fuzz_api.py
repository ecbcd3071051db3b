"""Fuzzing the HTTP API's query and path parsing against one real hub process.

Generated GET requests (filters, paging, node names, label selectors) hold arbitrary
text: non-ASCII, lone surrogates and invalid UTF-8 percent-encoded, percent-junk,
long values, repeated and unknown parameters. Property: never a 5xx, and every answer
of the API is a JSON document (an object: the data, or ``{"error": ...}`` for a 4xx).
Dashboard assets (/static/) are files: a missing one is a plain 404.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.testbed.fuzzing import fuzz
from tests.testbed.hubproc import HubProc, Publisher, event_doc, status_doc
from tests.testbed.mosquitto import Mosquitto


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProc]:
    """One hub for the module (hundreds of requests), with two nodes and an event."""
    root = tmp_path_factory.mktemp("fuzzapi")
    broker = Mosquitto(root / "mosquitto")
    broker.start()
    hub = HubProc(root / "hub", broker)
    pub = Publisher(broker)
    try:
        hub.start()
        pub.connect(broker)
        pub.status(status_doc("pi-01", 1, branch="canary", labels={"site": "berlin"}))
        pub.status(status_doc("pi-02", 1, "failed", labels={"site": "paris", "hw": "pi4"}))
        pub.event(event_doc("pi-01", 1))
        hub.wait_for(lambda: hub.get("/api/v1/summary")["nodes"] == 2)
        hub.wait_for(lambda: len(hub.get("/api/v1/events")["events"]) == 1)
        yield hub
    finally:
        pub.close()
        hub.stop()
        broker.stop()


# Percent-encoded text an HTTP client may send; quote() of UTF-8 (surrogates included,
# as their 3-byte encodings), raw junk, and values the handlers compare or convert.
JUNK = (
    "%", "%z", "%zz", "%ff%fe", "%00", "%ED%A0%80", "%C0%AF", "%E2%82", "%2F", "%3D", "%26",
    "+", "%20", "a%00b", "1e999", "nan", "-0", "0x10", "1_000", "%D9%A1", "9" * 1000,
    "site=berlin", "site==", "=x", "a/b=c", "hw=pi4", "canary", "stable", "synced", "stale",
    "pi-01", "pi-01%2Fstatus", "..", "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
)  # fmt: skip
texts = st.text(max_size=40) | st.text(st.characters(codec="ascii"), max_size=300)
values = st.sampled_from(JUNK) | texts.map(
    lambda t: quote(t.encode("utf-8", "surrogatepass"), safe="")
)
NAMES = ("stage", "state", "label", "limit", "offset", "node", "type", "since", "x", "")
ROUTES = (
    "/api/v1/nodes", "/api/v1/events", "/api/v1/summary", "/api/v1/drift", "/api/v1/history",
    "/api/v1/stages", "/api/v1/health", "/api/v1/nodes/{}", "/static/{}", "/api/v1/{}",
)  # fmt: skip


@st.composite
def requests(draw: st.DrawFn) -> str:
    route = draw(st.sampled_from(ROUTES)).format(draw(values))
    params = draw(st.lists(st.tuples(st.sampled_from(NAMES), values), max_size=4))
    return route + ("?" + "&".join(f"{k}={v}" for k, v in params) if params else "")


def fetch(hub: HubProc, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(hub.url + path, timeout=30) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def test_seed_requests_answer(hub: HubProc) -> None:
    """The generated requests reach real data (else they would only test refusals)."""
    status, _, body = fetch(hub, "/api/v1/nodes?label=site%3Dberlin&stage=canary")
    assert status == 200 and [n["node"] for n in json.loads(body)["nodes"]] == ["pi-01"]


def test_request_line_too_long_is_a_client_error(hub: HubProc) -> None:
    """Past aiohttp's 8190-byte request line, its HTTP parser answers (in plain text)."""
    status, _, _ = fetch(hub, "/api/v1/nodes?label=" + "a" * 9000)
    assert status == 400


@fuzz(500)
@given(requests())
def test_any_query_gets_json_and_no_server_error(hub: HubProc, path: str) -> None:
    status, ctype, body = fetch(hub, path)
    assert status < 500, (path, status, body[:300], hub.log_text()[-1500:])
    if path.startswith("/static/"):
        return
    assert ctype.startswith("application/json"), (path, status, ctype, body[:200])
    assert isinstance(json.loads(body), dict)
