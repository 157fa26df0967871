"""LeaseKeeper: keeps other sessions' leases alive, all on one keepalive stream.

A process that takes over leases from another (a new operator leader taking over the pods' leases) must
renew all of them at once, before each gets a :class:`~etcdlock.etcd.session.Session` of its own: for
thousands of leases that takes longer than a short lease lives. The keeper renews every lease it is given
every ``interval`` seconds until it is dropped (its session took over) or etcd says it is gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from etcdlock.etcd.client import EtcdClient
from etcdlock.etcd.errors import EtcdError
from etcdlock.etcd.leases import LeaseStream

log = logging.getLogger(__name__)

ANSWER_WITHIN = 2.0
RETRY_PAUSE = 0.2


class LeaseKeeper:
    """Renews a set of leases through ``client`` every ``interval`` seconds, until each is dropped."""

    def __init__(self, client: EtcdClient, interval: float) -> None:
        self._client = client
        self._interval = interval
        self._leases: set[int] = set()
        self._renewed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def leases(self) -> frozenset[int]:
        return frozenset(self._leases)

    def keep(self, leases: Iterable[int]) -> None:
        self._leases.update(leases)
        if self._leases and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._keep_renewing(), name="lease-keeper")

    def drop(self, lease: int) -> None:
        self._leases.discard(lease)

    async def renewed(self) -> None:
        """Wait until the leases kept now have been renewed once (or found gone)."""
        await self._renewed.wait()

    async def close(self) -> None:
        self._leases.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _keep_renewing(self) -> None:
        while self._leases:
            try:
                stream = await self._client.lease_stream()
                while self._leases:
                    await self._renew_once(stream)
                    await asyncio.sleep(self._interval)
            except EtcdError as exc:
                log.debug("keeping %d leases: %s; trying again", len(self._leases), exc)
                await asyncio.sleep(RETRY_PAUSE)

    async def _renew_once(self, stream: LeaseStream) -> None:
        ttls = await stream.renew_all(sorted(self._leases), ANSWER_WITHIN)
        for lease, ttl in ttls.items():
            if ttl <= 0:
                self._leases.discard(lease)
        self._renewed.set()
