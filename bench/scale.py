"""Scale benchmark, the engine's part: how the cost of watches and queues grows with their number.

Everything runs in one process against ONE local single-member etcd (``LocalEtcd(size=1)``, closed at
the end), and prints one report:

1. concurrent watch creations on one client at 10, 100, 1000 and 2000 (each on its own key): time per
   creation; the target is a flat cost (2000/10 ratio <= 1.5);
2. one mutex queue set up by 10, 100 and 1000 waiters at once (a session each): time until every
   contender key is written, per waiter, with the 1000/10 ratio (target <= 1.5);
3. the hand-off latency through that queue of 1000 waiters (each holder releases as soon as it holds),
   p50/p99/max (target p99 <= 10 ms);
4. the keepalive streams etcd counts (its own metrics) for 100 sessions of one client (target 1);
5. ``etcdlock lock NAME -- true`` as a whole process against ``etcdctl lock NAME true``, alternating,
   median wall time (target <= 3x);
6. the uncontended Mutex acquire+release cycle at 1, 100 and 1000 concurrent locks (a worker, a session
   and a lock name each, all on one client) against the raw etcd ops doing the same work at the same
   concurrency (``bench/locks.py``'s ``raw_cycle``: put-if-absent txn with the lease, then a delete), in
   alternating timed blocks: time per cycle (wall / cycles) and median cycle latency (target: ours/raw
   per cycle <= 1.25 at every size);
7. a semaphore queue filled by 1000 waiters at once (a session each, one client) at 100 and 500 permits,
   then drained (each holder releases once every key is written): fill and drain time, and the watch
   events etcd sent while it drained (its own count; target: at most 4 per release, whatever the depth).

The pod path and restart at scale (the rest of the scale section the project aims for) are not measured
here yet. It is a report, not a test: it exits 0 even when a target is
missed. Run it with ``make bench``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from etcdlock.etcd import EtcdClient, EtcdConfig, EtcdUnavailable, Mutex, Semaphore, Session
from etcdlock.etcd.keys import prefix, range_end
from etcdlock_sandbox.etcd import LocalEtcd, etcd_binary
from interrupts import stop_on_sigterm
from locks import mutex_cycle, raw_cycle

WATCH_COUNTS = (10, 100, 1000, 2000)
QUEUE_SIZES = (10, 100, 1000)
HANDOFF_WAITERS = 1000
FLAT_TARGET = 1.5
HANDOFF_P99_TARGET_MS = 10.0
KEEPALIVE_SESSIONS = 100
CLI_RUNS = 15
CLI_TARGET = 3.0
CYCLE_CONCURRENCY = (1, 100, 1000)
CYCLE_PAIRS = 8
CYCLE_BLOCK_SECONDS = 1.0
CYCLE_TARGET = 1.25
SEMAPHORE_WAITERS = 1000
SEMAPHORE_PERMITS = (100, 500)
EVENTS_PER_RELEASE_TARGET = 4.0
BOUND = 600.0


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


async def watch_creations(client: EtcdClient, count: int) -> float:
    """Seconds per watch, for ``count`` watches created at once (each closed once created)."""
    revision = await _revision(client)

    async def one(index: int) -> None:
        async with client.watch_events(
            f"/bench/scale/watch/{count}/{index}".encode(), start_revision=revision
        ):
            pass

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return (time.perf_counter() - started) / count


async def _revision(client: EtcdClient) -> int:
    return int((await client.range(b"\0")).header.revision)


async def _key_counter(client: EtcdClient, name: str, count: int) -> asyncio.Task[None]:
    """A task that ends once ``count`` contender keys were created under ``name``, watching from now (the
    watch is live when this returns: a watch from a past revision is caught up by etcd only every 100 ms)."""
    start, live = prefix(name), asyncio.Event()
    revision = await _revision(client)

    async def count_keys() -> None:
        created = 0
        async with client.watch_events(start, range_end(start), start_revision=revision + 1) as events:
            live.set()
            async for event in events:
                created += event.kind == "PUT" and event.kv.version == 1
                if created >= count:
                    return

    counting = asyncio.create_task(count_keys())
    await live.wait()
    return counting


async def queue_setup(client: EtcdClient, waiters: int) -> float:
    """Seconds per waiter until ``waiters`` sessions (opened beforehand) all have their key in one queue."""
    name = f"/bench/scale/queue/{waiters}"
    sessions = [Session(client, ttl=60) for _ in range(waiters)]
    await asyncio.gather(*(session.__aenter__() for session in sessions))
    try:
        counting = await _key_counter(client, name, waiters)
        started = time.perf_counter()
        acquiring = [asyncio.create_task(Mutex(session, name).acquire()) for session in sessions]
        await counting
        took = time.perf_counter() - started
        for task in acquiring:
            task.cancel()
        await asyncio.gather(*acquiring, return_exceptions=True)
    finally:
        await asyncio.gather(*(session.__aexit__(None, None, None) for session in sessions))
    return took / waiters


async def handoffs(client: EtcdClient, waiters: int) -> list[float]:
    """Milliseconds from each holder's release to the next holder holding, through a queue of ``waiters``."""
    name = "/bench/scale/handoff"
    sessions = [Session(client, ttl=60) for _ in range(waiters)]
    await asyncio.gather(*(session.__aenter__() for session in sessions))
    released_at: list[float] = []
    latencies: list[float] = []
    queued = asyncio.Event()

    async def contend(session: Session) -> None:
        async with Mutex(session, name):
            if released_at:
                latencies.append((time.perf_counter() - released_at[-1]) * 1000)
            await queued.wait()
            released_at.append(time.perf_counter())

    try:
        counting = await _key_counter(client, name, waiters)
        contenders = [asyncio.create_task(contend(session)) for session in sessions]
        await counting
        queued.set()
        await asyncio.gather(*contenders)
    finally:
        await asyncio.gather(*(session.__aexit__(None, None, None) for session in sessions))
    return latencies


async def streams_for_sessions(cluster: LocalEtcd, count: int) -> int:
    """Keepalive streams a new client opens while ``count`` sessions of it renew twice (TTL 3 s, 4 s)."""
    before = cluster.members[0].streams_started("LeaseKeepAlive")
    async with EtcdClient(EtcdConfig.parse(cluster.endpoints)) as client:
        sessions = [Session(client, ttl=3) for _ in range(count)]
        await asyncio.gather(*(session.start() for session in sessions))
        await asyncio.sleep(4)
        opened = cluster.members[0].streams_started("LeaseKeepAlive") - before
        await asyncio.gather(*(session.close() for session in sessions))
    return opened


def _wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return time.perf_counter() - started


def cli_processes(cluster: LocalEtcd) -> tuple[float, float]:
    """Median seconds of a whole ``etcdlock lock NAME -- true`` and ``etcdctl lock NAME true``,
    alternating."""
    endpoint = cluster.endpoints[0]
    ours = [
        str(Path(sys.executable).with_name("etcdlock")),
        "--endpoints",
        endpoint,
        "lock",
        "cli",
        "--",
        "true",
    ]
    theirs = [etcd_binary("etcdctl"), f"--endpoints={endpoint}", "lock", "cli", "true"]
    times: dict[str, list[float]] = {"ours": [], "etcdctl": []}
    for _ in range(CLI_RUNS):
        times["ours"].append(_wall(ours))
        times["etcdctl"].append(_wall(theirs))
    return statistics.median(times["ours"]), statistics.median(times["etcdctl"])


def cli_floor() -> tuple[float, float]:
    """Median seconds of the interpreter starting and stopping (``python -c pass``), and of it importing
    what ``etcdlock lock`` imports and nothing else: the part of the CLI's time no engine work can cut."""
    bare = [sys.executable, "-c", "pass"]
    imports = [sys.executable, "-c", "import etcdlock.cli.main, etcdlock.cli.lock"]
    times: dict[str, list[float]] = {"bare": [], "imports": []}
    for _ in range(CLI_RUNS):
        times["bare"].append(_wall(bare))
        times["imports"].append(_wall(imports))
    return statistics.median(times["bare"]), statistics.median(times["imports"])


@dataclass
class Cycles:
    """What the blocks of one kind of cycle added up to: wall time, cycles, each cycle's latency."""

    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def per_cycle_ms(self) -> float:
        return self.wall / len(self.latencies) * 1000

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    async def block(self, workers: list[Callable[[], Awaitable[float]]]) -> None:
        """Every worker cycles until :data:`CYCLE_BLOCK_SECONDS` have passed (its last cycle finishes)."""
        started = time.perf_counter()
        deadline = started + CYCLE_BLOCK_SECONDS

        async def work(cycle: Callable[[], Awaitable[float]]) -> None:
            while time.perf_counter() < deadline:
                self.latencies.append(await cycle())

        await asyncio.gather(*(work(cycle) for cycle in workers))
        self.wall += time.perf_counter() - started


async def cycles(client: EtcdClient, concurrency: int) -> tuple[Cycles, Cycles]:
    """Raw ops and our Mutex cycling at ``concurrency``, a session and a name per worker, in
    :data:`CYCLE_PAIRS` alternating blocks (raw, ours, raw...) after one warm-up pair, so that noise on
    the machine falls on both alike."""
    sessions = [Session(client, ttl=60) for _ in range(concurrency)]
    await asyncio.gather(*(session.start() for session in sessions))
    base = f"/bench/scale/cycle/{concurrency}"
    raw = [
        partial(raw_cycle, client, f"{base}/raw/{session.lease_id:x}".encode(), session.lease_id)
        for session in sessions
    ]
    ours = [
        partial(mutex_cycle, Mutex(session, f"{base}/ours/{i}", holder="bench"))
        for i, session in enumerate(sessions)
    ]
    totals = (Cycles(), Cycles())
    try:
        await Cycles().block(raw)
        await Cycles().block(ours)
        for _ in range(CYCLE_PAIRS):
            await totals[0].block(raw)
            await totals[1].block(ours)
    finally:
        await asyncio.gather(*(session.close() for session in sessions))
    return totals


def _events_sent(cluster: LocalEtcd) -> float:
    """Watch events the member has sent since it started (its own metric, counted after watch filters)."""
    with urllib.request.urlopen(f"{cluster.endpoints[0]}/metrics", timeout=5) as response:
        found = re.search(r"^etcd_debugging_mvcc_events_total (\S+)$", response.read().decode(), re.M)
    return float(found.group(1)) if found else 0.0


async def semaphore_fill_drain(
    client: EtcdClient, cluster: LocalEtcd, permits: int
) -> tuple[float, float, float]:
    """Seconds until :data:`SEMAPHORE_WAITERS` waiters (sessions opened beforehand) all have their key in
    one semaphore queue, seconds until every one of them has held a permit (each releases at once), and
    the watch events etcd sent meanwhile (the drain's)."""
    name = f"/bench/scale/semaphore/{permits}"
    sessions = [Session(client, ttl=60) for _ in range(SEMAPHORE_WAITERS)]
    await asyncio.gather(*(session.start() for session in sessions))
    queued = asyncio.Event()
    unconfirmed: list[str] = []

    async def contend(session: Session) -> None:
        sem = await Semaphore(session, name, permits).acquire()
        await queued.wait()
        try:
            await sem.release()
        except EtcdUnavailable:  # not confirmed in time: the delete goes on in the background
            unconfirmed.append(sem.key)

    try:
        counting = await _key_counter(client, name, SEMAPHORE_WAITERS)
        started = time.perf_counter()
        contenders = [asyncio.create_task(contend(session)) for session in sessions]
        await counting
        filled = time.perf_counter() - started
        before = await asyncio.to_thread(_events_sent, cluster)
        started = time.perf_counter()
        queued.set()
        await asyncio.gather(*contenders)
        drained = time.perf_counter() - started
        sent = await asyncio.to_thread(_events_sent, cluster) - before
    finally:
        await asyncio.gather(*(session.close() for session in sessions))
    if unconfirmed:
        print(f"   ({len(unconfirmed)} releases not confirmed within the request timeout)")
    return filled, drained, sent


async def run(cluster: LocalEtcd) -> None:
    print(
        f"etcdlock scale benchmark (engine): {os.cpu_count()} cores, 1 local etcd member, "
        f"Python {platform.python_version()}",
        flush=True,
    )
    async with EtcdClient(EtcdConfig.parse(cluster.endpoints)) as client:
        await watch_creations(client, 10)  # warm-up: the stream opens
        print("\n1. Concurrent watch creations on one client")
        print(f"   {'watches':<12}{'ms per watch':>14}")
        per_watch = {}
        for count in WATCH_COUNTS:
            per_watch[count] = await watch_creations(client, count)
            print(f"   {count:<12}{per_watch[count] * 1000:>14.3f}", flush=True)
        watch_ratio = per_watch[WATCH_COUNTS[-1]] / per_watch[WATCH_COUNTS[0]]
        print(f"   ratio {WATCH_COUNTS[-1]}/{WATCH_COUNTS[0]} per watch: {watch_ratio:.2f}")

        print("\n2. One mutex queue set up by N waiters at once (until every key is written)")
        print(f"   {'waiters':<12}{'ms per waiter':>14}")
        per_waiter = {}
        for waiters in QUEUE_SIZES:
            per_waiter[waiters] = await queue_setup(client, waiters)
            print(f"   {waiters:<12}{per_waiter[waiters] * 1000:>14.3f}", flush=True)
        queue_ratio = per_waiter[QUEUE_SIZES[-1]] / per_waiter[QUEUE_SIZES[0]]
        print(f"   ratio {QUEUE_SIZES[-1]}/{QUEUE_SIZES[0]} per waiter: {queue_ratio:.2f}")

        print(f"\n3. Hand-off through a queue of {HANDOFF_WAITERS} waiters")
        latencies = sorted(await handoffs(client, HANDOFF_WAITERS))
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        print(f"   p50 {statistics.median(latencies):.2f} ms, p99 {p99:.2f} ms, max {latencies[-1]:.2f} ms")

        print(f"\n4. Keepalive streams for {KEEPALIVE_SESSIONS} sessions of one client (etcd's count)")
        streams = await streams_for_sessions(cluster, KEEPALIVE_SESSIONS)
        print(f"   {streams} stream(s) opened")

        print(f"\n5. The CLI as a whole process, {CLI_RUNS} runs each, alternating")
        ours, etcdctl = cli_processes(cluster)
        cli_ratio = ours / etcdctl
        print(f"   etcdlock lock NAME -- true  {ours * 1000:7.1f} ms median")
        print(f"   etcdctl lock NAME true      {etcdctl * 1000:7.1f} ms median")
        print(f"   ratio: {cli_ratio:.2f}")
        bare, imports = cli_floor()
        print(f"   python -c pass                {bare * 1000:7.1f} ms median")
        print(f"   python importing the CLI      {imports * 1000:7.1f} ms median")

        print(
            f"\n6. Uncontended acquire+release cycle vs raw etcd ops, C concurrent locks "
            f"({CYCLE_PAIRS} alternating blocks of {CYCLE_BLOCK_SECONDS:g} s each)"
        )
        head = f"{'ratio':>8}{'raw p50':>10}{'ours p50':>10}{'ratio':>8}"
        print(f"   {'C':<8}{'raw ms/cycle':>14}{'ours ms/cycle':>15}{head}")
        cycle_ratios = {}
        for concurrency in CYCLE_CONCURRENCY:
            raw, ours = await cycles(client, concurrency)
            cycle_ratios[concurrency] = ours.per_cycle_ms / raw.per_cycle_ms
            print(
                f"   {concurrency:<8}{raw.per_cycle_ms:>14.4f}{ours.per_cycle_ms:>15.4f}"
                f"{cycle_ratios[concurrency]:>8.2f}{raw.median_ms:>10.3f}{ours.median_ms:>10.3f}"
                f"{ours.median_ms / raw.median_ms:>8.2f}",
                flush=True,
            )

        print(
            f"\n7. A semaphore queue of {SEMAPHORE_WAITERS} waiters (one client): filled at once, then "
            "drained (each holder releases at once)"
        )
        print(f"   {'permits':<10}{'fill s':>9}{'drain s':>10}{'events sent':>14}{'per release':>13}")
        per_release = {}
        for permits in SEMAPHORE_PERMITS:
            filled, drained, sent = await semaphore_fill_drain(client, cluster, permits)
            per_release[permits] = sent / SEMAPHORE_WAITERS
            print(
                f"   {permits:<10}{filled:>9.2f}{drained:>10.2f}{sent:>14.0f}{per_release[permits]:>13.1f}",
                flush=True,
            )

        print("\nTargets")
        print(
            f"   watch creation flat, {WATCH_COUNTS[-1]}/{WATCH_COUNTS[0]} <= {FLAT_TARGET}: "
            f"{watch_ratio:.2f} {verdict(watch_ratio <= FLAT_TARGET)}"
        )
        print(
            f"   queue setup flat, {QUEUE_SIZES[-1]}/{QUEUE_SIZES[0]} <= {FLAT_TARGET}: "
            f"{queue_ratio:.2f} {verdict(queue_ratio <= FLAT_TARGET)}"
        )
        print(
            f"   hand-off p99 at {HANDOFF_WAITERS} waiters <= {HANDOFF_P99_TARGET_MS} ms: "
            f"{p99:.2f} {verdict(p99 <= HANDOFF_P99_TARGET_MS)}"
        )
        print(f"   one keepalive stream for {KEEPALIVE_SESSIONS} sessions: {streams} {verdict(streams == 1)}")
        print(f"   CLI within {CLI_TARGET}x etcdctl: {cli_ratio:.2f} {verdict(cli_ratio <= CLI_TARGET)}")
        if cli_ratio > CLI_TARGET:
            print(
                f"      why: Python itself starts in {bare * 1000:.0f} ms and importing the CLI's modules "
                f"(asyncio, gRPC, protobuf, aetcd) takes it to {imports * 1000:.0f} ms, "
                f"{imports / etcdctl:.1f}x etcdctl's whole run, before any etcd request"
            )
        for concurrency, ratio in cycle_ratios.items():
            print(
                f"   cycle at {concurrency} concurrent within {CYCLE_TARGET}x raw ops (per cycle): "
                f"{ratio:.2f} {verdict(ratio <= CYCLE_TARGET)}"
            )
        for permits, events in per_release.items():
            print(
                f"   semaphore drain at {permits} permits, watch events per release <= "
                f"{EVENTS_PER_RELEASE_TARGET:g}: {events:.1f} {verdict(events <= EVENTS_PER_RELEASE_TARGET)}"
            )


def main() -> int:
    stop_on_sigterm()
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    with LocalEtcd(size=1) as cluster:
        asyncio.run(asyncio.wait_for(run(cluster), BOUND))
    return 0


if __name__ == "__main__":
    sys.exit(main())
