"""Mutex against a real etcd: FIFO queue, fencing, try-lock, clean failure paths and loss detection.

Each test proves one clause of DESIGN.md "Lock engine semantics"; contenders that must arrive in a known
order are started one after another, each only once its key is visible in etcd.
"""

from __future__ import annotations

import asyncio
import itertools
import urllib.request

import pytest
from engine_support import (
    BOUND,
    bounded,
    create_revision,
    eventually,
    private_etcd,
    queue_keys,
    raw_delete,
    sessions,
    wait_for_key,
    wait_for_keys,
)

from etcdlock.clock import now
from etcdlock.etcd import (
    AlreadyAcquiring,
    EtcdClient,
    EtcdConfig,
    EtcdUnavailable,
    LockLost,
    LockTimeout,
    Mutex,
    Semaphore,
    Session,
    SessionLost,
    read_contenders,
)
from etcdlock.etcd.requests import put_op
from etcdlock_sandbox.etcd import LocalEtcd


def key_of(session: Session, name: str) -> str:
    return f"{name}/{session.lease_id:x}"


async def test_waiters_are_served_in_arrival_order(client: EtcdClient, session: Session, name: str) -> None:
    async with sessions(client, 5) as waiters, asyncio.timeout(30):
        holder = await Mutex(session, name).acquire(timeout=0)
        served: list[int] = []

        async def wait_turn(index: int, own: Session) -> None:
            lock = await Mutex(own, name).acquire()
            served.append(index)
            assert await lock.release()

        revisions = []
        async with asyncio.TaskGroup() as group:
            for index, own in enumerate(waiters):
                group.create_task(wait_turn(index, own))
                revisions.append((await wait_for_key(client, name, key_of(own, name))).create_revision)
            assert served == []
            assert await queue_keys(client, name) == [holder.key, *(key_of(s, name) for s in waiters)]
            assert await holder.release()

        assert served == [0, 1, 2, 3, 4]
        assert revisions == sorted(revisions)
        assert await queue_keys(client, name) == []


async def test_fencing_tokens_strictly_increase_and_equal_the_own_key_create_revision(
    client: EtcdClient, name: str
) -> None:
    tokens: list[int] = []
    async with sessions(client, 3) as contenders:
        for round_ in range(3):
            for own in contenders:
                async with Mutex(own, name, timeout=BOUND) as lock:
                    assert lock.key == key_of(own, name)
                    assert lock.token == await create_revision(client, lock.key), round_
                    tokens.append(lock.token)
    assert len(tokens) == 9
    assert all(a < b for a, b in itertools.pairwise(tokens)), tokens


async def test_waiter_token_is_the_create_revision_it_queued_with(
    client: EtcdClient, session: Session, name: str
) -> None:
    async with sessions(client, 1) as (other,), asyncio.timeout(BOUND):
        holder = await Mutex(session, name).acquire()
        holder_token = holder.token
        waiting = asyncio.create_task(Mutex(other, name).acquire())
        queued = await wait_for_key(client, name, key_of(other, name))
        await holder.release()
        lock = await waiting
        assert lock.token == queued.create_revision > holder_token
        await lock.release()


async def test_try_lock_on_held_mutex_fails_at_once_naming_the_holder_and_leaves_no_key(
    client: EtcdClient, session: Session, name: str
) -> None:
    async with sessions(client, 1) as (other,):
        async with Mutex(session, name, holder="owner-1") as held:
            held_revision = await create_revision(client, held.key)
            trier = Mutex(other, name, holder="trier-2")
            with pytest.raises(LockTimeout) as caught:
                await bounded(trier.acquire(timeout=0), 2)
            holders = caught.value.holders
            assert [h.key for h in holders] == [held.key]
            assert holders[0].info.holder == "owner-1"
            assert holders[0].fencing_token == held.token
            assert "owner-1" in str(caught.value)
            assert await queue_keys(client, name) == [held.key]
            assert await create_revision(client, held.key) == held_revision
            assert not trier.is_held
        # The failed try gave the name back to its session: the next try succeeds once the lock is free.
        async with Mutex(other, name, timeout=0) as again:
            assert again.key == key_of(other, name)


async def test_timed_out_acquire_leaves_no_key_and_names_the_holder(
    client: EtcdClient, session: Session, name: str
) -> None:
    async with sessions(client, 1) as (other,), Mutex(session, name, holder="slow-owner") as held:
        with pytest.raises(LockTimeout) as caught:
            await bounded(Mutex(other, name).acquire(timeout=0.5))
        assert [h.key for h in caught.value.holders] == [held.key]
        assert "slow-owner" in str(caught.value)
        assert await queue_keys(client, name) == [held.key]


async def test_cancelled_acquire_leaves_no_key_and_no_orphan_at_the_head(
    client: EtcdClient, session: Session, name: str
) -> None:
    async with sessions(client, 2) as (waiter, third):
        held = await Mutex(session, name).acquire()
        task = asyncio.create_task(Mutex(waiter, name).acquire())
        await wait_for_key(client, name, key_of(waiter, name))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bounded(task)
        assert await queue_keys(client, name) == [held.key]
        assert await held.release()
        # Nothing is left in the queue: a try-lock from a third session succeeds at once.
        async with Mutex(third, name, timeout=0) as lock:
            assert await queue_keys(client, name) == [lock.key]
        # And the cancelled session may queue for the name again.
        async with Mutex(waiter, name, timeout=0):
            pass


async def test_release_is_true_and_deletes_only_the_own_key(
    client: EtcdClient, session: Session, name: str
) -> None:
    async with sessions(client, 1) as (other,), asyncio.timeout(BOUND):
        lock = await Mutex(session, name).acquire()
        waiting = asyncio.create_task(Mutex(other, name).acquire())
        await wait_for_key(client, name, key_of(other, name))
        assert await lock.release() is True
        assert not lock.is_held
        successor = await waiting
        assert await queue_keys(client, name) == [successor.key]
        await successor.release()


async def test_release_after_lease_revoked_returns_false_and_spares_the_next_holder(
    client: EtcdClient, name: str
) -> None:
    async with sessions(client, 2) as (first, second), asyncio.timeout(BOUND):
        stale = await Mutex(first, name).acquire()
        assert await client.revoke(first.lease_id)
        successor = await Mutex(second, name).acquire()
        successor_revision = await create_revision(client, successor.key)
        assert await stale.release() is False
        assert await queue_keys(client, name) == [successor.key]
        assert await create_revision(client, successor.key) == successor_revision
        assert await successor.release() is True


async def test_release_is_fenced_on_the_create_revision_of_the_own_key(
    client: EtcdClient, session: Session, name: str
) -> None:
    """A key re-created under the same name and lease (e.g. an adopting process) is not this holder's."""
    lock = await Mutex(session, name).acquire()
    assert await raw_delete(client, lock.key)
    await client.txn([], [put_op(lock.key.encode(), b"", session.lease_id)])
    newer = await create_revision(client, lock.key)
    assert newer > lock.token
    assert await lock.release() is False
    assert await create_revision(client, lock.key) == newer


async def test_revoked_lease_is_reported_as_a_lost_lock_and_a_lost_session(
    client: EtcdClient, name: str
) -> None:
    async with Session(client, ttl=3) as own:
        lock = await Mutex(own, name).acquire(timeout=0)
        assert lock.is_held and not lock.is_lost
        assert await client.revoke(own.lease_id)
        reason = await asyncio.wait_for(lock.wait_lost(), 5)
        assert reason
        assert lock.is_lost
        assert not lock.is_held
        session_reason = await asyncio.wait_for(own.wait_lost(), 5)
        assert "revoked" in session_reason
        assert own.is_lost
        with pytest.raises(SessionLost):
            await Mutex(own, f"{name}-after").acquire(timeout=0)


async def test_deleted_holder_key_is_reported_lost_while_the_session_stays_alive(
    client: EtcdClient, session: Session, name: str
) -> None:
    lock = await Mutex(session, name).acquire(timeout=0)
    assert await raw_delete(client, lock.key)
    reason = await asyncio.wait_for(lock.wait_lost(), 5)
    assert "deleted" in reason
    assert lock.is_lost
    assert not session.is_lost
    assert await client.time_to_live(session.lease_id) > 0
    assert await lock.release() is False
    async with Mutex(session, name, timeout=0) as again:
        assert again.is_held


async def test_waiter_whose_key_is_deleted_fails_with_lock_lost(
    client: EtcdClient, session: Session, name: str
) -> None:
    async with sessions(client, 1) as (other,):
        held = await Mutex(session, name).acquire()
        waiter = Mutex(other, name)
        task = asyncio.create_task(waiter.acquire())
        await wait_for_key(client, name, waiter.key)
        assert await raw_delete(client, waiter.key)
        with pytest.raises(LockLost):
            await bounded(task)
        assert not waiter.is_held
        assert not other.is_lost
        assert await queue_keys(client, name) == [held.key]
        await held.release()
        async with Mutex(other, name, timeout=0) as again:
            assert again.is_held


async def test_same_session_cannot_hold_or_wait_for_the_same_name_twice(
    client: EtcdClient, session: Session, name: str
) -> None:
    first = await Mutex(session, name).acquire(timeout=0)
    with pytest.raises(AlreadyAcquiring):
        await Mutex(session, name).acquire(timeout=0)
    with pytest.raises(AlreadyAcquiring):
        await Semaphore(session, name, permits=2).acquire(timeout=1)
    # The refused second holder deleted nothing: the first still holds its key.
    assert await create_revision(client, first.key) == first.token
    assert await first.release()
    again = await Mutex(session, name).acquire(timeout=0)
    assert await again.release()

    async with sessions(client, 1) as (other,):
        held = await Mutex(other, name).acquire()
        waiting = asyncio.create_task(Mutex(session, name).acquire())
        await wait_for_key(client, name, key_of(session, name))
        with pytest.raises(AlreadyAcquiring):
            await Mutex(session, name).acquire(timeout=0)
        await wait_for_keys(client, name, [held.key, key_of(session, name)])
        await held.release()
        lock = await bounded(waiting)
        await lock.release()


async def test_waiter_acquires_after_the_history_it_watches_is_compacted(
    client: EtcdClient, session: Session, name: str
) -> None:
    async with sessions(client, 1) as (other,), asyncio.timeout(15):
        held = await Mutex(session, name).acquire()
        waiter = Mutex(other, name)
        task = asyncio.create_task(waiter.acquire())
        await wait_for_key(client, name, waiter.key)
        for i in range(5):
            await client.txn([], [put_op(f"{name}-filler/{i}".encode(), b"x")])
        head = (await client.range(b"/")).header.revision
        await client.compact(head, physical=True)
        assert not task.done()
        await held.release()
        lock = await task
        assert lock.token == await create_revision(client, lock.key)
        assert await queue_keys(client, name) == [lock.key]
        # Its loss is still detected after the compaction (by the watch, or by the re-read that follows a
        # compacted watch).
        assert await raw_delete(client, lock.key)
        assert lock.key in await asyncio.wait_for(lock.wait_lost(), 5)


def _watch_requests(etcd: LocalEtcd) -> float:
    """Watch create/cancel requests etcd has received so far (its Prometheus counter)."""
    with urllib.request.urlopen(f"{etcd.endpoints[0]}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("grpc_server_msg_received_total{") and 'grpc_method="Watch"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_holder_guard_survives_compaction_of_its_start_revision_without_spinning(
    etcd: LocalEtcd, client: EtcdClient, session: Session, name: str
) -> None:
    """A fresh holder starts watching its key a moment after acquiring, from the key's create revision.

    If that history is compacted first, the guard must re-read the key and watch from now on, not retry
    the compacted revision for ever (a busy loop of watch requests against etcd).
    """
    lock = await Mutex(session, name).acquire(timeout=0)
    for i in range(2):
        await client.txn([], [put_op(f"{name}-filler/{i}".encode(), b"x")])
    head = (await client.range(b"/")).header.revision
    await client.compact(head, physical=True)
    # Let the guard start (it waits 0.1 s), then count watch requests for 1.5 s (a retry loop makes ~20/s).
    await asyncio.sleep(0.3)
    before = await asyncio.to_thread(_watch_requests, etcd)
    await asyncio.sleep(1.5)
    after = await asyncio.to_thread(_watch_requests, etcd)
    assert after - before <= 8, (
        f"{after - before} watch requests in 1.5 s: the guard retries a compacted revision"
    )
    assert not lock.is_lost
    assert await raw_delete(client, lock.key)
    assert "deleted" in await asyncio.wait_for(lock.wait_lost(), 5)


async def test_waiter_value_records_when_it_was_granted_not_when_it_queued(
    client: EtcdClient, session: Session, name: str
) -> None:
    async with sessions(client, 1) as (other,), asyncio.timeout(10):
        held = await Mutex(session, name).acquire()
        task = asyncio.create_task(Mutex(other, name, holder="patient").acquire())
        queued = (await wait_for_key(client, name, key_of(other, name))).info
        assert queued.holder == "patient"
        assert queued.acquired is not None

        async def next_second() -> bool:
            return now() > queued.acquired  # type: ignore[operator]

        await eventually(next_second, "the wall clock to pass the queueing second")
        await held.release()
        lock = await task

        async def marked() -> bool:
            _, contenders = await read_contenders(client, name)
            acquired = contenders[0].info.acquired
            return contenders[0].key == lock.key and acquired is not None and acquired > queued.acquired

        await eventually(marked, "the granted waiter's value to carry its grant time")
        await lock.release()


async def test_releasing_right_after_the_grant_never_hangs(
    client: EtcdClient, session: Session, name: str
) -> None:
    """Release stops the guard a waiter set up while queueing, possibly while it still creates its watch."""
    async with sessions(client, 1) as (other,):
        for _ in range(60):
            held = await bounded(Mutex(session, name).acquire(timeout=0))
            waiter = Mutex(other, name)
            task = asyncio.create_task(waiter.acquire())
            await wait_for_key(client, name, waiter.key)
            assert await bounded(held.release())
            await bounded(task)
            assert await bounded(waiter.release())
        assert await queue_keys(client, name) == []


@pytest.mark.parametrize("how", ["timeout", "cancel"])
async def test_a_release_not_confirmed_in_time_deletes_the_key_once_etcd_answers_and_keeps_the_name_meanwhile(
    name: str, how: str
) -> None:
    async with (
        private_etcd() as local,
        EtcdClient(EtcdConfig.parse(local.endpoints, request_timeout=0.5)) as client,
        Session(client, ttl=30) as session,
    ):
        lock = await Mutex(session, name).acquire(timeout=0)
        member = local.members[0]
        local.pause(member)
        try:
            if how == "timeout":
                with pytest.raises(EtcdUnavailable, match="not confirmed"):
                    await lock.release()
            else:
                releasing = asyncio.create_task(lock.release())

                async def under_way() -> bool:
                    return not lock.is_held

                # The member is paused: once under way, the release's delete cannot have landed.
                await eventually(under_way, "the release under way")
                releasing.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await releasing
            # The fenced delete is still on its way: this session may not take the name again meanwhile
            # (both would be the one key the delete is about to remove).
            with pytest.raises(AlreadyAcquiring):
                await Mutex(session, name).acquire(timeout=0)
        finally:
            local.resume(member)

        async def deleted() -> bool:
            return await queue_keys(client, name) == []

        await eventually(deleted, "the key deleted once etcd answers")
        # The name is free once the release's delete has its answer, a moment after etcd applied it.
        taken: list[Mutex] = []

        async def free_again() -> bool:
            try:
                taken.append(await bounded(Mutex(session, name).acquire(timeout=BOUND)))
            except AlreadyAcquiring:
                return False
            return True

        await eventually(free_again, "the name free once the delete was answered")
        assert taken[0].is_held
