"""Election on etcd, compatible with ``etcdctl elect`` and etcd's Go ``concurrency.Election``.

The key layout is the mutex's, the value is the proposal, the leader is the key with the lowest create
revision. Unlike the Go client, ``campaign`` makes a candidate leader only while its own key exists (one
whose lease expired while waiting does not become a phantom leader, etcd #11051), proclaim and resign are
fenced on the leader key's create revision, and loss of leadership is observable (``wait_lost()``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from etcdlock.etcd import keys
from etcdlock.etcd.client import EtcdClient
from etcdlock.etcd.errors import Compacted, EtcdUnavailable, NotHeld, SessionLost
from etcdlock.etcd.fence import Fence
from etcdlock.etcd.keys import Contender, read_contenders
from etcdlock.etcd.session import Session
from etcdlock.etcd.waiter import Waiter

_RETRY_DELAY = 0.2


class Election:
    """Campaign for leadership of NAME under a session; ``token`` is the leader key's create revision."""

    def __init__(self, session: Session, name: str) -> None:
        self._waiter = Waiter(session, name)
        self.session = session
        self.name = name
        self._leading = False

    @property
    def key(self) -> str:
        """This session's candidate key for NAME."""
        return self._waiter.key

    @property
    def token(self) -> int:
        """The leader key's create revision (the fence of everything written as leader)."""
        if not self._leading or self._waiter.token is None:
            raise NotHeld(f"not leader of {self.name}")
        return self._waiter.token

    @property
    def is_leader(self) -> bool:
        return self._leading and self._waiter.is_held

    @property
    def is_lost(self) -> bool:
        return self._waiter.is_lost

    async def wait_lost(self) -> str:
        """Wait until leadership is lost (the key deleted or the session lost); returns why."""
        return await self._waiter.wait_lost()

    async def watching(self) -> None:
        """Wait until the leader key is watched (see :meth:`Waiter.watching`)."""
        await self._waiter.watching()

    async def campaign(self, proposal: bytes | str, timeout: float | None = None) -> Election:
        """Become leader with ``proposal`` as value; returns (itself) once leader.

        etcd outages while campaigning are waited out. On timeout (:class:`LockTimeout` is not used here:
        ``TimeoutError``), cancellation or error the candidate key is removed, as for a lock.
        """
        value = _encoded(proposal)
        if self._leading:
            raise RuntimeError(f"already leader of {self.name}")
        self.session.check()
        self.session.claim(self.name)
        try:
            async with asyncio.timeout(timeout):
                await self._waiter.join(value)
                if self._waiter.found is not None and self._waiter.found != value:
                    await self._waiter.rewrite(value)
                await self._waiter.wait_turn()
        except BaseException:
            try:
                await self._waiter.abandon()
            finally:
                self.session.unclaim(self.name)
            raise
        self._leading = True
        return self

    def fence(self) -> Fence:
        """A fence on this leadership: writes under it take effect only while this candidate leads."""
        return Fence(self._waiter.key_bytes, self.token)

    async def proclaim(self, proposal: bytes | str) -> None:
        """Change the leader's value without an election; fenced on still being leader."""
        self.token  # noqa: B018 (raises NotHeld when not leading)
        value = _encoded(proposal)
        if not await self._waiter.rewrite(value):
            raise NotHeld(f"no longer leader of {self.name}")

    async def resign(self) -> bool:
        """Give up leadership (fenced delete). Returns False if leadership had already been lost."""
        if not self._leading:
            return False
        self._leading = False
        try:
            return await self._waiter.give_back()
        except SessionLost:
            return False
        finally:
            self.session.unclaim(self.name)

    async def leader(self) -> Contender | None:
        """The current leader's key and proposal, or None."""
        _, contenders = await read_contenders(self.session.client, self.name)
        return contenders[0] if contenders else None


def _encoded(proposal: bytes | str) -> bytes:
    if isinstance(proposal, bytes):
        return proposal
    try:
        return proposal.encode()
    except UnicodeEncodeError:
        raise ValueError(f"a proposal must be valid UTF-8 text or bytes, not {proposal!r}") from None


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
