"""Which hub replica leads: runs automatic promotions and halts and publishes ref
notifications. Every replica ingests and answers the API.

A SQLite hub is alone (its database lock sees to that) and always leads. PostgreSQL
replicas compete for one lease row (:mod:`hub.store.pglease`): the leader renews it
every ``renew`` seconds; it expires ``ttl`` seconds after the last renewal, on the
database's clock, and a standby then takes it under a new fencing token.

Two guards keep an ex-leader (stalled, or cut off from the database) from acting:
locally it stops considering itself leader ``ttl - margin`` after the start of its
last successful renewal, before the database lets anyone else in; and before every
side effect (moving a branch, recording the decision) :meth:`fence` asks the database
whether its token still holds, so a decision taken before a stall is refused after it.

Neither guard waits on the database for long: the local one needs no database at all,
and the lease statements give up after a few seconds (:data:`hub.store.pglease.WAIT`).
A claim answered late could not extend the role anyway (the term counts from its
start), and a replica cut off by a partition claims afresh, on a new connection, as
soon as the network heals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Final, Protocol

from hub.errors import RolloutRefused, StoreError

log = logging.getLogger(__name__)

LEADER: Final = "leader"
STANDBY: Final = "standby"
RENEW: Final = 2.0
TTL: Final = 6.0
_MARGIN: Final = 1.0
"""Seconds the leader gives up its role locally before the lease expires in the database."""


class NotLeader(RolloutRefused):
    """A rollout action reached a standby, or a leader that lost its lease."""


class LeaseStore(Protocol):
    async def claim(self, holder: str, api_url: str, ttl: float) -> tuple[int, float] | None: ...
    async def request_refresh(self) -> None: ...
    async def holds(self, holder: str, token: int) -> bool: ...
    async def leader_url(self) -> str | None: ...
    async def resign(self, holder: str) -> None: ...


class Leadership:
    """The sole hub (SQLite): always the leader."""

    @property
    def role(self) -> str:
        return LEADER if self.is_leader() else STANDBY

    def is_leader(self) -> bool:
        return True

    async def fence(self) -> None:
        """Raise :class:`NotLeader` unless this replica may act now."""

    async def refuse_if_standby(self) -> None:
        """Raise :class:`NotLeader` at once on a standby, before an action reads the
        store: a replica cut off from the database refuses instead of waiting on it."""

    async def may_act(self) -> bool:
        """Whether this replica leads now, its fencing token confirmed (a standby answers
        False without asking the database): for side effects that are skipped, not
        refused, on a standby (ref announcements)."""
        if not self.is_leader():
            return False
        try:
            await self.fence()
        except NotLeader:
            return False
        return True

    async def request_refresh(self) -> None:
        """This replica re-read Git (a push webhook): a standby has the leader re-read it
        and announce, within one lease renewal."""

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the role up to date until ``stop``."""


class LeaseLeadership(Leadership):
    def __init__(
        self,
        lease: LeaseStore,
        api_url: str,
        on_elected: Callable[[], None],
        on_refresh: Callable[[], None] = lambda: None,
        renew: float = RENEW,
        ttl: float = TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lease = lease
        self._api_url = api_url
        self._on_elected = on_elected
        self._on_refresh = on_refresh
        self._refreshed = 0.0
        self._renew = renew
        self._ttl = ttl
        self._clock = clock
        self.holder = uuid.uuid4().hex
        """This process's identity in the lease (a restarted hub is a new holder)."""
        self._token: int | None = None
        self._valid_until = 0.0

    def is_leader(self) -> bool:
        return self._token is not None and self._clock() < self._valid_until

    async def refuse_if_standby(self) -> None:
        if not self.is_leader():
            raise NotLeader(await self._standby_reason())

    async def fence(self) -> None:
        token = self._token
        if not self.is_leader() or token is None:
            raise NotLeader(await self._standby_reason())
        try:
            held = await self._lease.holds(self.holder, token)
        except StoreError as err:
            raise NotLeader(f"cannot confirm the leader lease: {err}") from err
        if not held:
            self._token = None
            raise NotLeader("this replica lost the leader lease; nothing was done")

    async def request_refresh(self) -> None:
        if self.is_leader():
            return  # the caller's own refresh announced already
        try:
            await self._lease.request_refresh()
        except StoreError as err:
            log.warning("cannot forward the Git refresh to the leader: %s", err)

    async def _standby_reason(self) -> str:
        try:
            url = await self._lease.leader_url()
        except StoreError as err:
            return f"this hub replica is a standby and cannot name the leader: {err}"
        if url:
            return f"this hub replica is a standby; send rollout actions to the leader at {url}"
        return "this hub replica is a standby and no leader holds the lease right now"

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.renew()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._renew)
        finally:
            if self.is_leader():
                with contextlib.suppress(StoreError):
                    await self._lease.resign(self.holder)
            self._token = None

    async def renew(self) -> None:
        """One claim or renewal of the lease (the loop runs it every ``renew`` seconds)."""
        started = self._clock()
        was = self._token if self.is_leader() else None
        try:
            claimed = await self._lease.claim(self.holder, self._api_url, self._ttl)
        except StoreError as err:
            if was is not None:
                log.warning("cannot renew the leader lease: %s", err)
            return  # the role lapses locally at _valid_until
        if claimed is None:
            if was is not None:
                log.warning("lost the leader lease; now standby")
            self._token = None
            return
        token, refresh_requested = claimed
        self._token = token
        self._valid_until = started + self._ttl - _MARGIN
        if token != was:
            log.info("this replica is the leader (fencing token %d)", token)
            self._refreshed = refresh_requested  # election announces everything anyway
            self._on_elected()
        elif refresh_requested > self._refreshed:
            self._refreshed = refresh_requested
            self._on_refresh()


def leader_metric(role: str) -> str:
    return (
        "# HELP edgefleet_hub_leader 1 on the replica that leads rollouts, 0 on standbys.\n"
        "# TYPE edgefleet_hub_leader gauge\n"
        f"edgefleet_hub_leader {int(role == LEADER)}\n"
    )
