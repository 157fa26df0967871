"""Leader election between operator replicas, through the same etcd election etcdlock offers everyone.

Every replica campaigns for one election name under a session of its own (TTL ``ttl``); candidates queue
in order, each watching only its predecessor, so a resignation hands over in one round trip and a crash
within the TTL. The leader runs kopf; standbys wait and answer ``/healthz`` (but not ``/readyz``, so the
webhook Service reaches only the leader). Leadership is lost when the session is lost (no renewal
acknowledged for a TTL: that local deadline passes before etcd expires the lease, so the old leader
knows first) or the leader key is deleted; the replica then stops kopf at once. The leader key's create
revision is the fence on every lock write the leader makes for pods.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web
from prometheus_client import Counter, Gauge

from etcdlock.etcd import Election, EtcdClient, EtcdUnavailable, Fence, Fenced, SessionLost
from etcdlock.operator.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_PAUSE = 0.2


class Leadership:
    """This replica's leadership, as every write it makes for lock holders sees it.

    Deposed means deposed: only the local loss of the election (its session lost, its key gone) or etcd
    answering :class:`Fenced` says so. An etcd error on the way (a member dying, an election of etcd's
    own) is transient and waited out, for as long as the replica leads. Without an election (a single
    replica, ``--election off``) nothing is fenced and leadership is never lost.
    """

    def __init__(self, election: Election | None = None) -> None:
        self._election = election
        self.fence: Fence | None = election.fence() if election is not None else None

    @property
    def is_lost(self) -> bool:
        return self._election is not None and not self._election.is_leader

    def check(self) -> None:
        """Raise :class:`Fenced` if this replica no longer leads."""
        if self.is_lost:
            raise Fenced("this replica no longer leads")

    async def assured(self) -> None:
        """Return once this replica is known to lead now; :class:`Fenced` once it does not. Before a write
        that no fence guards (to Kubernetes): a replica resumed after a pause, or whose event loop lagged
        past its session's deadline, waits for its keepalive's verdict instead of writing what it saw."""
        if self._election is None:
            return
        try:
            await self._election.session.assured()
        except SessionLost:
            raise Fenced("this replica no longer leads") from None
        self.check()

    async def persist(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, again after every transient etcd error, until it lands or leadership is lost."""
        while True:
            self.check()
            try:
                return await call()
            except EtcdUnavailable as exc:
                log.debug("etcd unavailable (%s); trying again", exc)
                await asyncio.sleep(RETRY_PAUSE)

    async def confirmed(self, etcd: EtcdClient, fence: Fence | None) -> bool:
        """Whether etcd (``etcd``, under ``fence``: the election's, or an EtcdCluster's epoch) confirms that
        this replica still leads. Asked in one guarded read; transient errors are waited out."""
        if fence is None:
            return not self.is_lost
        try:
            await self.persist(lambda: etcd.guarded_txn(fence.compares(), [], []))
        except Fenced:
            return False
        return True


class ReplicaStatus:
    """What this replica is doing, for the probes and the metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.leading = False
        self.ready = False
        self.leader_gauge = Gauge(
            "etcdlock_operator_leader",
            "1 while this replica is the elected leader",
            registry=metrics.registry,
        )
        self.transitions = Counter(
            "etcdlock_operator_leadership_transitions",
            "Times this replica became leader (acquired) or stopped leading (lost, resigned)",
            ["transition"],
            registry=metrics.registry,
        )

    def became_leader(self) -> None:
        self.leading = True
        self.leader_gauge.set(1)
        self.transitions.labels("acquired").inc()

    def stopped_leading(self, transition: str) -> None:
        if self.leading:
            self.transitions.labels(transition).inc()
        self.leading = self.ready = False
        self.leader_gauge.set(0)

    def add_routes(self, app: web.Application) -> None:
        """``/healthz``: the process answers. ``/readyz``: this replica leads and kopf is running."""

        async def healthz(_: web.Request) -> web.Response:
            return web.Response(text="ok\n")

        async def readyz(_: web.Request) -> web.Response:
            if self.ready:
                return web.Response(text="leader\n")
            return web.Response(status=503, text="leader, starting\n" if self.leading else "standby\n")

        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
