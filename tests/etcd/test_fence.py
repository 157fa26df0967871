"""Fenced sessions: a deposed leader's writes change nothing.

An election's fence guards every key write of another session (enqueue, release, the holder's value);
once the leader key is gone the writes fail with Fenced, and etcd shows that nothing was written.
"""

from __future__ import annotations

import pytest
from engine_support import bounded, queue_keys, raw_delete

from etcdlock.etcd import Election, EtcdClient, Fenced, Mutex, Semaphore, Session, Waiter


async def test_fenced_writes_go_through_while_the_leader_leads(client: EtcdClient, name: str) -> None:
    async with Session(client) as leader_session:
        election = await bounded(Election(leader_session, f"{name}/leader").campaign("replica-1"))
        async with Session(client, fence=election.fence()) as pod:
            lock = await bounded(Mutex(pod, f"{name}/lock").acquire())
            assert await queue_keys(client, f"{name}/lock") == [lock.key]
            assert await lock.release()
            assert await queue_keys(client, f"{name}/lock") == []


async def test_a_deposed_leader_can_neither_enqueue_nor_release(client: EtcdClient, name: str) -> None:
    async with Session(client) as leader_session, Session(client) as other:
        election = await bounded(Election(leader_session, f"{name}/leader").campaign("replica-1"))
        fenced = Session(client, fence=election.fence())
        async with fenced:
            held = await bounded(Mutex(fenced, f"{name}/lock").acquire())
            # Deposed: the leader key goes (its lease expired while the replica was paused, say).
            assert await raw_delete(client, election.key)
            before = (await client.range(b"\0", b"\0")).header.revision
            with pytest.raises(Fenced):
                await held.release()
            assert await queue_keys(client, f"{name}/lock") == [held.key], "the release changed nothing"
            with pytest.raises(Fenced):
                await bounded(Semaphore(fenced, f"{name}/other", permits=2).acquire())
            assert await queue_keys(client, f"{name}/other") == []
            with pytest.raises(Fenced):
                await Waiter(fenced, f"{name}/third").join(b"x")
            after = (await client.range(b"\0", b"\0")).header.revision
            assert after == before, "no write at all reached etcd"
            # Someone else's election now wins, and holders under other sessions are untouched.
            successor = await bounded(Election(other, f"{name}/leader").campaign("replica-2"))
            assert successor.is_leader
