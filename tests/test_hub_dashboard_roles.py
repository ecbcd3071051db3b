"""The dashboard as operators use it, in headless Chromium: signing in, role-dependent
buttons that work, the node page, filters, rollout progress, the chart, and the live
stream through a ticket when reads need a token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.test_hub_dashboard import Page, browser, count  # noqa: F401 (browser: fixture)
from tests.test_hub_users import beta_behind_canary, daemon, users_hub  # noqa: F401 (a fixture)
from tests.testbed.fleetrepo import FleetRepo
from tests.testbed.gitserver import GitDaemon
from tests.testbed.hubproc import HubProc, Publisher, status_doc

PROBLEM = {"target": "systemd", "subject": "app.service", "reason": "unit failed"}


async def sign_in(page: Page, token: str, shown: str) -> None:
    await page.wait(
        "document.readyState === 'complete' && document.querySelector('#signin')?.hidden === false"
    )
    await page.eval(
        f"document.querySelector('#signin input[name=token]').value = '{token}';"
        "document.querySelector('#signin button').click()"
    )
    await page.wait(f"document.querySelector('#whoami').textContent === '{shown}'")
    # Signed in, the token field is gone (its flex layout once kept it on screen).
    assert await page.eval("getComputedStyle(document.querySelector('#signin')).display") == "none"


def button(action: str, target: str) -> str:
    return f"document.querySelector('button[data-action={action}][data-target=\"{target}\"]')"


async def test_operator_promotes_from_the_dashboard_viewer_sees_no_buttons(
    hub_factory: Callable[..., HubProc],
    daemon: tuple[FleetRepo, GitDaemon],  # noqa: F811
    publisher: Publisher,
    browser: Callable[[str], Any],  # noqa: F811
) -> None:
    repo, server = daemon
    c0, c1 = beta_behind_canary(repo)
    hub = users_hub(hub_factory, git_url=server.url())
    publisher.status(status_doc("pi-c", 1, branch="canary", applied=c1, desired=c1))
    health = {"ok": False, "problems": [PROBLEM]}
    # failed on another commit than beta's head: beta is not halted
    publisher.status(status_doc("pi-b", 1, "failed", branch="beta", applied=c0, desired="f" * 40,
                                labels={"site": "paris"}, health=health))  # fmt: skip
    hub.wait_for(lambda: hub.get("/api/v1/summary")["nodes"] == 2)
    hub.wait_for(
        lambda: next(s for s in hub.get("/api/v1/stages")["stages"] if s["name"] == "beta")[
            "gate_status"
        ]["open"]
    )

    page = await browser(hub.url + "/")
    await sign_in(page, "viewer-token", "vera (viewer)")
    await page.wait("document.querySelector('#gates tr[data-stage=beta]') !== null")
    await page.wait("document.querySelector('#live').textContent === 'live'")
    assert await page.eval("document.querySelectorAll('button.act').length") == 0
    # rollout progress: canary's node runs canary's head
    await page.wait(
        "document.querySelector('#gates tr[data-stage=canary] .on-head')?.textContent"
        ".startsWith(' 1/1 on ')"
    )
    await page.eval("location.hash = '#/node/pi-b'")
    await page.wait("document.querySelector('#node-health').textContent.includes('app.service')")
    assert await page.eval("document.querySelectorAll('#node-actions button').length") == 0

    await page.eval("document.querySelector('#signout').click()")
    await sign_in(page, "operator-token", "olga (operator)")
    await page.eval("location.hash = '#/'")
    await page.wait(f"{button('promote', 'beta')} !== null")
    assert await page.eval(f"{button('rollback', 'canary')} === null")
    assert await page.eval(f"{button('rollback', 'beta')} !== null")
    await page.eval(f"{button('promote', 'beta')}.click()")
    await page.wait(f"{button('promote', 'beta')}.textContent === 'confirm promote?'")
    assert repo.head("beta") == c0  # one click only asks
    await page.eval(f"{button('promote', 'beta')}.click()")
    await page.wait("document.querySelector('#notice').textContent === 'promote beta: done'")
    assert repo.head("beta") == c1
    await page.wait("document.querySelector('#history tbody tr')?.textContent.includes('olga')")
    assert hub.get("/api/v1/history?stage=beta")["history"][0]["who"] == "olga"

    # node page: status, health problems, and a sync button in the operator's stage only
    await page.eval("location.hash = '#/node/pi-b'")
    await page.wait(f"{button('sync', 'pi-b')} !== null")
    assert "unit failed" in await page.eval("document.querySelector('#node-health').textContent")
    await page.eval("location.hash = '#/node/pi-c'")
    await page.wait("document.querySelector('#node-name').textContent === 'pi-c'")
    await page.wait("document.querySelector('#node-health').textContent.includes('healthy')")
    assert await page.eval(f"{button('sync', 'pi-c')} === null")

    # filters: stage, state, label
    await page.eval("location.hash = '#/'")
    await page.wait("document.querySelectorAll('#nodes tbody tr').length === 2")
    await page.eval(
        "document.querySelector('#filters select[name=stage]').value = 'beta';"
        "document.querySelector('#filters input[name=label]').value = 'site=paris';"
        "document.querySelector('#filters button').click()"
    )
    await page.wait("document.querySelector('#nodes-count').textContent.endsWith(' of 1')")
    assert await page.eval("document.querySelector('#nodes tbody tr').dataset.node") == "pi-b"
    assert page.errors() == []


async def test_private_hub_dashboard_signs_in_and_streams_through_a_ticket(
    hub_factory: Callable[..., HubProc],
    publisher: Publisher,
    browser: Callable[[str], Any],  # noqa: F811
) -> None:
    hub = users_hub(hub_factory, hub_extra="public_read = false")
    publisher.status(status_doc("pi-01", 1, "synced", branch="beta"))
    publisher.status(status_doc("pi-02", 1, "failed", branch="beta"))
    hub.wait_for(
        lambda: hub.request("GET", "/api/v1/summary", token="viewer-token")[1]["nodes"] == 2
    )
    hub.stop()  # the sampler takes a sample at start: one with these nodes
    hub.start()

    page = await browser(hub.url + "/")
    await page.wait("document.querySelector('#locked')?.hidden === false")
    assert await page.eval("document.querySelector('#overview').hidden") is True
    await sign_in(page, "viewer-token", "vera (viewer)")
    await page.wait("document.querySelector('#live').textContent === 'live'")
    await page.wait(f"{count('beta', 'failed')}?.textContent === '1'")
    assert await page.eval("document.querySelector('#locked').hidden") is True
    # the chart shows the sample, one series per state present
    await page.wait("document.querySelector('#chart .dot.synced') !== null")
    keys = await page.eval(
        "[...document.querySelectorAll('#chart-legend li')].map(li => li.dataset.state)"
    )
    assert keys == ["synced", "failed"]
    # a new node arrives over the ticketed stream
    publisher.status(status_doc("pi-03", 1, "failed", branch="beta"))
    await page.wait(f"{count('beta', 'failed')}?.textContent === '2'")
    assert page.errors() == []
