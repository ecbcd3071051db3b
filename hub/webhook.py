"""Git push webhooks: ``POST /api/v1/hooks/git`` makes the hub read the stage branches at
once instead of at the next poll, so agents hear of a push within a second.

GitHub and Gitea/Forgejo sign the raw body with HMAC-SHA256, GitLab sends the secret
itself; the secret is read from ``[git] webhook_secret_file`` at each delivery so it can
rotate. The body only tells *which* branch was pushed: the commit is always read from Git
(the Git watcher's ls-remote), never taken from the body, so even a replayed delivery can
cause no more than one extra ls-remote. Deliveries arriving together share one ls-remote
(:class:`Coalescer`); nothing else is kept between deliveries, so any hub replica may
receive them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import parse_qs

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from hub.config import HubConfig, read_secret
from hub.errors import GitWatchError, HubError

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
"""Bytes; GitHub caps push payloads at 25 MB but a push naming fewer than ~2000 commits
stays far below this, and only ``ref`` is read."""
COALESCE_WINDOW = 0.1
"""Seconds an ls-remote waits for more deliveries (one push of several branches sends
one delivery per branch); small against the 2 s push-to-applied budget."""

Refresh = Callable[[], Awaitable[Mapping[str, str]]]
"""Re-reads the stage heads from Git and announces changes (``GitWatch.refresh``)."""

Forge = Literal["github", "gitea", "forgejo", "gitlab"]
EventKind = Literal["push", "ping", "other"]

# Forgejo also sends Gitea's and GitHub's headers, Gitea also GitHub's: most specific first.
_EVENT_HEADERS: tuple[tuple[Forge, str], ...] = (
    ("forgejo", "X-Forgejo-Event"),
    ("gitea", "X-Gitea-Event"),
    ("gitlab", "X-Gitlab-Event"),
    ("github", "X-GitHub-Event"),
)
_SECRET_HEADERS: dict[Forge, str] = {
    "github": "X-Hub-Signature-256",
    "gitea": "X-Gitea-Signature",
    "forgejo": "X-Forgejo-Signature",
    "gitlab": "X-Gitlab-Token",
}
_PUSH_EVENTS: dict[Forge, str] = {
    "github": "push",
    "gitea": "push",
    "forgejo": "push",
    "gitlab": "Push Hook",
}
_BRANCH_PREFIX = "refs/heads/"
_FORM = "application/x-www-form-urlencoded"


class HookRefused(HubError):
    """A delivery that triggers nothing; ``status`` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Delivery:
    forge: Forge
    event: str
    """The forge's event name as sent (``push``, ``ping``, ``Push Hook``...)."""

    @property
    def kind(self) -> EventKind:
        if self.event == _PUSH_EVENTS[self.forge]:
            return "push"
        return "ping" if self.forge == "github" and self.event == "ping" else "other"


def identify(headers: Mapping[str, str]) -> Delivery:
    """Which forge sent the delivery, from its event header."""
    for forge, header in _EVENT_HEADERS:
        event = headers.get(header)
        if event is not None:
            return Delivery(forge, event)
    names = ", ".join(h for _, h in _EVENT_HEADERS)
    raise HookRefused(400, f"not a GitHub, Gitea, Forgejo or GitLab webhook: no {names} header")


def verify(forge: Forge, headers: Mapping[str, str], body: bytes, secret: bytes) -> None:
    """Check the delivery's signature (GitLab: token) against ``secret``; raises
    HookRefused 401 when it is missing, 403 when it does not match."""
    header = _SECRET_HEADERS[forge]
    given = headers.get(header)
    if given is None:
        raise HookRefused(401, f"no {header} header: give the webhook the hub's secret")
    if forge == "gitlab":
        expected = secret
    else:
        expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
        if forge == "github":
            expected = b"sha256=" + expected
    # surrogateescape: header bytes that are not UTF-8 must compare unequal, not raise
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
        raise HookRefused(403, f"{header} does not match the hub's webhook secret")


def pushed_ref(body: bytes, content_type: str) -> str:
    """The ``ref`` of a push delivery: a JSON body, or GitHub's form encoding
    ``payload=<JSON>``. Nothing else of the body is used."""
    text: str | bytes = body
    if content_type == _FORM:
        try:
            form = parse_qs(body.decode("ascii"), strict_parsing=True, max_num_fields=4,
                            errors="strict")  # fmt: skip
        except ValueError:
            form = {}
        if len(form.get("payload", ())) != 1:
            raise HookRefused(400, "a form-encoded delivery must be payload=<JSON>")
        text = form["payload"][0]
    try:
        doc: Any = json.loads(text)
    except (ValueError, RecursionError):
        raise HookRefused(400, "the delivery body is not JSON") from None
    ref = doc.get("ref") if isinstance(doc, dict) else None
    if not isinstance(ref, str) or not ref:
        raise HookRefused(400, "a push delivery must carry a ref")
    return ref


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body (signatures cover its exact bytes), refused with 413 as soon as it is
    known to exceed ``limit``: before reading when Content-Length says so."""
    too_big = HookRefused(413, f"the delivery body is over {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_big
    body = bytearray()
    try:
        while chunk := await request.content.read(limit + 1 - len(body)):
            body += chunk
            if len(body) > limit:
                raise too_big
    except (OSError, HttpProcessingError) as err:
        raise HookRefused(400, f"the delivery body could not be read: {err}") from None
    return bytes(body)


T = TypeVar("T")


class Coalescer(Generic[T]):
    """Runs ``action`` once for a burst of callers. Every caller gets the result of a run
    that started after it called (a delivery must see its own push), shared with all who
    called in the meantime; a run starts ``window`` seconds after the first of them."""

    def __init__(self, action: Callable[[], Awaitable[T]], window: float) -> None:
        self._action = action
        self._window = window
        self._lock = asyncio.Lock()
        self._calls = 0
        self._covered = 0
        """Callers (in order of arrival) served by the last finished run."""
        self._result: T

    async def __call__(self) -> T:
        self._calls += 1
        ticket = self._calls
        async with self._lock:
            if self._covered < ticket:
                await asyncio.sleep(self._window)
                covers = self._calls
                self._result = await self._action()
                self._covered = covers
            return self._result


@dataclass(frozen=True)
class Listing:
    """The outcome of one ls-remote shared by coalesced deliveries."""

    heads: Mapping[str, str]
    error: str | None = None


class GitPushHooks:
    """The aiohttp handler (``handle``) for push deliveries of every supported forge."""

    def __init__(
        self,
        cfg: HubConfig,
        refresh: Refresh | None,
        window: float = COALESCE_WINDOW,
        max_body: int = MAX_BODY,
    ) -> None:
        self._cfg = cfg
        self._refresh = refresh
        self._list = Coalescer(self._ls_remote, window)
        self._max_body = max_body

    async def _ls_remote(self) -> Listing:
        assert self._refresh is not None  # _secret() refuses deliveries without it
        try:
            return Listing(await self._refresh())
        except GitWatchError as err:
            return Listing({}, str(err))

    async def handle(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(await self._deliver(request))
        except HookRefused as err:
            log.info("git webhook refused (%d): %s", err.status, err)
            resp = web.json_response({"error": str(err)}, status=err.status)
            if err.status == 413:
                resp.force_close()  # do not read (linger over) the rest of the body
            return resp

    async def _deliver(self, request: web.Request) -> dict[str, str | None]:
        secret = self._secret()
        delivery = identify(request.headers)
        body = await read_body(request, self._max_body)
        verify(delivery.forge, request.headers, body, secret)
        if delivery.kind == "ping":
            return {"result": "pong"}
        if delivery.kind == "other":
            return _ignored(f"{delivery.forge} event {delivery.event[:64]!r} is not a push")
        ref = pushed_ref(body, request.content_type)
        if not ref.startswith(_BRANCH_PREFIX):
            return _ignored(f"{ref[:128]!r} is not a branch")
        branch = ref.removeprefix(_BRANCH_PREFIX)
        stage = self._cfg.stage_for_branch(branch)
        if stage is None:
            return _ignored(f"branch {branch[:128]!r} is not a stage branch")
        listing = await self._list()
        if listing.error is not None:
            raise HookRefused(502, f"the hub could not read the stage branches: {listing.error}")
        return {"result": "refreshed", "stage": stage.name, "branch": branch,
                "head": listing.heads.get(branch)}  # fmt: skip

    def _secret(self) -> bytes:
        path = self._cfg.git.webhook_secret_file
        if path is None:
            raise HookRefused(
                403, "git push webhooks are disabled: [git] webhook_secret_file is not set"
            )
        if self._refresh is None:
            raise HookRefused(403, "git push webhooks are disabled: this hub watches no Git")
        try:
            secret = read_secret(path)
        except (OSError, UnicodeDecodeError) as err:
            log.error("cannot read the webhook secret file %s: %s", path, err)
            raise HookRefused(503, "the hub cannot read its webhook secret file") from None
        if not secret:
            raise HookRefused(503, "the hub's webhook secret file is empty")
        return secret.encode()


def _ignored(reason: str) -> dict[str, str | None]:
    return {"result": "ignored", "reason": reason}
