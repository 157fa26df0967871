"""Failure tests of the lock engine against a real three-member etcd: members are SIGKILLed and restarted.

What must hold (DESIGN.md, "Lock engine semantics"):

- losing one member of three (the raft leader, or the endpoint clients talk to first) is invisible to lock
  users except for latency: locks keep being granted, never to two holders at once, with fencing tokens
  that increase in the order the holders entered;
- losing quorum makes a bounded acquire fail with a clear error within its timeout (nothing hangs), and
  sessions are reported lost once their TTL has passed without a renewal;
- once quorum is back, service resumes and the failed acquires left no orphan contender in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from etcdlock.etcd import (
    AlreadyAcquiring,
    EtcdClient,
    EtcdConfig,
    EtcdUnavailable,
    LockTimeout,
    Mutex,
    Session,
    keys,
    read_contenders,
)
from etcdlock_sandbox.etcd import LocalEtcd, Member

TTL = 5
CONTENDERS = 4
HOLD_SECONDS = 0.02
ACQUIRES_AFTER_KILL = 8
# Failover after a SIGKILL: a new raft election (~1 s), gRPC reconnecting to the next endpoint, and the
# contenders' watches and keepalives re-established; well under one session TTL.
FAILOVER_BOUND = 15.0
ACQUIRE_TIMEOUT = 3.0
# A session that outlives the quorum outages below.
LONG_TTL = 30
# How long a failed acquire may take beyond its own timeout (removing its key is attempted, bounded).
GIVE_UP_SLACK = 6.0


@dataclass(frozen=True)
class Hold:
    """One pass through the critical section, as the holder saw it (event-loop times)."""

    contender: int
    token: int
    enter: float
    exit: float
    lost_inside: bool


class Holds:
    """The holds recorded by every contender; tests wait on it for a condition to become true."""

    def __init__(self) -> None:
        self.items: list[Hold] = []
        self._changed = asyncio.Condition()

    async def add(self, hold: Hold) -> None:
        async with self._changed:
            self.items.append(hold)
            self._changed.notify_all()

    async def wait_for(
        self, predicate: Callable[[list[Hold]], bool], timeout: float, tasks: list[asyncio.Task[None]]
    ) -> None:
        """Wait until ``predicate(items)``; a contender that stops early fails the wait with its error."""

        async def satisfied() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self.items))

        waiter = asyncio.create_task(satisfied())
        try:
            done, _ = await asyncio.wait(
                [waiter, *tasks], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        if waiter in done:
            return
        for task in done:
            task.result()  # re-raises the contender's error
            raise AssertionError("a contender stopped before the test was done")
        raise AssertionError(f"condition not reached within {timeout}s; holds so far: {len(self.items)}")


async def leader_of(cluster: LocalEtcd) -> Member:
    """The member that is the raft leader now."""
    return await asyncio.to_thread(cluster.leader)


@contextlib.asynccontextmanager
async def connected(endpoints: list[str]) -> AsyncIterator[EtcdClient]:
    async with EtcdClient(EtcdConfig.parse(endpoints)) as client:
        yield client


async def contend(index: int, endpoints: list[str], name: str, holds: Holds) -> None:
    """Acquire and release NAME for ever, each time recording the hold; transient errors are retried.

    A lost session is not transient (one dead member of three must not lose a 5 s lease): it ends the
    contender with :class:`SessionLost`, which fails the test.
    """
    loop = asyncio.get_running_loop()
    async with connected(endpoints) as client, Session(client, ttl=TTL) as session:
        while True:
            lock = Mutex(session, name, holder=f"contender-{index}")
            try:
                await lock.acquire(timeout=ACQUIRE_TIMEOUT)
            except (EtcdUnavailable, LockTimeout, AlreadyAcquiring):
                session.check()
                await asyncio.sleep(0.05)
                continue
            enter = loop.time()
            await asyncio.sleep(HOLD_SECONDS)
            lost_inside = lock.is_lost
            await holds.add(Hold(index, lock.token, enter, loop.time(), lost_inside))
            with contextlib.suppress(EtcdUnavailable):
                # On failure the fenced delete goes on in the background, and the name stays claimed
                # (AlreadyAcquiring above) until it has landed.
                await lock.release()


async def stop_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the contenders and wait (bounded) until each has closed its session and client."""
    for task in tasks:
        task.cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            raise result


def assert_mutual_exclusion(holds: list[Hold]) -> None:
    ordered = sorted(holds, key=lambda h: h.enter)
    assert not [h for h in ordered if h.lost_inside], "a holder lost its lock inside the critical section"
    for before, after in itertools.pairwise(ordered):
        assert after.enter >= before.exit, f"two holders inside at once: {before} and {after}"
        assert after.token > before.token, f"fencing token did not increase: {before} then {after}"


@pytest.mark.parametrize("victim", ["leader", "first-endpoint-follower"])
async def test_locks_keep_being_granted_without_overlap_when_a_member_is_killed(
    etcd_cluster: LocalEtcd, name: str, victim: str
) -> None:
    leader = await leader_of(etcd_cluster)
    killed = leader if victim == "leader" else next(m for m in etcd_cluster.members if m is not leader)
    # Every client talks to the victim first, so killing it forces each one to fail over.
    endpoints = [killed.client_url] + [m.client_url for m in etcd_cluster.members if m is not killed]
    loop = asyncio.get_running_loop()
    holds = Holds()
    tasks = [asyncio.create_task(contend(i, endpoints, name, holds)) for i in range(CONTENDERS)]
    try:
        await holds.wait_for(lambda items: {h.contender for h in items} == set(range(CONTENDERS)), 15, tasks)
        killed_at = loop.time()
        etcd_cluster.kill(killed)
        await holds.wait_for(
            lambda items: sum(h.enter > killed_at for h in items) >= ACQUIRES_AFTER_KILL,
            FAILOVER_BOUND,
            tasks,
        )
    finally:
        await stop_all(tasks)

    after_kill = [h for h in holds.items if h.enter > killed_at]
    assert len(after_kill) >= ACQUIRES_AFTER_KILL
    assert_mutual_exclusion(holds.items)


async def test_without_quorum_an_acquire_fails_within_its_timeout_and_sessions_are_lost(
    etcd_cluster: LocalEtcd, name: str
) -> None:
    leader = await leader_of(etcd_cluster)
    # Kill the leader and the first endpoint (or the next member): the clients must fail over to the one
    # survivor, which has no leader and no quorum.
    victims = [leader, *(m for m in etcd_cluster.members if m is not leader)][:2]
    loop = asyncio.get_running_loop()
    async with (
        connected(etcd_cluster.endpoints) as client,
        Session(client, ttl=TTL) as holder_session,
        Session(client, ttl=TTL) as waiter_session,
    ):
        held = await asyncio.wait_for(Mutex(holder_session, name).acquire(timeout=ACQUIRE_TIMEOUT), 10)
        for member in victims:
            etcd_cluster.kill(member)
        lost_at = loop.time()

        async def seconds_until_lost(session: Session) -> float:
            await session.wait_lost()
            return loop.time() - lost_at

        losses = [asyncio.create_task(seconds_until_lost(s)) for s in (holder_session, waiter_session)]
        try:
            started = loop.time()
            with pytest.raises((LockTimeout, EtcdUnavailable)) as failure:
                await asyncio.wait_for(
                    Mutex(waiter_session, name).acquire(timeout=ACQUIRE_TIMEOUT),
                    ACQUIRE_TIMEOUT + GIVE_UP_SLACK,
                )
            elapsed = loop.time() - started
            assert elapsed < ACQUIRE_TIMEOUT + GIVE_UP_SLACK, f"gave up after {elapsed:.2f}s"
            assert "etcd" in str(failure.value), failure.value
            # The lock is held (by holder_session): an unanswered look at the holders must not say "nobody".
            assert "nobody" not in str(failure.value), failure.value

            with pytest.raises(EtcdUnavailable) as failure:
                await asyncio.wait_for(
                    Session(client, ttl=TTL).start(), client.config.request_timeout + GIVE_UP_SLACK
                )
            assert "etcd" in str(failure.value), failure.value

            seconds = await asyncio.wait_for(asyncio.gather(*losses), TTL + 3)
        finally:
            for task in losses:
                task.cancel()
        assert max(seconds) < TTL + 3, f"sessions reported lost {seconds}s after quorum was lost"
        assert held.is_lost
        await asyncio.wait_for(held.wait_lost(), 1)


async def test_after_quorum_returns_locks_are_granted_and_failed_acquires_left_no_orphan(
    etcd_cluster: LocalEtcd, name: str
) -> None:
    leader = await leader_of(etcd_cluster)
    followers = [m for m in etcd_cluster.members if m is not leader]
    # The clients talk to the leader, which survives: a write sent after the loss reaches its raft log
    # before it steps down, so whether that key appears once quorum is back is ambiguous.
    endpoints = [leader.client_url] + [m.client_url for m in followers]
    async with (
        connected(endpoints) as client,
        Session(client, ttl=LONG_TTL) as holder_session,
        Session(client, ttl=LONG_TTL) as queued_session,
        Session(client, ttl=TTL) as doomed_session,
        Session(client, ttl=LONG_TTL) as late_session,
    ):
        held = await asyncio.wait_for(Mutex(holder_session, name).acquire(timeout=ACQUIRE_TIMEOUT), 10)
        # Two waiters are queued behind the holder when quorum goes, and time out during the outage. The
        # queued session outlives the outage, so only the engine can remove its key; the doomed session is
        # lost, so its key goes with its lease.
        attempts = [
            asyncio.create_task(Mutex(s, name).acquire(timeout=ACQUIRE_TIMEOUT))
            for s in (queued_session, doomed_session)
        ]
        try:
            await asyncio.wait_for(wait_until_queued(client, name, 3), 10)
            for member in followers:
                etcd_cluster.kill(member)
            attempts.append(asyncio.create_task(Mutex(late_session, name).acquire(timeout=ACQUIRE_TIMEOUT)))
            failures = await asyncio.wait_for(
                asyncio.gather(*attempts, return_exceptions=True), ACQUIRE_TIMEOUT + GIVE_UP_SLACK
            )
        finally:
            for task in attempts:
                task.cancel()
        assert all(isinstance(f, LockTimeout | EtcdUnavailable) for f in failures), failures
        await asyncio.wait_for(doomed_session.wait_lost(), TTL + 3)

        for member in followers:
            etcd_cluster.start_member(member, wait=False)
        await asyncio.wait_for(asyncio.to_thread(etcd_cluster.wait_healthy, followers), 30)

        assert held.is_held and not holder_session.is_lost
        assert await asyncio.wait_for(held.release(), 10), "the holder's key vanished during the outage"
        async with (
            connected(etcd_cluster.endpoints) as fresh_client,
            Session(fresh_client, ttl=TTL) as fresh_session,
        ):
            # A key of the doomed session lives until its lease expires (TTL after a new leader took over);
            # no key of the surviving sessions may be left ahead of this one.
            lock = await asyncio.wait_for(
                Mutex(fresh_session, name).acquire(timeout=TTL + 5), TTL + 5 + GIVE_UP_SLACK
            )
            await asyncio.wait_for(lock.release(), 10)
            _, contenders = await asyncio.wait_for(read_contenders(fresh_client, name), 10)
            assert contenders == [], "keys left under the lock's prefix"

        # The surviving sessions are whole again: their failed attempts finished cleaning up.
        for session in (queued_session, late_session):
            assert not session.is_lost
            lock = await asyncio.wait_for(acquire_when_unclaimed(session, name), 15)
            await asyncio.wait_for(lock.release(), 10)


async def wait_until_queued(client: EtcdClient, name: str, count: int) -> None:
    """Wait until ``count`` contenders have keys under NAME/ (watching, not polling)."""
    start = keys.prefix(name)
    while True:
        revision, contenders = await read_contenders(client, name)
        if len(contenders) >= count:
            return
        async with client.watch_events(start, keys.range_end(start), start_revision=revision + 1) as events:
            async for _ in events:
                break


async def acquire_when_unclaimed(session: Session, name: str) -> Mutex:
    """Acquire NAME once the session's earlier failed attempt has finished removing its key."""
    while True:
        try:
            return await Mutex(session, name).acquire(timeout=ACQUIRE_TIMEOUT)
        except AlreadyAcquiring:
            await asyncio.sleep(0.1)
