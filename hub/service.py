"""``edgefleet-hub serve``: wires store -> ingest -> fleet -> web with MQTT and Git.

Named tasks under one TaskGroup. Shutdown order matters for delivery guarantees: stop
the web server, let ingest commit and acknowledge what it holds, only then disconnect
from the broker (anything still unacknowledged is redelivered to the next hub run).
"""

from __future__ import annotations

import asyncio
import functools
import logging

from aiohttp import web

from hub.config import HubConfig
from hub.fleet import Fleet
from hub.forget import Forgetter
from hub.gitwatch import GitWatch
from hub.ingest import TOPICS, Ingest
from hub.mqtt import HubMqtt, Message
from hub.notify.service import Notifier
from hub.plan import PLAN_TOPICS, Planner
from hub.planweb import add_plan_routes
from hub.promote import StageGit
from hub.rollout import Rollout
from hub.sampler import StateSampler
from hub.sse import Updates
from hub.store import Store
from hub.waves import announce_wave
from hub.web import WebContext, make_app

log = logging.getLogger(__name__)


async def serve(cfg: HubConfig, stop: asyncio.Event) -> None:
    """Run the hub until ``stop`` is set. Raises StoreError/OSError at startup."""
    store = await Store.open(cfg.hub.database)
    try:
        await _serve(cfg, store, stop)
    finally:
        await store.close()


async def _serve(cfg: HubConfig, store: Store, stop: asyncio.Event) -> None:
    ingest: Ingest | None = None

    def on_message(msg: Message) -> None:
        assert ingest is not None  # set before the MQTT task starts
        if planner.take(msg.topic, msg.payload):
            mqtt.ack(msg.mid, msg.qos)  # an answer is only worth something right now
        else:
            ingest.submit(msg)

    gitwatch: GitWatch | None = None

    def on_ready() -> None:
        if gitwatch is not None:
            gitwatch.announce(force=True)  # the broker may have lost retained refs

    mqtt = HubMqtt(cfg.mqtt, TOPICS, on_message, on_ready, direct=PLAN_TOPICS)
    gitwatch = GitWatch(cfg.git, [s.branch for s in cfg.stages], mqtt.publish)
    planner = Planner(cfg, store.stage_nodes, mqtt.publish, lambda: gitwatch.heads)
    fleet = Fleet(cfg, store, heads=lambda: gitwatch.heads)
    updates = Updates(fleet)
    stage_git = (
        StageGit(cfg.git, cfg.hub.database.parent / "stages-mirror.git")
        if cfg.git.url is not None
        else None
    )
    notifier = Notifier(cfg, store, mqtt.publish)
    rollout = Rollout(
        cfg, store, stage_git, lambda: gitwatch.heads, gitwatch.moved, audited=notifier.audited,
        wave_store=store, announce=functools.partial(announce_wave, mqtt.publish),
    )  # fmt: skip
    rollout.planner = planner.plan

    def on_commit() -> None:
        updates.changed()
        rollout.poke()

    ingest = Ingest(
        store,
        cfg.hub.stale_after,
        mqtt.ack,
        on_commit=on_commit,
        events_max_age=cfg.hub.events_max_age,
        events_max=cfg.hub.events_max,
    )
    await ingest.start()
    ctx = WebContext(cfg, fleet, ingest.counters, mqtt.publish, mqtt.ready.is_set, updates, rollout)
    ctx.refresh_git = gitwatch.refresh
    ctx.audit = store.add_audit
    ctx.samples = store
    ctx.forget = Forgetter(cfg, store, mqtt.publish, ingest.forget).forget
    app = make_app(ctx)
    add_plan_routes(app, planner)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    host, port = cfg.hub.listen
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError:
        await runner.cleanup()
        raise
    log.info("hub API and dashboard on %s", cfg.hub.api_url)

    ingest_stop, mqtt_stop = asyncio.Event(), asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        ingest_task = tg.create_task(ingest.run(ingest_stop), name="ingest")
        tg.create_task(mqtt.run(mqtt_stop), name="mqtt")
        tg.create_task(gitwatch.run(stop), name="gitwatch")
        tg.create_task(updates.run(stop), name="sse-updates")
        tg.create_task(rollout.run(stop), name="rollout")
        tg.create_task(notifier.run(stop), name="notify")
        tg.create_task(StateSampler(store).run(stop), name="state-sampler")

        async def shutdown() -> None:
            await stop.wait()
            log.info("hub stopping")
            await runner.cleanup()
            ingest_stop.set()
            await ingest_task
            mqtt_stop.set()

        tg.create_task(shutdown(), name="shutdown")
