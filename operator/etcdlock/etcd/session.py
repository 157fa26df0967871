"""Session: one etcd lease, kept alive every TTL/3, whose loss is detected by a local deadline.

etcd's Go client closes ``Session.Done()`` only when the keepalive stream ends; older clients kept retrying
for ever while etcd was unreachable (etcd #5571, #6922). Here the session is *lost* as soon as no renewal
has been acknowledged for a whole TTL, counted from the moment the last acknowledged request was sent, so
the local view always expires before the server's. On loss the lease is revoked in the background (best
effort) so that the keys of a holder that gave up do not block others until the server expires them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from etcdlock.etcd.client import EtcdClient
from etcdlock.etcd.errors import AlreadyAcquiring, EtcdError, EtcdUnavailable, SessionLost
from etcdlock.etcd.fence import Fence

log = logging.getLogger(__name__)

DEFAULT_TTL = 10
# etcd refuses longer leases ("too large lease TTL").
MAX_LEASE_TTL = 9_000_000_000
# A renewal is sent every TTL/3; one not answered within half the time left before the local deadline (at
# least this, or TTL/3 if shorter) is sent again on a new stream (on another member, if the client's
# heartbeat has found this one hung).
ANSWER_WITHIN = 1.0
_RETRY_DELAY = 0.2


class Session:
    """A lease that this process keeps alive; locks and elections bind their keys to it.

    Use as ``async with Session(client, ttl=10) as session:``. ``close()`` revokes the lease (so every key
    under it is deleted at once); ``orphan()`` stops renewing without revoking (the lease then expires on
    the server after its TTL, or another process adopts it by passing ``lease_id``). With a ``fence``,
    every key write of the locks and elections under the session is checked against it by etcd (lease
    grants, renewals and revocations cannot be: see :mod:`etcdlock.etcd.fence`).
    """

    def __init__(
        self,
        client: EtcdClient,
        ttl: int = DEFAULT_TTL,
        *,
        lease_id: int | None = None,
        fence: Fence | None = None,
    ) -> None:
        if not 1 <= ttl <= MAX_LEASE_TTL:
            raise ValueError(f"session TTL must be from 1 to {MAX_LEASE_TTL} seconds, not {ttl}")
        self.client = client
        self.ttl = ttl
        self.fence = fence
        self._lease_id = lease_id
        self._deadline = 0.0
        self._lost = asyncio.Event()
        self._lost_reason: str | None = None
        # Set (and replaced) whenever the keepalive moves the deadline or the session is lost: see assured.
        self._verdict = asyncio.Event()
        self._keepalive: asyncio.Task[None] | None = None
        self._claims: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False

    @property
    def lease_id(self) -> int:
        if self._lease_id is None:
            raise RuntimeError("session not started")
        return self._lease_id

    @property
    def deadline(self) -> float:
        """Event-loop time (``loop.time()``) until which the lease is known to be alive."""
        return self._deadline

    @property
    def is_lost(self) -> bool:
        return self._lost.is_set()

    @property
    def lost_reason(self) -> str | None:
        return self._lost_reason

    async def wait_lost(self) -> str:
        """Wait until the session is lost or closed; returns why."""
        await self._lost.wait()
        return self._lost_reason or "session closed"

    def check(self) -> None:
        """Raise :class:`SessionLost` if the session can no longer protect keys."""
        if self._lost.is_set():
            raise SessionLost(self._lost_reason or "session closed")

    async def assured(self) -> None:
        """Return once the lease is known to be alive now (its local deadline ahead); :class:`SessionLost`
        once it is lost.

        Past the deadline only the keepalive task can tell which it is: a renewal answered meanwhile, or the
        loss. That is the state of a process resumed after a pause (SIGSTOP, a frozen VM), which runs what it
        had queued before the keepalive task runs, and of an event loop that lagged: an act that must not
        outlive the lease (a leader's write elsewhere than etcd) waits here for the keepalive's verdict.
        """
        if self._keepalive is None:
            raise RuntimeError("session not started")
        loop = asyncio.get_running_loop()
        while True:
            self.check()
            if loop.time() < self._deadline:
                return
            await self._verdict.wait()

    async def start(self) -> Session:
        """Grant the lease (or adopt ``lease_id``) and start renewing it."""
        loop = asyncio.get_running_loop()
        sent = loop.time()
        if self._lease_id is None:
            self._lease_id, granted = await self.client.grant(self.ttl)
            log.debug("session: lease %x granted, TTL %ds", self._lease_id, granted)
        else:
            granted, ttl = await self.client.lease_ttls(self._lease_id)
            if granted <= 0:
                raise SessionLost(f"lease {self._lease_id:x} no longer exists")
            # Renewals follow the lease's own TTL (it was granted by another process, maybe another way).
            self.ttl = ttl or self.ttl
            log.debug("session: lease %x adopted, %ds left of TTL %ds", self._lease_id, granted, self.ttl)
        self._deadline = sent + granted
        self._keepalive = asyncio.create_task(self._keep_alive(), name=f"keepalive-{self._lease_id:x}")
        return self

    async def __aenter__(self) -> Session:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop renewing and revoke the lease: every key bound to it is deleted by etcd."""
        if self._closed:
            return
        self._closed = True
        await self._stop_tasks()
        if self._lease_id is not None and not self._lost.is_set():
            self._mark_lost("session closed")
            try:
                async with asyncio.timeout(self.client.config.request_timeout):
                    await self.client.revoke(self._lease_id)
                log.debug("session: lease %x revoked", self._lease_id)
            except (EtcdError, TimeoutError) as exc:
                log.warning(
                    "could not revoke lease %x (expires within %ss): %s", self._lease_id, self.ttl, exc
                )
        self._mark_lost("session closed")

    async def orphan(self) -> None:
        """Stop renewing without revoking: the lease lives on until its TTL runs out or someone adopts it."""
        self._closed = True
        await self._stop_tasks()
        self._mark_lost("session orphaned")

    async def _stop_tasks(self) -> None:
        tasks = [t for t in (self._keepalive, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        # gather, not "await task" under suppress(CancelledError): that would swallow a cancellation of
        # close() itself along with the tasks' own.
        await asyncio.gather(*tasks, return_exceptions=True)

    def claim(self, name: str) -> None:
        """Reserve NAME for one holder in this session (see :class:`AlreadyAcquiring`)."""
        if name in self._claims:
            raise AlreadyAcquiring(f"this session already holds or waits for {name!r}")
        self._claims.add(name)

    def unclaim(self, name: str) -> None:
        self._claims.discard(name)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run a background task that belongs to the session (cancelled when it closes)."""
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _mark_lost(self, reason: str) -> None:
        if not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()
            self._tell_verdict()

    def _tell_verdict(self) -> None:
        verdict, self._verdict = self._verdict, asyncio.Event()
        verdict.set()

    def _lose(self, reason: str) -> None:
        """The lease can no longer be trusted: tell everyone, then revoke it so its keys go now.

        A fenced session does not revoke: its owner may have been deposed meanwhile, and the lease
        adopted by the next leader, for whom it still holds.
        """
        if self._lost.is_set():
            return
        log.warning("session %x lost: %s", self.lease_id, reason)
        self._mark_lost(reason)
        if self.fence is None:
            self.spawn(self._revoke_quietly(), name=f"revoke-{self.lease_id:x}")

    async def _revoke_quietly(self) -> None:
        with contextlib.suppress(EtcdError, TimeoutError):
            async with asyncio.timeout(self.ttl):
                await self.client.revoke(self.lease_id)

    async def _keep_alive(self) -> None:
        """Renew until the lease is gone or the deadline passes; whatever ends this loop loses the session.

        A renewal not answered in time (half the time left before the deadline, at least
        :data:`ANSWER_WITHIN`) gives up that stream; the next one goes to the client's current member, which
        its heartbeat moves off a hung or dead member within about a second: that costs a renewal or two,
        not the session.
        """
        loop = asyncio.get_running_loop()
        interval = self.ttl / 3
        reason = "keepalive stopped"
        try:
            while True:
                try:
                    async with asyncio.timeout_at(self._deadline) as watchdog:
                        await self._renew_on_stream(loop, interval, watchdog)
                    return
                except TimeoutError:
                    reason = f"no keepalive acknowledged for {self.ttl}s (etcd unreachable or without quorum)"
                    return
                except EtcdUnavailable as exc:
                    log.debug("keepalive for %x: %s", self.lease_id, exc)
                    if loop.time() + _RETRY_DELAY >= self._deadline:
                        reason = f"keepalive failed until the deadline: {exc}"
                        return
                    await asyncio.sleep(_RETRY_DELAY)
                except EtcdError as exc:
                    reason = f"keepalive refused: {exc}"
                    return
        finally:
            if not self._closed:
                self._lose(reason)

    async def _renew_on_stream(
        self, loop: asyncio.AbstractEventLoop, interval: float, watchdog: asyncio.Timeout
    ) -> None:
        """Renew over one stream until it breaks (raises) or the lease is gone (returns).

        ``watchdog`` fires at the local deadline; each acknowledged renewal moves it.
        """
        stream = await self.client.lease_stream()
        while True:
            sent = loop.time()
            # Half the time left, but never less than ANSWER_WITHIN (or TTL/3): a hung member leaves time
            # for a try on another, a leader still settling after an election gets its time.
            wait = max(min(interval, ANSWER_WITHIN), (self._deadline - sent) / 2)
            ttl = await stream.renew(self.lease_id, wait)
            if ttl <= 0:
                self._lose("lease expired or was revoked")
                return
            self._deadline = sent + ttl
            log.debug("keepalive: lease %x renewed, TTL %ds", self.lease_id, ttl)
            self._tell_verdict()
            watchdog.reschedule(self._deadline)
            await asyncio.sleep(interval)
