"""Shared fixtures: real etcd processes on loopback (never a mock) and clients connected to them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from etcdlock.etcd import EtcdClient, EtcdConfig, Session
from etcdlock.sandbox.etcd import LocalEtcd


@pytest.fixture(scope="session")
def etcd() -> Iterator[LocalEtcd]:
    """One single-member etcd for the whole run; tests keep apart by using unique lock names."""
    with LocalEtcd(size=1) as cluster:
        yield cluster


@pytest.fixture
def etcd_cluster() -> Iterator[LocalEtcd]:
    """A fresh three-member etcd for failure tests (members get killed)."""
    with LocalEtcd(size=3) as cluster:
        yield cluster


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A lock name unique to the test."""
    return f"test/{request.node.name}"


@pytest.fixture
async def client(etcd: LocalEtcd) -> AsyncIterator[EtcdClient]:
    async with EtcdClient(EtcdConfig.parse(etcd.endpoints)) as etcd_client:
        yield etcd_client


@pytest.fixture
async def session(client: EtcdClient) -> AsyncIterator[Session]:
    async with Session(client, ttl=10) as etcd_session:
        yield etcd_session
