"""``acquire(on_queue=...)``: a waiting acquire is told where it stands (keys ahead, the holders and what
they wrote) at every change of the queue ahead of it, live, and at nothing else."""

from __future__ import annotations

import asyncio

from engine_support import BOUND, bounded, sessions, wait_for_key

from etcdlock.etcd import EtcdClient, Mutex, QueuePosition, Semaphore, Session
from etcdlock.etcd.keys import HolderInfo, contender_key
from etcdlock.etcd.requests import put_op


class Reports:
    """The positions an acquire reports, awaited one by one with a bound."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[QueuePosition] = asyncio.Queue()

    def __call__(self, position: QueuePosition) -> None:
        self.queue.put_nowait(position)

    async def next(self) -> QueuePosition:
        return await bounded(self.queue.get(), BOUND)


async def put_raw(client: EtcdClient, session: Session, name: str, value: bytes) -> str:
    """A contender key as etcdctl writes it (``value`` b"" is etcdctl's), bound to ``session``'s lease."""
    key = contender_key(name, session.lease_id)
    await client.txn([], [put_op(key, value, session.lease_id)])
    return key.decode()


async def test_a_waiter_is_told_each_change_ahead_and_who_holds(client: EtcdClient, name: str) -> None:
    async with sessions(client, 4) as (first, second, third, last):
        held = await Mutex(first, name, holder="alice").acquire()
        etcdctl_key = await put_raw(client, second, name, b"")
        reports = Reports()
        waiting = asyncio.create_task(Mutex(third, name).acquire(on_queue=reports))

        position = await reports.next()
        assert (position.name, position.permits, position.ahead, position.held) == (name, 1, 2, 1)
        (holder,) = position.holders
        assert (holder.key, holder.fencing_token, holder.info.holder) == (held.key, held.token, "alice")
        assert position.key == f"{name}/{third.lease_id:x}"

        # A newcomer queues behind: nothing changes ahead, so nothing is told (the next report is the
        # release below, which etcd orders after the newcomer's key).
        behind = asyncio.create_task(Mutex(last, name).acquire())
        await wait_for_key(client, name, f"{name}/{last.lease_id:x}")
        await held.release()
        position = await reports.next()
        assert (position.ahead, position.held) == (1, 1)
        (holder,) = position.holders
        assert (holder.key, holder.value, holder.info.holder) == (etcdctl_key, b"", None)

        assert not waiting.done()  # the wait goes on until the etcdctl key goes
        await second.close()
        lock = await bounded(waiting)
        assert lock.is_held and reports.queue.empty()
        await lock.release()
        await (await bounded(behind)).release()


async def test_a_lock_free_at_once_tells_nothing(session: Session, name: str) -> None:
    reports = Reports()
    lock = await Semaphore(session, name, 2).acquire(on_queue=reports)
    await lock.release()
    assert reports.queue.empty()


async def test_a_semaphore_waiter_is_told_its_holders_and_their_new_values(
    client: EtcdClient, name: str
) -> None:
    async with sessions(client, 3) as (first, second, third):
        one = await Semaphore(first, name, 2, holder="one").acquire()
        two_key = await put_raw(client, second, name, HolderInfo(holder="two", permits=2).encode())
        reports = Reports()
        waiting = asyncio.create_task(Semaphore(third, name, 2).acquire(on_queue=reports))

        position = await reports.next()
        assert (position.ahead, position.held, position.permits) == (2, 2, 2)
        assert [(h.key, h.info.holder) for h in position.holders] == [(one.key, "one"), (two_key, "two")]

        # A holder rewrites its value (as one that waited does, with its acquired time): told, from the
        # watch's event.
        await put_raw(client, second, name, HolderInfo(holder="two again", permits=2).encode())
        position = await reports.next()
        assert [h.info.holder for h in position.holders] == ["one", "two again"]

        await one.release()
        lock = await bounded(waiting)
        assert reports.queue.empty()
        await lock.release()


async def test_a_waiter_ahead_giving_up_is_told_with_the_same_holder(client: EtcdClient, name: str) -> None:
    async with sessions(client, 3) as (first, second, third):
        held = await Mutex(first, name, holder="alice").acquire()
        ahead = asyncio.create_task(Mutex(second, name).acquire())
        await wait_for_key(client, name, f"{name}/{second.lease_id:x}")
        reports = Reports()
        waiting = asyncio.create_task(Mutex(third, name).acquire(on_queue=reports))
        assert (await reports.next()).ahead == 2

        ahead.cancel()  # gives up: its key is removed
        position = await reports.next()
        assert (position.ahead, [h.key for h in position.holders]) == (1, [held.key])

        await held.release()
        lock = await bounded(waiting)
        assert reports.queue.empty()
        await lock.release()
