"""Waiter: one session's place in NAME's queue. The engine's one acquire: mutexes, semaphores and elections
are built on it, and so is the operator's pod flow.

A waiter writes its key once, bound to its session's lease, and from then on keeps it: the key goes only
by :meth:`Waiter.give_back` (a delete fenced on the token), :meth:`Waiter.abandon` (after a failed
acquire), or with the lease. A session that adopts an existing lease finds the key that lease already has
under NAME, with its place in the queue (:attr:`Waiter.found` is then its value).

Failure rules, the same for every method:

- a transient error (:class:`EtcdUnavailable`: no connection, no leader, a timeout) is waited out, for as
  long as the session lives; it never removes the key;
- :class:`Fenced` ends the call having written nothing: the session's fence (an operator replica's
  leadership) no longer holds, so the caller was deposed;
- :class:`EtcdDenied` and :class:`EtcdRefused` end the call: waiting does not change them;
- the session being lost ends the call with :class:`SessionLost`; the key vanishing (deleted by hand,
  its lease revoked) ends a wait or a hold with :class:`LockLost`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from etcdlock.etcd._queue import KeyGuard, Queue, first_of
from etcdlock.etcd.errors import EtcdUnavailable, Fenced, LockLost, NotHeld, SessionLost
from etcdlock.etcd.keys import Contender
from etcdlock.etcd.position import OnQueue, PositionReporter
from etcdlock.etcd.requests import create_revision_is, put_op
from etcdlock.etcd.session import Session

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

RETRY_PAUSE = 0.2
# The count of keys read ahead of a waiter is an int64 in etcd's requests.
MAX_PERMITS = 2**63 - 1
# How long a failed acquire waits for its key's removal before it returns: plenty for a healthy etcd, and
# short enough that ``timeout=S`` gives up after about S seconds even without quorum (the removal then
# goes on in the background).
GIVE_UP_GRACE = 1.0


class Waiter:
    """The key of ``session`` under NAME, in a queue where ``permits`` keys hold at once."""

    def __init__(self, session: Session, name: str, permits: int = 1) -> None:
        if not 1 <= permits <= MAX_PERMITS:
            raise ValueError(f"permits must be from 1 to {MAX_PERMITS} (etcd's int64 limit), not {permits}")
        self.session = session
        self.name = name
        self.permits = permits
        self._queue = Queue(session, name, permits)
        self._token: int | None = None
        self._guard: KeyGuard | None = None
        # Whether a key may have been written (an attempt was made and not known to have failed).
        self._may_exist = False
        self.found: bytes | None = None

    @property
    def key(self) -> str:
        """The session's contender key for NAME: ``NAME/<lease id in hex>``."""
        return self._queue.key.decode(errors="replace")

    @property
    def key_bytes(self) -> bytes:
        return self._queue.key

    @property
    def token(self) -> int | None:
        """The own key's create revision once joined: the fencing token once it holds."""
        return self._token

    @property
    def is_held(self) -> bool:
        return self._guard is not None and not self._guard.is_lost

    @property
    def is_lost(self) -> bool:
        return self._guard is not None and self._guard.is_lost

    @property
    def lost_reason(self) -> str | None:
        return self._guard.lost_reason if self._guard is not None else None

    async def wait_lost(self) -> str:
        """Wait until the hold is lost (its key deleted or its session lost); returns why."""
        if self._guard is None:
            raise NotHeld(f"{self.name} is not held")
        return await self._guard.wait_lost()

    async def watching(self) -> None:
        """Wait until the held key is watched (its loss will be seen as it happens). The watch is set up
        in the background; a caller about to start work whose end cancels every task started meanwhile
        (kopf does) waits for it first."""
        if self._guard is None:
            raise NotHeld(f"{self.name} is not held")
        await self._guard.watching.wait()

    async def join(self, value: bytes, *, persist: bool = True) -> bool:
        """Write the own key with ``value`` unless it is there already; True if it holds a permit now.

        ``persist=False`` gives up on the first transient error (a try-once acquire) instead of waiting it
        out.
        """
        self.session.check()
        self._may_exist = True
        if persist:
            entry = await self._persist(self._queue.enqueue, value)
        else:
            entry = await self._queue.enqueue(value)
        self._token, self.found = entry.my_rev, entry.existing_value
        log.debug(
            "%s: key written, create revision %d, %s",
            self.key,
            entry.my_rev,
            "holds a permit" if entry.granted else "queued",
        )
        if entry.granted:
            self._hold(KeyGuard(self._queue, entry.my_rev, fresh=True))
        return entry.granted

    async def try_take(self, value: bytes) -> tuple[Contender, ...]:
        """One permit only, and only if nobody is queued (no key is ever left behind otherwise): () when
        taken, else who holds it. Tries once."""
        self.session.check()
        self._may_exist = True
        my_rev, holders = await self._queue.try_take_alone(value)
        self._may_exist = my_rev is not None
        if my_rev is not None:
            self._token = my_rev
            self._hold(KeyGuard(self._queue, my_rev, fresh=True))
        return holders

    async def wait_turn(self, on_queue: OnQueue | None = None) -> None:
        """Wait until the own key holds a permit (then it is guarded: see :meth:`wait_lost`).

        ``on_queue`` is called with a :class:`~etcdlock.etcd.position.QueuePosition` whenever the keys
        ahead or the holders change while this waits (first when the wait starts), from the watch the wait
        keeps anyway.
        """
        token = self._joined()
        if self._guard is not None:
            return
        guard = KeyGuard(self._queue, token)
        reporter = None
        if on_queue is not None:
            reporter = PositionReporter(self.session.client, self.name, self.key, self.permits, on_queue)
            reporter.start()
        log.debug("%s: waiting for a permit of %d", self.key, self.permits)
        try:
            await first_of(
                self._queue.wait_for_turn(token, reporter), self.session.wait_lost(), guard.wait_gone()
            )
        except LockLost:
            await guard.stop()
            self.session.check()
            raise
        except BaseException:
            await guard.stop()
            raise
        finally:
            if reporter is not None:
                await reporter.stop()
        self._hold(guard)

    async def still_holds(self) -> bool:
        """Whether the own key is still there with its token, in one read made under the session's fence
        (raises :class:`Fenced` if that no longer holds). A granted key stays granted while it exists."""
        token = self._joined()
        response = await self._persist(self._queue.write, [create_revision_is(self._queue.key, token)], [])
        return bool(response.succeeded)

    async def rewrite(self, value: bytes) -> bool:
        """Replace the own key's value, fenced on the token; False if the key is gone."""
        token = self._joined()
        compare = [create_revision_is(self._queue.key, token)]
        put = [put_op(self._queue.key, value, self.session.lease_id)]
        response = await self._persist(self._queue.write, compare, put)
        return bool(response.succeeded)

    async def give_back(self, *, persist: bool = True) -> bool:
        """Delete the own key, fenced on its token (it must still be this waiter's), retrying until it
        lands. True if deleted here; False if it was gone already (the place or the hold had been lost).

        ``persist=False`` sends one request (the client retries it within its request timeout) and raises
        :class:`EtcdUnavailable` if that does not land: the key is then still this waiter's to give back.
        """
        token = self._joined()
        guard, self._guard = self._guard, None
        if guard is not None:
            # Cancelled without waiting for its watch to be torn down (several event-loop turns): the delete
            # goes out at once, so the next holder is not kept waiting. A cancelled guard never reports.
            guard.cancel()
        try:
            if persist:
                deleted = await self._persist(self._queue.remove, token)
            else:
                deleted = await self._queue.remove(token)
        finally:
            if guard is not None and guard.running:
                await guard.stop()
        log.debug(
            "%s: fenced delete (create revision %d): %s",
            self.key,
            token,
            "deleted" if deleted else "already gone",
        )
        self._token = None
        self._may_exist = False
        return deleted

    async def abandon(self) -> None:
        """Remove the own key after a failed or cancelled acquire, so no orphan waits at the head of the
        queue. Waits up to :data:`GIVE_UP_GRACE`; if etcd does not answer, the removal goes on in the
        background until it lands or the session is lost (its lease then takes the key)."""
        guard, self._guard = self._guard, None
        if guard is not None:
            await guard.stop()
        token, self._token = self._token, None
        if not self._may_exist:
            return
        self._may_exist = False
        task = self.session.spawn(self._remove_quietly(token), name=f"abandon-{self.key}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(GIVE_UP_GRACE):
                await asyncio.shield(task)

    async def _remove_quietly(self, token: int | None) -> None:
        with contextlib.suppress(SessionLost, Fenced):
            await self._persist(self._queue.remove, token)

    def _hold(self, guard: KeyGuard) -> None:
        self._guard = guard

    def _joined(self) -> int:
        if self._token is None:
            raise NotHeld(f"no key of this session is queued under {self.name}")
        return self._token

    async def _persist(self, call: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """``call(*args)``, again after every transient error, while the session lives."""
        while True:
            try:
                return await call(*args, **kwargs)
            except EtcdUnavailable as exc:
                self.session.check()
                log.debug("%s: %s; trying again", self.key, exc)
                await asyncio.sleep(RETRY_PAUSE)
