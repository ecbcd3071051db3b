"""The dashboard in a real headless Chromium, driven over the DevTools protocol."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.testbed.hubproc import HubProc, Publisher, status_doc
from tests.testbed.mosquitto import free_port
from tests.testbed.wait import until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Page:
    """One browser tab: evaluate JavaScript and wait for conditions."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.notices: list[dict[str, Any]] = []
        """DevTools notifications seen so far (console, log, exceptions)."""

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            reply = await self.ws.receive_json(timeout=10)
            if reply.get("id") == msg_id:
                result: dict[str, Any] = reply["result"]
                return result
            if "method" in reply:
                self.notices.append(reply)

    async def eval(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def errors(self) -> list[dict[str, Any]]:
        """Console errors, uncaught exceptions and browser log errors (CSP violations
        are reported there)."""
        return [
            n for n in self.notices
            if n["method"] == "Runtime.exceptionThrown"
            or (n["method"] == "Runtime.consoleAPICalled" and n["params"]["type"] == "error")
            or (n["method"] == "Log.entryAdded" and n["params"]["entry"]["level"] == "error")
        ]  # fmt: skip

    async def wait(self, expression: str, timeout: float = 10.0) -> None:
        await until(lambda: self.eval(expression), timeout, f"the page: {expression}")


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Callable[[str], Any]]:
    """Open a URL in headless Chromium; yields an async function url -> Page."""
    procs: list[subprocess.Popen[bytes]] = []
    sessions: list[aiohttp.ClientSession] = []
    pages: list[Page] = []

    async def open_page(url: str) -> Page:
        port = free_port()
        proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}",
             f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(proc)
        session = aiohttp.ClientSession()
        sessions.append(session)
        async with asyncio.timeout(20):
            while True:
                try:
                    async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                        targets = [p for p in await resp.json() if p["type"] == "page"]
                    if targets:
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        ws = await session.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0)
        page = Page(ws)
        # Both replay what was logged before they were enabled.
        await page.call("Runtime.enable")
        await page.call("Log.enable")
        pages.append(page)
        return page

    yield open_page
    for page in pages:
        await page.ws.close()
    for session in sessions:
        await session.close()
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def count(stage: str, state: str) -> str:
    return f'document.querySelector(\'b.count[data-stage="{stage}"][data-state="{state}"]\')'


async def test_dashboard_updates_live(
    hub_factory: Callable[..., HubProc], publisher: Publisher, browser: Callable[[str], Any]
) -> None:
    hub = hub_factory()
    drift = [{"target": "systemd", "subject": "nginx.service", "kind": "stopped", "detail": ""}]
    publisher.status(status_doc("pi-01", 1, "synced", branch="stable"))
    publisher.status(status_doc("pi-02", 1, "drifted", branch="stable", drift=drift))
    hub.wait_for(lambda: hub.get("/api/v1/summary")["nodes"] == 2)

    page = await browser(hub.url + "/")
    await page.wait(f"{count('stable', 'synced')}?.textContent === '1'")
    await page.wait("document.querySelector('#live').textContent === 'live'")
    await page.wait("document.querySelector('#drift tbody').textContent.includes('nginx.service')")
    await page.wait("document.querySelectorAll('#nodes tbody tr').length === 2")
    await page.eval("window.__sameDocument = true")  # proves updates arrive without a reload

    publisher.status(status_doc("pi-03", 1, "failed", branch="canary"))
    await page.wait(f"{count('canary', 'failed')}?.textContent === '1'")
    await page.wait("document.querySelector('#total-nodes').textContent === '3'")
    publisher.online("pi-01", b"0")
    await page.wait(f"{count('stable', 'offline')}?.textContent === '1'")
    assert await page.eval(f"{count('stable', 'synced')}.textContent") == "0"
    await page.wait("document.querySelector('tr[data-node=\"pi-01\"]')?.className === 'offline'")
    # offline is styled apart from healthy, never green
    colors = await page.eval(
        "[...document.querySelectorAll('#stages .stage[data-stage=stable] .state')]"
        ".filter(e => ['synced','offline','stale'].includes(e.dataset.state))"
        ".map(e => getComputedStyle(e).backgroundColor + '|' + getComputedStyle(e).backgroundImage)"
    )
    assert len(set(colors)) == 3, colors
    assert await page.eval("window.__sameDocument") is True

    await page.eval("location.hash = '#/node/pi-02'")
    await page.wait("document.querySelector('#node-name').textContent === 'pi-02'")
    await page.wait("document.querySelector('#node-drift').textContent.includes('nginx.service')")
    assert await page.eval("document.querySelector('#overview').hidden") is True
    assert page.errors() == []


async def test_dashboard_runs_under_its_security_headers(
    hub_factory: Callable[..., HubProc], publisher: Publisher, browser: Callable[[str], Any]
) -> None:
    hub = hub_factory()
    publisher.status(status_doc("pi-01", 1, "failed", branch="stable"))
    hub.wait_for(lambda: hub.get("/api/v1/summary")["nodes"] == 1)
    async with aiohttp.ClientSession() as session, session.get(hub.url + "/") as resp:
        headers = resp.headers
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"

    page = await browser(hub.url + "/")
    await page.wait(f"{count('stable', 'failed')}?.textContent === '1'")
    await page.wait("document.querySelector('#live').textContent === 'live'")
    # the state filter is filled from the hub's own list of states
    options = await page.eval(
        "[...document.querySelectorAll('#filters select[name=state] option')].map(o => o.value)"
    )
    assert options == ["", *hub.get("/api/v1/summary")["states"]]
    await page.eval(
        "document.querySelector('#filters select[name=state]').value = 'failed';"
        "document.querySelector('#filters button').click()"
    )
    await page.wait("document.querySelector('#nodes-count').textContent.endsWith(' of 1')")
    # the stylesheet applied (a CSP block would leave the page unstyled)
    assert await page.eval("getComputedStyle(document.body).margin") != "8px"
    assert page.errors() == []


async def test_dashboard_shows_agent_versions(
    hub_factory: Callable[..., HubProc], publisher: Publisher, browser: Callable[[str], Any]
) -> None:
    hub = hub_factory()
    publisher.status(status_doc("pi-01", 1, branch="stable"))
    publisher.status(status_doc("pi-02", 1, branch="stable", version="0.2.0"))
    publisher.status(status_doc("pi-03", 1, branch="stable", version="0.2.0"))
    hub.wait_for(lambda: hub.get("/api/v1/summary")["nodes"] == 3)

    page = await browser(hub.url + "/")
    version = "document.querySelector('.version[data-stage=stable][data-version=\"{}\"]')"
    await page.wait(f"{version.format('0.2.0')}?.textContent === '0.2.0: 2'")
    assert await page.eval(f"{version.format('0.1.0')}.textContent") == "0.1.0: 1"
    await page.wait("document.querySelectorAll('#nodes tbody tr').length === 3")
    cell = "document.querySelector('tr[data-node=\"{}\"] td.version').textContent"
    assert await page.eval(cell.format("pi-01")) == "0.1.0"
    assert await page.eval(cell.format("pi-02")) == "0.2.0"
    assert page.errors() == []
