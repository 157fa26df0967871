"""The pod flow's decisions (:mod:`etcdlock.operator.pods.decisions`): every row of its table, by name,
then every combination of inputs against the rules that hold across rows."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from etcdlock.operator.names import (
    ERROR,
    EVICTING,
    HELD,
    LOCK_ANNOTATION,
    LOCK_NOT_FOUND,
    MAX_WAIT_ANNOTATION,
    RELEASED,
    SCHEDULING_GATE,
    TIMED_OUT,
    TOKEN_ANNOTATION,
    WAITING,
)
from etcdlock.operator.pods.decisions import (
    Action,
    Decision,
    HoldView,
    Seen,
    decide,
    decide_lock_deleted,
)

# A pod asking for lock "a", created with the gate, waiting in line: the usual event.
WAITING_POD = Seen(deleted=False, uid="uid-1", lock="a", gated=True, phase="Pending", state=WAITING)
# The same pod's hold here, before it holds.
ITS_HOLD = HoldView(uid="uid-1", lock="a", held=False)


def pod(**changes: object) -> Seen:
    return replace(WAITING_POD, **changes)


def hold(**changes: object) -> HoldView:
    return replace(ITS_HOLD, **changes)


# Row 1


@pytest.mark.parametrize("its_hold", [ITS_HOLD, hold(held=True), hold(uid="uid-0")])
def test_a_deleted_pod_is_forgotten_and_its_hold_stopped(its_hold: HoldView) -> None:
    assert decide(pod(deleted=True), its_hold, released=False) == Decision(
        Action.FORGET, "the pod was deleted", stale_hold=True
    )


def test_a_deleted_pod_without_a_hold_is_forgotten() -> None:
    assert decide(pod(deleted=True), None, released=True) == Decision(Action.FORGET, "the pod was deleted")


# Row 2


def test_the_hold_of_an_earlier_pod_of_the_same_name_is_stopped_and_the_new_pod_decided_afresh() -> None:
    new_pod = pod(uid="uid-2", state=None)
    assert decide(new_pod, hold(held=True), released=False) == Decision(Action.HOLD, stale_hold=True)
    assert decide(new_pod, hold(), released=True) == Decision(Action.IGNORE, stale_hold=True)


# Rows 3-5: the lock annotation changed


@pytest.mark.parametrize("removed", [None, ""])
@pytest.mark.parametrize("gated", [True, False])
def test_removing_the_lock_annotation_releases_the_pod_and_lets_it_go(
    removed: str | None, gated: bool
) -> None:
    decision = decide(pod(lock=removed, gated=gated), hold(), released=False)
    assert decision == Decision(Action.RELEASE_UNGATE, f"the {LOCK_ANNOTATION} annotation was removed")


@pytest.mark.parametrize("held", [True, False])
def test_a_started_pod_asking_for_another_lock_gives_the_old_one_back_and_does_not_wait(held: bool) -> None:
    decision = decide(pod(lock="b", gated=False, phase="Running", state=HELD), hold(held=held), False)
    assert decision.action is Action.REFUSE_SWITCH
    assert decision.reason == (
        f"the {LOCK_ANNOTATION} annotation changed to b after the pod started: a started pod cannot be held "
        "back again, so it does not wait for b"
    )


@pytest.mark.parametrize("held", [True, False])
def test_a_gated_pod_asking_for_another_lock_leaves_the_old_queue_then_joins_the_new_one(held: bool) -> None:
    decision = decide(pod(lock="b"), hold(held=held), released=False)
    assert decision == Decision(Action.SWITCH, f"the {LOCK_ANNOTATION} annotation changed to b")


def test_a_lock_change_is_decided_before_the_pod_finishing() -> None:
    decision = decide(pod(lock="b", gated=False, phase="Succeeded"), hold(held=True), released=False)
    assert decision.action is Action.REFUSE_SWITCH


# Row 6


@pytest.mark.parametrize(
    ("phase", "told"), [("Succeeded", "the pod succeeded"), ("Failed", "the pod failed")]
)
@pytest.mark.parametrize("held", [True, False])
def test_a_finished_pod_gives_its_lock_back(phase: str, told: str, held: bool) -> None:
    finished = pod(gated=not held, phase=phase, state=HELD if held else WAITING)
    assert decide(finished, hold(held=held), released=False) == Decision(Action.RELEASE, told)


# Row 7


def test_a_waiting_pod_whose_gate_someone_else_removed_is_told_it_is_not_guarded() -> None:
    decision = decide(pod(gated=False, phase="Running"), hold(), released=False)
    assert decision == Decision(Action.NOT_GATED, "the scheduling gate was removed by someone else")


# Row 8


@pytest.mark.parametrize("gated", [True, False])
def test_the_hold_of_a_pod_a_newer_leader_granted_meanwhile_is_handed_over(gated: bool) -> None:
    assert decide(pod(gated=gated, state=HELD), hold(), released=False) == Decision(Action.HAND_OVER)


# Row 9


@pytest.mark.parametrize(
    ("seen", "its_hold"),
    [
        (pod(), hold()),  # waiting, gated
        (pod(state=None), hold()),  # just seen, not told anything yet
        (pod(gated=False, phase="Running", state=HELD), hold(held=True)),  # ungated by its hold
        (pod(gated=False, state=WAITING), hold(held=True)),  # ungated, the Held note not seen yet
    ],
)
def test_a_hold_goes_on_while_its_pod_still_asks_for_its_lock(seen: Seen, its_hold: HoldView) -> None:
    assert decide(seen, its_hold, released=False) == Decision(Action.KEEP)


# Rows 10-14: no hold here


def test_a_pod_released_here_needs_nothing_more_until_it_is_deleted() -> None:
    released = pod(gated=False, phase="Running", state=RELEASED)
    assert decide(released, None, released=True) == Decision(Action.IGNORE)
    assert decide(pod(state=WAITING, phase="Succeeded"), None, released=True) == Decision(Action.IGNORE)


@pytest.mark.parametrize("state", [WAITING, HELD])
@pytest.mark.parametrize(
    "left", [{"lock": None}, {"lock": ""}, {"phase": "Succeeded"}, {"phase": "Failed"}], ids=str
)
def test_a_pod_that_finished_or_left_its_lock_while_no_operator_watched_is_released(
    state: str, left: dict[str, object]
) -> None:
    decision = decide(pod(state=state, **left), None, released=False)
    why = "the pod finished or left the lock while the operator was away"
    assert decision == Decision(Action.RELEASE_LEFTOVER, why)


@pytest.mark.parametrize(
    "seen",
    [
        pod(lock=None, gated=False, state=None),  # not an etcdlock pod: most pods
        pod(lock="", state=None),
        pod(phase="Succeeded", state=None),
        pod(phase="Failed", state=RELEASED),
        pod(state=RELEASED),  # released by an earlier leader
        pod(state=ERROR, gated=False),  # told it is not guarded, or lost its lock
    ],
    ids=["no-lock", "empty-lock", "finished", "failed-released", "released", "error"],
)
def test_pods_without_a_lock_finished_or_already_done_with_are_ignored(seen: Seen) -> None:
    assert decide(seen, None, released=False) == Decision(Action.IGNORE)


@pytest.mark.parametrize("state", [None, WAITING])
def test_a_pod_that_asks_for_a_lock_but_came_without_the_gate_is_told_it_is_not_guarded(
    state: str | None,
) -> None:
    assert decide(pod(gated=False, state=state), None, released=False) == Decision(Action.NOT_GATED)


@pytest.mark.parametrize(
    "seen",
    [
        pod(state=None),  # new
        pod(state=WAITING),  # waiting under an earlier leader: its lease and place are adopted
        pod(gated=False, phase="Running", state=HELD),  # holding under an earlier leader
        pod(gated=True, state=HELD),  # granted, not ungated yet when the earlier leader went
    ],
    ids=["new", "waiting", "holding", "granted"],
)
def test_a_pod_that_asks_for_a_lock_gets_a_hold_adopting_what_an_earlier_leader_left(seen: Seen) -> None:
    assert decide(seen, None, released=False) == Decision(Action.HOLD)


@pytest.mark.parametrize("state", [WAITING, LOCK_NOT_FOUND])
def test_a_running_pod_with_a_fencing_token_that_says_waiting_is_a_holder_not_an_unguarded_pod(
    state: str,
) -> None:
    """The operator removed its gate and gave it a token: it held. A release that relabelled such a pod
    Waiting (its etcd unreachable) must not make the next leader take it for a pod the webhook missed."""
    holder = pod(gated=False, phase="Running", state=state, token=True)
    assert decide(holder, None, released=False) == Decision(Action.HOLD)
    assert decide(holder, ITS_HOLD, released=False) == Decision(Action.HAND_OVER)
    assert decide(holder, hold(held=True), released=False) == Decision(Action.KEEP)
    assert decide(replace(holder, token=False), None, released=False) == Decision(Action.NOT_GATED)


def test_a_gated_pod_with_a_fencing_token_left_from_an_earlier_hold_still_waits() -> None:
    assert decide(pod(token=True), None, released=False) == Decision(Action.HOLD)
    assert decide(pod(token=True), ITS_HOLD, released=False) == Decision(Action.KEEP)


# The lock is deleted


def test_the_holder_of_a_deleted_lock_gives_it_back() -> None:
    decision = decide_lock_deleted(hold(held=True))
    assert decision == Decision(Action.RELEASE, "DistributedLock a was deleted")


def test_the_waiters_of_a_deleted_lock_queue_for_it_again() -> None:
    assert decide_lock_deleted(hold()) == Decision(Action.REQUEUE, "DistributedLock a was deleted")


# Policies and the states they bring


BAD_MAX_WAIT = (
    'etcdlock.io/max-wait: "soon" is not a duration of 10 years at most (write it as 90s, 10m or 1h30m)'
)


def test_a_pod_with_an_invalid_policy_does_not_wait_and_stays_gated() -> None:
    invalid = Decision(Action.INVALID, BAD_MAX_WAIT)
    assert decide(pod(state=None, policy_error=BAD_MAX_WAIT), None, released=False) == invalid
    assert decide(pod(policy_error=BAD_MAX_WAIT), ITS_HOLD, released=False) == invalid


def test_a_holder_whose_policy_turns_invalid_keeps_holding() -> None:
    assert decide(
        pod(state=HELD, gated=False, policy_error=BAD_MAX_WAIT), hold(held=True), False
    ) == Decision(Action.KEEP)
    assert decide(pod(state=HELD, gated=False, policy_error=BAD_MAX_WAIT), None, False) == Decision(
        Action.HOLD
    )


def test_a_timed_out_pod_is_left_gated_until_it_stops_asking_for_the_lock() -> None:
    assert decide(pod(state=TIMED_OUT), None, released=False) == Decision(Action.IGNORE)
    assert decide(pod(state=TIMED_OUT, policy_error=BAD_MAX_WAIT), None, False) == Decision(Action.IGNORE)
    assert decide(pod(state=TIMED_OUT, lock=None), None, released=False) == Decision(
        Action.RELEASE_LEFTOVER, "the pod finished or left the lock"
    )


def test_a_pod_waiting_for_a_missing_lock_is_adopted_like_any_waiter() -> None:
    assert decide(pod(state=LOCK_NOT_FOUND), None, released=False) == Decision(Action.HOLD)
    assert (
        decide(pod(state=LOCK_NOT_FOUND, lock=None), None, released=False).action is Action.RELEASE_LEFTOVER
    )


def test_an_eviction_an_earlier_leader_began_is_taken_up_until_the_pod_finishes() -> None:
    evicting = pod(state=EVICTING, gated=False, phase="Running")
    assert decide(evicting, None, released=False) == Decision(
        Action.EVICT, "the pod lost its hold on the lock"
    )
    assert decide(evicting, None, released=True) == Decision(Action.IGNORE), "taken up here already"
    assert decide(replace(evicting, phase="Failed"), None, released=False) == Decision(Action.IGNORE)
    assert decide(evicting, hold(held=True), released=False) == Decision(Action.KEEP), "its hold evicts it"


def test_the_policy_error_of_a_pod_names_the_annotation_and_its_value() -> None:
    body = {"metadata": {"uid": "u", "annotations": {LOCK_ANNOTATION: "a", MAX_WAIT_ANNOTATION: "soon"}}}
    assert Seen.of("ADDED", body).policy_error == BAD_MAX_WAIT


@pytest.mark.parametrize("event", ["MODIFIED", "DELETED"])
@pytest.mark.parametrize("huge", ["99999999999999999999h", "1" * 400 + "h", "1000000000h"])
def test_a_huge_max_wait_is_a_policy_error_on_every_event_of_the_pod(event: str, huge: str) -> None:
    annotations = {LOCK_ANNOTATION: "a", MAX_WAIT_ANNOTATION: huge}
    body = {"metadata": {"uid": "u", "creationTimestamp": "2026-12-06T10:00:00Z", "annotations": annotations}}
    assert Seen.of(event, body).policy_error.startswith(f'{MAX_WAIT_ANNOTATION}: "{huge}"')


# What an event shows


def test_what_a_watch_event_shows_of_a_pod() -> None:
    body = {
        "metadata": {"uid": "u", "annotations": {LOCK_ANNOTATION: "a", "etcdlock.io/state": HELD}},
        "spec": {"schedulingGates": [{"name": "other"}, {"name": SCHEDULING_GATE}]},
        "status": {"phase": "Pending"},
    }
    assert Seen.of("MODIFIED", body) == Seen(False, "u", "a", True, "Pending", HELD)
    body["metadata"]["annotations"][TOKEN_ANNOTATION] = "7"
    assert Seen.of("MODIFIED", body).token
    assert Seen.of("DELETED", {"metadata": {"name": "p"}}) == Seen(True, "", None, False, None, None)


# Every combination


LOCKS = [None, "", "a", "b"]
PHASES = [None, "Pending", "Running", "Succeeded", "Failed"]
STATES = [None, WAITING, LOCK_NOT_FOUND, HELD, RELEASED, ERROR, TIMED_OUT, EVICTING]
HOLDS = [None, hold(), hold(held=True), hold(uid="uid-0"), hold(uid="uid-0", held=True)]
ON_A_HOLD = {
    Action.KEEP,
    Action.RELEASE,
    Action.RELEASE_UNGATE,
    Action.REFUSE_SWITCH,
    Action.SWITCH,
    Action.HAND_OVER,
}


def every_case() -> list[tuple[Seen, HoldView | None, bool]]:
    seens = [
        Seen(deleted, "uid-1", lock, gated, phase, state, policy, token)
        for deleted, lock, gated, phase, state, policy, token in itertools.product(
            [False, True], LOCKS, [False, True], PHASES, STATES, ["", BAD_MAX_WAIT], [False, True]
        )
    ]
    return list(itertools.product(seens, HOLDS, [False, True]))


def test_every_combination_is_decided_by_the_rules_that_hold_across_rows() -> None:
    decided = set()
    for seen, its_hold, released in every_case():
        decision = decide(seen, its_hold, released)
        decided.add(decision.action)
        current = its_hold is not None and its_hold.uid == seen.uid and not seen.deleted
        case = f"{seen} {its_hold} released={released}: {decision}"
        assert (decision.action is Action.FORGET) == seen.deleted, case
        assert decision.stale_hold == (its_hold is not None and not current), case
        assert current or decision.action not in ON_A_HOLD, case
        assert not current or decision.action not in {Action.HOLD, Action.IGNORE}, case
        if decision.action is Action.HOLD:
            assert seen.lock and seen.phase not in ("Succeeded", "Failed") and not released, case
            assert seen.gated or seen.held, case
            assert seen.state not in (TIMED_OUT, RELEASED, ERROR), case
            assert not seen.policy_error or seen.held, case
        if decision.action is Action.EVICT:
            assert not current and seen.state == EVICTING and not seen.finished and not released, case
        if decision.action is Action.INVALID:
            assert seen.policy_error and seen.gated and not (current and its_hold and its_hold.held), case
        if decision.action is Action.RELEASE_UNGATE:
            assert not seen.lock, case
        if decision.action is Action.SWITCH:
            assert seen.gated, case
        if decision.action is Action.NOT_GATED:
            assert not seen.gated and not seen.held, "a pod the operator ungated is never unguarded: " + case
    assert decided == set(Action) - {Action.REQUEUE}
