"""Conditions are written one way for every kind: Kubernetes' rule for lastTransitionTime."""

from __future__ import annotations

from etcdlock.operator.conditions import carried_over, condition, find, without_times

EARLIER = "2020-01-01T00:00:00Z"


def _previous(status: str, reason: str) -> dict[str, object]:
    return {
        "conditions": [{**condition("Ready", status, reason, "before", 1), "lastTransitionTime": EARLIER}]
    }


def test_a_condition_whose_status_is_unchanged_keeps_its_transition_time_whatever_its_reason() -> None:
    (ready,) = carried_over([condition("Ready", "True", "Held", "1/1 held", 2)], _previous("True", "Free"))
    assert (ready["lastTransitionTime"], ready["reason"], ready["observedGeneration"]) == (EARLIER, "Held", 2)


def test_a_condition_whose_status_changed_transitions_now() -> None:
    (ready,) = carried_over(
        [condition("Ready", "False", "KeyConflict", "taken", 1)], _previous("True", "Free")
    )
    assert ready["lastTransitionTime"] > EARLIER


def test_a_new_condition_transitions_now_and_others_are_left_alone() -> None:
    wanted = [condition("Ready", "True", "Free", "", 1), condition("Degraded", "False", "Healthy", "", 1)]
    ready, degraded = carried_over(wanted, _previous("True", "Free"))
    assert ready["lastTransitionTime"] == EARLIER and degraded["lastTransitionTime"] > EARLIER


def test_find_answers_an_empty_condition_for_a_missing_type_or_status() -> None:
    assert find(_previous("True", "Free"), "Degraded") == {} and find(None, "Ready") == {}


def test_two_statuses_that_differ_only_in_transition_times_compare_equal_without_them() -> None:
    later = {
        "conditions": [
            {**_previous("True", "Free")["conditions"][0], "lastTransitionTime": "2030-01-01T00:00:00Z"}
        ]
    }  # type: ignore[index]
    assert without_times(_previous("True", "Free")) == without_times(later)
