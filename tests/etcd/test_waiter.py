"""The engine's persistent waiter: a place in NAME's queue that survives etcd outages and can be adopted by
another process holding the same lease (as a new operator leader adopts a pod's)."""

from __future__ import annotations

import asyncio

import pytest
from engine_support import bounded, private_etcd, queue_keys, raw_delete

from etcdlock.etcd import (
    Election,
    EtcdClient,
    EtcdConfig,
    Fenced,
    Mutex,
    NotHeld,
    Session,
    Waiter,
)
from etcdlock.etcd.keys import prefix, range_end
from etcdlock.etcd.requests import put_op, range_op


async def test_a_session_that_adopts_the_lease_finds_the_key_in_its_place(
    client: EtcdClient, name: str
) -> None:
    async with Session(client) as holder_session:
        holder = await bounded(Mutex(holder_session, name).acquire())
        first = await Session(client).start()
        waiter = Waiter(first, name)
        assert not await waiter.join(b"pod/ns/a")
        token = waiter.token
        await first.orphan()  # the operator stops; the lease lives on
        adopted = await Session(client, lease_id=first.lease_id).start()
        try:
            again = Waiter(adopted, name)
            assert not await again.join(b"pod/ns/a (adopted)")
            assert (again.found, again.token) == (b"pod/ns/a", token)
            assert await queue_keys(client, name) == [holder.key, again.key]
            await holder.release()
            await bounded(again.wait_turn())
            assert again.is_held and await again.still_holds()
            assert await again.give_back()
            assert await queue_keys(client, name) == []
        finally:
            await adopted.close()


async def test_a_waiter_keeps_its_place_through_an_etcd_outage(name: str) -> None:
    async with private_etcd() as etcd:
        async with EtcdClient(EtcdConfig.parse(etcd.endpoints, request_timeout=1.0)) as client:
            async with Session(client, ttl=10) as first, Session(client, ttl=10) as second:
                holder = Waiter(first, name)
                assert await holder.join(b"holder")
                waiter = Waiter(second, name)
                assert not await waiter.join(b"waiter")
                token = waiter.token
                etcd.pause(etcd.members[0])
                try:
                    # etcd answers nothing for longer than a request's timeout: the wait goes on.
                    turn = asyncio.ensure_future(waiter.wait_turn())
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(turn), 2.5)
                finally:
                    etcd.resume(etcd.members[0])
                assert await bounded(holder.give_back(), 15)
                await bounded(turn, 15)
                assert waiter.token == token, "the same key, the same place"
                assert await waiter.give_back()


async def test_a_deposed_waiter_can_neither_confirm_nor_give_back(client: EtcdClient, name: str) -> None:
    async with Session(client) as leader_session:
        election = await bounded(Election(leader_session, f"{name}/leader").campaign("replica-1"))
        async with Session(client, fence=election.fence()) as pod:
            waiter = Waiter(pod, f"{name}/lock")
            assert await waiter.join(b"pod")
            assert await waiter.still_holds()
            assert await raw_delete(client, election.key)  # deposed
            with pytest.raises(Fenced):
                await waiter.still_holds()
            with pytest.raises(Fenced):
                await waiter.give_back()
            assert await queue_keys(client, f"{name}/lock") == [waiter.key], "nothing was written"


async def test_a_waiter_whose_key_was_deleted_no_longer_holds(client: EtcdClient, name: str) -> None:
    async with Session(client) as session:
        waiter = Waiter(session, name)
        assert await waiter.join(b"x")
        assert await raw_delete(client, waiter.key)
        assert not await waiter.still_holds()
        assert not await waiter.give_back(), "gone already: not this call's doing"
        with pytest.raises(NotHeld):
            await waiter.give_back()


async def test_etcd_counts_and_limits_the_queue_as_the_waiters_read_it(client: EtcdClient, name: str) -> None:
    """What the queue's reads rely on, checked against the etcd in use (3.5): a count in the transaction
    that creates a key counts that key (a new key holds a permit when at most N keys are there); a count
    takes no create-revision filter (etcd counts the whole range, so the keys ahead are never counted that
    way); with such a filter, ``limit`` applies to the keys that pass it (a waiter reads at most N of the
    keys ahead)."""
    start = prefix(name)
    end = range_end(start)
    created = [
        (await client.txn([], [put_op(f"{name}/{i}".encode(), b"")])).header.revision for i in range(6)
    ]

    joined = await client.txn(
        [], [put_op(f"{name}/new".encode(), b""), range_op(start, end, count_only=True)]
    )
    assert joined.responses[1].response_range.count == 7

    counted = await client.range(start, end, count_only=True, max_create_revision=created[2] - 1)
    assert counted.count == 7, "etcd now filters counts: the keys ahead could be counted, not read"

    ahead = await client.range(
        start,
        end,
        by_create=True,
        descending=True,
        limit=3,
        max_create_revision=created[4] - 1,
        keys_only=True,
    )
    assert [kv.create_revision for kv in ahead.kvs] == [created[3], created[2], created[1]]
