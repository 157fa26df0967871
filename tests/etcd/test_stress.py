"""Many contenders hammering one mutex on a real etcd: never two holders, tokens increase, nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass

from engine_support import queue_keys

from etcdlock.etcd import EtcdClient, EtcdConfig, Mutex, Session, read_contenders
from etcdlock_sandbox.etcd import LocalEtcd

CONTENDERS = 20
ROUNDS = 20
CLIENTS = 4


@dataclass(frozen=True)
class Hold:
    contender: int
    token: int
    enter: float
    exit: float


async def test_twenty_contenders_never_overlap_and_tokens_increase_in_entry_order(
    etcd: LocalEtcd, name: str
) -> None:
    loop = asyncio.get_running_loop()
    holds: list[Hold] = []
    inside = 0
    overlaps = 0
    not_at_head: list[int] = []

    async def contender(index: int, session: Session) -> None:
        nonlocal inside, overlaps
        for _ in range(ROUNDS):
            async with Mutex(session, name, holder=f"stress-{index}", timeout=30) as lock:
                inside += 1
                if inside > 1:
                    overlaps += 1
                enter = loop.time()
                # One etcd round trip inside the critical section: the holder's key must head the queue, and
                # every other contender gets the chance to (wrongly) enter meanwhile.
                _, queued = await read_contenders(session.client, name)
                if not queued or queued[0].key != lock.key:
                    not_at_head.append(lock.token)
                exit_ = loop.time()
                inside -= 1
                holds.append(Hold(index, lock.token, enter, exit_))

    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(EtcdClient(EtcdConfig.parse(etcd.endpoints)))
            for _ in range(CLIENTS)
        ]
        sessions = [
            await stack.enter_async_context(Session(clients[i % CLIENTS], ttl=10)) for i in range(CONTENDERS)
        ]
        async with asyncio.timeout(60), asyncio.TaskGroup() as group:
            for index, session in enumerate(sessions):
                group.create_task(contender(index, session))
        assert await queue_keys(clients[0], name) == []
        assert not any(session.is_lost for session in sessions)

    assert len(holds) == CONTENDERS * ROUNDS
    assert overlaps == 0
    assert not_at_head == []
    by_entry = sorted(holds, key=lambda hold: hold.enter)
    tokens = [hold.token for hold in by_entry]
    assert all(a < b for a, b in itertools.pairwise(tokens)), "tokens not increasing in entry order"
    assert all(a.exit <= b.enter for a, b in itertools.pairwise(by_entry)), "critical sections overlap"
    for index in range(CONTENDERS):
        assert sum(1 for hold in holds if hold.contender == index) == ROUNDS
