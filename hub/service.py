"""``edgefleet-hub serve``: wires store -> ingest -> fleet -> web with MQTT and Git.

Named tasks under one TaskGroup. Shutdown order matters for delivery guarantees: stop
the web server, let ingest commit and acknowledge what it holds, only then disconnect
from the broker (anything still unacknowledged is redelivered to the next hub run).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable

from aiohttp import web

from hub.config import HubConfig
from hub.errors import GitWatchError
from hub.fleet import Fleet
from hub.forget import Forgetter
from hub.gitwatch import GitWatch
from hub.ingest import TOPICS, Ingest
from hub.leader import Leadership, LeaseLeadership
from hub.mqtt import HubMqtt, Message
from hub.notify.service import Notifier
from hub.plan import PLAN_TOPICS, Planner
from hub.planweb import add_plan_routes
from hub.promote import StageGit
from hub.rollout import Rollout
from hub.sampler import StateSampler
from hub.sse import Updates
from hub.store import HubStore
from hub.store.factory import open_store
from hub.waves import announce_wave
from hub.web import WebContext, make_app

log = logging.getLogger(__name__)


async def serve(cfg: HubConfig, stop: asyncio.Event) -> None:
    """Run the hub until ``stop`` is set. Raises StoreError/OSError at startup."""
    store = await open_store(cfg.hub.database, cfg.hub.database_url, cfg.hub.database_ca_file)
    try:
        await _serve(cfg, store, stop)
    finally:
        await store.close()


async def _serve(cfg: HubConfig, store: HubStore, stop: asyncio.Event) -> None:
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
    rollout: Rollout | None = None

    def on_elected() -> None:
        assert gitwatch is not None and rollout is not None  # set before the lease task
        gitwatch.announce(force=True)  # a standby never published: refresh every ref
        rollout.poke()

    git_wanted = asyncio.Event()
    leader = leadership(cfg, store, on_elected, git_wanted.set)

    def publish_ref(topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        # Ref notifications are the leader's: two replicas must not race on retained refs.
        return leader.is_leader() and mqtt.publish(topic, payload, qos, retain)

    gitwatch = GitWatch(cfg.git, [s.branch for s in cfg.stages], publish_ref, leader.may_act)
    planner = Planner(cfg, store.stage_nodes, mqtt.publish, lambda: gitwatch.heads, store)
    fleet = Fleet(cfg, store, heads=lambda: gitwatch.heads)
    updates = Updates(fleet)
    stage_git = (
        StageGit(cfg.git, cfg.hub.state_dir / "stages-mirror.git")
        if cfg.git.url is not None
        else None
    )
    notifier = Notifier(cfg, store, mqtt.publish, leader=leader)
    rollout = Rollout(
        cfg, store, stage_git, lambda: gitwatch.heads, gitwatch.moved, audited=notifier.audited,
        leader=leader,
        wave_store=store, announce=functools.partial(announce_wave, publish_ref),
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

    async def refresh_git() -> dict[str, str]:
        heads = await gitwatch.refresh()
        await leader.request_refresh()  # the leader announces (a standby does not)
        return heads

    async def forward_refreshes() -> None:
        while not stop.is_set():
            await git_wanted.wait()
            git_wanted.clear()
            with contextlib.suppress(GitWatchError):
                await gitwatch.refresh()

    ctx.refresh_git = refresh_git
    ctx.role = lambda: leader.role
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
        tg.create_task(leader.run(stop), name="leader-lease")
        refresher = tg.create_task(forward_refreshes(), name="git-refresh-requests")
        tg.create_task(notifier.run(stop), name="notify")
        tg.create_task(StateSampler(store, leader.is_leader).run(stop), name="state-sampler")

        async def shutdown() -> None:
            await stop.wait()
            log.info("hub stopping")
            await runner.cleanup()
            ingest_stop.set()
            await ingest_task
            mqtt_stop.set()
            refresher.cancel()

        tg.create_task(shutdown(), name="shutdown")


def leadership(
    cfg: HubConfig, store: HubStore, on_elected: Callable[[], None], on_refresh: Callable[[], None]
) -> Leadership:
    """Replicas on PostgreSQL compete for the lease; a SQLite hub leads alone."""
    if cfg.hub.database_url is None:
        return Leadership()
    # Imported here: asyncpg is the optional [postgres] extra, a SQLite hub runs without it.
    from hub.store.pglease import PgLease  # noqa: PLC0415

    assert isinstance(store, PgLease)
    return LeaseLeadership(store, cfg.hub.api_url, on_elected, on_refresh)
