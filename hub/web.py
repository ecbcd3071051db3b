"""The hub's HTTP side (aiohttp): JSON API, Prometheus metrics, SSE stream, dashboard.

Shapes follow docs/design.md ("Hub"). Every bad request gets a 4xx JSON
``{"error": ...}``; unexpected exceptions are logged and answered with a JSON 500 by
the middleware. Mutating calls need ``Authorization: Bearer <token>`` (the token is
read from ``[hub] token_file`` at each call so it can be rotated).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from common import wire
from hub.config import HubConfig, Stage, read_secret
from hub.errors import HubError, RolloutRefused
from hub.fleet import ALL_STATES, Fleet
from hub.ingest import DROP_REASONS, IngestCounters
from hub.rollout import Rollout
from hub.webhook import GitPushHooks, Refresh

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
_LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
_MAX_LIMIT = 1000
_SSE_KEEPALIVE = 15.0

Publish = Callable[[str, bytes, int, bool], bool]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Updates:
    """Pushes a fresh summary to SSE clients after ingest commits (at most every
    ``min_interval``) and every ``idle`` seconds anyway, since nodes go stale in silence."""

    def __init__(self, fleet: Fleet, min_interval: float = 0.25, idle: float = 5.0) -> None:
        self._fleet = fleet
        self._min_interval = min_interval
        self._idle = idle
        self._changed = asyncio.Event()
        self._clients: set[asyncio.Queue[str | None]] = set()

    def changed(self) -> None:
        self._changed.set()

    def subscribe(self) -> asyncio.Queue[str | None]:
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=8)
        self._clients.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[str | None]) -> None:
        self._clients.discard(queue)

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                waiter = asyncio.ensure_future(self._changed.wait())
                stopper = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({waiter, stopper}, timeout=self._idle,
                                       return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                finally:
                    waiter.cancel()
                    stopper.cancel()
                if stop.is_set():
                    break
                self._changed.clear()
                if self._clients:
                    await self._push()
                await asyncio.sleep(self._min_interval)
        finally:
            for queue in list(self._clients):
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)

    async def _push(self) -> None:
        try:
            summary = await self._fleet.summary()
        except HubError as err:
            log.warning("summary for live updates failed: %s", err)
            return
        data = json.dumps(summary, separators=(",", ":"))
        for queue in list(self._clients):
            if queue.full():  # a slow client gets the newest state, not a backlog
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(data)


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


def _stage(ctx: WebContext, raw: str | None) -> Stage | None:
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
        stage=_stage(ctx, request.query.get("stage")),
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
    return web.json_response(await ctx.fleet.drift(_stage(ctx, request.query.get("stage"))))


async def stages(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    data = await ctx.fleet.stages()
    if ctx.rollout is not None:
        status = await ctx.rollout.status()
        for stage in data["stages"]:
            stage.update(status.get(stage["name"], {}))
    return web.json_response(data)


_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_WHO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}$")
_MAX_REASON = 500


async def _body(request: web.Request) -> dict[str, Any]:
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


def _who(request: web.Request, body: dict[str, Any]) -> str:
    """Audit identity: the caller names itself (CLI: "cli:<user>"); the token proves
    the right to act, the name is for the record."""
    who = _text(body, "who", request.headers.get("X-Edgefleet-User", "api"))
    if not _WHO_RE.match(who):
        raise BadRequest(f"who must be a short user name, got {who[:64]!r}")
    return who if who == "api" or who.startswith(("api:", "cli:")) else f"api:{who}"


def _rollout_ctx(request: web.Request) -> tuple[Rollout, Stage]:
    ctx = request.app[CTX]
    _check_token(ctx, request)
    stage = _stage(ctx, request.match_info["stage"])
    assert stage is not None
    if ctx.rollout is None:
        raise BadRequest("rollouts are disabled: no [git] url configured", status=503)
    return ctx.rollout, stage


async def _rollout_call(call: Awaitable[dict[str, Any]]) -> web.Response:
    try:
        return web.json_response(await call)
    except RolloutRefused as err:
        return web.json_response({"error": str(err), "evidence": err.evidence}, status=409)


async def promote(request: web.Request) -> web.Response:
    rollout, stage = _rollout_ctx(request)
    body = await _body(request)
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise BadRequest("force must be true or false")
    reason = _text(body, "reason", "manual promotion")
    return await _rollout_call(rollout.promote(stage.name, _who(request, body), reason, force))


async def rollback(request: web.Request) -> web.Response:
    rollout, stage = _rollout_ctx(request)
    body = await _body(request)
    to = body.get("to")
    if to is not None and (not isinstance(to, str) or not _SHA_RE.match(to)):
        raise BadRequest("to must be a full 40-character commit id")
    reason = _text(body, "reason", "manual rollback")
    return await _rollout_call(rollout.rollback(stage.name, _who(request, body), reason, to))


async def resume(request: web.Request) -> web.Response:
    rollout, stage = _rollout_ctx(request)
    body = await _body(request)
    reason = _text(body, "reason", "manual resume")
    return await _rollout_call(rollout.resume(stage.name, _who(request, body), reason))


async def history(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    stage = _stage(ctx, request.query.get("stage"))
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


def _check_token(ctx: WebContext, request: web.Request) -> None:
    if ctx.cfg.hub.token_file is None:
        raise BadRequest("mutating calls are disabled: [hub] token_file is not set", status=403)
    try:
        token = read_secret(ctx.cfg.hub.token_file)
    except OSError:
        log.exception("cannot read token file %s", ctx.cfg.hub.token_file)
        raise BadRequest("the hub cannot read its token file", status=503) from None
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if (
        scheme.lower() != "bearer"
        or not token
        or not hmac.compare_digest(given.strip().encode(), token.encode())
    ):
        raise web.HTTPUnauthorized(
            reason="a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )


async def sync_node(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    _check_token(ctx, request)
    name = _node_name(request)
    if await ctx.fleet.node(name, events=0) is None:
        raise BadRequest(f"no node named {name!r} has reported", status=404)
    if not ctx.publish(wire.cmd_topic(name), wire.encode({"op": "sync"}), 1, False):
        raise BadRequest("MQTT broker not connected; try again later", status=503)
    return web.json_response({"node": name, "op": "sync", "published": True}, status=202)


async def metrics(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    c = ctx.counters
    summary = await ctx.fleet.summary()
    lines = [
        "# HELP edgefleet_hub_messages_received_total MQTT messages received, by topic kind.",
        "# TYPE edgefleet_hub_messages_received_total counter",
        *(f'edgefleet_hub_messages_received_total{{kind="{k}"}} {c.received[k]}'
          for k in ("status", "online", "events", "unknown")),
        "# HELP edgefleet_hub_messages_dropped_total Messages dropped as invalid, by reason.",
        "# TYPE edgefleet_hub_messages_dropped_total counter",
        *(f'edgefleet_hub_messages_dropped_total{{reason="{r}"}} {c.dropped[r]}'
          for r in DROP_REASONS),
        "# HELP edgefleet_hub_messages_committed_total Valid messages committed, then acked.",
        "# TYPE edgefleet_hub_messages_committed_total counter",
        f"edgefleet_hub_messages_committed_total {c.committed}",
        "# HELP edgefleet_hub_rows_stored_total Rows written, by kind.",
        "# TYPE edgefleet_hub_rows_stored_total counter",
        *(f'edgefleet_hub_rows_stored_total{{kind="{k}"}} {c.stored[k]}'
          for k in ("status", "heartbeat", "online", "events")),
        "# HELP edgefleet_hub_status_out_of_order_total Statuses older than the stored one.",
        "# TYPE edgefleet_hub_status_out_of_order_total counter",
        f"edgefleet_hub_status_out_of_order_total {c.status_out_of_order}",
        "# HELP edgefleet_hub_events_duplicate_total Events already stored (same node and seq).",
        "# TYPE edgefleet_hub_events_duplicate_total counter",
        f"edgefleet_hub_events_duplicate_total {c.events_duplicate}",
        "# HELP edgefleet_hub_batches_total Ingest transactions committed.",
        "# TYPE edgefleet_hub_batches_total counter",
        f"edgefleet_hub_batches_total {c.batches}",
        "# HELP edgefleet_hub_batch_errors_total Ingest transactions that failed (retried).",
        "# TYPE edgefleet_hub_batch_errors_total counter",
        f"edgefleet_hub_batch_errors_total {c.batch_errors}",
        "# HELP edgefleet_hub_last_batch_seconds Duration of the last ingest transaction.",
        "# TYPE edgefleet_hub_last_batch_seconds gauge",
        f"edgefleet_hub_last_batch_seconds {c.last_batch_seconds:.6f}",
        "# HELP edgefleet_hub_mqtt_connected 1 while connected and subscribed.",
        "# TYPE edgefleet_hub_mqtt_connected gauge",
        f"edgefleet_hub_mqtt_connected {int(ctx.mqtt_ready())}",
        "# HELP edgefleet_hub_nodes Nodes by effective state.",
        "# TYPE edgefleet_hub_nodes gauge",
        *(f'edgefleet_hub_nodes{{state="{s}"}} {n}' for s, n in summary["states"].items()),
        "# HELP edgefleet_hub_stage_nodes Nodes by stage and effective state.",
        "# TYPE edgefleet_hub_stage_nodes gauge",
        *(f'edgefleet_hub_stage_nodes{{stage="{name}",state="{s}"}} {n}'
          for name, st in summary["stages"].items() for s, n in st["states"].items()),
    ]  # fmt: skip
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8")


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``event: summary`` with the summary JSON on every change."""
    ctx = request.app[CTX]
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                 "X-Accel-Buffering": "no"}
    )  # fmt: skip
    await resp.prepare(request)
    queue = ctx.updates.subscribe()
    try:
        first = json.dumps(await ctx.fleet.summary(), separators=(",", ":"))
        await resp.write(f"retry: 2000\nevent: summary\ndata: {first}\n\n".encode())
        while True:
            try:
                data = await asyncio.wait_for(queue.get(), _SSE_KEEPALIVE)
            except TimeoutError:
                await resp.write(b": keepalive\n\n")
                continue
            if data is None:
                break
            await resp.write(f"event: summary\ndata: {data}\n\n".encode())
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        ctx.updates.unsubscribe(queue)
    return resp


async def index(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def make_app(ctx: WebContext) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=64 * 1024)
    app[CTX] = ctx
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/health", health)
    app.router.add_get("/api/v1/summary", summary)
    app.router.add_get("/api/v1/nodes", nodes)
    app.router.add_get("/api/v1/nodes/{node}", node)
    app.router.add_post("/api/v1/nodes/{node}/sync", sync_node)
    app.router.add_get("/api/v1/drift", drift)
    app.router.add_get("/api/v1/stages", stages)
    app.router.add_post("/api/v1/stages/{stage}/promote", promote)
    app.router.add_post("/api/v1/stages/{stage}/rollback", rollback)
    app.router.add_post("/api/v1/stages/{stage}/resume", resume)
    app.router.add_get("/api/v1/history", history)
    app.router.add_get("/api/v1/events", events)
    app.router.add_get("/api/v1/stream", stream)
    app.router.add_post("/api/v1/hooks/git", GitPushHooks(ctx.cfg, ctx.refresh_git).handle)
    return app
