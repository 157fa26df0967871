"""The epoch fence on an EtcdCluster, against real etcd: the operator's leader of a later term takes the
cluster's epoch and fences off the earlier leader's writes; a deposed replica that comes late can take
nothing back."""

from __future__ import annotations

import uuid

import pytest

from etcdlock.etcd import EtcdClient, Fence, Fenced
from etcdlock.etcd.requests import delete_op, put_op
from etcdlock.operator.leadership import Leadership
from etcdlock.operator.stores import EPOCH_KEY, Store, claim_epoch


async def leader(client: EtcdClient, key: bytes) -> Store:
    """A leadership as the election gives it: a key in the operator's etcd and its create revision."""
    response = await client.txn([], [put_op(key, b"leader")])
    return Store(client, Fence(key, int(response.header.revision)), Leadership())


async def test_a_later_term_fences_off_the_earlier_one_and_never_the_reverse(client: EtcdClient) -> None:
    await client.txn([], [delete_op(EPOCH_KEY)])
    prefix = f"/test/epoch/{uuid.uuid4().hex}".encode()
    old = await leader(client, prefix + b"/old")
    new = await leader(client, prefix + b"/new")  # a later term: a larger create revision
    old_fence = await claim_epoch(client, old, "c")
    assert await claim_epoch(client, old, "c") == old_fence  # the same term again: the same fence
    new_fence = await claim_epoch(client, new, "c")
    with pytest.raises(Fenced):
        await client.guarded_txn(old_fence.compares(), [], [put_op(b"/test/epoch/write", b"old")])
    await client.guarded_txn(new_fence.compares(), [], [put_op(b"/test/epoch/write", b"new")])
    with pytest.raises(Fenced, match="newer leader"):
        await claim_epoch(client, old, "c")  # the deposed replica comes late: it takes nothing back
    await client.guarded_txn(new_fence.compares(), [], [])  # the leader's fence still holds


async def test_a_replica_that_no_longer_leads_claims_nothing(client: EtcdClient) -> None:
    key = f"/test/epoch/{uuid.uuid4().hex}".encode()
    gone = await leader(client, key)
    await client.txn([], [delete_op(key)])  # its leader key is gone: deposed
    before = await client.range(EPOCH_KEY)
    with pytest.raises(Fenced):
        await claim_epoch(client, gone, "c")
    after = await client.range(EPOCH_KEY)
    assert [kv.mod_revision for kv in after.kvs] == [kv.mod_revision for kv in before.kvs]
