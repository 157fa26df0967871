"""The contender queue under ``NAME/`` that waiters, mutexes, semaphores and elections share (internal:
the engine's public way in is :class:`~etcdlock.etcd.waiter.Waiter` and what is built on it).

Each contender owns one key bound to its session's lease; the queue order is the keys' create revision.
A contender holds one of N permits when fewer than N keys under the prefix have a lower create revision.

Waiting never polls and never wakes everyone: with one permit a waiter watches only its immediate
predecessor for deletion (etcd's ``waitDeletes``); with N permits it watches deletions under the prefix and
counts the keys ahead of it locally, so only the waiter that is actually granted reads etcd again.
After every wake-up the waiter re-reads its own key: if it is gone, the lease was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from etcdlock.aio import race
from etcdlock.etcd import keys
from etcdlock.etcd.client import EtcdClient
from etcdlock.etcd.errors import Compacted, EtcdError, EtcdUnavailable, Fenced, LockLost
from etcdlock.etcd.requests import create_revision_is, delete_op, put_op, range_is_empty, range_op
from etcdlock.etcd.session import Session

log = logging.getLogger(__name__)

_RETRY_DELAY = 0.2


@dataclass(frozen=True)
class Entry:
    """Where a contender stands after the enqueue transaction."""

    my_rev: int
    granted: bool
    existing_value: bytes | None
    front: tuple[keys.Contender, ...]


class Queue:
    """The keys under one name, seen from one session's contender key."""

    def __init__(self, session: Session, name: str) -> None:
        self.session = session
        self.client: EtcdClient = session.client
        self.name = name
        self.prefix = keys.prefix(name)
        self.end = keys.range_end(self.prefix)
        self.key = keys.contender_key(name, session.lease_id)

    async def write(self, compare: list[Any], success: list[Any], failure: list[Any] | None = None) -> Any:
        """A transaction that writes the own key: under the session's fence, if it has one."""
        fence = self.session.fence
        if fence is None:
            return await self.client.txn(compare, success, failure or [])
        return await self.client.guarded_txn(fence.compares(), compare, success, failure or [])

    async def enqueue(self, value: bytes, permits: int) -> Entry:
        """One transaction: create the own key unless it exists, and read the first ``permits`` keys.

        An existing own key (same lease) keeps its place in the queue, as in etcd's Go client.
        """
        front = range_op(self.prefix, self.end, by_create=True, limit=permits)
        response = await self.write(
            [create_revision_is(self.key, 0)],
            [put_op(self.key, value, self.session.lease_id), front],
            [range_op(self.key), front],
        )
        existing_value = None
        if response.succeeded:
            my_rev = response.header.revision
        else:
            mine = response.responses[0].response_range.kvs
            if not mine:
                raise LockLost(f"own key {self.key.decode()} vanished during acquire")
            my_rev = mine[0].create_revision
            existing_value = bytes(mine[0].value)
        ahead = tuple(keys.Contender.from_kv(kv) for kv in response.responses[1].response_range.kvs)
        granted = any(c.create_revision == my_rev for c in ahead)
        return Entry(my_rev, granted, existing_value, ahead)

    async def try_take_alone(self, value: bytes) -> tuple[int | None, tuple[keys.Contender, ...]]:
        """Take a one-permit lock only if nobody is queued, without ever creating a waiter key.

        Returns (create revision of the own key, ()) when taken, or (None, current owner) when not.
        If the only key is our own (the same lease re-entering), that counts as taken.
        """
        owner = range_op(self.prefix, self.end, by_create=True, limit=1)
        response = await self.write(
            [range_is_empty(self.prefix, self.end)],
            [put_op(self.key, value, self.session.lease_id), owner],
            [owner],
        )
        if response.succeeded:
            return response.header.revision, ()
        holders = tuple(keys.Contender.from_kv(kv) for kv in response.responses[0].response_range.kvs)
        if holders and holders[0].key.encode() == self.key:
            return holders[0].create_revision, ()
        return None, holders

    async def wait_for_turn(self, my_rev: int, permits: int) -> int:
        """Wait until fewer than ``permits`` keys are ahead; returns the revision the grant was seen at.

        Each attempt reads the queue and, if the own turn has not come, waits for a deletion ahead; etcd
        outages and compaction only start the next attempt. Raises :class:`LockLost` if the own key
        disappears (and :class:`SessionLost` if the session is lost during an outage).
        """
        attempt = self._predecessors_gone if permits == 1 else self._rank_below
        while True:
            try:
                revision = await attempt(my_rev, permits)
                if revision is not None:
                    return revision
            except Compacted:
                continue
            except EtcdUnavailable as exc:
                log.debug("waiting for %s: %s; retrying", self.name, exc)
                self.session.check()
                await asyncio.sleep(_RETRY_DELAY)

    async def _read_ahead(self, my_rev: int, limit: int) -> tuple[int, list[Any]]:
        """Read the keys ahead (newest first, up to ``limit``; 0 = all) and re-check the own key, both at
        one revision.

        Two ranges, not one read-only transaction: etcd up to 3.5.4 panics when the client's deadline
        cancels a read-only transaction while it is being applied (etcd #14110), and a request that ran
        out of its attempt time is exactly that; a range just fails.
        """
        ahead = await self.client.range(
            self.prefix,
            self.end,
            by_create=True,
            descending=True,
            limit=limit,
            max_create_revision=my_rev - 1,
            keys_only=True,
        )
        revision = int(ahead.header.revision)
        mine = (await self.client.range(self.key, keys_only=True, revision=revision)).kvs
        if not mine or mine[0].create_revision != my_rev:
            self.session.check()
            raise LockLost(f"own key {self.key.decode()} was deleted while waiting")
        return revision, list(ahead.kvs)

    async def _predecessors_gone(self, my_rev: int, permits: int) -> int | None:
        """One attempt, one permit: the revision if nobody is ahead, else None once the predecessor went."""
        revision, ahead = await self._read_ahead(my_rev, limit=1)
        if not ahead:
            return revision
        await self._wait_deleted(ahead[0])
        return None

    async def _wait_deleted(self, kv: Any) -> None:
        """Wait until this incarnation of the key ``kv`` (as read from etcd) has been deleted.

        The watch starts at etcd's current revision (``start_revision=0``): etcd then serves it from its
        synced watchers and delivers the deletion at once. A watch from a past revision (the read's + 1,
        once anything at all has been written since) sits among etcd's unsynced watchers, which get their
        events only at the next background sync, up to 100 ms later: a hand-off that raced the setup of
        the watch took that long. A deletion before the watch existed is caught by one more look at the
        key once the watch is in place.
        """
        async with self.client.watch_events(kv.key, start_revision=0, deletes_only=True) as events:
            current = (await self.client.range(kv.key, keys_only=True)).kvs
            if not current or current[0].create_revision != kv.create_revision:
                return
            async for _ in events:
                return

    async def _rank_below(self, my_rev: int, permits: int) -> int | None:
        """One attempt with N permits: the revision if fewer than N are ahead, else None once enough went.

        The watch starts from the current revision (delivered at once, see :meth:`_wait_deleted`) and the
        queue is read again once it is in place: keys deleted before the watch existed are missing there.
        """
        revision, ahead_kvs = await self._read_ahead(my_rev, limit=0)
        if len(ahead_kvs) < permits:
            return revision
        deletions = self.client.watch_events(self.prefix, self.end, start_revision=0, deletes_only=True)
        async with deletions as events:
            revision, ahead_kvs = await self._read_ahead(my_rev, limit=0)
            ahead = {kv.key for kv in ahead_kvs}
            if len(ahead) < permits:
                return revision
            async for event in events:
                if event.kv.key == self.key:
                    return None
                ahead.discard(event.kv.key)
                if len(ahead) < permits:
                    return None
        return None

    async def remove(self, my_rev: int | None) -> bool:
        """Delete the own key, fenced on its create revision when known; True if it was deleted."""
        compare = [] if my_rev is None else [create_revision_is(self.key, my_rev)]
        response = await self.write(compare, [delete_op(self.key)])
        return bool(response.succeeded and response.responses[0].response_delete_range.deleted)

    async def mark_granted(self, my_rev: int, value: bytes) -> None:
        """Rewrite the own value (fenced) once granted after waiting, so ``acquired`` tells the truth."""
        with contextlib.suppress(EtcdError, Fenced):
            await self.write(
                [create_revision_is(self.key, my_rev)], [put_op(self.key, value, self.session.lease_id)]
            )


class KeyGuard:
    """Watches one contender key and reports when it is deleted (lease expiry, revoke, or by hand).

    The watch starts from the key's create revision + 1, so starting it late loses nothing; ``delay``
    lets very short holds finish without setting up a watch at all.
    """

    def __init__(self, queue: Queue, my_rev: int, delay: float = 0.0) -> None:
        self._queue = queue
        self._my_rev = my_rev
        self._gone = asyncio.Event()
        # Set once the watch exists (its stream's tasks too): see Waiter.watching.
        self.watching = asyncio.Event()
        self.reason: str | None = None
        self._task: asyncio.Task[None] | None = None
        # A timer, not a task that sleeps: a hold released within the delay costs no task at all.
        self._timer: asyncio.TimerHandle | None = None
        if delay:
            self._timer = asyncio.get_running_loop().call_later(delay, self._start)
        else:
            self._start()

    def _start(self) -> None:
        self._timer = None
        if not self._queue.session.is_lost:
            self._task = self._queue.session.spawn(self._run(), name=f"guard-{self._queue.key.decode()}")

    @property
    def is_gone(self) -> bool:
        return self._gone.is_set()

    async def wait_gone(self) -> str:
        await self._gone.wait()
        return self.reason or "key deleted"

    @property
    def is_lost(self) -> bool:
        """The hold is lost: the key is gone or the session that protects it is lost."""
        return self._queue.session.is_lost or self.is_gone

    @property
    def lost_reason(self) -> str | None:
        session = self._queue.session
        return session.lost_reason if session.is_lost else self.reason

    async def wait_lost(self) -> str:
        """Wait until the key is gone or the session is lost; returns why."""
        _, reason = await race(self._queue.session.wait_lost(), self.wait_gone())
        return str(reason)

    def cancel(self) -> None:
        """Stop watching now: from here on the guard never reports, even a deletion that follows at once.

        The watch itself is torn down in the background; :meth:`stop` waits for that.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        self.cancel()
        # asyncio.wait, not ``await task`` under suppress(CancelledError): that would also swallow a
        # cancellation of the caller itself (a release or resign being cancelled) while it waits here.
        if self._task is not None:
            await asyncio.wait([self._task])

    def _report(self, reason: str) -> None:
        self.reason = reason
        self._gone.set()

    async def _run(self) -> None:
        queue = self._queue
        start: int | None = self._my_rev + 1
        while not queue.session.is_lost:
            try:
                if start is None:
                    # The history since the key's creation was compacted: look at the key itself, then watch
                    # from that read on (retrying the compacted revision would fail for ever).
                    response = await queue.client.range(queue.key)
                    if not response.kvs or response.kvs[0].create_revision != self._my_rev:
                        self._report(f"key {queue.key.decode()} is gone")
                        return
                    start = response.header.revision + 1
                async with queue.client.watch_events(
                    queue.key, start_revision=start, deletes_only=True
                ) as events:
                    self.watching.set()
                    async for _ in events:
                        self._report(f"key {queue.key.decode()} was deleted (lease revoked or key removed)")
                        return
            except Compacted:
                start = None
            except EtcdUnavailable as exc:
                log.debug("guard on %s: %s; retrying", queue.key.decode(), exc)
                await asyncio.sleep(_RETRY_DELAY)
            except EtcdError as exc:
                # Not allowed to watch the own key any more: nothing guards the hold, so count it lost.
                self._report(f"key {queue.key.decode()} can no longer be watched: {exc}")
                return


async def first_of(main: Awaitable[Any], *losses: Awaitable[str], lost: type[Exception] = LockLost) -> Any:
    """Await ``main`` unless one of ``losses`` (awaitables returning a reason) completes first.

    A loss cancels ``main`` and raises ``lost(reason)``.
    """
    index, result = await race(main, *losses)
    if index:
        raise lost(result)
    return result
