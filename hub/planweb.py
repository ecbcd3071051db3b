"""HTTP side of fleet-wide plans: ``POST /api/v1/stages/{stage}/plan`` (an operator of
the stage, or admin; body ``{"commit", "sample", "timeout"}``) runs a plan and answers
it; ``GET`` the same path (a read) answers the latest plan of the stage (404 before the
first)."""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from hub.auth import AUTH
from hub.plan import MAX_TIMEOUT, Planner, PlanRefused, Sample
from hub.web import CTX, BadRequest, json_body, stage_param

PLANNER: web.AppKey[Planner] = web.AppKey("planner", Planner)
_MAX_REF = 255


def _stage_name(request: web.Request) -> str:
    stage = stage_param(request.app[CTX], request.match_info["stage"])
    assert stage is not None
    return stage.name


def _sample(body: dict[str, Any]) -> Sample | None:
    raw = body.get("sample")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise BadRequest('sample must be a node count or a percentage such as "20%"')
    try:
        return Sample.parse(str(raw))
    except ValueError as err:
        raise BadRequest(str(err)) from None


def _timeout(body: dict[str, Any]) -> float:
    raw = body.get("timeout", 30.0)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise BadRequest("timeout must be a number of seconds")
    if not 0 < raw <= MAX_TIMEOUT:
        raise BadRequest(f"timeout must be between 0 and {MAX_TIMEOUT:g} seconds")
    return float(raw)


async def run_plan(request: web.Request) -> web.Response:
    name = _stage_name(request)
    request.app[AUTH].authorize(request, "plan", name)  # it loads every node of the stage
    body = await json_body(request)
    commit = body.get("commit")
    if commit is not None and (not isinstance(commit, str) or not 0 < len(commit) <= _MAX_REF):
        raise BadRequest(f"commit must be a ref name or a commit id (at most {_MAX_REF} chars)")
    sample, timeout = _sample(body), _timeout(body)
    try:
        result = await request.app[PLANNER].plan(name, commit, sample, timeout)
    except PlanRefused as err:
        raise BadRequest(str(err), status=503 if err.unavailable else 409) from None
    return web.json_response(result)


async def latest_plan(request: web.Request) -> web.Response:
    name = _stage_name(request)
    result = (await request.app[PLANNER].latest()).get(name)
    if result is None:
        raise BadRequest(f"no plan of stage {name} yet", status=404)
    return web.json_response(result)


async def latest_plans(request: web.Request) -> web.Response:
    """Every stage's latest plan at once (the dashboard: no per-stage 404s)."""
    return web.json_response({"plans": await request.app[PLANNER].latest()})


def add_plan_routes(app: web.Application, planner: Planner) -> None:
    app[PLANNER] = planner
    app.router.add_get("/api/v1/plans", latest_plans)
    app.router.add_post("/api/v1/stages/{stage}/plan", run_plan)
    app.router.add_get("/api/v1/stages/{stage}/plan", latest_plan)
