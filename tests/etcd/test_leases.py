"""Every session and keeper of a client renews on one LeaseKeepAlive stream per member, as etcd's Go client
does: counted by etcd itself (its gRPC metrics), not by looking inside the client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from etcdlock.etcd import EtcdClient, EtcdConfig, Session
from etcdlock.etcd.keeper import LeaseKeeper
from etcdlock_sandbox.etcd import LocalEtcd

BOUND = 30.0
SESSIONS = 50
TTL = 2


@pytest.fixture
def fresh_etcd() -> Iterator[LocalEtcd]:
    """An etcd of this test alone, so that no other client opens streams on it meanwhile."""
    with LocalEtcd(size=1) as cluster:
        yield cluster


def keepalive_streams(cluster: LocalEtcd) -> int:
    return cluster.members[0].streams_started("LeaseKeepAlive")


async def outlive_the_ttl() -> None:
    """The time a lease lives unless renewed, and a margin: what lives after it was renewed."""
    await asyncio.sleep(TTL + 1)


async def test_many_sessions_of_one_client_renew_on_one_stream(fresh_etcd: LocalEtcd) -> None:
    async with EtcdClient(EtcdConfig.parse(fresh_etcd.endpoints)) as client:
        sessions = [Session(client, ttl=TTL) for _ in range(SESSIONS)]
        async with asyncio.timeout(BOUND):
            await asyncio.gather(*(session.start() for session in sessions))
            await outlive_the_ttl()
            assert not [session for session in sessions if session.is_lost]
            left = [await client.time_to_live(session.lease_id) for session in sessions]
            assert min(left) > 0
            assert keepalive_streams(fresh_etcd) == 1
            await asyncio.gather(*(session.close() for session in sessions))


async def test_a_keeper_and_sessions_share_the_stream_and_a_closed_session_leaves_the_others_renewing(
    fresh_etcd: LocalEtcd,
) -> None:
    async with EtcdClient(EtcdConfig.parse(fresh_etcd.endpoints)) as client:
        async with Session(client, ttl=TTL) as kept, Session(client, ttl=TTL) as closing:
            keeper = LeaseKeeper(client, TTL / 3)
            lease, _ = await client.grant(TTL)
            keeper.keep([lease])
            async with asyncio.timeout(BOUND):
                await keeper.renewed()
                await closing.close()
                await outlive_the_ttl()
            assert not kept.is_lost and await client.time_to_live(kept.lease_id) > 0
            assert await client.time_to_live(lease) > 0
            await keeper.close()
            assert keepalive_streams(fresh_etcd) == 1
