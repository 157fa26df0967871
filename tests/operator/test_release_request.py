"""The admin release request's form and reach, checked without Kubernetes or etcd: what the operator
accepts on a DistributedLock's annotation before it deletes anything."""

from __future__ import annotations

import json

import pytest

from etcdlock.operator.releaserequest import (
    INVALID,
    NOT_THIS_LOCK,
    InvalidRequest,
    NotThisLock,
    ReleaseRequest,
    outcome_record,
    request_id,
    request_text,
)

LOCK_KEY = "/etcdlock/locks/team-a/jobs"


def test_a_request_written_by_the_plugin_parses_back_to_what_it_names() -> None:
    raw = request_text(f"{LOCK_KEY}/694d8a1b2c", 42, "alice", "stuck since Friday", "2026-12-06T09:00:00Z")
    request = ReleaseRequest.parse(raw)
    assert (request.key, request.fencing_token, request.by, request.reason) == (
        f"{LOCK_KEY}/694d8a1b2c",
        42,
        "alice",
        "stuck since Friday",
    )
    assert request.id == request_id(raw)
    request.check(LOCK_KEY)


def test_two_requests_for_the_same_key_made_at_different_times_have_different_identities() -> None:
    first = request_text(f"{LOCK_KEY}/1", 7, "alice", "", "2026-12-06T09:00:00Z")
    again = request_text(f"{LOCK_KEY}/1", 7, "alice", "", "2026-12-06T09:00:01Z")
    assert request_id(first) != request_id(again)


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1, 2]",
        json.dumps({"fencingToken": 3}),
        json.dumps({"key": "", "fencingToken": 3}),
        json.dumps({"key": f"{LOCK_KEY}/1"}),
        json.dumps({"key": f"{LOCK_KEY}/1", "fencingToken": 0}),
        json.dumps({"key": f"{LOCK_KEY}/1", "fencingToken": -5}),
        json.dumps({"key": f"{LOCK_KEY}/1", "fencingToken": "12"}),
        json.dumps({"key": f"{LOCK_KEY}/1", "fencingToken": True}),
        json.dumps({"key": f"{LOCK_KEY}/1", "fencingToken": 1.5}),
    ],
)
def test_a_malformed_request_is_invalid(raw: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        ReleaseRequest.parse(raw)
    assert refused.value.outcome == INVALID


@pytest.mark.parametrize(
    "key",
    [
        LOCK_KEY,  # the lock's name, not a contender
        f"{LOCK_KEY}/",
        f"{LOCK_KEY}x/694d",  # another lock whose key starts with the same text
        f"{LOCK_KEY}/nested/694d",  # a contender of a lock nested inside (refused at admission anyway)
        "/etcdlock/locks/team-b/jobs/694d",  # the same lock name in another namespace
        "/etcdlock/operator/leader/694d",  # the operator's election
        "/etcdlock/operator/epoch",
        "694d",
    ],
)
def test_a_key_that_is_not_a_contender_of_this_lock_is_refused(key: str) -> None:
    request = ReleaseRequest.parse(request_text(key, 9, "mallory", "", ""))
    with pytest.raises(NotThisLock) as refused:
        request.check(LOCK_KEY)
    assert refused.value.outcome == NOT_THIS_LOCK


def test_missing_optional_fields_are_named_unknown_or_empty() -> None:
    request = ReleaseRequest.parse(json.dumps({"key": f"{LOCK_KEY}/1", "fencingToken": 3, "by": 5}))
    assert (request.by, request.reason, request.requested_at) == ("unknown", "", "")


UNDER = f"{LOCK_KEY}/"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (json.dumps({"key": f"{UNDER}1", "fencingToken": 2**63}), "beyond etcd's revisions"),
        (json.dumps({"key": f"{UNDER}1", "fencingToken": 10**30}), "beyond etcd's revisions"),
        (json.dumps({"key": f"{UNDER}1", "fencingToken": float("inf")}), "not inf"),
        (json.dumps({"key": f"{UNDER}1", "fencingToken": float("nan")}), "not nan"),
        (json.dumps({"key": f"{UNDER}\ud800", "fencingToken": 3}), "not printable"),
        (json.dumps({"key": f"{UNDER}a\x00b", "fencingToken": 3}), "not printable"),
        (json.dumps({"key": f"{UNDER}a\nb", "fencingToken": 3}), "not printable"),
        (json.dumps({"key": UNDER + "k" * 2000, "fencingToken": 3}), "longer than"),
        (json.dumps({"key": f"{UNDER}1", "fencingToken": 3, "reason": "r" * 40000}), "longer than"),
        ("[" * 10_000, "nested too deeply"),
        ("[" * 100_000, "longer than"),
        ('{"key": "' + UNDER + '1", "fencingToken": ' + "[" * 5000 + "]" * 5000 + "}", "nested too deeply"),
        (json.dumps({"key": f"{UNDER}1", "fencingToken": "9" * 3000}), "not '99999"),
        ('{"key": "' + UNDER + '1", "fencingToken": ' + "9" * 5000 + "}", "not JSON"),
    ],
)
def test_a_hand_written_request_out_of_bounds_is_invalid_with_a_short_message(raw: str, why: str) -> None:
    """Whatever the annotation holds, parsing ends in InvalidRequest (never another exception), and the
    message, which goes into an Event and the status, stays short and printable."""
    with pytest.raises(InvalidRequest) as refused:
        ReleaseRequest.parse(raw)
    message = str(refused.value)
    assert refused.value.outcome == INVALID
    assert why in message
    assert len(message) < 300 and message.isprintable()


def test_the_largest_revision_etcd_can_have_is_a_valid_token() -> None:
    request = ReleaseRequest.parse(json.dumps({"key": f"{UNDER}1", "fencingToken": 2**63 - 1}))
    assert request.fencing_token == 2**63 - 1


def test_a_request_text_that_is_not_utf8_has_an_identity() -> None:
    raw = '{"key": "' + UNDER + '1", "fencingToken": 3, "by": "\ud800"}'
    assert request_id(raw) != request_id(raw.replace("\ud800", "?"))


def test_who_and_why_are_kept_printable_whatever_the_request_says() -> None:
    doc = {
        "key": f"{UNDER}1",
        "fencingToken": 3,
        "by": "al\x00ice\ud800",
        "reason": "a\nb",
        "requestedAt": "\x1b",
    }
    request = ReleaseRequest.parse(json.dumps(doc))
    assert (request.by, request.reason, request.requested_at) == ("al\ufffdice\ufffd", "a\ufffdb", "\ufffd")
    record = outcome_record(request, json.dumps(doc), INVALID, "m", "", "t")
    json.dumps(record, ensure_ascii=False).encode()
