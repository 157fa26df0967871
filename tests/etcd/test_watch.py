"""Many watches on one stream: created concurrently, each answered under its own ID, each delivering only
its own key's events; a watch whose creator gave up is not left behind."""

from __future__ import annotations

import asyncio
import contextlib

from etcdlock.etcd import EtcdClient, EtcdConfig
from etcdlock.etcd.errors import Compacted, EtcdUnavailable
from etcdlock.etcd.requests import put_op
from etcdlock_sandbox.etcd import LocalEtcd

BOUND = 30.0


async def test_watches_created_at_once_each_deliver_only_their_own_key(client: EtcdClient, name: str) -> None:
    count = 300
    keys = [f"{name}/{i}".encode() for i in range(count)]
    revision = int((await client.range(b"\0")).header.revision)
    all_created = asyncio.Event()
    created = 0

    async def watch(key: bytes) -> bytes:
        nonlocal created
        async with client.watch_events(key, start_revision=revision + 1) as events:
            created += 1
            if created == count:
                all_created.set()
            async for event in events:
                return bytes(event.kv.key) + b"=" + bytes(event.kv.value)
        raise AssertionError("the watch ended")

    async with asyncio.timeout(BOUND):
        watching = [asyncio.create_task(watch(key)) for key in keys]
        await all_created.wait()
        for index, key in enumerate(reversed(keys)):
            await client.txn([], [put_op(key, str(index).encode())])
        seen = await asyncio.gather(*watching)
    assert seen == [key + b"=" + str(count - 1 - i).encode() for i, key in enumerate(keys)]


async def test_a_creation_abandoned_before_its_answer_leaves_the_stream_serving_the_others(
    client: EtcdClient, name: str
) -> None:
    revision = int((await client.range(b"\0")).header.revision)

    async def abandoned(key: bytes) -> None:
        async with client.watch_events(key, start_revision=revision + 1):
            await asyncio.Event().wait()

    async with asyncio.timeout(BOUND):
        gone = [asyncio.create_task(abandoned(f"{name}/gone/{i}".encode())) for i in range(50)]
        await asyncio.sleep(0)  # the creations are sent, none answered yet
        for task in gone:
            task.cancel()
        await asyncio.gather(*gone, return_exceptions=True)
        async with client.watch_events(f"{name}/kept".encode(), start_revision=revision + 1) as events:
            await client.txn(
                [], [put_op(f"{name}/gone/0".encode(), b"x"), put_op(f"{name}/kept".encode(), b"y")]
            )
            event = await anext(aiter(events))
    assert bytes(event.kv.key) == f"{name}/kept".encode()


async def test_a_watch_from_a_compacted_revision_says_so(client: EtcdClient, name: str) -> None:
    for value in (b"1", b"2", b"3"):
        await client.txn([], [put_op(name.encode(), value)])
    revision = int((await client.range(b"\0")).header.revision)
    await client.compact(revision)
    with contextlib.suppress(Compacted):
        async with asyncio.timeout(BOUND), client.watch_events(name.encode(), start_revision=1) as events:
            async for _ in events:
                raise AssertionError("a compacted revision delivered events")
        raise AssertionError("the watch did not say its start revision was compacted")


async def test_a_closed_client_ends_its_watches(etcd: LocalEtcd, name: str) -> None:
    client = EtcdClient(EtcdConfig.parse(etcd.endpoints))
    revision = int((await client.range(b"\0")).header.revision)
    watching_now = asyncio.Event()

    async def watch() -> None:
        async with client.watch_events(name.encode(), start_revision=revision + 1) as events:
            watching_now.set()
            async for _ in events:
                pass

    watching = asyncio.create_task(watch())
    async with asyncio.timeout(BOUND):
        await watching_now.wait()
        await client.close()
        (outcome,) = await asyncio.gather(watching, return_exceptions=True)
    assert isinstance(outcome, EtcdUnavailable)
