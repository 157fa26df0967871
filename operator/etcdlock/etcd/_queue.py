"""The contender queue under ``NAME/`` that waiters, mutexes, semaphores and elections share (internal:
the engine's public way in is :class:`~etcdlock.etcd.waiter.Waiter` and what is built on it).

Each contender owns one key bound to its session's lease; the queue order is the keys' create revision.
A contender holds one of N permits when fewer than N keys under the prefix have a lower create revision.

Waiting never polls and never wakes everyone: the waiters of a client wait on the client's one watch of
the queue (:mod:`etcdlock.etcd._ranks`), which wakes only the waiter whose turn has come, and ends the wait
of one whose own key is gone (the lease was lost, or the key deleted by hand).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable
from typing import Any, NamedTuple

from etcdlock.aio import race
from etcdlock.etcd import keys
from etcdlock.etcd._ranks import Listener, Ranks
from etcdlock.etcd.client import EtcdClient
from etcdlock.etcd.errors import Compacted, EtcdError, EtcdUnavailable, LockLost
from etcdlock.etcd.requests import create_revision_is, delete_op, put_op, range_is_empty, range_op
from etcdlock.etcd.session import Session

log = logging.getLogger(__name__)

_RETRY_DELAY = 0.2


class Entry(NamedTuple):
    """Where a contender stands after the enqueue transaction."""

    my_rev: int
    granted: bool
    existing_value: bytes | None


class Queue:
    """The keys under one name where ``permits`` hold at once, seen from one session's contender key."""

    def __init__(self, session: Session, name: str, permits: int) -> None:
        self.session = session
        self.client: EtcdClient = session.client
        self.name = name
        self.permits = permits
        self.prefix = keys.prefix(name)
        self.end = keys.range_end(self.prefix)
        self.key = keys.contender_key(name, session.lease_id)
        # The parts of the enqueue and remove transactions that never change, built once (every acquire and
        # release runs them).
        self._absent = [create_revision_is(self.key, 0)]
        self._count = range_op(self.prefix, self.end, count_only=True)
        self._mine = [range_op(self.key)]
        self._delete = [delete_op(self.key)]

    def write(
        self, compare: list[Any], success: list[Any], failure: list[Any] | None = None
    ) -> Awaitable[Any]:
        """A transaction that writes the own key: under the session's fence, if it has one."""
        fence = self.session.fence
        if fence is None:
            return self.client.txn(compare, success, failure or [])
        return self.client.guarded_txn(fence.compares(), compare, success, failure or [])

    async def enqueue(self, value: bytes) -> Entry:
        """One transaction: create the own key unless it exists, and see whether it holds a permit.

        A key just created is the newest, so every other key under the prefix is ahead of it: it holds a
        permit when the prefix holds at most ``permits`` keys. A count costs etcd a walk of its in-memory
        index; a range by create revision would read and sort every key's value (etcd applies ``limit``
        only after sorting). An existing own key (same lease) keeps its place in the queue, as in etcd's
        Go client: only then are the keys ahead of it read, in a second request.
        """
        put = put_op(self.key, value, self.session.lease_id)
        response = await self.write(self._absent, [put, self._count], self._mine)
        if response.succeeded:
            granted = response.responses[1].response_range.count <= self.permits
            return Entry(response.header.revision, granted, None)
        mine = response.responses[0].response_range.kvs
        if not mine:
            raise LockLost(f"own key {self.key.decode()} vanished during acquire")
        my_rev = mine[0].create_revision
        _, ahead = await self._read_ahead(my_rev, limit=self.permits)
        return Entry(my_rev, len(ahead) < self.permits, bytes(mine[0].value))

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

    async def wait_for_turn(self, my_rev: int, listener: Listener | None = None) -> int:
        """Wait until fewer than ``permits`` keys are ahead, on the client's shared ranks of the queue (see
        :mod:`etcdlock.etcd._ranks`); returns the revision the grant was seen at. ``listener`` hears of
        every change ahead.

        Raises :class:`LockLost` if the own key disappears (:class:`SessionLost` if the session was lost
        meanwhile). etcd outages and compaction are waited out.
        """
        ranks = Ranks.of(self.client, self.prefix, self.end)
        try:
            return await ranks.wait_granted(self.key, my_rev, self.permits, listener)
        except LockLost:
            self.session.check()
            raise

    async def _read_ahead(self, my_rev: int, limit: int) -> tuple[int, list[Any]]:
        """Read the keys ahead (newest first, up to ``limit``) and re-check the own key, both at one revision.

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
            raise LockLost(f"own key {self.key.decode()} vanished during acquire")
        return revision, list(ahead.kvs)

    async def remove(self, my_rev: int | None) -> bool:
        """Delete the own key, fenced on its create revision when known; True if it was deleted."""
        compare = [] if my_rev is None else [create_revision_is(self.key, my_rev)]
        response = await self.write(compare, self._delete)
        return bool(response.succeeded and response.responses[0].response_delete_range.deleted)


class KeyGuard:
    """Watches one contender key and reports when it is deleted (lease expiry, revoke, or by hand).

    The watch starts from the key's create revision + 1, so starting it late loses nothing: a ``fresh``
    hold's guard starts :data:`FRESH_FOR` seconds later (see :class:`FreshGuards`), so very short holds
    finish without setting up a watch at all.
    """

    def __init__(self, queue: Queue, my_rev: int, *, fresh: bool = False) -> None:
        self._queue = queue
        self._my_rev = my_rev
        # Both events are made when first needed: most holds are given back before anyone waits on them.
        self._gone: asyncio.Event | None = None
        self._watching: asyncio.Event | None = None
        self.reason: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._cancelled = False
        if fresh:
            FreshGuards.of(queue.client).add(self)
        else:
            self.start()

    @property
    def watching(self) -> asyncio.Event:
        """Set once the watch exists (its stream's tasks too): see Waiter.watching."""
        if self._watching is None:
            self._watching = asyncio.Event()
        return self._watching

    @property
    def running(self) -> bool:
        """A watch is set up or being torn down: :meth:`stop` has something to wait for."""
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start watching, unless cancelled meanwhile."""
        if not self._cancelled and not self._queue.session.is_lost:
            self._task = self._queue.session.spawn(self._run(), name=f"guard-{self._queue.key.decode()}")

    @property
    def is_gone(self) -> bool:
        return self.reason is not None

    async def wait_gone(self) -> str:
        if self.reason is None:
            if self._gone is None:
                self._gone = asyncio.Event()
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
        self._cancelled = True
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
        if self._gone is not None:
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


class FreshGuards:
    """The guards of a client's fresh holds, each started once it is :data:`FRESH_FOR` seconds old, all on
    one timer that fires at most every :data:`_FRESH_TICK`: a timer each cost a short hold more than the
    rest of its bookkeeping (the event loop keeps its timers in a heap, with every session's keepalive
    sleep in it, and compares them in Python)."""

    def __init__(self) -> None:
        self._due: deque[tuple[float, KeyGuard]] = deque()  # in the order added, so by when they are due
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, client: EtcdClient) -> FreshGuards:
        if client.fresh_guards is None:
            client.fresh_guards = cls()
        return client.fresh_guards

    def add(self, guard: KeyGuard) -> None:
        loop = asyncio.get_running_loop()
        self._due.append((loop.time() + FRESH_FOR, guard))
        if self._timer is None:
            self._timer = loop.call_at(self._due[0][0], self._start_due)

    def _start_due(self) -> None:
        """Start the guards that are due (a cancelled one does nothing) and wait for the next."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._due and self._due[0][0] <= now:
            self._due.popleft()[1].start()
        if self._due:
            self._timer = loop.call_at(max(self._due[0][0], now + _FRESH_TICK), self._start_due)
        else:
            self._timer = None


# A fresh holder watches its own key only after this delay (from its create revision, so nothing is missed):
# short critical sections then cost no watch at all. The guards due are started together, up to a tick late.
FRESH_FOR = 0.1
_FRESH_TICK = 0.02


async def first_of(main: Awaitable[Any], *losses: Awaitable[str], lost: type[Exception] = LockLost) -> Any:
    """Await ``main`` unless one of ``losses`` (awaitables returning a reason) completes first.

    A loss cancels ``main`` and raises ``lost(reason)``.
    """
    index, result = await race(main, *losses)
    if index:
        raise lost(result)
    return result
