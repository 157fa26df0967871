"""Semaphore (N permits) and Mutex (one permit) on etcd, compatible with ``etcdctl lock``.

Differences from etcd's Go ``concurrency.Mutex``, all on the side of safety:

- release is fenced (deletes the key only if its create revision is still the fencing token);
- a waiter also stops when its own key or its session disappears, not only after its predecessor goes;
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

from etcdlock.etcd.errors import EtcdUnavailable, LockTimeout
from etcdlock.etcd.hold import GIVE_UP_GRACE, Hold
from etcdlock.etcd.keys import Contender, HolderInfo
from etcdlock.etcd.queue import KeyGuard, first_of, read_contenders
from etcdlock.etcd.session import Session

log = logging.getLogger(__name__)

# A fresh holder watches its own key only after this delay (from its create revision, so nothing is missed):
# short critical sections then cost no watch at all.
_GUARD_DELAY = 0.1


class Semaphore(Hold):
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
        if permits < 1:
            raise ValueError("permits must be at least 1")
        super().__init__(session, name)
        self.permits = permits
        self.holder = holder
        self.timeout = timeout

    @property
    def is_held(self) -> bool:
        return self._rev is not None and not self.is_lost

    async def acquire(self, timeout: float | None = None) -> Semaphore:
        """Wait for a permit. ``timeout=0`` tries once; ``None`` waits for ever.

        Raises :class:`LockTimeout` (with the current holders), :class:`LockLost` or :class:`SessionLost`
        if the own key or session vanished while waiting, :class:`EtcdUnavailable` if etcd failed.
        In every failure case the own key is removed before this returns (or, if etcd cannot be reached,
        by a background retry that ends when the key is gone or the lease has died).
        """
        if self._rev is not None:
            raise RuntimeError(f"{self.name} is already held by this object")
        self.session.check()
        self.session.claim(self.name)
        value = HolderInfo.for_this_process(self.holder, self.permits).encode()
        my_rev: int | None = None
        may_exist = False
        try:
            async with asyncio.timeout(timeout or None):
                may_exist = True
                if timeout == 0 and self.permits == 1:
                    my_rev, holders = await self._queue.try_take_alone(value)
                    if my_rev is None:
                        may_exist = False
                        raise LockTimeout(f"{self.name} is held by {_names(holders)}", holders)
                    self._granted(my_rev, KeyGuard(self._queue, my_rev, _GUARD_DELAY))
                    return self
                entry = await self._queue.enqueue(value, self.permits)
                my_rev = entry.my_rev
                if entry.granted:
                    self._granted(my_rev, KeyGuard(self._queue, my_rev, _GUARD_DELAY))
                    return self
                if timeout == 0:
                    raise LockTimeout(f"{self.name} is held by {_names(entry.front)}", entry.front)
                guard = KeyGuard(self._queue, my_rev)
                try:
                    await first_of(
                        self._queue.wait_for_turn(my_rev, self.permits),
                        self.session.wait_lost(),
                        guard.wait_gone(),
                    )
                except BaseException:
                    await guard.stop()
                    raise
            self._granted(my_rev, guard)
            granted_value = HolderInfo.for_this_process(self.holder, self.permits).encode()
            self.session.spawn(self._queue.mark_granted(my_rev, granted_value), name=f"mark-{self.key}")
            return self
        except TimeoutError:
            await self._abandon(my_rev)
            seen = await self._holders_quietly()
            where = "" if my_rev is not None else " (etcd did not answer)"
            who = "holders unknown" if seen is None else f"held by {_names(seen)}"
            raise LockTimeout(
                f"{self.name} not acquired within {timeout}s{where}; {who}", seen or ()
            ) from None
        except BaseException:
            if self._rev is None:
                if may_exist:
                    await self._abandon(my_rev)
                else:
                    self.session.unclaim(self.name)
            raise

    async def _holders_quietly(self) -> tuple[Contender, ...] | None:
        """The current holders, or None if etcd did not answer (not "nobody": someone may hold it)."""
        try:
            async with asyncio.timeout(GIVE_UP_GRACE):
                _, contenders = await read_contenders(self.session.client, self.name)
        except (EtcdUnavailable, TimeoutError):
            return None
        return tuple(contenders[: self.permits])

    async def release(self) -> bool:
        """Give the permit back. Fenced: deletes the key only if it is still this holder's.

        Returns False if the key was already gone (the lock had been lost). If etcd cannot be reached the
        removal goes on in the background and :class:`EtcdUnavailable` is raised.
        """
        return await self._give_back()

    async def __aenter__(self) -> Semaphore:
        return await self.acquire(self.timeout)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._rev is None:
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
