"""Semaphore (N permits) on a real etcd: the bound holds, permits go in arrival order, failures clean up."""

from __future__ import annotations

import asyncio
import json

import pytest
from engine_support import BOUND, bounded, queue_keys, raw_delete, sessions, wait_for_key

from etcdlock.etcd import EtcdClient, LockLost, LockTimeout, Semaphore, Session

PERMITS = 3


async def test_semaphore_never_admits_more_than_its_permits_and_serves_everyone(
    client: EtcdClient, name: str
) -> None:
    inside = 0
    most_inside = 0
    served: list[int] = []

    async def contender(index: int, own: Session) -> None:
        nonlocal inside, most_inside
        async with Semaphore(own, name, PERMITS, timeout=20):
            inside += 1
            most_inside = max(most_inside, inside)
            # Stay inside across an etcd round trip, so others get every chance to (wrongly) enter too.
            keys = await queue_keys(client, name)
            assert keys.index(f"{name}/{own.lease_id:x}") < PERMITS
            inside -= 1
            served.append(index)

    async with sessions(client, 8) as contenders, asyncio.timeout(30), asyncio.TaskGroup() as group:
        for index, own in enumerate(contenders):
            group.create_task(contender(index, own))

    assert sorted(served) == list(range(8))
    assert 1 <= most_inside <= PERMITS
    assert await queue_keys(client, name) == []


async def test_semaphore_grants_permits_in_arrival_order_whoever_releases(
    client: EtcdClient, name: str
) -> None:
    entered: list[int] = []
    entered_events = [asyncio.Event() for _ in range(8)]
    release_events = [asyncio.Event() for _ in range(8)]
    holding: set[int] = set()
    most_holding = 0

    async def contender(index: int, own: Session) -> None:
        nonlocal most_holding
        async with Semaphore(own, name, PERMITS) as sem:
            assert sem.token > 0
            entered.append(index)
            holding.add(index)
            most_holding = max(most_holding, len(holding))
            entered_events[index].set()
            await release_events[index].wait()
            holding.discard(index)

    async with sessions(client, 8) as contenders, asyncio.timeout(30), asyncio.TaskGroup() as group:
        for index, own in enumerate(contenders):
            group.create_task(contender(index, own))
            await wait_for_key(client, name, f"{name}/{own.lease_id:x}")
        for index in range(PERMITS):
            await entered_events[index].wait()
        assert sorted(entered) == [0, 1, 2]
        assert all(not event.is_set() for event in entered_events[PERMITS:])
        # Release the newest holder each time: the permit still goes to the oldest waiter.
        for next_in_line in range(PERMITS, 8):
            newest = max(holding)
            release_events[newest].set()
            await entered_events[next_in_line].wait()
            assert entered[-1] == next_in_line
            assert all(not event.is_set() for event in entered_events[next_in_line + 1 :])
        for event in release_events:
            event.set()

    assert sorted(entered[:PERMITS]) == [0, 1, 2]
    assert entered[PERMITS:] == list(range(PERMITS, 8))
    assert most_holding == PERMITS
    assert await queue_keys(client, name) == []


async def test_try_on_semaphore_with_all_permits_taken_fails_naming_holders_and_leaves_no_key(
    client: EtcdClient, name: str
) -> None:
    async with sessions(client, PERMITS + 1) as all_sessions:
        *owners, trier = all_sessions
        held = [
            await Semaphore(s, name, PERMITS, holder=f"owner-{i}").acquire(timeout=0)
            for i, s in enumerate(owners)
        ]
        held_keys = [sem.key for sem in held]
        with pytest.raises(LockTimeout) as caught:
            await bounded(Semaphore(trier, name, PERMITS).acquire(timeout=0), 2)
        assert [h.key for h in caught.value.holders] == held_keys
        assert [h.info.holder for h in caught.value.holders] == ["owner-0", "owner-1", "owner-2"]
        assert await queue_keys(client, name) == held_keys

        with pytest.raises(LockTimeout):
            await bounded(Semaphore(trier, name, PERMITS).acquire(timeout=0.3))
        assert await queue_keys(client, name) == held_keys

        assert await held[1].release()
        async with Semaphore(trier, name, PERMITS, timeout=0) as sem:
            assert await queue_keys(client, name) == [held_keys[0], held_keys[2], sem.key]
        for sem in (held[0], held[2]):
            assert await sem.release()


async def test_semaphore_holder_value_records_the_permits(
    client: EtcdClient, session: Session, name: str
) -> None:
    async with Semaphore(session, name, PERMITS, holder="batch", timeout=0) as sem:
        response = await client.range(sem.key.encode())
        doc = json.loads(response.kvs[0].value)
        assert doc["holder"] == "batch"
        assert doc["permits"] == PERMITS


async def test_semaphore_waiter_whose_key_is_deleted_fails_with_lock_lost(
    client: EtcdClient, name: str
) -> None:
    async with sessions(client, 3) as (first, second, third):
        holders = [await Semaphore(s, name, 2).acquire(timeout=0) for s in (first, second)]
        waiter = Semaphore(third, name, 2)
        task = asyncio.create_task(waiter.acquire())
        await wait_for_key(client, name, waiter.key)
        assert await raw_delete(client, waiter.key)
        with pytest.raises(LockLost):
            await bounded(task)
        assert not waiter.is_held
        assert not third.is_lost
        assert await queue_keys(client, name) == [h.key for h in holders]
        for sem in holders:
            assert await sem.release()


async def test_semaphore_waiter_is_granted_when_any_holder_leaves(client: EtcdClient, name: str) -> None:
    async with sessions(client, PERMITS + 1) as all_sessions, asyncio.timeout(BOUND * 2):
        *owners, late = all_sessions
        held = [await Semaphore(s, name, PERMITS).acquire() for s in owners]
        waiter = Semaphore(late, name, PERMITS)
        task = asyncio.create_task(waiter.acquire())
        queued = await wait_for_key(client, name, waiter.key)
        assert not task.done()
        # The middle holder leaves (not the one directly ahead): the waiter now has fewer than N ahead.
        assert await held[1].release()
        sem = await task
        assert sem.token == queued.create_revision
        assert await queue_keys(client, name) == [held[0].key, held[2].key, sem.key]
        for s in (held[0], held[2], sem):
            assert await s.release()
