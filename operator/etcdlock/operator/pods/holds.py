"""Pods that wait for a lock: every annotated pod's :class:`~etcdlock.operator.pods.hold.PodHold`, started,
switched and stopped from the pods' watch events. What to do about each event is decided by
:func:`~etcdlock.operator.pods.decisions.decide` (its rules are written there); :class:`PodHolds` applies it.

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
from typing import Any, assert_never

from prometheus_client import Counter

from etcdlock.etcd import Fenced
from etcdlock.operator.locks import LockChanges
from etcdlock.operator.names import (
    ERROR,
    LEASE_ANNOTATION,
    LOCK_ANNOTATION,
    MANAGED_LABEL,
    MESSAGE_ANNOTATION,
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
from etcdlock.operator.pods.hold import PodHold
from etcdlock.operator.pods.line import Line

log = logging.getLogger(__name__)


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

    def _hold(self, pod: Pod, *, adopt: bool, after: asyncio.Future[Any] | None = None) -> PodHold:
        namespace, _ = pod_ref(pod)
        line = self._lines.setdefault((namespace, annotations_of(pod)[LOCK_ANNOTATION]), Line())
        return PodHold(self._context, line, pod, adopt=adopt, after=after)

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

    async def _say_not_gated(self, pod: Pod) -> None:
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
