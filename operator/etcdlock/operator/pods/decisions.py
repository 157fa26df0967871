"""What the operator does about a pod, decided by pure functions; :class:`~.holds.PodHolds` applies it.

:func:`decide` takes one watch event of a pod (:class:`Seen`: what the event shows), the hold this replica
has for a pod of that namespace and name (:class:`HoldView`, or None) and whether this replica already
released this very pod (by uid: its later events need nothing more until it is deleted). The first row
that matches wins:

==  =======  ============================  ==========================================  ================
#   event    hold here                     the pod as seen                             decision
==  =======  ============================  ==========================================  ================
1   DELETED  any, or none                  any                                         FORGET
2   other    another uid's (its pod is     decided as if there were no hold: 11-17     that row's, with
             gone: it is stopped first)                                                ``stale_hold``
3   other    this pod's, for another lock  no lock annotation (it was removed)         RELEASE_UNGATE
4                                          not gated (the pod started)                 REFUSE_SWITCH
5                                          gated                                       SWITCH
6   other    this pod's, for its lock      finished                                    RELEASE
7            ... the pod not holding yet   not gated, not held                         NOT_GATED
8            ... the pod not holding yet   held (a newer leader granted it)            HAND_OVER
9            ... the pod not holding yet   a policy annotation invalid                 INVALID
10                                         otherwise                                   KEEP
11  other    none                          released by this replica before             IGNORE
12                                         state Evicting, not finished                EVICT
13                                         state waiting, Held or TimedOut; no lock,   RELEASE_LEFTOVER
                                           or finished
14                                         no lock, finished, or state Released,       IGNORE
                                           Error, TimedOut or Evicting
15                                         not gated, not held                         NOT_GATED
16                                         a policy annotation invalid (not held)      INVALID
17                                         otherwise                                   HOLD
==  =======  ============================  ==========================================  ================

"Finished" is phase Succeeded or Failed; "gated" is the ``etcdlock.io/lock`` scheduling gate still on the
pod; "state" is the ``etcdlock.io/state`` annotation, as the last operator to lead wrote it ("waiting":
Waiting or LockNotFound). "Held" is state Held, or a pod not gated that says waiting and names a fencing
token: only the operator removes the gate and writes the token, together, when the pod holds, so such a
pod held (an earlier release relabelled a holder Waiting while its etcd could not be reached) and is
never taken for a pod that came without the gate. A pod without a hold here but with a state (row 12,
13, 17) is one an earlier leader handled: its lease and place are adopted (HOLD), or released for it
(RELEASE_LEFTOVER), or the eviction it began after the pod lost its hold is taken up again (EVICT). A
pod that timed out (its ``etcdlock.io/max-wait`` passed) left the queue and stays gated: nothing more is
done for it (its hold ended itself, and the pod is decided on without one) unless it stops asking for the
lock or finishes (RELEASE_LEFTOVER lets it go). A policy annotation (:mod:`.policies`) that cannot be
used stops the pod from waiting, and it stays gated (INVALID: fail closed); once the pod holds, max-wait
no longer matters and on-lost is read when the hold is lost. Changing the lock annotation is
leave-then-join while the pod is gated (SWITCH); a pod already running cannot be held back again
(REFUSE_SWITCH). The lease and cluster annotations are not decided on: the effects read them (HOLD adopts
the lease the pod names, RELEASE_LEFTOVER revokes it).

:func:`decide_lock_deleted` decides for each hold of a DistributedLock that is deleted: a pod that holds
it gives it back (RELEASE); a pod that waits leaves the queue and joins it again, waiting for the lock to
be created again (REQUEUE).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from etcdlock.operator.names import (
    ERROR,
    EVICTING,
    HELD,
    LOCK_ANNOTATION,
    RELEASED,
    STATE_ANNOTATION,
    TIMED_OUT,
    TOKEN_ANNOTATION,
    WAITING_STATES,
)
from etcdlock.operator.pods.api import annotations_of, is_gated
from etcdlock.operator.pods.policies import policy_error

FINISHED = ("Succeeded", "Failed")


class Action(enum.Enum):
    """What to do; :class:`Decision` adds the reason given to the pod."""

    IGNORE = "ignore"  # nothing to do for this pod
    FORGET = "forget"  # the pod is gone: forget that it was released here
    HOLD = "hold"  # start a hold, adopting the lease (and place) the pod names, if it still lives
    KEEP = "keep"  # the hold goes on, with the pod's new version
    RELEASE = "release"  # give the lock back (leave the queue) and tell the pod why
    RELEASE_UNGATE = "release-ungate"  # the same, and let a pod still held back go: it wants no lock now
    REFUSE_SWITCH = "refuse-switch"  # a started pod asks for another lock: warn, give the old one back
    SWITCH = "switch"  # leave the old lock's queue, then queue for the lock the pod now asks for
    REQUEUE = "requeue"  # leave the lock's queue, then queue for it again (at the back)
    NOT_GATED = "not-gated"  # the pod runs without the gate: stop any hold, tell the pod it is not guarded
    INVALID = "invalid"  # a policy annotation is invalid: stop any hold, tell the pod; it stays gated
    EVICT = "evict"  # take up the eviction of a pod that lost its hold (an earlier leader began it)
    HAND_OVER = "hand-over"  # a newer leader granted the pod: stop here without revoking or writing
    RELEASE_LEFTOVER = "release-leftover"  # revoke the lease of a pod that finished while no one watched


@dataclass(frozen=True)
class Decision:
    """The action, the reason the pod is told (if any), and whether the hold found here belongs to a pod
    that is gone (deleted, or an earlier pod of the same name): that hold is stopped first, writing
    nothing."""

    action: Action
    reason: str = ""
    stale_hold: bool = False


@dataclass(frozen=True)
class Seen:
    """What one watch event shows of a pod, as far as the decision goes."""

    deleted: bool
    uid: str
    lock: str | None
    gated: bool
    phase: str | None
    state: str | None
    policy_error: str = ""  # why a policy annotation cannot be used ("" if they can)
    token: bool = False  # whether the pod names a fencing token

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    @property
    def held(self) -> bool:
        """Whether the pod was granted its lock (see the module docstring)."""
        return self.state == HELD or (not self.gated and self.token and self.state in WAITING_STATES)

    @classmethod
    def of(cls, event_type: str | None, pod: Mapping[str, Any]) -> Seen:
        annotations = annotations_of(pod)
        return cls(
            deleted=event_type == "DELETED",
            uid=pod["metadata"].get("uid") or "",
            lock=annotations.get(LOCK_ANNOTATION),
            gated=is_gated(pod),
            phase=(pod.get("status") or {}).get("phase"),
            state=annotations.get(STATE_ANNOTATION),
            policy_error=policy_error(pod),
            token=TOKEN_ANNOTATION in annotations,
        )


@dataclass(frozen=True)
class HoldView:
    """This replica's hold for a pod: the pod's uid, the lock it serves, whether the pod holds it."""

    uid: str
    lock: str
    held: bool


def decide(seen: Seen, hold: HoldView | None, released: bool) -> Decision:
    """The decision for one watch event of a pod; see the table in the module docstring."""
    if seen.deleted:
        return Decision(Action.FORGET, "the pod was deleted", stale_hold=hold is not None)
    if hold is not None and hold.uid != seen.uid:
        return replace(_without_hold(seen, released), stale_hold=True)
    if hold is not None:
        return _with_hold(seen, hold)
    return _without_hold(seen, released)


def _with_hold(seen: Seen, hold: HoldView) -> Decision:
    """Rows 3-10."""
    if seen.lock != hold.lock:
        return _lock_changed(seen)
    if seen.finished:
        return Decision(Action.RELEASE, f"the pod {str(seen.phase).lower()}")
    if not hold.held and not seen.gated and not seen.held:
        return Decision(Action.NOT_GATED, "the scheduling gate was removed by someone else")
    if not hold.held and seen.held:
        return Decision(Action.HAND_OVER)  # granted by a newer leader while this replica was paused
    if not hold.held and seen.policy_error:
        return Decision(Action.INVALID, seen.policy_error)
    return Decision(Action.KEEP)


def _lock_changed(seen: Seen) -> Decision:
    """Rows 3-5: leave-then-join while the pod is held back; see the module docstring."""
    if not seen.lock:
        return Decision(Action.RELEASE_UNGATE, f"the {LOCK_ANNOTATION} annotation was removed")
    if not seen.gated:
        return Decision(
            Action.REFUSE_SWITCH,
            f"the {LOCK_ANNOTATION} annotation changed to {seen.lock} after the pod started: a started pod "
            f"cannot be held back again, so it does not wait for {seen.lock}",
        )
    return Decision(Action.SWITCH, f"the {LOCK_ANNOTATION} annotation changed to {seen.lock}")


def _without_hold(seen: Seen, released: bool) -> Decision:
    """Rows 11-17."""
    if released:
        return Decision(Action.IGNORE)
    if seen.state == EVICTING and not seen.finished:
        return Decision(Action.EVICT, "the pod lost its hold on the lock")
    if seen.state in (*WAITING_STATES, HELD, TIMED_OUT) and (not seen.lock or seen.finished):
        why = "the pod finished or left the lock"
        why += "" if seen.state == TIMED_OUT else " while the operator was away"
        return Decision(Action.RELEASE_LEFTOVER, why)
    if not seen.lock or seen.finished or seen.state in (RELEASED, ERROR, TIMED_OUT, EVICTING):
        return Decision(Action.IGNORE)
    if not seen.gated and not seen.held:
        return Decision(Action.NOT_GATED)
    if seen.policy_error and not seen.held:
        return Decision(Action.INVALID, seen.policy_error)
    return Decision(Action.HOLD)


def granted(pod: Mapping[str, Any]) -> bool:
    """Whether the pod was granted its lock, as its annotations and gate show (see the module docstring):
    a hold adopting it adopts a holder."""
    return Seen.of(None, pod).held


def decide_lock_deleted(hold: HoldView) -> Decision:
    """The decision for a hold whose DistributedLock was deleted; see the module docstring."""
    reason = f"DistributedLock {hold.lock} was deleted"
    return Decision(Action.RELEASE if hold.held else Action.REQUEUE, reason)
