"""Semaphore (N permits) and Mutex (one permit) on etcd, compatible with ``etcdctl lock``.

Both are a :class:`~etcdlock.etcd.waiter.Waiter` with a timeout. Differences from etcd's Go
``concurrency.Mutex``, all on the side of safety:

- release is fenced (deletes the key only if its create revision is still the fencing token);
- a waiter also stops when its own key or its session disappears, not only after its predecessor goes;
- etcd outages and elections while waiting are waited out, within the timeout;
- a timed-out, cancelled or failed acquire removes its key (retrying through outages), so no orphan waiter
  blocks the queue;
- try-lock (``timeout=0``) on a mutex never creates a key when someone else is there;
- loss of a held lock is observable (``wait_lost()``), from the session's deadline or the key's deletion;
- one session cannot hold the same name twice (both would share one key and both "hold" it).
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

from etcdlock.etcd.errors import EtcdError, EtcdUnavailable, LockTimeout, NotHeld, SessionLost
from etcdlock.etcd.keys import Contender, holder_value, read_contenders
from etcdlock.etcd.position import OnQueue
from etcdlock.etcd.session import Session
from etcdlock.etcd.waiter import GIVE_UP_GRACE, Waiter

log = logging.getLogger(__name__)


class Semaphore:
    """Up to ``permits`` holders of NAME at once, served in arrival order.

    ``async with Semaphore(session, "jobs", permits=3, timeout=30) as sem:`` raises :class:`LockTimeout`
    instead of entering the block when no permit came in time. Every participant must use the same
    ``permits``; with 1 this is exactly etcd's mutex.
    """

    def __init__(
        self,
        session: Session,
        name: str,
        permits: int = 1,
        *,
        holder: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self._waiter = Waiter(session, name, permits)
        self.session = session
        self.name = name
        self.permits = permits
        self.holder = holder
        self.timeout = timeout
        self._held = False

    @property
    def key(self) -> str:
        """This session's contender key for NAME."""
        return self._waiter.key

    @property
    def token(self) -> int:
        """The fencing token: the create revision of the own key, strictly increasing across holders."""
        if not self._held or self._waiter.token is None:
            raise NotHeld(f"{self.name} is not held")
        return self._waiter.token

    @property
    def is_held(self) -> bool:
        return self._held and self._waiter.is_held

    @property
    def is_lost(self) -> bool:
        return self._waiter.is_lost

    @property
    def lost_reason(self) -> str | None:
        return self._waiter.lost_reason

    async def wait_lost(self) -> str:
        """Wait until the hold is lost (its key deleted or its session lost); returns why."""
        return await self._waiter.wait_lost()

    async def acquire(self, timeout: float | None = None, *, on_queue: OnQueue | None = None) -> Semaphore:
        """Wait for a permit. ``timeout=0`` tries once; ``None`` waits for ever.

        ``on_queue`` is told where this acquire stands while it waits (a
        :class:`~etcdlock.etcd.position.QueuePosition`: how many keys are ahead, who holds the permits),
        whenever that changes; it is not called when a permit is had at once.

        Raises :class:`LockTimeout` (with the current holders); :class:`LockLost` or :class:`SessionLost`
        if the own key or the session vanished while waiting; :class:`EtcdDenied` or
        :class:`EtcdRefused` if etcd refuses. etcd being unavailable is waited out within the timeout
        (a try-once acquire raises :class:`EtcdUnavailable` instead). In every failure case the own key is
        removed before this returns (or, if etcd cannot be reached, by a background retry that ends when
        the key is gone or the lease has died).
        """
        if self._held:
            raise RuntimeError(f"{self.name} is already held by this object")
        self.session.check()
        self.session.claim(self.name)
        value = holder_value(self.holder, self.permits)
        try:
            if timeout == 0:
                await self._try_once(value)
            elif timeout is None:
                # No timeout, no timer: an uncontended acquire is two round trips.
                await self._take(value, on_queue)
            else:
                async with asyncio.timeout(timeout):
                    await self._take(value, on_queue)
        except TimeoutError:
            await self._abandon()
            seen = await self._holders_quietly()
            raise LockTimeout.naming(f"{self.name} not acquired within {timeout:g}s", seen) from None
        except BaseException:
            await self._abandon()
            raise
        self._held = True
        log.debug("%s: acquired %s, fencing token %d", self.key, self.name, self._waiter.token)
        return self

    async def _take(self, value: bytes, on_queue: OnQueue | None) -> None:
        if not await self._waiter.join(value):
            await self._waiter.wait_turn(on_queue)
            granted = holder_value(self.holder, self.permits)
            self.session.spawn(self._mark_granted(granted), name=f"mark-{self.key}")

    async def _try_once(self, value: bytes) -> None:
        if self.permits == 1:
            holders = await self._waiter.try_take(value)
            if holders:
                raise LockTimeout(f"{self.name} is held by {_names(holders)}", holders)
            return
        if not await self._waiter.join(value, persist=False):
            _, contenders = await read_contenders(self.session.client, self.name)
            front = tuple(contenders[: self.permits])
            raise LockTimeout(f"{self.name} is held by {_names(front)}", front)

    async def _mark_granted(self, value: bytes) -> None:
        """Rewrite the value once granted after waiting, so ``acquired`` tells the truth (best effort)."""
        try:
            await self._waiter.rewrite(value)
        except EtcdError as exc:
            log.debug("%s: acquired time not rewritten: %s", self.key, exc)

    async def _abandon(self) -> None:
        try:
            await self._waiter.abandon()
        finally:
            self.session.unclaim(self.name)

    async def _holders_quietly(self) -> tuple[Contender, ...] | None:
        """The current holders, or None if etcd did not answer (not "nobody": someone may hold it)."""
        try:
            async with asyncio.timeout(GIVE_UP_GRACE):
                _, contenders = await read_contenders(self.session.client, self.name)
        except (EtcdError, TimeoutError):
            return None
        return tuple(contenders[: self.permits])

    async def release(self) -> bool:
        """Give the permit back. Fenced: deletes the key only if it is still this holder's.

        Returns False if the key was already gone (the lock had been lost). If etcd does not confirm the
        removal within the request timeout, it goes on in the background and :class:`EtcdUnavailable` is
        raised.
        """
        if not self._held:
            raise NotHeld(f"{self.name} is not held")
        self._held = False
        try:
            # One request, which the client retries within its request timeout: no timer of our own.
            deleted = await self._waiter.give_back(persist=False)
        except EtcdUnavailable:
            if not self.session.is_lost:
                self._give_back_in_background()
                bound = self.session.client.config.request_timeout
                raise EtcdUnavailable(
                    f"release of {self.name} not confirmed within {bound}s; retrying"
                ) from None
            deleted = False
        except asyncio.CancelledError:
            self._give_back_in_background()
            raise
        except BaseException:
            self.session.unclaim(self.name)
            raise
        self.session.unclaim(self.name)
        if deleted:
            log.debug("%s: released %s", self.key, self.name)
        else:
            log.warning("gave back %s, but its key was already gone: the hold had been lost", self.name)
        return deleted

    def _give_back_in_background(self) -> None:
        """The fenced delete of a release that was not confirmed or was cancelled goes on until it lands
        (the name stays claimed in this session meanwhile)."""
        self.session.spawn(self._give_back(), name=f"release-{self.key}")

    async def _give_back(self) -> bool:
        try:
            deleted: bool = await self._waiter.give_back()
            return deleted
        except SessionLost:
            return False
        finally:
            self.session.unclaim(self.name)

    async def __aenter__(self) -> Semaphore:
        return await self.acquire(self.timeout)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._held:
            return
        try:
            await self.release()
        except EtcdUnavailable:
            if exc is None:
                raise
            log.warning("could not release %s after an error: etcd unavailable", self.name)


class Mutex(Semaphore):
    """One holder of NAME at a time; excludes ``etcdctl lock NAME`` and etcd's Go ``concurrency.Mutex``."""

    def __init__(
        self, session: Session, name: str, *, holder: str | None = None, timeout: float | None = None
    ) -> None:
        super().__init__(session, name, 1, holder=holder, timeout=timeout)


def _names(holders: tuple[Contender, ...]) -> str:
    return ", ".join(h.describe() for h in holders) or "nobody"
