"""One pod's hold on its lock: its lease, its place in the lock's etcd queue, its gate, as one task.

The pod's key is the engine's :class:`~etcdlock.etcd.Waiter` under a session of the pod's own (its lease
is named on the pod, ``etcdlock.io/lease``, so that the next operator adopts it and the key keeps its
place). Every write to etcd is fenced on this replica's leadership and waits out transient etcd errors
until it lands or leadership is really lost; a deposed replica writes nothing more, to etcd or to the pod.

What the pod is told: ``etcdlock.io/state`` (Waiting / LockNotFound / Held / Released / TimedOut /
Error), ``etcdlock.io/fencing-token`` and ``etcdlock.io/message``, with an Event for every change of state.

The pod's policies (:mod:`.policies`): while it waits (for its lock to exist and be usable, or for its
turn) its ``etcdlock.io/max-wait`` bounds the wait, from its creation; past it, the pod leaves the queue
as a release does, stays gated (it never runs without the lock) and says ``TimedOut``, and the hold ends
(an edit of max-wait while the pod waits applies at once; one made after it timed out changes nothing).
A pod that holds is never timed out. When the hold of a pod annotated ``etcdlock.io/on-lost: evict`` is
lost, the pod is evicted (:mod:`.eviction`), so its work stops.

A lock kept in an EtcdCluster that is rebuilt from a backup loses its store (retired: a new etcd cluster),
and so does one whose client certificate was renewed (the same cluster, reached again with the new one);
the hold leaves it without revoking anything and starts over on the store resolved next, adopting its
lease there as a new leader would: a key the backup kept keeps its place, one it did not queues again.
A pod that holds stays ``Held`` while no store can be resolved (its Secret deleted, its etcd unreachable):
its message says so, and that the hold is kept while its lease lives; once a lease TTL has passed with
nobody renewing the lease, the hold is lost (``LockLost``, and the on-lost policy applies). A holder is
never relabelled as waiting: the next leader would take it for a pod that came without the gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from etcdlock.aio import race
from etcdlock.etcd import (
    EtcdError,
    Fenced,
    HolderInfo,
    LeaseNotFound,
    LockLost,
    Session,
    SessionLost,
    Waiter,
)
from etcdlock.operator.errors import LockNotFound, OperatorError
from etcdlock.operator.kube import ApiUnavailable
from etcdlock.operator.locks import LockSpec
from etcdlock.operator.names import (
    CLUSTER_ANNOTATION,
    ERROR,
    EVICTING,
    HELD,
    LEASE_ANNOTATION,
    LOCK_ANNOTATION,
    LOCK_NOT_FOUND,
    MAX_WAIT_ANNOTATION,
    MESSAGE_ANNOTATION,
    ON_LOST_ANNOTATION,
    RELEASED,
    STATE_ANNOTATION,
    TIMED_OUT,
    TOKEN_ANNOTATION,
    WAITING,
)
from etcdlock.operator.pods.api import Pod, PodChanged, annotations_of, is_gated, parse_lease, pod_ref
from etcdlock.operator.pods.context import PodContext
from etcdlock.operator.pods.decisions import granted
from etcdlock.operator.pods.eviction import evict
from etcdlock.operator.pods.line import Line, creation_order
from etcdlock.operator.pods.policies import OnLost, PolicyError, deadline, on_lost
from etcdlock.operator.stores import Store

log = logging.getLogger(__name__)

RETRY_PAUSE = 1.0
# A pod waiting for a lock that cannot be served looks again this often even if no lock event wakes it.
RECHECK = 10.0


class _PlaceLost(Exception):
    """The pod's key left the queue before it held (its lease expired, the key was deleted)."""


class _LeaseExpired(Exception):
    """A holder's lease went unrenewed for a whole TTL (its etcd could not be reached): the hold is lost."""


class _MaxWaitPassed(Exception):
    """The pod waited as long as its ``etcdlock.io/max-wait`` allows."""


class PodHold:
    """One pod's place in its lock's queue, from the first look at the lock to the release.

    ``adopt``: take over the lease the pod names (a restarted or new leader), keeping its place. A hold
    created after another hold of the same pod (its annotation switched locks) starts once ``after`` (the
    release of the other) is done. ``ended`` is called with the hold when it ends of itself (the pod timed
    out): nothing more is done for the pod.
    """

    def __init__(
        self,
        context: PodContext,
        line: Line,
        pod: Pod,
        *,
        adopt: bool = True,
        after: asyncio.Future[Any] | None = None,
        ended: Callable[[PodHold], None] = lambda _: None,
    ) -> None:
        self.ref = pod_ref(pod)
        self.uid: str = pod["metadata"].get("uid") or ""
        self.lock_name: str = annotations_of(pod)[LOCK_ANNOTATION]
        self.pod = pod
        self._order = creation_order(pod)
        self.held = granted(pod) and adopt
        self._context = context
        self._line = line
        self._ticket: int | None = None
        self._written: dict[str, str | None] = dict(annotations_of(pod))
        self._lease = parse_lease(self._written.get(LEASE_ANNOTATION)) if adopt else None
        self._store: Store | None = None
        self._session: Session | None = None
        self._waiter: Waiter | None = None
        self._stopping = False
        self._store_known = asyncio.Event()
        self._versions = asyncio.Event()
        self._ended = ended
        self._max_wait: asyncio.Timeout | None = None
        # Since when (event loop clock) nobody is known to renew the pod's lease, and its TTL once known:
        # a holder whose lease went unrenewed for a TTL lost its hold.
        self._unrenewed_since: float | None = asyncio.get_running_loop().time()
        self._ttl: int | None = None
        namespace, name = self.ref
        self.holder = f"pod/{namespace}/{name}"
        self._task = asyncio.create_task(self._run(after), name=f"pod-{namespace}/{name}")

    @property
    def lease(self) -> int | None:
        return self._lease

    def seen(self, pod: Pod) -> None:
        """The pod as its latest watch event shows it."""
        self.pod = pod
        self._versions.set()
        self._versions = asyncio.Event()
        if self._max_wait is not None:
            self._max_wait.reschedule(self._deadline())

    async def release(self, reason: str, *, write: bool, ungate: bool = False) -> None:
        """Leave the queue or give the permit back (the key is deleted, fenced, then the lease revoked);
        record it on the pod if ``write``. ``ungate``: the pod no longer wants a lock, so a pod still held
        back is let go as well."""
        self._stopping = True
        await self._stop_task()
        was = "released the lock" if self.held else "left the queue"
        try:
            given_back = await self._give_back()
        except Fenced:
            given_back = False
        except EtcdError as exc:
            # Refused, not transient (those are waited out): the key goes when the lease expires.
            log.warning(
                "pod %s/%s: etcd refused the release (%s); its lease expires by itself", *self.ref, exc
            )
            reason += f" (etcd refused to delete its key: {exc}; it goes when its lease expires)"
            await self._orphan()
            given_back = True
        if not given_back:
            log.info("pod %s/%s: not released here: this replica no longer leads", *self.ref)
            await self._orphan()  # the lease is the next leader's to renew or revoke
            return
        if not write:
            return
        await self._write({STATE_ANNOTATION: RELEASED, MESSAGE_ANNOTATION: f"{was}: {reason}"}, ungate=ungate)
        self._context.events.info(self.pod, "Released", f"{was} {self.lock_name}: {reason}")

    async def abandon(self) -> None:
        """Stop without revoking: the key keeps its place while the lease lives (the next leader adopts it).
        Also ends a release under way: a replica that stops leading writes nothing more."""
        self._stopping = True
        await self._orphan()
        await self._stop_task()

    async def _stop_task(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self._ticket is not None:
            self._line.leave(self._ticket)

    # The flow

    async def _run(self, after: asyncio.Future[Any] | None) -> None:
        if after is not None:
            await asyncio.gather(after, return_exceptions=True)
        if self._lease is None:
            self._ticket = self._line.ticket(self._order)
        try:
            while (await race(self._serve(), self._store_retired()))[0] == 1:
                await self._leave_retired_store()
        except asyncio.CancelledError:
            raise
        except Fenced:
            log.info("pod %s/%s: this replica no longer leads; the next leader takes over", *self.ref)
            await self._orphan()
        except Exception:
            log.exception("pod %s/%s: the lock flow failed", *self.ref)
            await self._orphan()
            if await self._context.stores.default.confirmed():
                message = "internal error, see the operator log"
                await self._write({STATE_ANNOTATION: ERROR, MESSAGE_ANNOTATION: message})

    async def _serve(self) -> None:
        """Hold the lock until the hold is lost; a holder whose lease expired unrenewed is told it lost it."""
        try:
            waiter = await self._until_held()
        except _LeaseExpired as exc:
            await self._lost(f"lost {self.lock_name}: {exc}")
            return
        if waiter is None:
            return
        reason = await waiter.wait_lost()
        if not self._stopping:
            await self._lost(f"lost {self.lock_name}: {reason}")

    async def _until_held(self) -> Waiter | None:
        """Queue, wait, ungate: the pod's key once it holds (None if the hold ended meanwhile: the pod
        timed out, is gone, or was told it lost the lock); queue again (loudly) if the place is lost before
        holding."""
        while True:
            try:
                async with self._within_max_wait():
                    lock = await self._usable_lock()
                waiter = await self._queue(lock)
                if waiter is None or not await self._within_turn(waiter):
                    return None
                return waiter
            except _MaxWaitPassed:
                await self._time_out()
                return None
            except _PlaceLost as exc:
                if self.held:
                    await self._lost(f"lost {self.lock_name} while the operator was away: {exc}")
                    return None
                await self._drop()
                await self._place_lost(f"{exc}; it queues again, at the back")
            except EtcdError as exc:
                # Not transient (those are waited out): permission denied, database full... an admin acts.
                if self.held:
                    await self._hold_unconfirmed(f"it refuses the operator: {exc}")
                else:
                    await self._say_waiting(
                        f"etcd refuses the pod's hold on {self.lock_name}: {exc}", "EtcdRefused"
                    )
                await self._context.changes.wait((self.ref[0], self.lock_name), self._recheck())

    async def _within_turn(self, waiter: Waiter) -> bool:
        """Wait for the pod's turn (within its max-wait) and ungate it; False if the pod is gone or now
        asks for another lock."""
        async with self._within_max_wait():
            await self._wait_turn(waiter)
        return await self._ungate(waiter)

    async def _store_retired(self) -> None:
        """Returns once the store this hold uses is retired (see the module docstring)."""
        while True:
            await self._store_known.wait()
            store = self._ready_store
            await store.retired.wait()
            if store is self._store:
                return

    async def _leave_retired_store(self) -> None:
        """Forget the retired store's session and key without revoking (the store resolved next has the
        lease, or the one the backup kept, adopted next); the lease stays named on the pod."""
        await self._orphan()
        self._session = self._waiter = None
        self._store = None
        self._store_known.clear()
        self._unrenewed_since = asyncio.get_running_loop().time()
        log.info("pod %s/%s: %s's etcd client was retired; adopting again", *self.ref, self.lock_name)

    async def _usable_lock(self) -> LockSpec:
        """The lock's spec once it exists, is valid, may use its key and its etcd answers; until then the
        pod's state says what it waits for (every pod for itself)."""
        namespace, _ = self.ref
        while True:
            try:
                lock = await self._context.resolve(namespace, self.lock_name)
                # The longest TTL seen: the lease may have been granted before ttlSeconds was lowered.
                self._ttl = max(self._ttl or 0, lock.pod_ttl(self._context.rules))
                self._store = await self._context.stores.for_lock(namespace, lock)
                self._store_known.set()
                return lock
            except OperatorError as exc:
                if self.held:
                    await self._hold_unconfirmed(str(exc))
                elif isinstance(exc, LockNotFound):
                    message = f"{exc}; the pod waits until it is created (is the name right?)"
                    await self._say_waiting(message, "LockNotFound", state=LOCK_NOT_FOUND)
                else:
                    why = f"DistributedLock {self.lock_name}: {exc}; the pod waits until it can be served"
                    await self._say_waiting(why, "LockNotReady")
            await self._context.changes.wait((namespace, self.lock_name), self._recheck())

    async def _hold_unconfirmed(self, problem: str) -> None:
        """A holder whose lock's etcd cannot be reached: it stays Held, told that the hold is kept while
        its lease lives; :class:`_LeaseExpired` once a TTL passed with nobody renewing it."""
        if self._lease_expired():
            raise _LeaseExpired(
                f"its etcd could not be reached ({problem}) for longer than its lease's TTL ({self._ttl}s): "
                "its lease expired"
            )
        message = (
            f"holds {self.lock_name} (fencing token {self._written.get(TOKEN_ANNOTATION)}), but its etcd "
            f"cannot be reached ({problem}): the hold is kept while its lease lives (it expires a TTL after "
            "its last renewal)"
        )
        if self._written.get(MESSAGE_ANNOTATION) != message:
            self._context.events.warn(self.pod, "EtcdUnreachable", message)
            await self._write({STATE_ANNOTATION: HELD, MESSAGE_ANNOTATION: message})

    def _lease_expired(self) -> bool:
        """Whether the pod's lease went unrenewed for a whole TTL (known once the lock's spec was read)."""
        if self._unrenewed_since is None or self._ttl is None:
            return False
        return asyncio.get_running_loop().time() >= self._unrenewed_since + self._ttl

    def _recheck(self) -> float:
        """How long to wait before looking at the lock again: :data:`RECHECK`, or less for a holder whose
        lease would expire sooner."""
        if not self.held or self._unrenewed_since is None or self._ttl is None:
            return RECHECK
        left = self._unrenewed_since + self._ttl - asyncio.get_running_loop().time()
        return max(min(RECHECK, left), 0.0)

    async def _queue(self, lock: LockSpec) -> Waiter | None:
        """The pod's key in the lock's queue: the adopted lease's key where it was, or a new key (joining
        in the order pods were seen). None if the pod is gone, or lost its hold while the operator was
        away (it was told)."""
        if self._waiter is not None:
            return self._waiter
        value = HolderInfo.for_this_process(self.holder, lock.permits).encode()
        if self._lease is not None and await self._adopt(lock):
            waiter = Waiter(self._ready_session, lock.key, lock.permits)
            await waiter.join(value)
            self._waiter = waiter
            return await self._check_adopted(waiter)
        if self.held:
            await self._lost(
                f"lost {self.lock_name} while the operator was away: its lease expired", drop=False
            )
            return None
        if self._lease is not None:
            self._lease = None
            await self._place_lost(
                "its lease expired while no operator renewed it; it queues again, at the back"
            )
        ticket = self._line.ticket(self._order) if self._ticket is None else self._ticket
        self._ticket = None
        try:
            # Each pod is granted its lease, and names it on itself, on its own and all at once; only
            # joining the queue (one etcd transaction) waits for the pods seen before it.
            if not await self._grant(lock):
                return None
            async with self._line.turn(ticket):
                waiter = Waiter(self._ready_session, lock.key, lock.permits)
                await waiter.join(value)
        finally:
            self._line.leave(ticket)
        self._waiter = waiter
        return waiter

    async def _check_adopted(self, waiter: Waiter) -> Waiter | None:
        """A pod that held must find its key with its fencing token: a new key would be a new place at the
        back of the queue while the pod keeps running. A waiting pod whose key went is told so."""
        if self.held and (waiter.found is None or str(waiter.token) != self._written.get(TOKEN_ANNOTATION)):
            with contextlib.suppress(SessionLost):
                await waiter.give_back()
            await self._lost(f"lost {self.lock_name} while the operator was away: its key was gone")
            return None
        if waiter.found is None:
            await self._place_lost("its key was gone (deleted by hand?); it queues again, at the back")
        return waiter

    async def _adopt(self, lock: LockSpec) -> bool:
        """Keep the lease the pod names alive from here; False if it no longer exists."""
        store, lease = self._ready_store, self._lease
        assert lease is not None
        ttl = lock.pod_ttl(self._context.rules)
        try:
            self._session = await store.persist(
                lambda: Session(store.etcd, ttl, lease_id=lease, fence=store.fence).start()
            )
        except SessionLost:
            return False
        self._context.adopted(lease)
        self._unrenewed_since = None
        return True

    async def _grant(self, lock: LockSpec) -> bool:
        """Grant the pod a lease and name it on the pod before any key is written under it. Leases cannot
        be fenced: a replica that etcd does not confirm as leader grants none."""
        store = self._ready_store
        if not await store.confirmed():
            raise Fenced("this replica no longer leads")
        ttl = lock.pod_ttl(self._context.rules)
        self._session = await store.persist(lambda: Session(store.etcd, ttl, fence=store.fence).start())
        self._lease = self._session.lease_id
        self._unrenewed_since = None
        where = {LEASE_ANNOTATION: format(self._lease, "x"), CLUSTER_ANNOTATION: lock.where}
        if not await self._write(where):
            await self._session.close()  # a lease for a pod that is gone: no key under it yet
            self._session = self._lease = None
            return False
        return True

    async def _wait_turn(self, waiter: Waiter) -> None:
        if waiter.is_held:
            return
        if not self.held:
            message = f"waiting for a permit of {self.lock_name} (etcd key {waiter.key})"
            await self._say_waiting(message, "Waiting", warn=False)
        try:
            await waiter.wait_turn()
        except (LockLost, SessionLost) as exc:
            raise _PlaceLost(str(exc)) from None

    async def _ungate(self, waiter: Waiter) -> bool:
        """The pod holds a permit: say so and remove the gate, in one write made only while the pod still
        asks for this lock. Before every attempt etcd confirms, in one guarded read, that the key still
        holds its place and that this replica still leads. False if the pod is gone or now asks for
        another lock (its events take it from there). A pod that says so already (a holder adopted by a
        new leader) is not written again."""
        token = str(waiter.token)
        message = f"holds {self.lock_name} (fencing token {token}, etcd key {waiter.key})"
        annotations = {STATE_ANNOTATION: HELD, TOKEN_ANNOTATION: token, MESSAGE_ANNOTATION: message}
        announced = False
        while True:
            if not await waiter.still_holds():
                raise _PlaceLost("its key was deleted before the pod could start")
            if not is_gated(self.pod) and all(self._written.get(k) == v for k, v in annotations.items()):
                self.held = True
                return True
            if not announced and (self._written.get(TOKEN_ANNOTATION) != token or is_gated(self.pod)):
                self._context.events.info(self.pod, "Acquired", message)
                announced = True
            self.held = True
            versions = self._versions
            try:
                written = await self._context.api.ungate(self.pod, self.lock_name, annotations)
            except PodChanged:
                # Decide again on the pod's next version (its watch event comes within a moment).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RETRY_PAUSE * 5):
                        await versions.wait()
                continue
            except ApiUnavailable as exc:
                log.warning("pod %s/%s: not ungated yet (%s); retrying", *self.ref, exc)
                await asyncio.sleep(RETRY_PAUSE)
                continue
            if written is None:
                return False
            self.pod = written
            self._written.update(annotations)
            return True

    # Leaving

    async def _give_back(self) -> bool:
        """Delete the pod's key (fenced) and revoke its lease; False if this replica no longer leads.
        Transient etcd errors are waited out.

        Without a key known here (the lease was named on the pod, not adopted yet), etcd confirms that
        this replica leads just before the revocation, which takes the key with it.
        """
        if self._lease is None:
            return True
        store = self._store
        if store is None or store.retired.is_set():
            store = await self._context.lease_store(self.ref[0], self._written)
        if store is None:
            log.warning("pod %s/%s: its etcd cannot be reached; its lease expires by itself", *self.ref)
            return await self._context.stores.default.confirmed()
        try:
            if self._waiter is not None and self._waiter.token is not None and store is self._store:
                with contextlib.suppress(SessionLost):
                    await self._waiter.give_back()
            elif not await store.confirmed():
                return False
            await self._revoke(store)
        except EtcdError as exc:
            # Not transient: the pod's etcd refuses the operator (its credentials were revoked, say).
            log.warning(
                "pod %s/%s: its etcd refuses the operator (%s); its lease expires by itself", *self.ref, exc
            )
            await self._forget_lease()
            return await self._context.stores.default.confirmed()
        return True

    async def _leads(self, store: Store | None) -> bool:
        """Whether this replica still leads, as the pod's etcd confirms; as the operator's own etcd does
        when the pod's etcd refuses the operator (its credentials revoked, say), which it then cannot tell,
        or cannot be reached (``store`` None)."""
        if store is None:
            return await self._context.stores.default.confirmed()
        try:
            return await store.confirmed()
        except EtcdError as exc:
            log.warning("pod %s/%s: its etcd refuses the operator (%s)", *self.ref, exc)
            return await self._context.stores.default.confirmed()

    async def _orphan(self) -> None:
        """Stop renewing the pod's lease without revoking it (the next leader adopts it)."""
        if self._session is not None:
            await self._session.orphan()

    async def _revoke(self, store: Store) -> None:
        lease = self._lease
        assert lease is not None
        await self._orphan()
        with contextlib.suppress(LeaseNotFound):
            await store.persist(lambda: store.etcd.revoke(lease))
        await self._forget_lease()

    async def _forget_lease(self) -> None:
        """Stop renewing the pod's lease and forget it (revoked, or left to expire by itself)."""
        await self._orphan()
        self._session = self._waiter = None
        self._lease = None

    async def _drop(self) -> None:
        """Give back a lease whose place is lost, before queueing under a new one."""
        if not await self._give_back():
            raise Fenced("this replica no longer leads")

    # Telling the pod

    async def _say_waiting(
        self, message: str, reason: str, *, warn: bool = True, state: str = WAITING
    ) -> None:
        if self._written.get(MESSAGE_ANNOTATION) == message and self._written.get(STATE_ANNOTATION) == state:
            return
        recorder = self._context.events
        (recorder.warn if warn else recorder.info)(self.pod, reason, message)
        await self._write({STATE_ANNOTATION: state, MESSAGE_ANNOTATION: message})

    async def _place_lost(self, message: str) -> None:
        """A waiting pod's place is gone (nobody kept its lease alive long enough, or its key was deleted):
        never silently."""
        log.warning("pod %s/%s: lost its place in %s: %s", *self.ref, self.lock_name, message)
        self._context.lease_lost(self.ref[0], self.lock_name, "waiting")
        self._context.events.warn(self.pod, "PlaceLost", f"lost its place in {self.lock_name}: {message}")
        await self._write({STATE_ANNOTATION: WAITING, MESSAGE_ANNOTATION: f"lost its place: {message}"})

    async def _lost(self, message: str, *, drop: bool = True) -> None:
        """Tell the pod it lost the lock, give back its lease (``drop``), and evict the pod if its on-lost
        policy says so (state Evicting until it is gone; else Error); unless this replica was deposed
        (:class:`Fenced`: it is not for it to say, the next leader may hold the very same lease for the
        pod)."""
        if not await self._leads(self._store):
            log.info("pod %s/%s: %s; left to the leader", *self.ref, message)
            raise Fenced("this replica no longer leads")
        try:
            policy, problem = on_lost(self.pod), ""
        except PolicyError as exc:
            policy, problem = OnLost.KEEP, f"{exc}: the pod is not evicted"
        self._context.events.warn(self.pod, "LockLost", message)
        self._context.lease_lost(self.ref[0], self.lock_name, "held")
        state = EVICTING if policy is OnLost.EVICT else ERROR
        await self._write({STATE_ANNOTATION: state, MESSAGE_ANNOTATION: message})
        if drop:
            await self._drop()
        if problem:
            self._context.events.warn(self.pod, PolicyError.reason, problem)
        if policy is OnLost.EVICT:
            await evict(self._context, self.pod, f"{ON_LOST_ANNOTATION}: evict, and the pod {message}")

    # The max-wait

    @contextlib.asynccontextmanager
    async def _within_max_wait(self) -> AsyncIterator[None]:
        """The block, cut short with :class:`_MaxWaitPassed` when the pod's max-wait passes (the deadline
        follows edits of the annotation: :meth:`seen`). Only waits go in it: never a write that lets the
        pod run."""
        try:
            async with asyncio.timeout_at(self._deadline()) as self._max_wait:
                yield
        except TimeoutError:
            if self._max_wait is None or not self._max_wait.expired():
                raise
            raise _MaxWaitPassed from None
        finally:
            self._max_wait = None

    def _deadline(self) -> float | None:
        """The pod's max-wait deadline on the event loop's clock; None without one (or once it holds, or
        if the annotation is invalid: its events stop the hold)."""
        try:
            when = deadline(self.pod)
        except PolicyError:
            return None
        if when is None or self.held:
            return None
        loop = asyncio.get_running_loop()
        return loop.time() + (when - datetime.now(UTC)).total_seconds()

    async def _time_out(self) -> None:
        """The pod waited its max-wait: it leaves the queue (its key deleted, fenced, its lease revoked, as
        a release does), stays gated, and is told; the lock gets a Warning too. The hold then ends."""
        wait = annotations_of(self.pod).get(MAX_WAIT_ANNOTATION)
        message = (
            f"waited {MAX_WAIT_ANNOTATION} {wait} for {self.lock_name} without getting it: left the queue; "
            "the pod stays gated and never runs (delete it, or let its controller or deadline do so)"
        )
        await self._drop()
        self._context.events.warn(self.pod, "TimedOut", message)
        lock = await self._context.api.read_lock(self.ref[0], self.lock_name)
        if lock is not None:
            self._context.events.warn(lock, "PodTimedOut", f"pod {self.ref[1]} {message}")
        gone = {LEASE_ANNOTATION: None, CLUSTER_ANNOTATION: None}
        await self._write({STATE_ANNOTATION: TIMED_OUT, MESSAGE_ANNOTATION: message, **gone})
        self._ended(self)

    async def _write(self, annotations: Mapping[str, str | None], *, ungate: bool = False) -> bool:
        """Write the annotations that differ from what the pod already says (and remove the gate).

        False if the pod is gone; :class:`Fenced` if this replica no longer leads (a replica resumed after a
        pause must not write what it saw before: the next leader may have moved the pod on).
        """
        changed = {k: v for k, v in annotations.items() if self._written.get(k) != v}
        if not changed and not ungate:
            return True
        await self._context.stores.leadership.assured()
        written = await self._context.api.annotate(self.ref, changed, ungate=ungate)
        if written is None:
            return False
        self.pod = written
        self._written.update(changed)
        return True

    @property
    def _ready_store(self) -> Store:
        """The lock's store: known from the moment the lock's spec was read, before any etcd write."""
        if self._store is None:
            raise RuntimeError("the lock's store is not known yet")
        return self._store

    @property
    def _ready_session(self) -> Session:
        if self._session is None:
            raise RuntimeError("the pod's session is not open")
        return self._session
