"""The operator's view of a lock's queue, fed by a real etcd watch, against a full read at every step; and
the status publisher that coalesces a burst of changes into a few writes, the last state winning."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

from etcdlock.etcd import EtcdClient, read_contenders
from etcdlock.etcd.keys import Contender, prefix, range_end
from etcdlock.etcd.requests import delete_op, put_op
from etcdlock.operator.mirror import StatusPublisher
from etcdlock.operator.queueview import QueueChange, QueueView

BOUND = 10.0


async def test_the_view_follows_every_put_and_delete_as_a_full_read_sees_the_queue(
    client: EtcdClient,
) -> None:
    """Random joins, holder and waiter departures and rewrites of values, on three permits: after each
    event the view's holders and waiters equal the first three keys and the rest of a full read at that
    revision, and each change names exactly who moved."""
    name = f"/test/queue-view/{uuid.uuid4().hex[:8]}"
    start = prefix(name)
    permits, choose = 3, random.Random(7)
    revision, contenders = await read_contenders(client, name)
    view = QueueView(permits)
    assert view.reset(contenders) == QueueChange(baseline=True)
    live: list[str] = []
    async with asyncio.timeout(BOUND * 6):
        async with client.watch_events(start, range_end(start), start_revision=revision + 1) as events:
            for step in range(150):
                action = choose.random()
                if not live or action < 0.45:
                    key = f"{start.decode()}{step:04x}"
                    live.append(key)
                    await client.txn([], [put_op(key.encode(), f"v{step}".encode())])
                elif action < 0.85:
                    key = live.pop(choose.randrange(len(live)))
                    await client.txn([], [delete_op(key.encode())])
                else:
                    key = choose.choice(live)
                    await client.txn([], [put_op(key.encode(), f"again-{step}".encode())])
                event = await anext(events)
                before = (dict(view.holders), dict(view.waiters))
                change = view.apply(event)
                at = int(event.kv.mod_revision)
                read = await read_at(client, name, at)
                assert list(view.holders) == [c.key for c in read[:permits]], step
                assert list(view.waiters) == [c.key for c in read[permits:]], step
                assert [c.value for c in [*view.holders.values(), *view.waiters.values()]] == [
                    c.value for c in read
                ]
                assert_change_names_the_moves(change, before, view)
                assert set(view.since) == set(view.holders)


async def read_at(client: EtcdClient, name: str, revision: int) -> list[Contender]:
    """The queue as a full read sees it at ``revision``."""
    start = prefix(name)
    response = await client.range(start, range_end(start), by_create=True, revision=revision)
    return [Contender.from_kv(kv) for kv in response.kvs]


def assert_change_names_the_moves(
    change: QueueChange, before: tuple[dict[str, Any], ...], view: QueueView
) -> None:
    holders, waiters = before
    assert {c.key for c in change.acquired} == set(view.holders) - set(holders)
    assert {c.key for c in change.released} == set(holders) - set(view.holders)
    assert {c.key for c in change.joined} == set(view.waiters) - set(waiters) - set(holders)
    assert {c.key for c in change.left} == (set(waiters) - set(view.waiters)) - set(view.holders)
    assert not change.baseline


async def test_a_burst_of_changes_is_a_few_writes_and_the_last_state_is_written() -> None:
    written: list[int] = []

    last_written = asyncio.Event()

    async def publish(status: dict[str, Any]) -> None:
        await asyncio.sleep(0.01)  # a round trip to the API server
        written.append(status["waiterCount"])
        if status["waiterCount"] == 1000:
            last_written.set()

    publisher = StatusPublisher(publish, interval=0.05)
    running = asyncio.create_task(publisher.run())
    try:
        for count in range(1, 1001):
            publisher.offer(lambda count=count: status_of(count))
            if count % 100 == 0:
                await asyncio.sleep(0.01)
        async with asyncio.timeout(BOUND):
            await last_written.wait()
        await asyncio.sleep(0.2)
        assert 2 <= len(written) <= 6, written
        publisher.offer(lambda: status_of(1000))  # nothing new: not written again
        await asyncio.sleep(0.2)
        assert written[-1] == 1000 and written.count(1000) == 1
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


def status_of(waiters: int) -> dict[str, Any]:
    return {"waiterCount": waiters, "conditions": [{"type": "Ready", "status": "True"}]}
