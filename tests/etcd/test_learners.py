"""A client whose endpoints include a learner: a learner serves only Status and serializable reads, and
answers everything else with "rpc not supported for learner"; the client goes on to a member that serves
it, as it does from a member without a leader. (An EtcdCluster's status client, whose current member had
become the freshly added learner, stayed there for good: the learner was never promoted.)"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdlock.etcd import EtcdClient, EtcdConfig, EtcdUnavailable, Mutex, Session
from etcdlock_sandbox.etcd import LocalEtcd

BOUND = 30.0


@pytest.fixture
def with_learner(tmp_path: Path) -> Iterator[LocalEtcd]:
    """A voter and a learner that has caught up (it answers Status)."""
    with LocalEtcd(size=1, workdir=tmp_path) as cluster:
        voter = cluster.members[0]
        learner = cluster.add_member("m1")
        added = cluster.etcdctl("member", "add", "m1", "--learner", f"--peer-urls={learner.peer_url}")
        assert added.returncode == 0, added.stderr
        cluster.start_member(learner, wait=False, join=f"m0={voter.peer_url},m1={learner.peer_url}")
        yield cluster


async def answering(client: EtcdClient) -> None:
    """Until the learner (the client's only endpoint) answers Status."""
    async with asyncio.timeout(BOUND):
        while True:
            try:
                await client.status()
                return
            except EtcdUnavailable:  # still starting, or catching up
                await asyncio.sleep(0.2)


async def test_requests_a_learner_does_not_serve_go_to_a_member_that_does(with_learner: LocalEtcd) -> None:
    voter, learner = with_learner.members
    async with EtcdClient(EtcdConfig.parse(learner.client_url)) as alone:
        await answering(alone)
    # The learner first: the client starts there.
    config = EtcdConfig.parse(f"{learner.client_url},{voter.client_url}", request_timeout=BOUND)
    async with EtcdClient(config) as client:
        listed = await client.members()
        assert sorted((m.name, m.isLearner) for m in listed) == [("m0", False), ("m1", True)]
        async with Session(client, ttl=5) as session, Mutex(session, "learners/lock", timeout=BOUND) as lock:
            assert lock.token > 0
