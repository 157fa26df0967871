"""The operator's fenced delete of one contender, against a real etcd: it deletes exactly the key named and
only with its fencing token, and nothing at all once the operator's own fence (its leadership) is gone."""

from __future__ import annotations

import uuid

import pytest
from fakes import RecordedEvents, unreachable_kube

from etcdlock.etcd import EtcdClient, Fence, Fenced
from etcdlock.etcd.requests import delete_op, put_op
from etcdlock.operator.adminrelease import AdminReleases, fenced_delete
from etcdlock.operator.leadership import Leadership
from etcdlock.operator.locks import LockRules, Locks
from etcdlock.operator.releaserequest import (
    KEY_NOT_FOUND,
    RELEASE_ANNOTATION,
    RELEASED,
    STALE_TOKEN,
    ReleaseRequest,
    request_text,
)
from etcdlock.operator.stores import Store, Stores


async def contender(client: EtcdClient, key: str, value: bytes = b"") -> int:
    """Write ``key`` as a contender would; its fencing token (create revision)."""
    response = await client.txn([], [put_op(key.encode(), value)])
    return int(response.header.revision)


async def exists(client: EtcdClient, key: str) -> bool:
    return bool((await client.range(key.encode())).kvs)


def request(key: str, token: int) -> ReleaseRequest:
    return ReleaseRequest.parse(request_text(key, token, "admin", "test", ""))


@pytest.fixture
def lock_key(name: str) -> str:
    return f"/etcdlock/locks/admin-release/{name}"


async def test_the_key_named_with_its_token_is_deleted_and_its_holder_named(
    client: EtcdClient, lock_key: str
) -> None:
    key = f"{lock_key}/694d"
    token = await contender(client, key, b'{"holder":"job-7"}')
    other = await contender(client, f"{lock_key}/694e")
    store = Store(client, None, Leadership())

    answer = await fenced_delete(store, request(key, token))

    assert (answer.outcome, answer.holder) == (RELEASED, "job-7")
    assert not await exists(client, key)
    assert await exists(client, f"{lock_key}/694e") and other > token


async def test_a_token_that_is_not_the_keys_deletes_nothing(client: EtcdClient, lock_key: str) -> None:
    key = f"{lock_key}/1"
    token = await contender(client, key)
    store = Store(client, None, Leadership())

    answer = await fenced_delete(store, request(key, token - 1))

    assert answer.outcome == STALE_TOKEN and f"has fencing token {token}, not {token - 1}" in answer.message
    assert await exists(client, key)


async def test_a_key_that_is_not_there_is_not_found(client: EtcdClient, lock_key: str) -> None:
    answer = await fenced_delete(Store(client, None, Leadership()), request(f"{lock_key}/gone", 5))
    assert answer.outcome == KEY_NOT_FOUND


async def test_a_deposed_operator_deletes_nothing(client: EtcdClient, lock_key: str) -> None:
    """The leader key the fence names is gone (its lease expired: another replica leads now): etcd refuses
    the whole write, while the same request under the live fence deletes."""
    key = f"{lock_key}/2"
    leader_key = f"/etcdlock/operator/test-{uuid.uuid4().hex}"
    store = Store(client, Fence(leader_key.encode(), await contender(client, leader_key)), Leadership())
    assert (await fenced_delete(store, request(key, await contender(client, key)))).outcome == RELEASED
    token = await contender(client, key)
    await client.txn([], [delete_op(leader_key.encode())])

    with pytest.raises(Fenced):
        await fenced_delete(store, request(key, token))

    assert await exists(client, key)


async def test_a_request_that_fails_unexpectedly_is_a_warning_once_not_a_handler_error(
    client: EtcdClient,
) -> None:
    """An annotation no real API server lets through (not text): requested() raises nothing, says so in one
    Warning Event, and does not try the same request again on the lock's next events."""
    kube = unreachable_kube()
    events = RecordedEvents()
    releases = AdminReleases(
        kube, Locks(LockRules()), Stores(Store(client, None, Leadership()), kube), events
    )
    body = {"kind": "DistributedLock", "metadata": {"namespace": "ns", "name": "odd", "annotations": {}}}
    body["metadata"]["annotations"][RELEASE_ANNOTATION] = 12345  # type: ignore[index]
    try:
        await releases.requested(body)
        await releases.requested(body)
    finally:
        kube.close()

    assert events.reasons("Warning") == ["AdminReleaseFailed"]
    assert "withdraw it with kubectl annotate distributedlock odd" in events.events[0].message
