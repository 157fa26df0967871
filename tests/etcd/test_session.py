"""Session against a real etcd: the lease is kept alive, adopted, revoked, and lost at its local deadline."""

from __future__ import annotations

import asyncio
import time

import pytest
from engine_support import bounded, eventually, private_etcd, queue_keys

from etcdlock.etcd import EtcdClient, EtcdConfig, Mutex, Session, SessionLost
from etcdlock_sandbox.etcd import LocalEtcd


async def test_session_is_lost_at_its_local_deadline_when_etcd_stops_answering(name: str) -> None:
    async with (
        private_etcd() as local,
        EtcdClient(EtcdConfig.parse(local.endpoints)) as client,
        Session(client, ttl=2) as session,
    ):
        lock = await Mutex(session, name).acquire(timeout=0)
        member = local.members[0]
        local.pause(member)
        try:
            # Nothing ends the keepalive stream: only the local deadline (last renewal + TTL) can notice.
            reason = await asyncio.wait_for(session.wait_lost(), session.ttl + 2)
            lock_reason = await asyncio.wait_for(lock.wait_lost(), 1)
        finally:
            local.resume(member)
        assert "keepalive" in reason
        assert session.is_lost
        assert session.lost_reason == reason
        assert lock.is_lost
        assert lock_reason == reason
        with pytest.raises(SessionLost, match="keepalive"):
            session.check()


async def test_a_process_resumed_after_its_deadline_acts_only_on_the_keepalives_verdict(
    client: EtcdClient, name: str
) -> None:
    async with Session(client, ttl=2) as session:
        lock = await Mutex(session, name).acquire(timeout=0)
        await session.assured()  # within its deadline: at once
        loop = asyncio.get_running_loop()
        # The event loop is held, as a paused process's is (SIGSTOP, a frozen VM), past the deadline and a
        # whole TTL more: no renewal sent before the pause can still keep the lease alive in etcd. Nothing
        # has told the session yet; what must not outlive the lease waits for the keepalive task instead.
        time.sleep(session.deadline - loop.time() + session.ttl + 0.3)  # noqa: ASYNC251
        with pytest.raises(SessionLost, match="keepalive"):
            await session.assured()
        assert lock.is_lost
        assert await client.time_to_live(session.lease_id) < 0


async def test_session_renews_its_lease_beyond_the_ttl(client: EtcdClient) -> None:
    control, _ = await client.grant(2)
    async with Session(client, ttl=2) as session:

        async def control_expired() -> bool:
            assert await client.time_to_live(session.lease_id) > 0
            return await client.time_to_live(control) < 0

        # A lease granted at the same time without renewal expires; the session's stays alive throughout.
        await eventually(control_expired, "the unrenewed control lease to expire", timeout=8, interval=0.2)
        assert not session.is_lost
        assert await client.time_to_live(session.lease_id) > 0


async def test_session_adopting_an_existing_lease_keeps_it_alive(client: EtcdClient, name: str) -> None:
    adopted, _ = await client.grant(2)
    control, _ = await client.grant(2)
    async with Session(client, ttl=2, lease_id=adopted) as session:
        assert session.lease_id == adopted

        async def control_expired() -> bool:
            assert await client.time_to_live(adopted) > 0
            return await client.time_to_live(control) < 0

        await eventually(control_expired, "the unadopted control lease to expire", timeout=8, interval=0.2)
        assert not session.is_lost
        async with Mutex(session, name, timeout=0) as lock:
            assert lock.key == f"{name}/{adopted:x}"
    assert await client.time_to_live(adopted) < 0


async def test_adopting_a_revoked_lease_raises_session_lost(client: EtcdClient) -> None:
    lease, _ = await client.grant(5)
    assert await client.revoke(lease)
    with pytest.raises(SessionLost, match=f"{lease:x}"):
        await bounded(Session(client, ttl=5, lease_id=lease).start())


async def test_closing_a_session_revokes_its_lease_and_deletes_its_keys(
    client: EtcdClient, name: str
) -> None:
    async with Session(client, ttl=10) as session:
        lock = await Mutex(session, name).acquire(timeout=0)
        lease = session.lease_id
        assert await queue_keys(client, name) == [lock.key]
    assert session.is_lost
    assert session.lost_reason == "session closed"
    assert await client.time_to_live(lease) < 0
    assert await queue_keys(client, name) == []


async def test_orphaned_session_leaves_its_lease_and_keys_for_adoption(client: EtcdClient, name: str) -> None:
    session = await Session(client, ttl=5).start()
    try:
        lock = await Mutex(session, name).acquire(timeout=0)
        await session.orphan()
        assert session.is_lost
        assert session.lost_reason == "session orphaned"
        assert await client.time_to_live(session.lease_id) > 0
        assert await queue_keys(client, name) == [lock.key]
        async with Session(client, ttl=5, lease_id=session.lease_id) as adopter:
            assert await queue_keys(client, name) == [lock.key]
            assert not adopter.is_lost
        assert await queue_keys(client, name) == []
    finally:
        await session.close()
        await client.revoke(session.lease_id)


async def test_revoked_lease_makes_the_session_lost(client: EtcdClient, name: str) -> None:
    async with Session(client, ttl=3) as session:
        assert await client.revoke(session.lease_id)
        reason = await asyncio.wait_for(session.wait_lost(), 5)
        assert "revoked" in reason
        with pytest.raises(SessionLost):
            session.check()
        with pytest.raises(SessionLost):
            await Mutex(session, name).acquire(timeout=0)


def test_session_ttl_below_one_second_is_refused() -> None:
    with pytest.raises(ValueError, match="TTL"):
        Session(None, ttl=0)  # type: ignore[arg-type]


async def test_a_session_on_a_client_that_was_never_entered_connects_by_itself(etcd: LocalEtcd) -> None:
    client = EtcdClient(EtcdConfig.parse(etcd.endpoints))
    try:
        session = await Session(client, ttl=5).start()
        assert await client.time_to_live(session.lease_id) > 0
        await session.close()
    finally:
        await client.close()
