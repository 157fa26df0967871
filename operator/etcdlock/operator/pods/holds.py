"""Pods that wait for a lock: every annotated pod's :class:`~etcdlock.operator.pods.hold.PodHold`, started,
switched and stopped from the pods' watch events. What to do about each event is decided by
:func:`~etcdlock.operator.pods.decisions.decide` (its rules are written there); :class:`PodHolds` applies it.

A pod annotated ``etcdlock.io/lock: NAME`` is created with the scheduling gate ``etcdlock.io/lock`` (added
by the webhook); its hold queues it and removes the gate once it holds. Its lease is revoked when the pod
succeeds, fails, is deleted or loses the annotation, and when the lock is deleted.

Changing the annotation of a pod still held back is leave-then-join: it leaves the old lock's queue, then
queues for the new lock, and is ungated only once it holds that one. A pod already running cannot be held
back again: it gives the old lock back and is told that it does not wait for the new one.

A pod that runs without the gate is not queued: holding a lock for a pod that did not wait for it would
say that it is guarded when it is not. It is told why: annotated after it was created (the webhook marks
that update; a pod that exists cannot be gated), or not gated at creation (no webhook, or none reachable).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, assert_never

from prometheus_client import Counter

from etcdlock.etcd import Fenced, LeaseNotFound
from etcdlock.operator.locks import LockChanges
from etcdlock.operator.names import (
    ERROR,
    LEASE_ANNOTATION,
    LOCK_ANNOTATION,
    MANAGED_LABEL,
    MESSAGE_ANNOTATION,
    ON_LOST_ANNOTATION,
    RELEASED,
    SCHEDULING_GATE,
    STATE_ANNOTATION,
)
from etcdlock.operator.pods.api import (
    Pod,
    Ref,
    annotations_of,
    is_gated,
    is_labelled,
    parse_lease,
    pod_ref,
)
from etcdlock.operator.pods.context import PodContext
from etcdlock.operator.pods.decisions import Action, Decision, HoldView, Seen, decide, decide_lock_deleted
from etcdlock.operator.pods.eviction import evict
from etcdlock.operator.pods.hold import PodHold
from etcdlock.operator.pods.line import Line
from etcdlock.operator.pods.policies import annotated_late

log = logging.getLogger(__name__)

ANNOTATED_LATE = (
    f"the {LOCK_ANNOTATION} annotation was added after the pod was created: a pod that exists cannot be "
    f"held back by the {SCHEDULING_GATE} scheduling gate, so it was not queued and runs without the lock "
    "(mutual exclusion is not enforced for it); recreate it with the annotation, or put the annotation on "
    "the pod template of its Job or Deployment"
)
NOT_GATED = (
    f"the pod was not held back by the {SCHEDULING_GATE} scheduling gate (is the etcdlock webhook "
    "installed?): mutual exclusion is not enforced for it"
)


class PodHolds:
    """Every annotated pod's hold, by pod."""

    def __init__(self, context: PodContext, events: Counter) -> None:
        self._context = context
        self._events = events
        self._holds: dict[Ref, PodHold] = {}
        self._lines: dict[Ref, Line] = {}
        self._background: set[asyncio.Future[Any]] = set()
        # Holds being released: a replica that stops leading ends their releases too.
        self._releasing: set[PodHold] = set()
        # Pods (by uid) this operator released: their later events, until deletion, need nothing more.
        self._released: set[str] = set()
        # Evictions taken up from an earlier leader, by pod uid (those a hold begins run in its task).
        self._evictions: dict[str, asyncio.Task[None]] = {}

    @property
    def changes(self) -> LockChanges:
        return self._context.changes

    def observe(self, event_type: str | None, pod: Pod) -> None:
        """React to one watch event of a pod labelled for the operator (the watch selects the label)."""
        self._events.inc()
        if event_type == "DELETED":
            self._spawn(self._deleted(pod))
        else:
            self._decide(event_type, pod)

    async def _deleted(self, pod: Pod) -> None:
        """A DELETED event is the pod's deletion, or the pod leaving the watch's label selector (someone
        removed the label): the pod as stored tells which. A pod that still asks for a lock is labelled
        again, and either way one that exists is decided on as it is now, never released as deleted."""
        current = await self._context.api.read(pod_ref(pod))
        if current is None or current["metadata"].get("uid") != pod["metadata"].get("uid"):
            self._decide("DELETED", pod)
            return
        self._decide("MODIFIED", current)
        if annotations_of(current).get(LOCK_ANNOTATION) and not is_labelled(current):
            log.info("pod %s/%s: its %s label was removed; labelled again", *pod_ref(pod), MANAGED_LABEL)
            await self._context.api.label(pod_ref(pod))

    def _decide(self, event_type: str | None, pod: Pod) -> None:
        seen = Seen.of(event_type, pod)
        if seen.finished:
            self._stop_eviction(seen.uid)  # its work stopped: nothing to evict
        hold = self._holds.get(pod_ref(pod))
        if seen.deleted and hold is not None and hold.uid != seen.uid:
            hold = None  # the event is older than a new pod of the same name, which is held here
        decision = decide(seen, None if hold is None else _view(hold), seen.uid in self._released)
        if hold is not None and decision.stale_hold:
            self._stop(hold, "the pod was deleted", write=False)
            hold = None
        if hold is not None:
            hold.seen(pod)
        self._apply(decision, pod, seen.uid, hold)

    def lock_deleted(self, namespace: str, name: str) -> None:
        """Release the pods that hold the lock; the pods that wait for it go back to waiting for it."""
        for hold in [h for h in self._holds.values() if h.ref[0] == namespace and h.lock_name == name]:
            self._apply(decide_lock_deleted(_view(hold)), hold.pod, hold.uid, hold)

    def _apply(self, decision: Decision, pod: Pod, uid: str, hold: PodHold | None) -> None:
        """The effects of ``decision`` (see :mod:`~etcdlock.operator.pods.decisions`) for the pod ``uid``
        whose latest version is ``pod``; ``hold``: its hold here, if it has one (the actions on a hold are
        decided only for a pod that has one)."""
        reason = decision.reason
        match decision.action:
            case Action.IGNORE | Action.KEEP:
                pass
            case Action.FORGET:
                self._released.discard(uid)
                self._stop_eviction(uid)
            case Action.HOLD:
                self._holds[pod_ref(pod)] = self._hold(pod, adopt=True)
            case Action.RELEASE | Action.RELEASE_UNGATE:
                ungate = decision.action is Action.RELEASE_UNGATE
                self._stop(_required(hold), reason, write=True, ungate=ungate)
            case Action.REFUSE_SWITCH:
                self._context.events.warn(pod, "LockChanged", reason)
                self._stop(_required(hold), reason, write=True)
            case Action.SWITCH | Action.REQUEUE:
                self._rejoin(_required(hold), pod, reason)
            case Action.NOT_GATED:
                self._not_gated(pod, uid, hold, reason)
            case Action.INVALID:
                self._invalid(pod, uid, hold, reason)
            case Action.EVICT:
                self._released.add(uid)
                self._evictions[uid] = eviction = asyncio.create_task(self._evict(pod, uid, reason))
                eviction.add_done_callback(_told)
            case Action.HAND_OVER:
                del self._holds[_required(hold).ref]
                self._spawn(_required(hold).abandon())
            case Action.RELEASE_LEFTOVER:
                self._released.add(uid)
                self._spawn(self._release_leftover(pod, reason))
            case _:
                assert_never(decision.action)

    def _rejoin(self, hold: PodHold, pod: Pod, reason: str) -> None:
        """Leave the queue (writing nothing), then queue for the lock ``pod`` asks for, once left."""
        release = self._stop(hold, reason, write=False)
        self._holds[hold.ref] = self._hold(pod, adopt=False, after=release)

    def _not_gated(self, pod: Pod, uid: str, hold: PodHold | None, reason: str) -> None:
        """Stop the pod's hold if it has one (writing nothing) and tell the pod it is not guarded."""
        if hold is not None:
            self._stop(hold, reason, write=False)
        self._released.add(uid)
        self._spawn(self._say_not_gated(pod))

    def _invalid(self, pod: Pod, uid: str, hold: PodHold | None, reason: str) -> None:
        """Stop the pod's hold if it has one (writing nothing) and tell the pod which annotation is invalid:
        it stays gated (see the decisions)."""
        if hold is not None:
            self._stop(hold, reason, write=False)
        self._released.add(uid)
        self._spawn(self._say_invalid(pod, reason))

    def _hold(self, pod: Pod, *, adopt: bool, after: asyncio.Future[Any] | None = None) -> PodHold:
        namespace, _ = pod_ref(pod)
        line = self._lines.setdefault((namespace, annotations_of(pod)[LOCK_ANNOTATION]), Line())
        return PodHold(self._context, line, pod, adopt=adopt, after=after, ended=self._ended)

    async def _evict(self, pod: Pod, uid: str, reason: str) -> None:
        """Take up the eviction an earlier leader began (the pod says Evicting); a replica deposed
        meanwhile leaves it to the next."""
        try:
            await evict(self._context, pod, f"{reason}: its eviction ({ON_LOST_ANNOTATION}: evict) goes on")
        except Fenced:
            log.info("pod %s/%s: not evicted here: this replica no longer leads", *pod_ref(pod))
        finally:
            self._evictions.pop(uid, None)

    def _stop_eviction(self, uid: str) -> None:
        eviction = self._evictions.pop(uid, None)
        if eviction is not None:
            eviction.cancel()

    def _ended(self, hold: PodHold) -> None:
        """A hold ended of itself (its pod timed out): the pod's later events are decided without it."""
        if self._holds.get(hold.ref) is hold:
            del self._holds[hold.ref]

    async def stop_all(self) -> None:
        """Operator shutdown: keep every lease (the next operator adopts it) and finish pending writes."""
        holds, self._holds = [*self._holds.values(), *self._releasing], {}
        evictions, self._evictions = list(self._evictions.values()), {}
        for eviction in evictions:
            eviction.cancel()  # the pod still says Evicting: the next leader takes it up
        await asyncio.gather(*(hold.abandon() for hold in holds), *evictions, return_exceptions=True)
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

    async def _say_not_gated(self, pod: Pod) -> None:
        if annotated_late(pod):
            await self._say_error(pod, "AnnotatedAfterCreation", ANNOTATED_LATE)
        else:
            await self._say_error(pod, "NotGated", NOT_GATED)

    async def _say_invalid(self, pod: Pod, reason: str) -> None:
        message = (
            f"{reason}: the pod does not wait for the lock and stays gated; recreate it with a valid value"
        )
        await self._say_error(pod, "InvalidAnnotation", message)

    async def _say_error(self, pod: Pod, reason: str, message: str) -> None:
        """State Error, with a Warning; not from a replica that no longer leads."""
        if not await self._context.stores.default.confirmed():
            return
        self._context.events.warn(pod, reason, message)
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
            except LeaseNotFound:
                pass  # it expired already (or was revoked when the pod left a queue it timed out of)
            except Fenced:
                return  # deposed meanwhile: the next leader sees the pod finished, too
        message = f"released: {reason}"
        self._context.events.info(pod, "Released", message)
        notes = {STATE_ANNOTATION: RELEASED, MESSAGE_ANNOTATION: message}
        await self._context.api.annotate(pod_ref(pod), notes, ungate=is_gated(pod))


def _view(hold: PodHold) -> HoldView:
    return HoldView(hold.uid, hold.lock_name, hold.held)


def _required(hold: PodHold | None) -> PodHold:
    """The hold an action on a hold is decided for (decide gives those only for a pod that has one)."""
    if hold is None:
        raise RuntimeError("an action on a hold was decided for a pod without one")
    return hold


def _told(task: asyncio.Future[Any]) -> None:
    """A background write for a pod ended: say how, if it failed (a deposed replica's end is expected)."""
    if task.cancelled():
        return
    error = task.exception()
    if isinstance(error, Fenced):
        log.info("a pod write was not made: this replica no longer leads")
    elif error is not None:
        log.error("a pod write failed", exc_info=error)
