"""Semaphore (N permits) on a real etcd: the bound holds, permits go in arrival order, failures clean up."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from engine_support import (
    BOUND,
    bounded,
    etcd_metric,
    eventually,
    private_etcd,
    queue_keys,
    raw_delete,
    sessions,
    wait_for_key,
)

from etcdlock.etcd import EtcdClient, EtcdConfig, LockLost, LockTimeout, Semaphore, Session
from etcdlock.etcd.requests import put_op
from etcdlock_sandbox.etcd import LocalEtcd

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


# How a semaphore's waiters wait: one watch per client and queue, whatever the number of waiters.

EVENTS_SENT = "etcd_debugging_mvcc_events_total"
WATCHERS = "etcd_debugging_mvcc_watcher_total"


async def queue_one_by_one(
    client: EtcdClient, name: str, semaphores: list[Semaphore]
) -> list[asyncio.Task[Semaphore]]:
    """Start each acquire once the one before has its key in etcd: the arrival order is the list's."""
    tasks = []
    for sem in semaphores:
        tasks.append(asyncio.create_task(sem.acquire()))
        await wait_for_key(client, name, sem.key)
    return tasks


async def test_a_release_costs_each_client_a_few_watch_events_however_many_of_its_waiters_wait(
    name: str,
) -> None:
    """With N permits every client's waiters learn of a deletion through one watch of the queue: etcd
    sends each client a constant number of events per release (its own count), not one per waiter."""
    async with private_etcd() as local:
        config = EtcdConfig.parse(local.endpoints)
        async with EtcdClient(config) as one, EtcdClient(config) as two:
            async with sessions(one, PERMITS + 20) as first, sessions(two, 20) as second:
                holders = [await Semaphore(s, name, PERMITS).acquire(timeout=0) for s in first[:PERMITS]]
                waiters = [
                    Semaphore(s, name, PERMITS)
                    for pair in zip(first[PERMITS:], second, strict=True)
                    for s in pair
                ]
                tasks = await queue_one_by_one(one, name, waiters)
                await settled_watchers(local, len(waiters))
                before = await asyncio.to_thread(etcd_metric, local, EVENTS_SENT)
                for turn, holder in enumerate(holders):
                    assert await holder.release()
                    granted = await bounded(tasks[turn])
                    await wait_marked(one, granted.key)
                sent = await asyncio.to_thread(etcd_metric, local, EVENTS_SENT) - before
                # Per release and client: the deletion and the next holder's rewrite of its value; and
                # the deletion may still reach the releasing holder's own guard.
                assert sent <= len(holders) * (2 * 2 + 1), f"{sent} watch events for {len(holders)} releases"
                for task in tasks[len(holders) :]:
                    task.cancel()
                await asyncio.gather(*tasks[len(holders) :], return_exceptions=True)
                for task in tasks[: len(holders)]:
                    assert await task.result().release()


async def settled_watchers(local: LocalEtcd, at_least: int) -> None:
    """Wait until etcd counts at least ``at_least`` watchers and no new one since the last look."""
    seen: list[float] = []

    async def settled() -> bool:
        seen.append(await asyncio.to_thread(etcd_metric, local, WATCHERS))
        return len(seen) > 1 and seen[-1] == seen[-2] >= at_least

    await eventually(settled, f"{at_least} watchers, and no more being created", 15, interval=0.3)


async def wait_marked(client: EtcdClient, key: str) -> None:
    """Wait until a granted waiter has rewritten its value (it does so in the background)."""

    async def marked() -> bool:
        kvs = (await client.range(key.encode())).kvs
        return bool(kvs) and kvs[0].mod_revision > kvs[0].create_revision

    await eventually(marked, f"{key} rewritten once granted")


async def test_semaphore_waiters_on_several_clients_are_granted_in_arrival_order(
    etcd: LocalEtcd, name: str
) -> None:
    permits, count = 4, 16
    config = EtcdConfig.parse(etcd.endpoints)
    entered: list[int] = []
    has_entered = [asyncio.Event() for _ in range(count)]
    leave = [asyncio.Event() for _ in range(count)]

    async def contender(index: int, sem: Semaphore) -> None:
        async with sem:
            entered.append(index)
            has_entered[index].set()
            await leave[index].wait()

    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(EtcdClient(config)) for _ in range(3)]
        owners = [await stack.enter_async_context(Session(clients[i % 3], ttl=10)) for i in range(count)]
        tasks = []
        for index, own in enumerate(owners):
            sem = Semaphore(own, name, permits)
            tasks.append(asyncio.create_task(contender(index, sem)))
            await wait_for_key(clients[0], name, sem.key)
        for next_in_line in range(count):
            if next_in_line >= permits:
                leave[max(entered[-permits:])].set()  # the newest holder leaves: the oldest waiter is next
            await bounded(has_entered[next_in_line].wait())
        for event in leave:
            event.set()
        await bounded(asyncio.gather(*tasks))
        assert entered == list(range(count))
        assert await queue_keys(clients[0], name) == []


async def test_semaphore_waiter_whose_key_is_deleted_fails_alone_and_the_queue_moves_on(
    client: EtcdClient, name: str
) -> None:
    async with sessions(client, 5) as all_sessions:
        holders = [await Semaphore(s, name, 2).acquire(timeout=0) for s in all_sessions[:2]]
        waiters = [Semaphore(s, name, 2) for s in all_sessions[2:]]
        tasks = await queue_one_by_one(client, name, waiters)
        assert await raw_delete(client, waiters[1].key)
        with pytest.raises(LockLost):
            await bounded(tasks[1])
        assert not tasks[0].done() and not tasks[2].done()
        assert await holders[0].release()
        assert (await bounded(tasks[0])).is_held
        assert not tasks[2].done()
        assert await holders[1].release()
        assert (await bounded(tasks[2])).is_held
        for task in (tasks[0], tasks[2]):
            assert await task.result().release()


@pytest.mark.parametrize("released_after", [1, 5, 15])
async def test_holders_leaving_while_waiters_join_strand_nobody(
    client: EtcdClient, name: str, released_after: int
) -> None:
    inside = most_inside = 0

    async def contender(own: Session) -> None:
        nonlocal inside, most_inside
        async with Semaphore(own, name, PERMITS):
            inside += 1
            most_inside = max(most_inside, inside)
            await client.range(b"/")  # an etcd round trip inside, so others get every chance to overlap
            inside -= 1

    async with sessions(client, PERMITS) as owners, sessions(client, 30) as late:
        held = [await Semaphore(s, name, PERMITS).acquire(timeout=0) for s in owners]
        tasks = [asyncio.create_task(contender(s)) for s in late]

        async def joining() -> bool:
            return len(await queue_keys(client, name)) >= PERMITS + released_after

        await eventually(joining, f"{released_after} waiters queued")
        await asyncio.gather(*(sem.release() for sem in held))
        await bounded(asyncio.gather(*tasks), 30)
    assert most_inside <= PERMITS
    assert await queue_keys(client, name) == []


async def test_two_hundred_waiters_on_ten_permits_all_get_their_turn(client: EtcdClient, name: str) -> None:
    permits = 10
    inside = most_inside = 0
    served: list[int] = []

    async def contender(index: int, own: Session) -> None:
        nonlocal inside, most_inside
        async with Semaphore(own, name, permits):
            inside += 1
            most_inside = max(most_inside, inside)
            await asyncio.sleep(0.005)
            inside -= 1
            served.append(index)

    async with sessions(client, 200) as contenders, asyncio.timeout(60), asyncio.TaskGroup() as group:
        for index, own in enumerate(contenders):
            group.create_task(contender(index, own))
    assert sorted(served) == list(range(200))
    assert 1 <= most_inside <= permits
    assert await queue_keys(client, name) == []


async def test_semaphore_waiters_keep_their_places_through_an_etcd_restart(name: str) -> None:
    async with private_etcd() as local:
        async with (
            EtcdClient(EtcdConfig.parse(local.endpoints)) as client,
            sessions(client, 5, ttl=15) as all_sessions,
        ):
            holders = [await Semaphore(s, name, 2).acquire(timeout=0) for s in all_sessions[:2]]
            waiters = [Semaphore(s, name, 2) for s in all_sessions[2:]]
            tasks = await queue_one_by_one(client, name, waiters)
            member = local.members[0]
            await asyncio.to_thread(local.kill, member)
            await asyncio.to_thread(local.start_member, member)
            assert not any(task.done() for task in tasks)
            for holder, task in zip(holders, tasks, strict=False):
                assert await bounded(holder.release(), 15)
                assert (await bounded(task, 15)).is_held
            assert not tasks[2].done()
            assert await tasks[0].result().release()
            assert (await bounded(tasks[2])).is_held
            for task in tasks[1:]:
                assert await task.result().release()


async def test_semaphore_waiter_is_granted_after_the_history_is_compacted(
    client: EtcdClient, name: str
) -> None:
    async with sessions(client, 3) as all_sessions, asyncio.timeout(15):
        holders = [await Semaphore(s, name, 2).acquire(timeout=0) for s in all_sessions[:2]]
        (task,) = await queue_one_by_one(client, name, [Semaphore(all_sessions[2], name, 2)])
        for i in range(5):
            await client.txn([], [put_op(f"{name}-filler/{i}".encode(), b"x")])
        head = (await client.range(b"/")).header.revision
        await client.compact(head, physical=True)
        assert not task.done()
        assert await holders[1].release()
        sem = await task
        assert await queue_keys(client, name) == [holders[0].key, sem.key]
        for held in (holders[0], sem):
            assert await held.release()
