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
   median wall time (target <= 3x).

The pod path and restart at scale (the rest of the scale section the project aims for) are not measured
here yet. It is a report, not a test: it exits 0 even when a target is
missed. Run it with ``make bench``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from etcdlock.etcd import EtcdClient, EtcdConfig, Mutex, Session
from etcdlock.etcd.keys import prefix, range_end
from etcdlock_sandbox.etcd import LocalEtcd, etcd_binary
from interrupts import stop_on_sigterm

WATCH_COUNTS = (10, 100, 1000, 2000)
QUEUE_SIZES = (10, 100, 1000)
HANDOFF_WAITERS = 1000
FLAT_TARGET = 1.5
HANDOFF_P99_TARGET_MS = 10.0
KEEPALIVE_SESSIONS = 100
CLI_RUNS = 15
CLI_TARGET = 3.0
BOUND = 300.0


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


def main() -> int:
    stop_on_sigterm()
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    with LocalEtcd(size=1) as cluster:
        asyncio.run(asyncio.wait_for(run(cluster), BOUND))
    return 0


if __name__ == "__main__":
    sys.exit(main())
