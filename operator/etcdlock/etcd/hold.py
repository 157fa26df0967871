"""Hold: one session's place in NAME's queue, shared by :class:`Semaphore` and :class:`Election`.

It owns the contender key once written: the fencing token once granted, the guard that reports loss,
the fenced give-back, and the clean-up after a failed acquire or campaign (never an orphan key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from etcdlock.etcd.errors import EtcdUnavailable, NotHeld
from etcdlock.etcd.queue import KeyGuard, Queue
from etcdlock.etcd.session import Session

log = logging.getLogger(__name__)

# How long a failed acquire waits for its key's removal before it returns: plenty for a healthy etcd, and
# short enough that ``timeout=S`` gives up after about S seconds even without quorum, when every request
# takes the full request timeout (the removal then goes on in the background).
GIVE_UP_GRACE = 1.0


class Hold:
    """The own key of a session under NAME, and whether it is (still) granted."""

    def __init__(self, session: Session, name: str) -> None:
        self.session = session
        self.name = name
        self._queue = Queue(session, name)
        self._rev: int | None = None
        self._guard: KeyGuard | None = None

    @property
    def key(self) -> str:
        """This session's contender key for NAME."""
        return self._queue.key.decode()

    @property
    def token(self) -> int:
        """The fencing token: the create revision of the own key, strictly increasing across holders."""
        if self._rev is None:
            raise NotHeld(f"{self.name} is not held")
        return self._rev

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

    def _granted(self, my_rev: int, guard: KeyGuard) -> None:
        self._rev = my_rev
        self._guard = guard

    async def _abandon(self, my_rev: int | None) -> None:
        """Remove the own key after a failed acquire and give the name back to the session.

        Waits up to :data:`GIVE_UP_GRACE` for the removal; if etcd does not answer it goes on in the
        background until the key is gone or the lease has died.
        """
        task = self.session.spawn(self._remove_then_unclaim(my_rev), name=f"abandon-{self.key}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), GIVE_UP_GRACE)

    async def _remove_then_unclaim(self, my_rev: int | None) -> None:
        try:
            await self._queue.remove_until_done(my_rev)
        finally:
            self.session.unclaim(self.name)

    async def _give_back(self) -> bool:
        """Fenced delete of the granted key; False if it was already gone (the hold had been lost).

        If etcd cannot be reached the removal goes on in the background and :class:`EtcdUnavailable`
        is raised.
        """
        if self._rev is None or self._guard is None:
            raise NotHeld(f"{self.name} is not held")
        my_rev, guard = self._rev, self._guard
        self._rev = self._guard = None
        # Cancel the guard without waiting for its watch to be torn down (several event-loop turns): the
        # delete goes out at once, so the next holder is not kept waiting. A cancelled guard never reports.
        guard.cancel()
        try:
            deleted = await self._queue.remove(my_rev)
        except EtcdUnavailable:
            self.session.spawn(self._remove_then_unclaim(my_rev), name=f"give-back-{self.key}")
            raise
        finally:
            await guard.stop()
        self.session.unclaim(self.name)
        if not deleted:
            log.warning("gave back %s, but its key was already gone: the hold had been lost", self.name)
        return deleted
