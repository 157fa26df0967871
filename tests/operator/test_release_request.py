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
