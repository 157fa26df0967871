"""Pods that wait for a lock: every annotated pod queues under its own lease and is ungated when it holds.

A pod annotated ``etcdlock.io/lock: NAME`` is created with the scheduling gate ``etcdlock.io/lock`` (added
by the webhook). Its :class:`PodHold` grants a lease with the lock's TTL, writes the lease ID to the pod
(so a restarted operator adopts the lease instead of dropping the pod's place), queues a key under the
lock's etcd prefix as any other client does, and removes the gate once the key holds a permit. The lease
is revoked when the pod succeeds, fails, is deleted or loses the annotation, and when the lock is deleted.
The pod's annotations say where it stands: ``etcdlock.io/state`` (Waiting / Held / Released / Error),
``etcdlock.io/fencing-token`` and ``etcdlock.io/message``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kopf
import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from etcdlock.etcd import (
    EtcdClient,
    EtcdUnavailable,
    Fence,
    Fenced,
    HolderInfo,
    LockLost,
    Session,
    SessionLost,
    keys,
)
from etcdlock.etcd.client import create_revision_is, delete_op
from etcdlock.etcd.queue import KeyGuard, Queue, first_of
from etcdlock.operator.locks import InvalidSpec, LockSpec
from etcdlock.operator.names import (
    CLUSTER_ANNOTATION,
    ERROR,
    GROUP,
    HELD,
    LEASE_ANNOTATION,
    LOCK_ANNOTATION,
    LOCKS,
    MESSAGE_ANNOTATION,
    RELEASED,
    SCHEDULING_GATE,
    STATE_ANNOTATION,
    TOKEN_ANNOTATION,
    VERSION,
    WAITING,
)
from etcdlock.operator.stores import ClusterNotReady, Store, Stores, still_leads

log = logging.getLogger(__name__)

Ref = tuple[str, str]
Pod = kopf.Body

FINISHED = ("Succeeded", "Failed")
_STRATEGIC_MERGE = "application/strategic-merge-patch+json"
_RETRY_DELAY = 1.0
# Bounds each Kubernetes API call (well below any lease TTL), so that a retried ungate is re-checked.
_REQUEST_TIMEOUT = 5.0
# A pod waiting for a missing or invalid lock looks again this often even if no lock event wakes it.
_RECHECK = 10.0


def pod_ref(pod: Pod) -> Ref:
    meta = pod["metadata"]
    return meta.get("namespace") or "", meta["name"]


def _annotations(pod: Pod) -> Mapping[str, str]:
    return pod.get("metadata", {}).get("annotations") or {}


def is_gated(pod: Pod) -> bool:
    gates = (pod.get("spec") or {}).get("schedulingGates") or []
    return any(gate.get("name") == SCHEDULING_GATE for gate in gates)


class PodApi:
    """The pod writes and lock reads of the pod flow, through the kubernetes client (in threads).

    Made once per process, before any campaign: the client's API modules take half a second to load,
    which a new leader should not spend.
    """

    def __init__(self, kube: kubernetes.client.ApiClient) -> None:
        self._core = kubernetes.client.CoreV1Api(kube)
        self._objects = kubernetes.client.CustomObjectsApi(kube)

    async def annotate(
        self,
        ref: Ref,
        annotations: Mapping[str, str | None],
        *,
        ungate: bool = False,
        attempts: int | None = None,
    ) -> bool | None:
        """Set (None: remove) annotations, and remove the gate if asked, in one patch.

        True when written, False if the pod is gone. API outages are retried until the write lands, or
        ``attempts`` times (then None).
        """
        body: dict[str, Any] = {"metadata": {"annotations": dict(annotations)}}
        if ungate:
            body["spec"] = {"schedulingGates": [{"$patch": "delete", "name": SCHEDULING_GATE}]}
        namespace, name = ref

        def patch() -> Any:
            return self._core.patch_namespaced_pod(
                name, namespace, body, _content_type=_STRATEGIC_MERGE, _request_timeout=_REQUEST_TIMEOUT
            )

        return await _retrying(f"pod {namespace}/{name}", lambda: asyncio.to_thread(patch), attempts)

    async def read_lock(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The DistributedLock, or None if it does not exist or is being deleted."""
        result: list[dict[str, Any]] = []

        def get() -> Any:
            return self._objects.get_namespaced_custom_object(
                GROUP, VERSION, namespace, LOCKS, name, _request_timeout=_REQUEST_TIMEOUT
            )

        async def read() -> None:
            result.append(await asyncio.to_thread(get))

        if not await _retrying(f"DistributedLock {namespace}/{name}", read):
            return None
        lock = result[0]
        return None if lock.get("metadata", {}).get("deletionTimestamp") else lock


async def _retrying(
    what: str, call: Callable[[], Awaitable[Any]], attempts: int | None = None
) -> bool | None:
    """Run an API call until it succeeds (True) or answers 404 (False); log and retry other failures,
    ``attempts`` times at most (then None)."""
    attempt = 0
    while attempts is None or attempt < attempts:
        attempt += 1
        try:
            await call()
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            log.warning("%s: API error %s %s; retrying", what, exc.status, exc.reason)
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            log.warning("%s: API unreachable (%s); retrying", what, exc)
        if attempts is None or attempt < attempts:
            await asyncio.sleep(_RETRY_DELAY)
    return None


class LockChanges:
    """Wakes the pods that wait for a DistributedLock to be created or fixed."""

    def __init__(self) -> None:
        self._events: dict[Ref, asyncio.Event] = {}

    def changed(self, ref: Ref) -> None:
        event = self._events.pop(ref, None)
        if event is not None:
            event.set()

    async def wait(self, ref: Ref, timeout: float) -> None:
        event = self._events.setdefault(ref, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


class _PlaceLost(Exception):
    """The pod's key left the queue before it held (lease expired, key deleted): queue again."""


class PodHold:
    """One pod's place in its lock's queue: its lease, its key, its wait and its hold, as one task.

    The key is the pod's, not this process's: it is queued once and then only ever removed by
    ``release()`` (a fenced delete, then the lease is revoked) or by etcd when the lease expires; etcd
    outages are waited out, never answered by removing the key. ``abandon()`` stops renewing the lease
    without revoking it (the operator is stopping: the next leader adopts the lease from the pod's
    annotation, and the key keeps its place).
    """

    def __init__(
        self,
        stores: Stores,
        api: PodApi,
        changes: LockChanges,
        turn: asyncio.Lock,
        pod: Pod,
        *,
        adopt: bool = True,
    ) -> None:
        self.ref = pod_ref(pod)
        self.uid: str = pod["metadata"].get("uid") or ""
        self.lock_name = _annotations(pod)[LOCK_ANNOTATION]
        self.pod = pod
        self.held = _annotations(pod).get(STATE_ANNOTATION) == HELD
        self._stores = stores
        # The lock's store once its spec was read (until then nothing was written for this pod here).
        self._store: Store | None = None
        self._api = api
        self._changes = changes
        self._turn = turn
        self._key: bytes | None = None
        self._written: dict[str, str | None] = {k: v for k, v in _annotations(pod).items()}
        lease = self._written.get(LEASE_ANNOTATION) if adopt else None
        self._lease = _parse_lease(lease)
        self._session: Session | None = None
        self._stopping = False
        namespace, name = self.ref
        self.holder = f"pod/{namespace}/{name}"
        self._task = asyncio.create_task(self._run(), name=f"pod-{namespace}/{name}")

    def seen(self, pod: Pod) -> None:
        self.pod = pod

    async def release(self, reason: str, *, write: bool, ungate: bool = False) -> None:
        """Leave the queue or give the permit back (the lease is revoked); record it on the pod.

        ``ungate``: the pod no longer wants the lock (its annotation was removed), so a pod still held
        back is let go as well.
        """
        self._stopping = True
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.orphan()
        store = self._store
        if store is None and self._lease is not None:
            store = await lease_store(self._stores, self.ref[0], self._written)
        if store is not None and self._lease is not None:
            if not await give_back(store.etcd, store.fence, self._lease, self._key):
                log.info("pod %s/%s: not released here: this replica no longer leads", *self.ref)
                return
        if not write:
            return
        was = "released the lock" if self.held else "left the queue"
        await self._write({STATE_ANNOTATION: RELEASED, MESSAGE_ANNOTATION: f"{was}: {reason}"}, ungate=ungate)
        kopf.info(self.pod, reason="Released", message=f"{was} {self.lock_name}: {reason}")

    async def abandon(self) -> None:
        """Stop without revoking: the key keeps its place while the lease lives (adopted on restart)."""
        self._stopping = True
        if self._session is not None:
            await self._session.orphan()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        try:
            while True:
                # Pods of one lock join its queue one at a time, in the order the operator saw them.
                async with self._turn:
                    lock = await self._wait_for_lock()
                    queued = await self._join_queue(lock)
                if queued is None:
                    return
                queue, my_rev = queued
                try:
                    guard = await self._wait_turn(lock, queue, my_rev)
                    await self._granted(queue, my_rev)
                    break
                except _PlaceLost as exc:
                    if self.held:
                        await self._lost(f"lost {self.lock_name} while the operator was away: {exc}")
                        await self._drop_session()
                        return
                    log.warning("pod %s/%s: lost its place (%s); queueing again", *self.ref, exc)
                    await self._drop_session()
            reason = await guard.wait_lost()
            if not self._stopping:
                await self._lost(f"lost {self.lock_name}: {reason}")
                await self._drop_session()  # the lease guards nothing any more: stop renewing it
        except asyncio.CancelledError:
            raise
        except Fenced:
            log.info("pod %s/%s: this replica no longer leads; the next leader takes over", *self.ref)
            if self._session is not None:
                await self._session.orphan()
        except Exception:
            log.exception("pod %s/%s: the lock flow failed", *self.ref)
            if self._session is not None:
                await self._session.orphan()
            if await still_leads(self._stores.default.etcd, self._stores.default.fence):
                message = "internal error, see the operator log"
                await self._write({STATE_ANNOTATION: ERROR, MESSAGE_ANNOTATION: message})

    async def _wait_for_lock(self) -> LockSpec:
        """The lock's spec once it exists and is valid; until then the pod's state says what it waits for."""
        namespace, _ = self.ref
        warned = False
        while True:
            lock = await self._api.read_lock(namespace, self.lock_name)
            if lock is None:
                why = f"DistributedLock {self.lock_name} does not exist; the pod waits until it is created"
            else:
                try:
                    spec = LockSpec.parse(namespace, self.lock_name, lock.get("spec"))
                    self._store = await self._stores.for_lock(namespace, spec)
                    return spec
                except InvalidSpec as exc:
                    why = f"DistributedLock {self.lock_name} is invalid ({exc}); the pod waits until fixed"
                except ClusterNotReady as exc:
                    why = f"DistributedLock {self.lock_name}: {exc}; the pod waits until it is"
            if not warned:
                kopf.warn(self.pod, reason="LockNotReady", message=why)
                warned = True
            await self._write({STATE_ANNOTATION: WAITING, MESSAGE_ANNOTATION: why})
            await self._changes.wait((namespace, self.lock_name), _RECHECK)

    async def _join_queue(self, lock: LockSpec) -> tuple[Queue, int] | None:
        """Put the pod's key in the lock's queue; an adopted lease finds its key where it was.

        Returns the queue and the key's create revision, or None if the pod is gone or lost its hold.
        A pod that held the lock must find its key with its fencing token: a new key would be a new
        place at the back of the queue while the pod keeps running.
        """
        value = HolderInfo.for_this_process(self.holder, lock.permits).encode()
        while True:
            session = await self._open_session(lock)
            if session is None:
                return None
            queue = Queue(session, lock.key)
            while not session.is_lost:
                try:
                    entry = await queue.enqueue(value, lock.permits)
                except EtcdUnavailable as exc:
                    log.warning("pod %s/%s: etcd unavailable (%s); retrying", *self.ref, exc)
                    await asyncio.sleep(_RETRY_DELAY)
                    continue
                except LockLost:
                    break
                token = self._written.get(TOKEN_ANNOTATION)
                if self.held and (entry.existing_value is None or str(entry.my_rev) != token):
                    await queue.remove(entry.my_rev)
                    await self._lost(f"lost {self.lock_name} while the operator was away: its key was gone")
                    await self._drop_session()
                    return None
                return queue, entry.my_rev
            if self.held:
                await self._lost(f"lost {self.lock_name} while the operator was away: {session.lost_reason}")
                await self._drop_session()
                return None
            await self._drop_session()

    async def _wait_turn(self, lock: LockSpec, queue: Queue, my_rev: int) -> KeyGuard:
        """Wait until the key holds a permit (etcd outages are waited out); the guard then watches it.

        Raises :class:`_PlaceLost` if the key or the session goes first.
        """
        if not self.held:
            message = f"waiting for a permit of {self.lock_name} (etcd key {queue.key.decode()})"
            if self._written.get(MESSAGE_ANNOTATION) != message:
                kopf.info(self.pod, reason="Waiting", message=message)
            await self._write({STATE_ANNOTATION: WAITING, MESSAGE_ANNOTATION: message})
        guard = KeyGuard(queue, my_rev)
        try:
            await first_of(
                queue.wait_for_turn(my_rev, lock.permits),
                queue.session.wait_lost(),
                guard.wait_gone(),
                lost=_PlaceLost,
            )
        except (LockLost, SessionLost) as exc:
            await guard.stop()
            raise _PlaceLost(str(exc)) from None
        except BaseException:
            await guard.stop()
            raise
        value = HolderInfo.for_this_process(self.holder, lock.permits).encode()
        await queue.mark_granted(my_rev, value)
        return guard

    async def _granted(self, queue: Queue, my_rev: int) -> None:
        """The pod holds a permit: say so on the pod and remove the gate, in one write.

        Before every attempt etcd confirms, in one guarded read, that the key still holds its place and
        (under a fence) that this replica still leads: a replica deposed while it waited never ungates a
        pod, nor does a stale attempt ungate a pod whose key expired meanwhile. Raises
        :class:`_PlaceLost` if the key is gone, :class:`Fenced` if deposed.
        """
        token = str(my_rev)
        message = f"holds {self.lock_name} (fencing token {token}, etcd key {queue.key.decode()})"
        annotations = {STATE_ANNOTATION: HELD, TOKEN_ANNOTATION: token, MESSAGE_ANNOTATION: message}
        announced = False
        while True:
            try:
                still = [create_revision_is(queue.key, my_rev)]
                response = await queue.write(still, [])
            except EtcdUnavailable as exc:
                queue.session.check()
                log.warning("pod %s/%s: etcd unavailable (%s); retrying", *self.ref, exc)
                await asyncio.sleep(_RETRY_DELAY)
                continue
            if not response.succeeded:
                raise _PlaceLost("its key was deleted before the pod could start")
            if not announced and (self._written.get(TOKEN_ANNOTATION) != token or is_gated(self.pod)):
                kopf.info(self.pod, reason="Acquired", message=message)
                announced = True
            self.held = True
            written = await self._write(annotations, ungate=True, attempts=1)
            if written is not None:
                return
            await asyncio.sleep(_RETRY_DELAY)

    async def _drop_session(self) -> None:
        """Give back a lease whose place in the queue is lost, before queueing under a new one."""
        if self._session is not None:
            await self._session.orphan()
        store = self._ready_store
        if self._lease is not None and not await give_back(store.etcd, store.fence, self._lease, self._key):
            raise Fenced("this replica no longer leads")
        self._session = self._lease = self._key = None

    @property
    def _ready_store(self) -> Store:
        """The lock's store: known from the moment the lock's spec was read, before any etcd write."""
        if self._store is None:
            raise RuntimeError("the lock's store is not known yet")
        return self._store

    async def _open_session(self, lock: LockSpec) -> Session | None:
        """Adopt the lease named on the pod, or grant one and record it there before queueing under it."""
        etcd, fence = self._ready_store.etcd, self._ready_store.fence
        while True:
            try:
                if self._lease is not None:
                    try:
                        ttl, lease = lock.ttl_seconds, self._lease
                        self._session = await Session(etcd, ttl, lease_id=lease, fence=fence).start()
                        self._key = keys.contender_key(lock.key, self._lease)
                        return self._session
                    except SessionLost as exc:
                        self._lease = None
                        if self.held:
                            await self._lost(f"lost {self.lock_name} while the operator was away: {exc}")
                            return None
                # Leases cannot be fenced: a deposed replica must not grant one and name it on the pod.
                if not await still_leads(etcd, fence):
                    raise Fenced("this replica no longer leads")
                self._session = await Session(etcd, lock.ttl_seconds, fence=fence).start()
                self._lease = self._session.lease_id
                where = {LEASE_ANNOTATION: format(self._lease, "x"), CLUSTER_ANNOTATION: lock.cluster}
                if not await self._write(where):
                    await self._session.close()  # a lease for a pod that is gone: no key under it yet
                    return None
                self._key = keys.contender_key(lock.key, self._lease)
                return self._session
            except EtcdUnavailable as exc:
                log.warning("pod %s/%s: etcd unavailable (%s); retrying", *self.ref, exc)
                await asyncio.sleep(_RETRY_DELAY)

    async def _lost(self, message: str) -> None:
        """Tell the pod it lost the lock, unless this replica was deposed (then it is not for it to say:
        the next leader may hold the very same lease for the pod)."""
        if not await still_leads(self._ready_store.etcd, self._ready_store.fence):
            log.info("pod %s/%s: %s; left to the leader", *self.ref, message)
            return
        kopf.warn(self.pod, reason="LockLost", message=message)
        await self._write({STATE_ANNOTATION: ERROR, MESSAGE_ANNOTATION: message})

    async def _write(
        self, annotations: Mapping[str, str | None], *, ungate: bool = False, attempts: int | None = None
    ) -> bool | None:
        """Write the annotations that differ from what the pod already says (and remove the gate).

        True when written, False if the pod is gone, None if ``attempts`` API calls all failed.
        """
        changed = {k: v for k, v in annotations.items() if self._written.get(k) != v}
        if not changed and not ungate:
            return True
        written = await self._api.annotate(self.ref, changed, ungate=ungate, attempts=attempts)
        if written:
            self._written.update(changed)
        return written


class PodHolds:
    """Every annotated pod's :class:`PodHold`, started, updated and stopped from the pods' watch events."""

    def __init__(self, stores: Stores, api: PodApi) -> None:
        self._stores = stores
        self._api = api
        self.changes = LockChanges()
        self._holds: dict[Ref, PodHold] = {}
        self._turns: dict[Ref, asyncio.Lock] = {}
        self._background: set[asyncio.Task[Any]] = set()
        # Pods (by uid) this operator released: their later events, until deletion, need nothing more.
        self._released: set[str] = set()

    def observe(self, event_type: str | None, pod: Pod) -> None:
        """React to one watch event of a pod (any pod: most are not annotated and are ignored)."""
        ref = pod_ref(pod)
        uid = pod["metadata"].get("uid") or ""
        hold = self._holds.get(ref)
        if hold is not None and (event_type == "DELETED" or hold.uid != uid):
            self._stop(hold, "the pod was deleted", write=False)
            hold = None
        if event_type == "DELETED":
            self._released.discard(uid)
            return
        if hold is None and uid in self._released:
            return
        annotations = _annotations(pod)
        wanted = annotations.get(LOCK_ANNOTATION)
        phase = (pod.get("status") or {}).get("phase")
        state = annotations.get(STATE_ANNOTATION)
        if hold is not None:
            hold.seen(pod)
            if not wanted or wanted != hold.lock_name:
                # The pod no longer asks for this lock: if it is still held back, let it go too.
                self._stop(hold, f"the {LOCK_ANNOTATION} annotation changed", write=True, ungate=True)
            elif phase in FINISHED:
                self._stop(hold, f"the pod {phase.lower()}", write=True)
            elif not hold.held and not is_gated(pod) and state != HELD:
                self._stop(hold, "the scheduling gate was removed by someone else", write=False)
                self._released.add(uid)
                self._spawn(self._not_gated(pod))
            elif not hold.held and state == HELD:
                # Granted by a newer leader while this replica was paused: not ours to touch any more.
                del self._holds[ref]
                self._spawn(hold.abandon())
            return
        if state in (WAITING, HELD) and (not wanted or phase in FINISHED):
            self._released.add(uid)
            why = "the pod finished or left the lock while the operator was away"
            self._spawn(self._release_leftover(pod, why))
            return
        if not wanted or phase in FINISHED or state in (RELEASED, ERROR):
            return
        if not is_gated(pod) and state != HELD:
            self._released.add(uid)
            self._spawn(self._not_gated(pod))
            return
        self._holds[ref] = self._hold(pod, adopt=True)

    def _hold(self, pod: Pod, *, adopt: bool) -> PodHold:
        namespace, _ = pod_ref(pod)
        turn = self._turns.setdefault((namespace, _annotations(pod)[LOCK_ANNOTATION]), asyncio.Lock())
        return PodHold(self._stores, self._api, self.changes, turn, pod, adopt=adopt)

    def lock_deleted(self, namespace: str, name: str) -> None:
        """Release the pods that hold the lock; the pods that wait for it go back to waiting for it."""
        for hold in [h for h in self._holds.values() if h.ref[0] == namespace and h.lock_name == name]:
            if hold.held:
                self._stop(hold, f"DistributedLock {name} was deleted", write=True)
            else:
                self._stop(hold, f"DistributedLock {name} was deleted", write=False)
                self._holds[hold.ref] = self._hold(hold.pod, adopt=False)

    async def stop_all(self) -> None:
        """Operator shutdown: keep every lease (the next operator adopts it) and finish pending writes."""
        holds, self._holds = list(self._holds.values()), {}
        await asyncio.gather(*(hold.abandon() for hold in holds))
        await asyncio.gather(*self._background, return_exceptions=True)

    def _stop(self, hold: PodHold, reason: str, *, write: bool, ungate: bool = False) -> None:
        if self._holds.get(hold.ref) is hold:
            del self._holds[hold.ref]
        if write and hold.uid:
            self._released.add(hold.uid)
        self._spawn(hold.release(reason, write=write, ungate=ungate))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _not_gated(self, pod: Pod) -> None:
        if not await still_leads(self._stores.default.etcd, self._stores.default.fence):
            return
        message = (
            f"the pod was not held back by the {SCHEDULING_GATE} scheduling gate (is the etcdlock webhook "
            "installed?): mutual exclusion is not enforced for it"
        )
        kopf.warn(pod, reason="NotGated", message=message)
        await self._api.annotate(pod_ref(pod), {STATE_ANNOTATION: ERROR, MESSAGE_ANNOTATION: message})

    async def _release_leftover(self, pod: Pod, reason: str) -> None:
        """Release the lease of a pod that finished or left the lock while no operator was watching."""
        lease = _parse_lease(_annotations(pod).get(LEASE_ANNOTATION))
        store = await lease_store(self._stores, pod_ref(pod)[0], _annotations(pod))
        if store is None:
            # Its EtcdCluster cannot be reached (or this replica no longer leads): the lease expires.
            store, lease = self._stores.default, None
            reason += "; its lease was not revoked and expires within its TTL"
        if lease is not None and not await give_back(store.etcd, store.fence, lease, None):
            return
        if lease is None and not await still_leads(self._stores.default.etcd, self._stores.default.fence):
            return
        message = f"released: {reason}"
        kopf.info(pod, reason="Released", message=message)
        notes = {STATE_ANNOTATION: RELEASED, MESSAGE_ANNOTATION: message}
        await self._api.annotate(pod_ref(pod), notes, ungate=is_gated(pod))


async def lease_store(stores: Stores, namespace: str, annotations: Mapping[str, str | None]) -> Store | None:
    """The store the pod's lease was granted in (its cluster annotation); None if it cannot be used now."""
    try:
        return await stores.for_cluster(namespace, annotations.get(CLUSTER_ANNOTATION) or None)
    except (ClusterNotReady, Fenced):
        return None


def _parse_lease(value: str | None) -> int | None:
    try:
        return int(value, 16) if value else None
    except ValueError:
        return None


async def give_back(etcd: EtcdClient, fence: Fence | None, lease: int, key: bytes | None) -> bool:
    """Revoke a pod's lease (the pod leaves the queue or gives its permit back); False if fenced off
    (or, under a fence, if etcd could not be reached: whether this replica still leads is unknown).

    Lease revocation cannot be part of a transaction, so under a fence the pod's key is deleted first in
    a fenced transaction (the revocation that follows then guards nothing), or, when the key is not known,
    the fence is checked just before revoking. If etcd cannot be reached the lease expires after its TTL.
    """
    try:
        async with asyncio.timeout(etcd.config.request_timeout):
            if fence is not None:
                await etcd.guarded_txn(fence.compares(), [], [delete_op(key)] if key else [])
            await etcd.revoke(lease)
    except Fenced:
        return False
    except (EtcdUnavailable, TimeoutError) as exc:
        log.warning("lease %x not revoked (it expires by itself): %s", lease, exc)
        # Without a fence the lease simply expires; with one, etcd could not confirm this replica leads.
        return fence is None
    return True
