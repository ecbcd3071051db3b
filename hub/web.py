"""The hub's HTTP side (aiohttp): routes and handlers of the JSON API and dashboard.

Handlers parse and check the request, then send what :mod:`hub.fleet` and
:mod:`hub.rollout` build (shapes in docs/design.md, "Hub"); the SSE stream is
:mod:`hub.sse`, the Prometheus text :mod:`hub.metrics`. Every bad request gets a 4xx JSON
``{"error": ...}``; unexpected exceptions are logged and answered with a JSON 500 by
the middleware. Mutating calls need ``Authorization: Bearer <token>`` of a user whose
role allows them in that stage (:mod:`hub.auth`); so do reads with ``public_read = false``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from common import wire
from hub import sse
from hub.auth import AUTH, Authenticator, read_guard, stream_ticket, whoami
from hub.config import HubConfig, Stage
from hub.errors import HubError, RolloutRefused
from hub.fleet import Fleet
from hub.forget import ForgetRefused
from hub.ingest import IngestCounters
from hub.metrics import prometheus_text
from hub.rollout import Rollout
from hub.sampler import SAMPLES, samples
from hub.sse import Updates
from hub.states import ALL_STATES
from hub.store import AuditRow
from hub.store.samples import SampleStore
from hub.webhook import GitPushHooks, Refresh

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
_MAX_LIMIT = 1000

Publish = Callable[[str, bytes, int, bool], bool]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Forget = Callable[[str, str, str, str | None], Awaitable[dict[str, Any]]]


@dataclass
class WebContext:
    cfg: HubConfig
    fleet: Fleet
    counters: IngestCounters
    publish: Publish
    mqtt_ready: Callable[[], bool]
    updates: Updates
    rollout: Rollout | None = None
    refresh_git: Refresh | None = None
    audit: Callable[[AuditRow], Awaitable[int]] | None = None
    """Writes the rollout audit log (sync overrides are recorded there)."""
    samples: SampleStore | None = None
    forget: Forget | None = None


CTX: web.AppKey[WebContext] = web.AppKey("ctx", WebContext)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class BadRequest(HubError):
    """A client error; the middleware answers with its status and message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as err:
        return _error(err.status, str(err))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error for %s %s", request.method, request.path)
        return _error(500, "internal error (see the hub log)")


def _int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw[:40]!r}") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def stage_param(ctx: WebContext, raw: str | None) -> Stage | None:
    if raw is None:
        return None
    stage = ctx.cfg.stage(raw)
    if stage is None:
        names = ", ".join(s.name for s in ctx.cfg.stages) or "none configured"
        raise BadRequest(f"unknown stage {raw[:64]!r} (stages: {names})")
    return stage


def _state(raw: str | None) -> str | None:
    if raw is not None and raw not in ALL_STATES:
        raise BadRequest(f"unknown state {raw[:32]!r}; use one of {', '.join(ALL_STATES)}")
    return raw


def _labels(request: web.Request) -> dict[str, str]:
    out = {}
    for raw in request.query.getall("label", []):
        key, sep, value = raw.partition("=")
        if not sep or not _LABEL_KEY_RE.match(key):
            raise BadRequest(f"label must look like key=value, got {raw[:64]!r}")
        out[key] = value
    return out


def _node_name(request: web.Request) -> str:
    node = request.match_info["node"]
    if not wire.valid_node_name(node):
        raise BadRequest(f"{node[:64]!r} is not a valid node name")
    return node


async def summary(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    label = request.query.get("label")
    if label is not None and not _LABEL_KEY_RE.match(label):
        raise BadRequest(f"label must be a label key, got {label[:64]!r}")
    return web.json_response(await ctx.fleet.summary(label=label))


async def nodes(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    result = await ctx.fleet.nodes(
        stage=stage_param(ctx, request.query.get("stage")),
        state=_state(request.query.get("state")),
        labels=_labels(request),
        limit=_int(request, "limit", 100, 1, _MAX_LIMIT),
        offset=_int(request, "offset", 0, 0, 2**31),
    )
    return web.json_response(result)


async def node(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    name = _node_name(request)
    result = await ctx.fleet.node(name)
    if result is None:
        raise BadRequest(f"no node named {name!r} has reported", status=404)
    return web.json_response(result)


async def drift(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return web.json_response(await ctx.fleet.drift(stage_param(ctx, request.query.get("stage"))))


async def stages(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    rollouts = await ctx.rollout.status() if ctx.rollout is not None else None
    return web.json_response(await ctx.fleet.stages(rollouts))


_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_WHO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}$")
_MAX_REASON = 500


async def json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _text(body: dict[str, Any], key: str, default: str) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or len(value) > _MAX_REASON:
        raise BadRequest(f"{key} must be a string of at most {_MAX_REASON} characters")
    return value.strip() or default


def _on_behalf(request: web.Request, body: dict[str, Any]) -> str | None:
    """What the caller says about itself (CLI: "cli:<login>"): a note beside the
    authenticated user in the audit log, never the identity."""
    who = _text(body, "who", request.headers.get("X-Edgefleet-User", ""))
    if not who:
        return None
    if not _WHO_RE.match(who):
        raise BadRequest(f"who must be a short user name, got {who[:64]!r}")
    return who


def _rollout_ctx(request: web.Request, action: str) -> tuple[Rollout, Stage, str]:
    """The engine, the stage and the name of the user allowed to ``action`` in it."""
    ctx = request.app[CTX]
    stage = stage_param(ctx, request.match_info["stage"])
    assert stage is not None
    user = request.app[AUTH].authorize(request, action, stage.name)
    if ctx.rollout is None:
        raise BadRequest("rollouts are disabled: no [git] url configured", status=503)
    return ctx.rollout, stage, user.name


async def _rollout_call(call: Awaitable[Mapping[str, object]]) -> web.Response:
    try:
        return web.json_response(await call)
    except RolloutRefused as err:
        return web.json_response({"error": str(err), "evidence": err.evidence}, status=409)


async def promote(request: web.Request) -> web.Response:
    rollout, stage, user = _rollout_ctx(request, "promote")
    body = await json_body(request)
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise BadRequest("force must be true or false")
    reason = _text(body, "reason", "manual promotion")
    note = _on_behalf(request, body)
    return await _rollout_call(rollout.promote(stage.name, user, reason, force, on_behalf=note))


async def rollback(request: web.Request) -> web.Response:
    rollout, stage, user = _rollout_ctx(request, "roll back")
    body = await json_body(request)
    to = body.get("to")
    if to is not None and (not isinstance(to, str) or not _SHA_RE.match(to)):
        raise BadRequest("to must be a full 40-character commit id")
    reason = _text(body, "reason", "manual rollback")
    note = _on_behalf(request, body)
    return await _rollout_call(rollout.rollback(stage.name, user, reason, to, on_behalf=note))


async def resume(request: web.Request) -> web.Response:
    rollout, stage, user = _rollout_ctx(request, "resume")
    body = await json_body(request)
    reason = _text(body, "reason", "manual resume")
    note = _on_behalf(request, body)
    return await _rollout_call(rollout.resume(stage.name, user, reason, on_behalf=note))


async def history(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    stage = stage_param(ctx, request.query.get("stage"))
    limit = _int(request, "limit", 100, 1, _MAX_LIMIT)
    if ctx.rollout is None:
        return web.json_response({"history": []})
    rows = await ctx.rollout.history(stage.name if stage else None, limit)
    return web.json_response({"history": rows})


async def events(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    node_name = request.query.get("node")
    if node_name is not None and not wire.valid_node_name(node_name):
        raise BadRequest(f"{node_name[:64]!r} is not a valid node name")
    type_ = request.query.get("type")
    if type_ is not None and not 0 < len(type_) <= 64:
        raise BadRequest("type must be 1 to 64 characters")
    since: float | None = None
    if "since" in request.query:
        try:
            since = float(request.query["since"])
        except ValueError:
            raise BadRequest("since must be a Unix timestamp in seconds") from None
        if not math.isfinite(since):
            raise BadRequest("since must be a finite number")
    limit = _int(request, "limit", 100, 1, _MAX_LIMIT)
    return web.json_response(await ctx.fleet.events(node_name, type_, since, limit))


async def health(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return web.json_response(
        {"mqtt": "connected" if ctx.mqtt_ready() else "disconnected",
         "last_commit_at": ctx.counters.last_commit_at or None}
    )  # fmt: skip


async def sync_node(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    request.app[AUTH].require_user(request)
    name = _node_name(request)
    body = await json_body(request)
    detail = await ctx.fleet.node(name)
    if detail is None:
        raise BadRequest(f"no node named {name!r} has reported", status=404)
    user = request.app[AUTH].authorize(request, "sync nodes", detail["stage"])
    cmd: dict[str, str] = {"op": "sync"}
    if body.get("override") is not None:
        # Apply now despite the node's update locks and window: always audited.
        cmd["override"] = _text(body, "override", "")
        if not cmd["override"] or ctx.audit is None:
            raise BadRequest("override needs a reason (and an audit log)")
    published = ctx.publish(wire.cmd_topic(name), wire.encode(cmd), 1, False)
    if "override" in cmd and ctx.audit is not None:
        await ctx.audit(
            AuditRow(time.time(), "sync-override", detail["stage"] or "", user.name, None, None,
                     "done" if published else "failed", True, cmd["override"],
                     wire.encode({"node": name}).decode(), _on_behalf(request, body))
        )  # fmt: skip
    if not published:
        raise BadRequest("MQTT broker not connected; try again later", status=503)
    return web.json_response({"node": name, **cmd, "published": True}, status=202)


async def forget_node(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    user = request.app[AUTH].require_user(request)
    if user.role != "admin":  # it removes a node from every gate's evidence
        raise web.HTTPForbidden(reason=f"user {user.name} (role {user.role}) may not forget nodes")
    name, body = _node_name(request), await json_body(request)
    assert ctx.forget is not None  # wired by the service
    reason, note = _text(body, "reason", "forgotten"), _on_behalf(request, body)
    try:
        return web.json_response(await ctx.forget(name, user.name, reason, note))
    except ForgetRefused as err:
        raise BadRequest(str(err), err.status) from None


async def metrics(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    text = prometheus_text(ctx.counters, ctx.mqtt_ready(), await ctx.fleet.summary())
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def stream(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    return await sse.stream(request, ctx.fleet, ctx.updates)


async def index(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


# The dashboard is one static page with its own script and stylesheet: nothing inline,
# nothing from elsewhere, never framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def _security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


def make_app(ctx: WebContext) -> web.Application:
    app = web.Application(middlewares=[_errors, read_guard], client_max_size=64 * 1024)
    app[CTX] = ctx
    if ctx.samples is not None:
        app[SAMPLES] = ctx.samples
    app[AUTH] = Authenticator(
        ctx.cfg.users, ctx.cfg.hub.public_read, tuple(s.name for s in ctx.cfg.stages)
    )
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/health", health)
    app.router.add_get("/api/v1/summary", summary)
    app.router.add_get("/api/v1/nodes", nodes)
    app.router.add_get("/api/v1/nodes/{node}", node)
    app.router.add_post("/api/v1/nodes/{node}/sync", sync_node)
    app.router.add_delete("/api/v1/nodes/{node}", forget_node)
    app.router.add_get("/api/v1/drift", drift)
    app.router.add_get("/api/v1/stages", stages)
    app.router.add_post("/api/v1/stages/{stage}/promote", promote)
    app.router.add_post("/api/v1/stages/{stage}/rollback", rollback)
    app.router.add_post("/api/v1/stages/{stage}/resume", resume)
    app.router.add_get("/api/v1/history", history)
    app.router.add_get("/api/v1/events", events)
    app.router.add_get("/api/v1/stream", stream)
    app.router.add_post("/api/v1/stream-ticket", stream_ticket)
    app.router.add_get("/api/v1/whoami", whoami)
    app.router.add_get("/api/v1/samples", samples)
    app.router.add_post("/api/v1/hooks/git", GitPushHooks(ctx.cfg, ctx.refresh_git).handle)
    return app
