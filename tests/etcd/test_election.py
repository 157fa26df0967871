"""Election against a real etcd: campaign, leader, proclaim, resign, observe; etcdctl elect compatibility."""

from __future__ import annotations

import asyncio

import pytest
from engine_support import BOUND, bounded, etcdctl, queue_keys, raw_delete, sessions, wait_for_key

from etcdlock.etcd import Election, EtcdClient, LockLost, NotHeld, Session, observe
from etcdlock_sandbox.etcd import LocalEtcd


async def test_campaign_returns_once_leader_and_leader_shows_key_and_proposal(
    session: Session, name: str
) -> None:
    election = Election(session, name)
    assert await election.leader() is None
    assert await bounded(election.campaign("node-a")) is election
    assert election.is_leader
    assert election.key == f"{name}/{session.lease_id:x}"
    leader = await election.leader()
    assert leader is not None
    assert (leader.key, leader.value) == (election.key, b"node-a")
    assert election.token == leader.create_revision
    assert await election.resign() is True
    assert not election.is_leader
    assert await election.leader() is None


async def test_second_candidate_waits_and_resign_hands_leadership_over(
    client: EtcdClient, session: Session, name: str
) -> None:
    async with sessions(client, 1) as (other,):
        first = await bounded(Election(session, name).campaign("a"))
        first_token = first.token
        second = Election(other, name)
        task = asyncio.create_task(second.campaign("b"))
        await wait_for_key(client, name, second.key)
        assert not task.done()
        assert not second.is_leader
        leader = await second.leader()
        assert leader is not None and leader.value == b"a"

        assert await first.resign() is True
        assert await bounded(task) is second
        assert second.is_leader and not first.is_leader
        leader = await first.leader()
        assert leader is not None
        assert (leader.key, leader.value) == (second.key, b"b")
        assert second.token > first_token
        assert await second.resign()


async def test_proclaim_changes_the_leader_value_and_is_fenced(
    client: EtcdClient, session: Session, name: str
) -> None:
    election = await bounded(Election(session, name).campaign("v1"))
    await election.proclaim("v2")
    leader = await election.leader()
    assert leader is not None
    assert (leader.value, leader.create_revision) == (b"v2", election.token)

    async with sessions(client, 1) as (other,):
        with pytest.raises(NotHeld):
            await Election(other, name).proclaim("usurper")

    # A deposed leader cannot write: its key is not re-created.
    assert await raw_delete(client, election.key)
    with pytest.raises(NotHeld):
        await election.proclaim("v3")
    assert await queue_keys(client, name) == []


async def test_leadership_loss_is_observable(client: EtcdClient, session: Session, name: str) -> None:
    election = await bounded(Election(session, name).campaign("me"))
    assert await raw_delete(client, election.key)
    reason = await asyncio.wait_for(election.wait_lost(), 5)
    assert "deleted" in reason
    assert not election.is_leader
    assert not session.is_lost
    assert await election.resign() is False


async def test_observe_yields_the_leader_and_its_changes(client: EtcdClient, name: str) -> None:
    leaders = observe(client, name)
    try:
        async with sessions(client, 2) as (first_session, second_session):
            pending = asyncio.ensure_future(anext(leaders))
            first = await bounded(Election(first_session, name).campaign("a"))
            seen = await bounded(pending)
            assert (seen.key, seen.value) == (first.key, b"a")

            await first.proclaim("a2")
            seen = await bounded(anext(leaders))
            assert (seen.key, seen.value) == (first.key, b"a2")

            second = Election(second_session, name)
            task = asyncio.create_task(second.campaign("b"))
            await wait_for_key(client, name, second.key)
            assert await first.resign()
            seen = await bounded(anext(leaders))
            assert (seen.key, seen.value) == (second.key, b"b")
            await bounded(task)
            assert await second.resign()
    finally:
        await leaders.aclose()


async def test_candidate_whose_key_is_deleted_while_waiting_fails_with_lock_lost(
    client: EtcdClient, session: Session, name: str
) -> None:
    async with sessions(client, 1) as (other,):
        leader = await bounded(Election(session, name).campaign("leader"))
        candidate = Election(other, name)
        task = asyncio.create_task(candidate.campaign("candidate"))
        await wait_for_key(client, name, candidate.key)
        assert await raw_delete(client, candidate.key)
        with pytest.raises(LockLost):
            await bounded(task)
        assert not candidate.is_leader
        assert await queue_keys(client, name) == [leader.key]
        # No phantom leader once the real one resigns: the deleted candidate never takes over.
        assert await leader.resign()
        assert await leader.leader() is None


async def test_timed_out_or_cancelled_campaign_leaves_no_key(
    client: EtcdClient, session: Session, name: str
) -> None:
    async with sessions(client, 1) as (other,):
        leader = await bounded(Election(session, name).campaign("leader"))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(Election(other, name).campaign("late", timeout=0.3), BOUND)
        assert await queue_keys(client, name) == [leader.key]

        candidate = Election(other, name)
        task = asyncio.create_task(candidate.campaign("late"))
        await wait_for_key(client, name, candidate.key)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bounded(task)
        assert await queue_keys(client, name) == [leader.key]
        assert await leader.resign()


async def test_campaign_waits_behind_etcdctl_elect_and_wins_when_it_resigns(
    etcd: LocalEtcd, client: EtcdClient, session: Session, name: str
) -> None:
    async with etcdctl(etcd, "elect", name, "from-etcdctl") as elect:
        etcdctl_key = await elect.line()
        assert await elect.line() == "from-etcdctl"
        ours = Election(session, name)
        leader = await ours.leader()
        assert leader is not None
        assert (leader.key, leader.value) == (etcdctl_key, b"from-etcdctl")
        task = asyncio.create_task(ours.campaign("from-etcdlock"))
        await wait_for_key(client, name, ours.key)
        assert not task.done()
        assert await elect.stop() == 0
        await bounded(task)
        assert ours.is_leader
        assert await queue_keys(client, name) == [ours.key]
        assert await ours.resign()


async def test_etcdctl_elect_listen_sees_our_leader_and_proclamations(
    etcd: LocalEtcd, session: Session, name: str
) -> None:
    election = await bounded(Election(session, name).campaign("first"))
    async with etcdctl(etcd, "elect", "--listen", name) as listen:
        assert await listen.line() == election.key
        assert await listen.line() == "first"
        await election.proclaim("second")
        assert await listen.line() == election.key
        assert await listen.line() == "second"
    assert await election.resign()


async def test_resigning_right_after_winning_never_hangs(
    client: EtcdClient, session: Session, name: str
) -> None:
    """Resign stops the leader's key guard while its watch may still be being created; that must not hang."""
    async with sessions(client, 1) as (other,):
        for round_ in range(60):
            first = Election(session, name)
            await bounded(first.campaign(f"first-{round_}"))
            second = Election(other, name)
            task = asyncio.create_task(second.campaign(f"second-{round_}"))
            await wait_for_key(client, name, second.key)
            assert await bounded(first.resign())
            await bounded(task)
            assert await bounded(second.resign())
        assert await queue_keys(client, name) == []
