"""Who is calling the API: bearer tokens to users (:mod:`hub.users`), role checks, and
short-lived stream tickets for the dashboard's live stream.

Tokens are compared as SHA-256 digests with :func:`hmac.compare_digest` against every
user, so neither the result nor the time taken says which user came close. A token file
is read at each request (rotation); an unreadable one is logged and matches nobody.

EventSource cannot send an ``Authorization`` header, so when reads need a token the
dashboard first trades its token for a ticket (``POST /api/v1/stream-ticket``): the
user's name and an expiry 60 s ahead, signed with a key that lives only in this hub
process. A ticket opens the stream only (it is no bearer token), expires quickly, and
leaks nothing reusable into logs; a cookie would instead ride along with every request
and need CSRF defences.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from hub.config import read_secret
from hub.users import User, token_digest

log = logging.getLogger(__name__)

TICKET_TTL = 60.0
"""Seconds a stream ticket may be used to open the stream."""
_OPEN_PATHS = ("/api/v1/health", "/api/v1/hooks/git", "/api/v1/whoami")
"""Answer without a token even when reads need one: liveness probes, signed webhooks,
and the dashboard asking whether it must ask for a token."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Authenticator:
    users: tuple[User, ...]
    public_read: bool = True
    stages: tuple[str, ...] = ()
    """Every stage name (what an admin may act in, for whoami)."""
    clock: Callable[[], float] = time.time
    _ticket_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def _digest(self, user: User) -> str | None:
        if user.token_sha256 is not None:
            return user.token_sha256
        assert user.token_file is not None
        try:
            token = read_secret(user.token_file)
        except OSError as err:
            log.error("cannot read the token file of user %s: %s", user.name, err)
            return None
        return token_digest(token) if token else None

    def identify(self, request: web.Request) -> User | None:
        """The user whose token the request carries, or None."""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return None
        # surrogateescape (in token_digest): aiohttp keeps undecodable header bytes as
        # surrogates; they must compare unequal (401), not fail to encode (500).
        presented = token_digest(given.strip()).encode()
        found = None
        for user in self.users:  # no early exit: every user costs the same
            digest = self._digest(user)
            if digest is not None and hmac.compare_digest(presented, digest.encode()):
                found = found or user
        return found

    def require_user(self, request: web.Request) -> User:
        """The authenticated user; 401 without a valid token."""
        if not self.users:
            raise web.HTTPForbidden(
                reason="the API has no users: set [hub] token_file or add [[users]]"
            )
        user = self.identify(request)
        if user is None:
            raise web.HTTPUnauthorized(
                reason="a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )
        return user

    def authorize(self, request: web.Request, action: str, stage: str | None) -> User:
        """The user, if it may ``action`` in ``stage``; 401 or 403 (naming role and stage)."""
        user = self.require_user(request)
        if not user.may_operate(stage):
            where = f"stage {stage}" if stage else "a node without a stage"
            scope = f" of {', '.join(user.stages)}" if user.role == "operator" else ""
            raise web.HTTPForbidden(
                reason=f"user {user.name} (role {user.role}{scope}) may not {action} in {where}"
            )
        return user

    def operable(self, user: User) -> list[str]:
        """The stages ``user`` may act in."""
        return [s for s in self.stages if user.may_operate(s)]

    # -- stream tickets ---------------------------------------------------------------

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self._ticket_key, payload, hashlib.sha256).hexdigest()

    def ticket(self, user: User) -> str:
        payload = f"{user.name}:{self.clock() + TICKET_TTL:.0f}".encode()
        return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + self._sign(payload)

    def ticket_user(self, ticket: str | None) -> User | None:
        """The user of a valid, unexpired ticket, or None."""
        encoded, _, mac = (ticket or "").partition(".")
        try:
            payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except ValueError:
            return None
        if not hmac.compare_digest(mac.encode(), self._sign(payload).encode()):
            return None
        name, _, expires = payload.decode().rpartition(":")
        if not expires.isdigit() or int(expires) < self.clock():
            return None
        return next((u for u in self.users if u.name == name), None)

    # -- reads ------------------------------------------------------------------------

    def check_read(self, request: web.Request) -> None:
        """With ``public_read = false``: API reads and metrics need a user (the stream
        takes a ticket instead); the page and its static files stay open so it can ask."""
        path = request.path
        guarded = (path.startswith("/api/v1/") and path not in _OPEN_PATHS) or path == "/metrics"
        if self.public_read or request.method not in ("GET", "HEAD") or not guarded:
            return
        if path == "/api/v1/stream" and self.ticket_user(request.query.get("ticket")):
            return
        self.require_user(request)


AUTH: web.AppKey[Authenticator] = web.AppKey("auth", Authenticator)


@web.middleware
async def read_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    request.app[AUTH].check_read(request)
    return await handler(request)


async def whoami(request: web.Request) -> web.Response:
    """The caller's user and what it may do; without a token, name null (and whether
    reads are public); a token that is not valid gets 401."""
    auth = request.app[AUTH]
    if "Authorization" not in request.headers:
        return web.json_response({"name": None, "role": None, "stages": [], "may_operate": [],
                                  "public_read": auth.public_read})  # fmt: skip
    user = auth.require_user(request)
    return web.json_response(
        {"name": user.name, "role": user.role, "stages": list(user.stages),
         "may_operate": auth.operable(user), "public_read": auth.public_read}
    )  # fmt: skip


async def stream_ticket(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    user = auth.require_user(request)
    return web.json_response({"ticket": auth.ticket(user), "expires_in": TICKET_TTL})
