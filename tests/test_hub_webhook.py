"""Git push webhooks: per-forge verification (pure), the coalescer (pure), and a running
hub reading the pushed branch from a real git daemon when a delivery arrives."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import subprocess
import tomllib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from multidict import CIMultiDict

from common import wire
from hub.config import parse_config
from hub.errors import ConfigError
from hub.webhook import MAX_BODY, Coalescer, Delivery, HookRefused, identify, pushed_ref, verify
from tests.testbed.gitserver import GitRemote
from tests.testbed.hubproc import HubProc
from tests.testbed.mqtt import Watcher

SECRET = b"It's a Secret to Everybody"
FORGES = ("github", "gitea", "forgejo", "gitlab")
FORM = "application/x-www-form-urlencoded"


def push_body(branch: str = "canary", commit: str = "f" * 40) -> bytes:
    """A push delivery as forges send it (abridged); ``commit`` is what the body claims."""
    return json.dumps(
        {"ref": f"refs/heads/{branch}", "before": "0" * 40, "after": commit,
         "head_commit": {"id": commit}, "commits": [{"id": commit}]}
    ).encode()  # fmt: skip


def hmac_hex(body: bytes, secret: bytes = SECRET) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def openssl_hmac_hex(body: bytes, secret: bytes) -> str:
    """The same HMAC made by an independent implementation."""
    done = subprocess.run(
        ["openssl", "dgst", "-sha256", "-hmac", secret.decode()],
        input=body, capture_output=True, check=True,
    )  # fmt: skip
    return done.stdout.decode().split()[-1]


def signed(
    forge: str, body: bytes, secret: bytes = SECRET, event: str | None = None
) -> CIMultiDict[str]:
    """Headers of a delivery from ``forge`` (what each forge really sends, abridged)."""
    if forge == "gitlab":
        return CIMultiDict(
            {"X-Gitlab-Event": event or "Push Hook", "X-Gitlab-Token": secret.decode()}
        )
    sig = hmac_hex(body, secret)
    headers = CIMultiDict(
        {"X-GitHub-Event": event or "push", "X-Hub-Signature-256": f"sha256={sig}"}
    )
    if forge in ("gitea", "forgejo"):  # Forgejo sends Gitea's headers too, both GitHub's
        headers.update({"X-Gitea-Event": event or "push", "X-Gitea-Signature": sig})
    if forge == "forgejo":
        headers.update({"X-Forgejo-Event": event or "push", "X-Forgejo-Signature": sig})
    return headers


def check(headers: CIMultiDict[str], body: bytes, secret: bytes = SECRET) -> Delivery:
    delivery = identify(headers)
    verify(delivery.forge, headers, body, secret)
    return delivery


# -- verification (pure) ------------------------------------------------------------------


def test_github_signature_matches_githubs_documented_example() -> None:
    body = b"Hello, World!"
    sig = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    headers = CIMultiDict({"X-GitHub-Event": "push", "X-Hub-Signature-256": f"sha256={sig}"})
    assert check(headers, body).forge == "github"


@pytest.mark.parametrize("forge", FORGES)
def test_valid_delivery_is_accepted_and_identified(forge: str) -> None:
    delivery = check(signed(forge, push_body()), push_body())
    assert delivery.forge == forge
    assert delivery.kind == "push"


@pytest.mark.parametrize("forge", FORGES)
def test_wrong_secret_is_403(forge: str) -> None:
    with pytest.raises(HookRefused) as err:
        check(signed(forge, push_body(), secret=b"guessed"), push_body())
    assert err.value.status == 403


@pytest.mark.parametrize("forge", ("github", "gitea", "forgejo"))
def test_signature_of_another_body_is_403(forge: str) -> None:
    """A captured signature replayed with an edited body."""
    headers = signed(forge, push_body(commit="a" * 40))
    with pytest.raises(HookRefused) as err:
        check(headers, push_body(commit="b" * 40))
    assert err.value.status == 403


@pytest.mark.parametrize(
    ("forge", "header"),
    [("github", "X-Hub-Signature-256"), ("gitea", "X-Gitea-Signature"),
     ("forgejo", "X-Forgejo-Signature"), ("gitlab", "X-Gitlab-Token")],
)  # fmt: skip
def test_missing_signature_header_is_401(forge: str, header: str) -> None:
    headers = signed(forge, push_body())
    del headers[header]
    with pytest.raises(HookRefused) as err:
        check(headers, push_body())
    assert err.value.status == 401
    assert header in str(err.value)


def test_forgejo_is_checked_against_its_own_signature_not_githubs() -> None:
    headers = signed("forgejo", push_body())
    headers["X-Hub-Signature-256"] = "sha256=" + "0" * 64
    assert check(headers, push_body()).forge == "forgejo"
    headers["X-Forgejo-Signature"] = "0" * 64
    with pytest.raises(HookRefused):
        check(headers, push_body())


def test_github_signature_without_its_prefix_is_403() -> None:
    headers = signed("github", push_body())
    headers["X-Hub-Signature-256"] = hmac_hex(push_body())
    with pytest.raises(HookRefused) as err:
        check(headers, push_body())
    assert err.value.status == 403


def test_non_utf8_signature_header_is_403_not_an_error() -> None:
    headers = signed("github", push_body())
    headers["X-Hub-Signature-256"] = "sha256=\udcff"
    with pytest.raises(HookRefused) as err:
        check(headers, push_body())
    assert err.value.status == 403


def test_delivery_without_a_forge_event_header_is_400() -> None:
    with pytest.raises(HookRefused) as err:
        identify(CIMultiDict({"X-Hub-Signature-256": "sha256=" + hmac_hex(b"{}")}))
    assert err.value.status == 400


def test_github_form_encoded_delivery_is_verified_over_the_raw_form() -> None:
    body = b"payload=" + quote(push_body("beta").decode()).encode()
    assert check(signed("github", body), body).kind == "push"
    assert pushed_ref(body, FORM) == "refs/heads/beta"
    with pytest.raises(HookRefused):  # the signature of the JSON inside does not do
        check(signed("github", push_body("beta")), body)


@pytest.mark.parametrize(
    ("forge", "event", "kind"),
    [("github", "ping", "ping"), ("github", "push", "push"), ("github", "issues", "other"),
     ("gitea", "push", "push"), ("gitea", "ping", "other"), ("gitlab", "Push Hook", "push"),
     ("gitlab", "Tag Push Hook", "other"), ("gitlab", "ping", "other")],
)  # fmt: skip
def test_event_kinds(forge: str, event: str, kind: str) -> None:
    assert check(signed(forge, b"{}", event=event), b"{}").kind == kind


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"not json", "application/json"), (b"[1]", "application/json"),
     (b'{"ref": 5}', "application/json"), (b'{"after": "x"}', "application/json"),
     (b"[" * 200_000, "application/json"), (b"\xff\xfe", "application/json"),
     (b"payload=%7B&payload=%7D", FORM), (b"other=1", FORM), (b"payload=%ff", FORM),
     (b"payload", FORM)],
)  # fmt: skip
def test_malformed_push_body_is_400(body: bytes, content_type: str) -> None:
    with pytest.raises(HookRefused) as err:
        pushed_ref(body, content_type)
    assert err.value.status == 400


# -- config (pure) ------------------------------------------------------------------------


def test_webhook_secret_file_is_read_relative_to_fleet_toml(tmp_path: Path) -> None:
    (tmp_path / "hook-secret").write_text("s\n")
    text = '[git]\nurl = "git://git.example/fleet.git"\nwebhook_secret_file = "hook-secret"\n'
    cfg = parse_config(tomllib.loads(text), tmp_path / "fleet.toml")
    assert cfg.git.webhook_secret_file == tmp_path / "hook-secret"


def test_webhook_secret_file_needs_a_git_url(tmp_path: Path) -> None:
    (tmp_path / "hook-secret").write_text("s\n")
    with pytest.raises(ConfigError, match="webhook_secret_file: needs url"):
        parse_config(tomllib.loads('[git]\nwebhook_secret_file = "hook-secret"\n'),
                     tmp_path / "fleet.toml")  # fmt: skip


# -- coalescer (pure) ---------------------------------------------------------------------


class GatedAction:
    """An action that counts its runs and holds each one until released."""

    def __init__(self) -> None:
        self.runs = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self) -> int:
        self.runs += 1
        self.started.set()
        await self.release.wait()
        return self.runs


async def test_coalescer_burst_shares_one_run() -> None:
    action = GatedAction()
    coalesce = Coalescer(action, window=0.0)
    callers = [asyncio.create_task(coalesce()) for _ in range(5)]
    await action.started.wait()
    action.release.set()
    assert await asyncio.gather(*callers) == [1] * 5
    assert action.runs == 1


async def test_coalescer_callers_during_a_run_share_the_next_one() -> None:
    """A run that started before a delivery cannot have seen its push."""
    action = GatedAction()
    coalesce = Coalescer(action, window=0.0)
    first = asyncio.create_task(coalesce())
    await action.started.wait()
    later = [asyncio.create_task(coalesce()) for _ in range(3)]
    action.release.set()
    assert await first == 1
    assert await asyncio.gather(*later) == [2] * 3
    assert action.runs == 2


async def test_coalescer_cancelled_runner_leaves_the_run_to_the_next_caller() -> None:
    action = GatedAction()
    coalesce = Coalescer(action, window=0.0)
    runner = asyncio.create_task(coalesce())
    await action.started.wait()
    waiter = asyncio.create_task(coalesce())
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    action.release.set()
    assert await waiter == 2


# -- a running hub against a real git daemon ----------------------------------------------


async def post_hook(
    hub: HubProc, body: bytes, headers: CIMultiDict[str], content_type: str = "application/json"
) -> tuple[int, Any]:
    """POST a delivery; the answer is JSON whatever the outcome."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            hub.url + "/api/v1/hooks/git",
            data=body,
            headers={**headers, "Content-Type": content_type},
        ) as resp,  # fmt: skip
    ):
        return resp.status, await resp.json()


@dataclass
class HookedHub:
    hub: HubProc
    remote: GitRemote
    watcher: Watcher
    secret_file: Path

    def ls_remotes(self) -> int:
        return self.remote.server.connections()

    def head(self, stage: str) -> str | None:
        head: str | None = self.hub.get("/api/v1/summary")["stages"][stage]["head"]
        return head

    async def post(
        self, body: bytes, headers: CIMultiDict[str], content_type: str = "application/json"
    ) -> tuple[int, Any]:
        return await post_hook(self.hub, body, headers, content_type)

    async def ref_until(self, branch: str, commit: str) -> list[str]:
        """Commits announced on ``branch`` up to and including ``commit``."""
        seen: list[str] = []
        while commit not in seen:
            msg = await self.watcher.next(10, topic=wire.ref_topic(branch))
            seen.append(wire.parse_ref_payload(msg.payload) or "malformed")
        return seen


@pytest.fixture
async def hooked(
    hub_factory: Callable[..., HubProc], git_remote: GitRemote, mosquitto: Any, tmp_path: Path
) -> AsyncIterator[HookedHub]:
    """A hub polling only hourly (so only a webhook can make it notice a push), with a
    webhook secret, over a git daemon; canary already announced."""
    first = git_remote.repo.commit({"common/files/etc/a": "1"}, branch="canary")
    secret_file = tmp_path / "hook-secret"
    secret_file.write_text(SECRET.decode() + "\n")
    watcher = Watcher(mosquitto.port, [f"{wire.PREFIX}/ref/#"])
    await watcher.ready()
    hub = hub_factory(git_url=git_remote.url, git_interval=3600,
                      git_extra=f'webhook_secret_file = "{secret_file}"')  # fmt: skip
    hooked = HookedHub(hub, git_remote, watcher, secret_file)
    try:
        await hooked.ref_until("canary", first)
        yield hooked
    finally:
        watcher.close()


async def test_github_hook_announces_the_commit_read_from_git_not_the_body(
    hooked: HookedHub,
) -> None:
    real = hooked.remote.repo.commit({"common/files/etc/a": "2"}, branch="canary")
    fake = "e" * 40
    body = push_body("canary", commit=fake)
    signature = "sha256=" + openssl_hmac_hex(body, SECRET)
    headers = CIMultiDict({"X-GitHub-Event": "push", "X-Hub-Signature-256": signature})
    status, answer = await hooked.post(body, headers)
    assert (status, answer["result"], answer["head"]) == (200, "refreshed", real)
    seen = await hooked.ref_until("canary", real)
    assert fake not in seen
    assert hooked.head("canary") == real


@pytest.mark.parametrize("scheme", ["github-form", "gitea", "forgejo", "gitlab"])
async def test_each_forge_scheme_makes_the_hub_read_the_branch(
    hooked: HookedHub, scheme: str
) -> None:
    real = hooked.remote.repo.commit({"common/files/etc/a": scheme}, branch="canary")
    body, content_type = push_body("canary"), "application/json"
    if scheme == "github-form":
        body, content_type = b"payload=" + quote(body.decode()).encode(), FORM
    status, answer = await hooked.post(body, signed(scheme.removesuffix("-form"), body),
                                       content_type)  # fmt: skip
    assert (status, answer["result"], answer["head"]) == (200, "refreshed", real)
    assert real in await hooked.ref_until("canary", real)


async def raw_request(port: int, head: bytes, body: bytes) -> bytes:
    """Send a request by hand (a Content-Length that lies, a body cut short) and return
    everything the hub answers before it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


async def test_refused_and_ignored_deliveries_trigger_nothing(hooked: HookedHub) -> None:
    """Wrong secret, replayed signature, no signature, bad bodies, other branches, tags,
    other events, ping and oversized bodies: each answered, none reads Git."""
    moved = hooked.remote.repo.commit({"common/files/etc/a": "unseen"}, branch="canary")
    hooked.remote.repo.commit({"x": "1"}, branch="feature")
    before_ls, before_head = hooked.ls_remotes(), hooked.head("canary")
    body = push_body("canary")
    replayed = signed("github", push_body("canary", commit="a" * 40))
    no_sig = signed("gitea", body)
    del no_sig["X-Gitea-Signature"]
    cases: list[tuple[bytes, CIMultiDict[str], int, str | None]] = [
        (body, signed("github", body, secret=b"wrong"), 403, None),
        (body, signed("gitlab", body, secret=b"wrong"), 403, None),
        (body, replayed, 403, None),
        (body, no_sig, 401, None),
        (body, CIMultiDict(), 400, None),
        (b"{not json", signed("github", b"{not json"), 400, None),
        (push_body("feature"), signed("github", push_body("feature")), 200, "ignored"),
        (push_body("nope/x"), signed("gitlab", push_body("nope/x")), 200, "ignored"),
        (b'{"ref": "refs/tags/canary"}', signed("forgejo", b'{"ref": "refs/tags/canary"}'),
         200, "ignored"),
        (body, signed("github", body, event="issues"), 200, "ignored"),
        (b'{"zen": "hi"}', signed("github", b'{"zen": "hi"}', event="ping"), 200, "pong"),
    ]  # fmt: skip
    for data, headers, status, result in cases:
        got_status, answer = await hooked.post(data, headers)
        assert got_status == status, (headers, answer)
        assert answer.get("result") == result, answer

    head = (b"POST /api/v1/hooks/git HTTP/1.1\r\nHost: hub\r\nX-GitHub-Event: push\r\n"
            b"X-Hub-Signature-256: sha256=00\r\nContent-Type: application/json\r\n")  # fmt: skip
    declared = await raw_request(
        hooked.hub.port, head + f"Content-Length: {2 * MAX_BODY}\r\n\r\n".encode(), b"{" * 1024
    )
    assert declared.startswith(b"HTTP/1.1 413 "), declared[:200]
    chunk = b"{" * (MAX_BODY + 1)
    chunked = await raw_request(
        hooked.hub.port,
        head + b"Transfer-Encoding: chunked\r\n\r\n",
        f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n",
    )
    assert chunked.startswith(b"HTTP/1.1 413 "), chunked[:200]

    assert hooked.ls_remotes() == before_ls
    assert hooked.head("canary") == before_head != moved
    assert "Traceback" not in hooked.hub.log_text()


async def test_secret_rotates_without_a_restart(hooked: HookedHub) -> None:
    body = push_body("canary")
    hooked.secret_file.write_text("rotated\n")
    status, _ = await hooked.post(body, signed("github", body))
    assert status == 403
    status, answer = await hooked.post(body, signed("github", body, secret=b"rotated"))
    assert (status, answer["result"]) == (200, "refreshed")


async def test_hooks_are_refused_when_no_secret_is_configured(
    hub_factory: Callable[..., HubProc], git_remote: GitRemote
) -> None:
    hub = hub_factory(git_url=git_remote.url, git_interval=3600)
    body = push_body("canary")
    status, answer = await post_hook(hub, body, signed("github", body))
    assert status == 403
    assert "webhook_secret_file is not set" in answer["error"]
