"""Pods that wait for a lock: every annotated pod's :class:`~etcdlock.operator.pods.hold.PodHold`, started,
switched and stopped from the pods' watch events.

A pod annotated ``etcdlock.io/lock: NAME`` is created with the scheduling gate ``etcdlock.io/lock`` (added
by the webhook); its hold queues it and removes the gate once it holds. Its lease is revoked when the pod
succeeds, fails, is deleted or loses the annotation, and when the lock is deleted.

Changing the annotation of a pod still held back is leave-then-join: it leaves the old lock's queue, then
queues for the new lock, and is ungated only once it holds that one. A pod already running cannot be held
back again: it gives the old lock back and is told that it does not wait for the new one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from etcdlock.etcd import Fenced
from etcdlock.operator.locks import LockChanges
from etcdlock.operator.names import (
    ERROR,
    HELD,
    LEASE_ANNOTATION,
    LOCK_ANNOTATION,
    MESSAGE_ANNOTATION,
    RELEASED,
    SCHEDULING_GATE,
    STATE_ANNOTATION,
    WAITING,
)
from etcdlock.operator.pods.api import Pod, annotations_of, is_gated, parse_lease, pod_ref
from etcdlock.operator.pods.context import PodContext
from etcdlock.operator.pods.hold import Line, PodHold

log = logging.getLogger(__name__)

Ref = tuple[str, str]

FINISHED = ("Succeeded", "Failed")


class PodHolds:
    """Every annotated pod's hold, by pod."""

    def __init__(self, context: PodContext) -> None:
        self._context = context
        self._holds: dict[Ref, PodHold] = {}
        self._lines: dict[Ref, Line] = {}
        self._background: set[asyncio.Future[Any]] = set()
        # Holds being released: a replica that stops leading ends their releases too.
        self._releasing: set[PodHold] = set()
        # Pods (by uid) this operator released: their later events, until deletion, need nothing more.
        self._released: set[str] = set()

    @property
    def changes(self) -> LockChanges:
        return self._context.changes

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
        annotations = annotations_of(pod)
        wanted = annotations.get(LOCK_ANNOTATION)
        phase = (pod.get("status") or {}).get("phase")
        state = annotations.get(STATE_ANNOTATION)
        if hold is not None:
            self._update(hold, pod, wanted, phase, state)
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

    def _update(
        self, hold: PodHold, pod: Pod, wanted: str | None, phase: str | None, state: str | None
    ) -> None:
        hold.seen(pod)
        if wanted != hold.lock_name:
            self._lock_changed(hold, pod, wanted)
        elif phase in FINISHED:
            self._stop(hold, f"the pod {str(phase).lower()}", write=True)
        elif not hold.held and not is_gated(pod) and state != HELD:
            self._stop(hold, "the scheduling gate was removed by someone else", write=False)
            self._released.add(hold.uid)
            self._spawn(self._not_gated(pod))
        elif not hold.held and state == HELD:
            # Granted by a newer leader while this replica was paused: not ours to touch any more.
            del self._holds[hold.ref]
            self._spawn(hold.abandon())

    def _lock_changed(self, hold: PodHold, pod: Pod, wanted: str | None) -> None:
        """Leave-then-join; see the module docstring."""
        if not wanted:
            self._stop(hold, f"the {LOCK_ANNOTATION} annotation was removed", write=True, ungate=True)
            return
        if not is_gated(pod):
            message = (
                f"the {LOCK_ANNOTATION} annotation changed to {wanted} after the pod started: a started pod "
                f"cannot be held back again, so it does not wait for {wanted}"
            )
            self._context.events.warn(pod, "LockChanged", message)
            self._stop(hold, message, write=True)
            return
        release = self._stop(hold, f"the {LOCK_ANNOTATION} annotation changed to {wanted}", write=False)
        self._holds[hold.ref] = self._hold(pod, adopt=False, after=release)

    def _hold(self, pod: Pod, *, adopt: bool, after: asyncio.Future[Any] | None = None) -> PodHold:
        namespace, _ = pod_ref(pod)
        line = self._lines.setdefault((namespace, annotations_of(pod)[LOCK_ANNOTATION]), Line())
        return PodHold(self._context, line, pod, adopt=adopt, after=after)

    def lock_deleted(self, namespace: str, name: str) -> None:
        """Release the pods that hold the lock; the pods that wait for it go back to waiting for it."""
        for hold in [h for h in self._holds.values() if h.ref[0] == namespace and h.lock_name == name]:
            if hold.held:
                self._stop(hold, f"DistributedLock {name} was deleted", write=True)
            else:
                release = self._stop(hold, f"DistributedLock {name} was deleted", write=False)
                self._holds[hold.ref] = self._hold(hold.pod, adopt=False, after=release)

    async def stop_all(self) -> None:
        """Operator shutdown: keep every lease (the next operator adopts it) and finish pending writes."""
        holds, self._holds = [*self._holds.values(), *self._releasing], {}
        await asyncio.gather(*(hold.abandon() for hold in holds))
        await asyncio.gather(*self._background, return_exceptions=True)

    def _stop(self, hold: PodHold, reason: str, *, write: bool, ungate: bool = False) -> asyncio.Future[Any]:
        if self._holds.get(hold.ref) is hold:
            del self._holds[hold.ref]
        if write and hold.uid:
            self._released.add(hold.uid)
        self._releasing.add(hold)
        release = self._spawn(hold.release(reason, write=write, ungate=ungate))
        release.add_done_callback(lambda _: self._releasing.discard(hold))
        return release

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_told)
        return task

    async def _not_gated(self, pod: Pod) -> None:
        if not await self._context.stores.default.confirmed():
            return
        message = (
            f"the pod was not held back by the {SCHEDULING_GATE} scheduling gate (is the etcdlock webhook "
            "installed?): mutual exclusion is not enforced for it"
        )
        self._context.events.warn(pod, "NotGated", message)
        await self._context.api.annotate(pod_ref(pod), {STATE_ANNOTATION: ERROR, MESSAGE_ANNOTATION: message})

    async def _release_leftover(self, pod: Pod, reason: str) -> None:
        """Release the lease of a pod that finished or left the lock while no operator was watching."""
        lease = parse_lease(annotations_of(pod).get(LEASE_ANNOTATION))
        store = await self._context.lease_store(pod_ref(pod)[0], annotations_of(pod))
        if store is None:
            # Its EtcdCluster cannot be reached (or this replica no longer leads): the lease expires.
            store, lease = self._context.stores.default, None
            reason += "; its lease was not revoked and expires within its TTL"
        if not await store.confirmed():
            return
        if lease is not None:
            try:
                await store.persist(lambda: store.etcd.revoke(lease))
            except Fenced:
                return  # deposed meanwhile: the next leader sees the pod finished, too
        message = f"released: {reason}"
        self._context.events.info(pod, "Released", message)
        notes = {STATE_ANNOTATION: RELEASED, MESSAGE_ANNOTATION: message}
        await self._context.api.annotate(pod_ref(pod), notes, ungate=is_gated(pod))


def _told(task: asyncio.Future[Any]) -> None:
    """A background write for a pod ended: say how, if it failed (a deposed replica's end is expected)."""
    if task.cancelled():
        return
    error = task.exception()
    if isinstance(error, Fenced):
        log.info("a pod write was not made: this replica no longer leads")
    elif error is not None:
        log.error("a pod write failed", exc_info=error)
