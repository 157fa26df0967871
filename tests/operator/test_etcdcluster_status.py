"""The status of an EtcdCluster pass, one function at a time: each condition's branches, the phase, the
member entries, Kubernetes' lastTransitionTime rule, and the Events of what happened to members."""

from __future__ import annotations

from typing import Any

from etcdlock.operator.conditions import find
from etcdlock.operator.etcdcluster import ClusterSpec
from etcdlock.operator.etcdcluster.membership import ClusterView, MemberState, Step
from etcdlock.operator.etcdcluster.status import (
    Pass,
    available,
    degraded,
    invalid,
    member_events,
    members,
    phase,
    progressing,
    status,
)

SPEC = ClusterSpec.parse("ns", "e", {"replicas": 3})
LONG_AGO = "2020-01-01T00:00:00Z"
DONE = Step("done", "every wanted member is a voter")


def member(index: int, healthy: bool = True, leader: bool = False, learner: bool = False) -> MemberState:
    return MemberState(
        id=index + 1,
        name=SPEC.member(index),
        peer_url=SPEC.peer_url(index),
        client_url=SPEC.client_url_of(index),
        learner=learner,
        healthy=healthy,
        leader=leader,
    )


def three(*unhealthy: int) -> ClusterView:
    return ClusterView(tuple(member(i, healthy=i not in unhealthy, leader=i == 0) for i in range(3)))


def run(view: ClusterView | None, step: Step | None = DONE, previous: Any = None, **seen: Any) -> Pass:
    return Pass(SPEC, dict(previous or {}), view=view, step=step, version="3.5.21", **seen)


def said(condition: dict[str, Any]) -> tuple[str, str, str]:
    return condition["status"], condition["reason"], condition["message"]


RAN = {"phase": "Running", "members": [{"name": "e-0", "id": "1", "healthy": True, "leader": True}]}


def test_available_while_a_quorum_of_the_voters_answers() -> None:
    assert said(available(run(three(2)))) == ("True", "Quorum", "2 of 3 voting members healthy")


def test_not_available_without_a_quorum_of_the_voters() -> None:
    assert said(available(run(three(1, 2)))) == ("False", "NoQuorum", "1 of 3 voting members healthy")


def test_a_learner_does_not_count_towards_the_quorum() -> None:
    view = ClusterView((member(0), member(1), member(2, healthy=False, learner=True)))
    assert said(available(run(view))) == ("True", "Quorum", "2 of 2 voting members healthy")
    view = ClusterView(
        (member(0, healthy=False), member(1, healthy=False), member(2), member(3, learner=True))
    )
    assert said(available(run(view))) == ("False", "NoQuorum", "1 of 3 voting members healthy")


def test_every_condition_says_creating_while_no_member_of_a_new_cluster_answers() -> None:
    new = run(None, step=None)
    message = "waiting for the members to start and elect a leader"
    assert said(available(new)) == ("False", "Creating", message)
    assert said(progressing(new)) == ("True", "Creating", message)
    assert said(degraded(new)) == ("False", "Creating", message)
    assert phase(new, troubled=False) == "Creating"


def test_a_cluster_that_ran_and_answers_no_more_is_degraded() -> None:
    for previous in (RAN, {"conditions": [{"type": "Available", "status": "True"}], "phase": "Creating"}):
        gone = run(None, step=None, previous=previous)
        message = "no member answers with a quorum"
        assert said(available(gone)) == ("False", "Unreachable", message)
        assert said(degraded(gone)) == ("True", "Unreachable", message)
        assert phase(gone, troubled=True) == "Degraded"


def test_progressing_is_false_once_every_wanted_member_votes() -> None:
    assert said(progressing(run(three()))) == ("False", "Settled", "3 voting members as wanted")


def test_progressing_names_the_step_under_way() -> None:
    step = Step("add-learner", "wanted and not a member", "e-2", SPEC.peer_url(2))
    assert said(progressing(run(three(), step))) == (
        "True",
        "AddingMember",
        "add-learner e-2: wanted and not a member",
    )
    assert (
        said(progressing(run(three(), Step("wait", "learner e-2 is not running yet", "e-2"))))[1] == "Waiting"
    )
    assert said(progressing(run(three(), None)))[1:] == ("Waiting", "wait :")


def test_an_upgrade_under_way_is_progressing_though_the_membership_is_done() -> None:
    upgrading = run(three(), activity="Upgrading")
    assert said(progressing(upgrading))[:2] == ("True", "Upgrading")
    assert phase(upgrading, troubled=False) == "Upgrading"


def test_a_problem_of_the_pass_comes_before_unhealthy_members() -> None:
    failed = run(three(2), problem="promote e-2 failed: no", problem_reason="ChangeFailed")
    assert said(degraded(failed)) == ("True", "ChangeFailed", "promote e-2 failed: no")


def test_a_refused_step_is_degraded_and_says_whether_for_want_of_a_quorum() -> None:
    lose = Step("refuse", "removing e-2 would lose quorum")
    assert said(degraded(run(three(), lose))) == ("True", "NoQuorum", lose.reason)
    no_leader = Step("refuse", "the leader is to go and no other healthy voter can lead")
    assert said(degraded(run(three(), no_leader))) == ("True", "Refused", no_leader.reason)


def test_unhealthy_members_are_named_and_healthy_ones_are_not_degraded() -> None:
    assert said(degraded(run(three(2, 1)))) == ("True", "MembersUnhealthy", "not healthy: e-1, e-2")
    assert said(degraded(run(three()))) == ("False", "Healthy", "every member is healthy")


def test_the_phase_of_a_pass_that_answers() -> None:
    assert phase(run(three()), troubled=False) == "Running"
    assert phase(run(three(2)), troubled=True) == "Degraded"
    scaling = Step("remove", "not wanted", "e-3")
    assert phase(run(three(2), scaling), troubled=True) == "Scaling"  # a quorum is there: scaling goes on
    assert phase(run(three(1, 2), Step("refuse", "no quorum")), troubled=True) == "Degraded"


def test_members_are_listed_by_name_with_their_pod_and_restarts() -> None:
    view = ClusterView((member(2), member(0, leader=True), member(1)))
    uids = {"e-0": "u0", "e-1": "u1", "e-2": "u2"}
    entries = members(run(view, pod_uids=uids, restarts={"e-1": 4}))
    assert [m["name"] for m in entries] == ["e-0", "e-1", "e-2"]
    assert entries[0] == {
        "name": "e-0",
        "id": "1",
        "peerURL": SPEC.peer_url(0),
        "clientURL": SPEC.client_url_of(0),
        "leader": True,
        "learner": False,
        "healthy": True,
        "podUID": "u0",
    }
    assert entries[1]["restarts"] == 4


def test_a_lost_or_unhealthy_member_keeps_the_pod_its_data_was_in_on_record() -> None:
    previous = {"members": [{"name": f"e-{i}", "podUID": f"old{i}"} for i in range(3)]}
    uids = {"e-0": "new0", "e-1": "new1", "e-2": "new2"}
    entries = members(run(three(2), previous=previous, pod_uids=uids, lost={"e-1"}))
    assert [m["podUID"] for m in entries] == ["new0", "old1", "old2"]


def test_while_nobody_answers_the_members_listed_last_are_kept_as_unhealthy() -> None:
    kept = {"name": "e-0", "id": "1", "healthy": True, "leader": True, "podUID": "u0"}
    previous = {"phase": "Running", "members": [{**kept, "lastDefragmentation": LONG_AGO}]}
    assert members(run(None, previous=previous)) == [
        {**kept, "healthy": False, "leader": False, "lastDefragmentation": LONG_AGO}
    ]


def test_only_the_member_defragmented_now_gets_a_new_defragmentation_time() -> None:
    previous = {"members": [{"name": f"e-{i}", "lastDefragmentation": LONG_AGO} for i in range(3)]}
    entries = members(run(three(), previous=previous, defragmented="e-1"))
    times = [m["lastDefragmentation"] for m in entries]
    assert times[0] == times[2] == LONG_AGO and times[1] > LONG_AGO


def test_the_status_sums_up_the_pass() -> None:
    new = status(run(three(2), generation=4))
    assert {k: v for k, v in new.items() if k not in ("members", "conditions")} == {
        "clientURL": "http://e-client.ns.svc:2379",
        "observedGeneration": 4,
        "version": "3.5.21",
        "phase": "Degraded",
        "ready": "2/3",
        "readyMembers": 2,
        "leader": "e-0",
        "selector": "app.kubernetes.io/name=etcd,app.kubernetes.io/instance=e",
    }
    assert [c["type"] for c in new["conditions"]] == ["Ready", "Available", "Progressing", "Degraded"]
    assert {c["observedGeneration"] for c in new["conditions"]} == {4}


def test_a_condition_keeps_its_transition_time_while_its_status_stays_the_same() -> None:
    before = status(run(three(1)))
    before["conditions"] = [{**c, "lastTransitionTime": LONG_AGO} for c in before["conditions"]]
    after = status(run(three(2), previous=before))  # another member unhealthy: same statuses, new message
    degraded_now = after["conditions"][3]
    assert degraded_now["message"] == "not healthy: e-2" and degraded_now["lastTransitionTime"] == LONG_AGO
    assert all(c["lastTransitionTime"] == LONG_AGO for c in after["conditions"])


def test_a_condition_whose_status_changes_gets_a_new_transition_time() -> None:
    before = status(run(three(1)))
    before["conditions"] = [{**c, "lastTransitionTime": LONG_AGO} for c in before["conditions"]]
    after = {c["type"]: c for c in status(run(three(), previous=before))["conditions"]}
    assert after["Degraded"]["status"] == "False" and after["Degraded"]["lastTransitionTime"] > LONG_AGO
    assert after["Available"]["lastTransitionTime"] == LONG_AGO


def test_an_invalid_spec_fails_and_leaves_availability_as_it_was() -> None:
    previous = {"conditions": [{"type": "Available", "status": "True", "lastTransitionTime": LONG_AGO}]}
    failed = invalid(previous, "spec.replicas must be one of 1, 3, 5, 7, not 2", 3)
    assert failed["phase"] == "Failed" and failed["observedGeneration"] == 3
    conditions = {c["type"]: c for c in failed["conditions"]}
    assert {kind: (c["status"], c["reason"]) for kind, c in conditions.items()} == {
        "Ready": ("False", "InvalidSpec"),
        "Available": ("True", "InvalidSpec"),
        "Progressing": ("False", "InvalidSpec"),
        "Degraded": ("True", "InvalidSpec"),
    }
    assert conditions["Available"]["lastTransitionTime"] == LONG_AGO
    assert dict(invalid({}, "bad", 1)["conditions"][1], lastTransitionTime="") == {
        "type": "Available",
        "status": "False",
        "reason": "InvalidSpec",
        "message": "bad",
        "observedGeneration": 1,
        "lastTransitionTime": "",
    }


def test_what_happened_to_a_member_in_the_same_pod_is_told() -> None:
    previous = {
        "members": [
            {"name": "e-0", "podUID": "u0", "healthy": True, "restarts": 1},
            {"name": "e-1", "podUID": "u1", "healthy": True},
            {"name": "e-2", "podUID": "u2", "healthy": False},
        ]
    }
    now = [
        {"name": "e-0", "healthy": True, "restarts": 2},
        {"name": "e-1", "healthy": False},
        {"name": "e-2", "healthy": True},
    ]
    events = member_events(previous, now, {"e-0": "u0", "e-1": "u1", "e-2": "u2"})
    assert [(kind, reason) for kind, reason, _ in events] == [
        ("Warning", "MemberProcessRestarted"),
        ("Warning", "MemberUnhealthy"),
        ("Normal", "MemberRecovered"),
    ]
    assert "restart count 2" in events[0][2]


def test_a_new_member_or_a_replaced_pod_is_left_to_the_other_events() -> None:
    previous = {"members": [{"name": "e-0", "podUID": "u0", "healthy": True}]}
    now = [{"name": "e-0", "healthy": False, "restarts": 3}, {"name": "e-1", "healthy": True}]
    assert member_events(previous, now, {"e-0": "replaced", "e-1": "u1"}) == []


def test_ready_is_true_only_when_available_settled_and_healthy_and_else_says_why() -> None:
    settled = status(run(three()))
    assert find(settled, "Ready")["status"] == "True"
    unhealthy = status(run(three(1)))
    assert (find(unhealthy, "Ready")["status"], find(unhealthy, "Ready")["reason"]) == (
        "False",
        "MembersUnhealthy",
    )
    unanswered = status(run(None, previous={"phase": "Running"}))
    assert (find(unanswered, "Ready")["status"], find(unanswered, "Ready")["reason"]) == (
        "False",
        "Unreachable",
    )
    assert find(invalid({}, "spec.replicas must be one of 1, 3, 5, 7", 2), "Ready")["status"] == "False"
