"""Election on etcd, compatible with ``etcdctl elect`` and etcd's Go ``concurrency.Election``.

The key layout is the mutex's, the value is the proposal, the leader is the key with the lowest create
revision. Unlike the Go client, ``campaign`` re-reads its own key after waiting (a candidate whose lease
expired while waiting does not become a phantom leader, etcd #11051), proclaim and resign are fenced on
the leader key's create revision, and loss of leadership is observable (``wait_lost()``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from etcdlock.etcd import keys
from etcdlock.etcd.client import EtcdClient, create_revision_is, put_op
from etcdlock.etcd.errors import Compacted, EtcdUnavailable, NotHeld
from etcdlock.etcd.fence import Fence
from etcdlock.etcd.hold import Hold
from etcdlock.etcd.keys import Contender
from etcdlock.etcd.queue import KeyGuard, first_of, read_contenders

_RETRY_DELAY = 0.2


class Election(Hold):
    """Campaign for leadership of NAME under a session; ``token`` is the leader key's create revision."""

    @property
    def is_leader(self) -> bool:
        return self._rev is not None and not self.is_lost

    async def campaign(self, proposal: bytes | str, timeout: float | None = None) -> Election:
        """Become leader with ``proposal`` as value; returns (itself) once leader.

        On timeout (:class:`LockTimeout` is not used here: ``TimeoutError``), cancellation or error the
        candidate key is removed, as for a lock.
        """
        value = proposal.encode() if isinstance(proposal, str) else proposal
        if self._rev is not None:
            raise RuntimeError(f"already leader of {self.name}")
        self.session.check()
        self.session.claim(self.name)
        my_rev: int | None = None
        try:
            async with asyncio.timeout(timeout):
                entry = await self._queue.enqueue(value, permits=1)
                my_rev = entry.my_rev
                guard = KeyGuard(self._queue, my_rev)
                try:
                    if entry.existing_value is not None and entry.existing_value != value:
                        await self._put_fenced(my_rev, value)
                    if not entry.granted:
                        await first_of(
                            self._queue.wait_for_turn(my_rev, permits=1),
                            self.session.wait_lost(),
                            guard.wait_gone(),
                        )
                except BaseException:
                    await guard.stop()
                    raise
        except BaseException:
            await self._abandon(my_rev)
            raise
        self._granted(my_rev, guard)
        return self

    async def _put_fenced(self, my_rev: int, value: bytes) -> bool:
        response = await self._queue.write(
            [create_revision_is(self._queue.key, my_rev)],
            [put_op(self._queue.key, value, self.session.lease_id)],
        )
        return bool(response.succeeded)

    def fence(self) -> Fence:
        """A fence on this leadership: writes under it take effect only while this candidate leads."""
        if self._rev is None:
            raise NotHeld(f"not leader of {self.name}")
        return Fence(self._queue.key, self._rev)

    async def proclaim(self, proposal: bytes | str) -> None:
        """Change the leader's value without an election; fenced on still being leader."""
        if self._rev is None:
            raise NotHeld(f"not leader of {self.name}")
        value = proposal.encode() if isinstance(proposal, str) else proposal
        if not await self._put_fenced(self._rev, value):
            raise NotHeld(f"no longer leader of {self.name}")

    async def resign(self) -> bool:
        """Give up leadership (fenced delete). Returns False if leadership had already been lost."""
        if self._rev is None:
            return False
        return await self._give_back()

    async def leader(self) -> Contender | None:
        """The current leader's key and proposal, or None."""
        _, contenders = await read_contenders(self.session.client, self.name)
        return contenders[0] if contenders else None


async def observe(client: EtcdClient, name: str) -> AsyncIterator[Contender]:
    """Yield the leader of NAME each time it changes (new key or new proclaimed value), for ever.

    Like etcd's ``Observe`` it never yields "no leader"; it survives compaction and etcd outages by
    re-reading. Observing needs no session.
    """
    start = keys.prefix(name)
    end = keys.range_end(start)
    last: tuple[str, bytes] | None = None
    while True:
        try:
            response = await client.range(start, end, by_create=True, limit=1)
            revision = response.header.revision
            if not response.kvs:
                async with client.watch_events(start, end, start_revision=revision + 1) as events:
                    async for event in events:
                        if event.kind == "PUT":
                            break
                continue
            leader = Contender.from_kv(response.kvs[0])
            if (leader.key, leader.value) != last:
                last = (leader.key, leader.value)
                yield leader
            async with client.watch_events(response.kvs[0].key, start_revision=revision + 1) as events:
                async for event in events:
                    if event.kind != "PUT":
                        break
                    updated = Contender.from_kv(event.kv)
                    if (updated.key, updated.value) != last:
                        last = (updated.key, updated.value)
                        yield updated
        except Compacted:
            continue
        except EtcdUnavailable:
            await asyncio.sleep(_RETRY_DELAY)
