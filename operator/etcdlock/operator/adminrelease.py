"""An admin's fenced release of one contender of a DistributedLock (a stuck holder, a forgotten waiter).

The request is the annotation :data:`~etcdlock.operator.releaserequest.RELEASE_ANNOTATION` on the lock
(see :mod:`etcdlock.operator.releaserequest`); the leading replica answers it:

1. the request must parse and name a key right under the lock's own key (never another lock's, another
   namespace's or the operator's), and the lock must be served (its key allowed, its etcd reachable);
2. the key is deleted only if its create revision is the fencing token named (so a holder that changed
   since the admin looked is not touched), in one transaction fenced on this replica's leadership (a
   deposed replica deletes nothing and answers nothing: the next leader finds the request on the lock);
3. the outcome goes to ``status.lastAdminRelease`` and into an Event on the lock (Normal
   ``ReleasedByAdmin``, or Warning ``AdminReleaseRefused``), and on the holder's pod when the operator holds
   the key for a pod; then the annotation is removed (only if it still carries this request).

The annotation is durable, so a request made while no operator runs, or interrupted by a failover, is
answered by the next leader. A request is answered once: its identity (its text's hash) is remembered here
and in the status, so the watch events that follow the answer do not run it again. A failover between the
deletion and the status write leaves the request to the next leader, which then finds the key gone and
answers ``KeyNotFound``.

Deleting the key is all it does: the lease stays (it may hold other keys of the same session). The holder
notices its key gone: a pod's hold tells the pod it lost the lock, ``etcdlock lock -- CMD`` stops CMD and
exits 3.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from etcdlock import clock
from etcdlock.etcd import EtcdError, Fenced
from etcdlock.etcd.keys import Contender
from etcdlock.etcd.requests import create_revision_is, delete_op, range_op
from etcdlock.operator.errors import OperatorError
from etcdlock.operator.events import EventRecorder
from etcdlock.operator.kube import ApiUnavailable, Conflict, Kube, retrying
from etcdlock.operator.locks import Locks
from etcdlock.operator.names import GROUP, LEASE_ANNOTATION, LOCKS, VERSION
from etcdlock.operator.releaserequest import (
    KEY_NOT_FOUND,
    LAST_RELEASE,
    NOT_SERVED,
    POD_HOLDER,
    RELEASE_ANNOTATION,
    RELEASED,
    STALE_TOKEN,
    InvalidRequest,
    ReleaseRequest,
    outcome_record,
    request_id,
)
from etcdlock.operator.stores import Store, Stores

log = logging.getLogger(__name__)

Ref = tuple[str, str]
# The pause before removing the answered request again, after the API did not take the removal.
CLEAR_RETRY = 1.0


@dataclass(frozen=True)
class Answer:
    """The outcome of one request; ``contender`` is the key as it was deleted (None if nothing was)."""

    outcome: str
    message: str
    contender: Contender | None = None

    @property
    def holder(self) -> str:
        if self.contender is None:
            return ""
        return self.contender.info.holder or self.contender.key


class AdminReleases:
    """Answers the release requests written on DistributedLocks (one at a time per lock: kopf's worker)."""

    def __init__(self, kube: Kube, locks: Locks, stores: Stores, events: EventRecorder) -> None:
        self._kube = kube
        self._locks = locks
        self._stores = stores
        self._events = events
        self._answered: dict[Ref, str] = {}
        # The request (its text) on each lock that failed unexpectedly: not tried again by this replica.
        self._failed: dict[Ref, Any] = {}

    async def requested(self, body: Mapping[str, Any]) -> None:
        """Answer the request on the lock ``body``, unless answered already; nothing if this replica was
        deposed meanwhile (the request stays for the next leader). Never raises: a request that fails
        unexpectedly is told in a Warning Event and left on the lock, once (not again on each of the
        lock's events, until another replica leads or this one restarts)."""
        meta = body.get("metadata") or {}
        ref = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        raw = (meta.get("annotations") or {}).get(RELEASE_ANNOTATION)
        if raw is None or self._failed.get(ref) == raw:
            return
        try:
            answered = ((body.get("status") or {}).get(LAST_RELEASE) or {}).get("requestId")
            if request_id(raw) not in (self._answered.get(ref), answered):
                await self._answer(body, ref, raw)
            await self._clear(ref, raw)
        except Fenced:
            log.info("lock %s/%s: release request left to the next leader", *ref)
        except Exception as exc:  # whatever it is, it must not fail every event of the lock
            self._failed[ref] = raw
            log.exception("lock %s/%s: release request failed", *ref)
            message = (
                f"release request failed in the operator ({type(exc).__name__}; its log says more); it stays "
                f"on the lock, not retried until the operator restarts or fails over; withdraw it with "
                f"kubectl annotate distributedlock {ref[1]} {RELEASE_ANNOTATION}-"
            )
            self._events.warn(body, "AdminReleaseFailed", message)

    async def _answer(self, body: Mapping[str, Any], ref: Ref, raw: str) -> None:
        request: ReleaseRequest | None = None
        try:
            request = ReleaseRequest.parse(raw)
            answer = await self._release(body, ref, request)
        except InvalidRequest as exc:
            answer = Answer(exc.outcome, f"release request refused: {exc}; nothing was deleted")
        record = outcome_record(request, raw, answer.outcome, answer.message, answer.holder, clock.now())
        await self._stores.leadership.assured()
        await retrying(
            f"status of DistributedLock {ref[0]}/{ref[1]}",
            lambda: self._kube.patch_status(LOCKS, *ref, {LAST_RELEASE: record}),
        )
        self._answered[ref] = record["requestId"]
        log.info("lock %s/%s: admin release: %s", *ref, answer.message)
        await self._tell(body, ref, answer)

    async def _release(self, body: Mapping[str, Any], ref: Ref, request: ReleaseRequest) -> Answer:
        try:
            spec = self._locks.served(body)
            request.check(spec.key)
            store = await self._stores.for_lock(ref[0], spec)
        except OperatorError as exc:
            message = f"release request refused: the lock is not served ({exc}); nothing was deleted"
            return Answer(NOT_SERVED, message)
        try:
            return await fenced_delete(store, request)
        except EtcdError as exc:
            # Not transient (those are waited out): denied, database full... the transaction wrote nothing.
            return Answer(
                NOT_SERVED, f"release request refused: etcd refused it ({exc}); nothing was deleted"
            )

    async def _tell(self, body: Mapping[str, Any], ref: Ref, answer: Answer) -> None:
        if answer.outcome != RELEASED:
            self._events.warn(body, "AdminReleaseRefused", answer.message)
            return
        self._events.info(body, "ReleasedByAdmin", answer.message)
        pod = await self._holding_pod(ref[0], answer.contender)
        if pod is not None:
            self._events.info(pod, "ReleasedByAdmin", f"{ref[1]}: {answer.message}")

    async def _holding_pod(self, namespace: str, contender: Contender | None) -> dict[str, Any] | None:
        """The pod the operator held the key for: named by the key's holder, in the lock's namespace, and
        naming the key's lease (a key any client wrote may claim to be a pod's; that is not enough)."""
        holder = (contender.info.holder or "") if contender else ""
        pod_namespace, _, name = holder.removeprefix(POD_HOLDER).partition("/")
        if contender is None or not holder.startswith(POD_HOLDER) or pod_namespace != namespace or not name:
            return None
        try:
            pod = await self._kube.call(self._kube.core.read_namespaced_pod, name, namespace)
        except ApiUnavailable as exc:
            log.warning("pod %s/%s: not told of its admin release (%s)", namespace, name, exc)
            return None
        annotations = ((pod or {}).get("metadata") or {}).get("annotations") or {}
        return pod if annotations.get(LEASE_ANNOTATION) == format(contender.lease, "x") else None

    async def _clear(self, ref: Ref, raw: str) -> None:
        """Remove the annotation if it still carries this request (an admin may have written another)."""
        while True:
            await self._stores.leadership.assured()
            lock = await retrying(
                f"DistributedLock {ref[0]}/{ref[1]}", lambda: self._kube.custom_object(LOCKS, *ref)
            )
            meta = (lock or {}).get("metadata") or {}
            if (meta.get("annotations") or {}).get(RELEASE_ANNOTATION) != raw:
                return
            removed: dict[str, Any] = {RELEASE_ANNOTATION: None}
            patch = {"metadata": {"resourceVersion": meta.get("resourceVersion"), "annotations": removed}}
            objects = self._kube.objects
            try:
                await self._kube.call(
                    objects.patch_namespaced_custom_object, GROUP, VERSION, ref[0], LOCKS, ref[1], patch
                )
                return
            except Conflict:
                continue  # the lock changed meanwhile: look again
            except ApiUnavailable as exc:
                log.warning("lock %s/%s: release request not removed yet (%s); retrying", *ref, exc)
                await asyncio.sleep(CLEAR_RETRY)


async def fenced_delete(store: Store, request: ReleaseRequest) -> Answer:
    """Delete the request's key if its create revision is the request's token, fenced on this replica's
    leadership (:class:`Fenced`: deposed, nothing deleted). Transient etcd errors are waited out."""
    key = request.key.encode()
    guard = store.fence.compares() if store.fence is not None else []
    same = [create_revision_is(key, request.fencing_token)]
    response = await store.persist(
        lambda: store.etcd.guarded_txn(guard, same, [range_op(key), delete_op(key)], [range_op(key)])
    )
    kvs = list(response.responses[0].response_range.kvs)
    if response.succeeded:
        contender = Contender.from_kv(kvs[0])
        who = contender.info.holder or "an unnamed client (etcdctl?)"
        why = request.reason or "no reason given"
        message = (
            f"{request.key} (fencing token {request.fencing_token}, holder {who}) released at the request "
            f"of {request.by}: {why}"
        )
        return Answer(RELEASED, message, contender)
    if not kvs:
        message = (
            f"release request refused: {request.key} is not in etcd (released already?); nothing was deleted"
        )
        return Answer(KEY_NOT_FOUND, message)
    current = Contender.from_kv(kvs[0])
    message = (
        f"release request refused: {request.key} has fencing token {current.fencing_token}, not "
        f"{request.fencing_token} (another holder since); nothing was deleted"
    )
    return Answer(STALE_TOKEN, message)
