"""Pod-path scale benchmark: how fast the operator lets annotated pods run, beside the API emulator's own
rate for the same requests.

Real processes on loopback, started here and stopped by PID at the end: the sandbox's Kubernetes API
emulator as its own process (``etcdlock_sandbox.daemon``, with its own etcd: the client below must not
share the emulator's interpreter), and for each measurement a fresh ``etcdlock operator`` (the sandbox's
OperatorProcess) with a fresh single-member etcd of its own, watching one fresh namespace and serving the
pod gate and the lock check registered for that namespace (there is no Service network in the sandbox).
The client in this process makes its requests ``CONCURRENCY`` at a time (aiohttp, plain JSON) and follows
the namespace's pods with one watch; a measurement ends when that watch shows the last pod done. Each
measurement has namespaces of its own, left as they are afterwards: the emulator deletes a namespace's
objects one by one, each deletion listing the namespace for dependents (500 pods took 33 s), which would
be most of the run. Every phase prints, per pod, the CPU milliseconds of each process (operator, its etcd,
the emulator, the emulator's etcd, this client) and the objects the emulator wrote (its etcd revision).

1. L DistributedLocks (permits 1), one pod each, L = 10, 100, 500. The locks are created and Ready
   first, and one warm-up pod on a lock of its own goes through the flow (first calls load code, in every
   process); then the L annotated pods are created at once. Measured: the first create -> every pod without
   the ``etcdlock.io/lock`` scheduling gate and annotated ``etcdlock.io/state: Held``, as pods/s, and the
   operator's CPU (utime+stime from /proc/PID/stat, the delta over that time) per pod. With 10 pods the
   time is mostly one pod's way through the flow (its latency), not a rate.
2. Beside every row, the emulator's raw rate: no operator runs and the namespace has no webhook; the
   client itself makes, per pod, the API requests of the operator's pod flow (pods/hold.py, pods/api.py):
   the create (the pod carries the gate, as the webhook would have added it), GET of the DistributedLock,
   PATCH of the lease annotations, PATCH of state Waiting (only for a pod that waits, as the operator
   writes it), and the ungate PATCH conditional on the resourceVersion, with state Held (after a warm-up
   flow too). Printed: raw
   flows/s and the ratio operator/raw; the target is >= 0.8 on every row (flat in locks and permits).
   The operator also makes requests that are not in the raw flow: the webhook calls the emulator makes on
   every pod write, the Events it posts, the locks' status patches.
3. One lock with P permits and P pods, P = 100, 500: the same two measurements.
4. One permits=1 lock and 1000 pods: the first create -> every pod has a state (1 Held, 999 Waiting),
   beside the raw flows (the waiting ones without the ungate); the operator's RSS (VmRSS from
   /proc/PID/status) after the warm-up pod, at its peak meanwhile (sampled every 0.2 s) and once every
   pod is queued: the growth per 1000 pods.
5. Restart at scale: 500 locks with 2 pods each (one holds, one waits per lock), then one lock with 2000
   pods (one holds, 1999 wait); each time the operator is
   SIGKILLed and a new one started at once (leader TTL ``LEADER_TTL``). While none leads, the bench adds
   a contender key of its own to every lock's queue, so that no status written before the kill can match
   etcd. Measured from the new process's "elected leader" log line until (a) every pod's lease is seen
   renewed in etcd (its remaining TTL exceeds what it could have without a renewal since the kill; polled
   with LeaseTimeToLive) and (b) every DistributedLock's status lists what it lists of etcd's queue (its
   first holders, then its first waiters). Targets: 2 s and 3 s. Then, ``AFTERMATH`` after its election,
   whether it still leads (its "elected leader" and "session ... lost" log lines) and whether every pod's
   key is still in its lock's queue, in its place (target: none lost or moved). Each restart is skipped,
   saying so, once the run has used ``RESTART_BUDGET``.

Every wait is bounded (``BOUND``); a stall prints what is missing and the run goes on. A report, not a
test: it exits 0 when a target is missed. Run it with ``make bench`` or ``python bench/pods.py [SECTION
...]`` (sections: locks, permits, queue, restart; all by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Self

import aiohttp
import yaml

from etcdlock.etcd import EtcdClient, EtcdConfig, EtcdLockError, HolderInfo, Session, Waiter, read_contenders
from etcdlock.operator.config import WebhookSettings
from etcdlock.operator.locks import MAX_LISTED_HOLDERS, MAX_LISTED_WAITERS, LockSpec
from etcdlock.operator.names import (
    CLUSTER_ANNOTATION,
    GROUP,
    HELD,
    LEASE_ANNOTATION,
    LOCK_ANNOTATION,
    LOCKS,
    MESSAGE_ANNOTATION,
    SCHEDULING_GATE,
    STATE_ANNOTATION,
    TOKEN_ANNOTATION,
    VERSION,
    WAITING,
)
from etcdlock.operator.webhook import configuration, validation
from etcdlock_sandbox import daemon
from etcdlock_sandbox.certs import write_webhook_certs
from etcdlock_sandbox.etcd import LocalEtcd, free_port
from etcdlock_sandbox.replicas import OperatorProcess
from faults import report_log_problems
from interrupts import stop_on_sigterm

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = 16
LOCK_COUNTS = (10, 100, 500)
PERMIT_COUNTS = (100, 500)
QUEUE_PODS = 1000
RESTART_LOCKS = 500
CROWD_RESTART_PODS = 2000
OPERATOR_CPU_TARGET = 3.0
RATIO_TARGET = 0.8
LEASE_TARGET = 2.0
STATUS_TARGET = 3.0
LOCK_TTL = 30  # ttlSeconds of every lock: a pod's lease lives 30 s unless renewed
LEADER_TTL = 5
AFTERMATH = 3.0 * LEADER_TTL  # how long the new leader is watched for lost sessions and new elections
BOUND = 120.0  # any one wait: creating the locks, their readiness, a phase's pods, a new leader
START_BOUND = 60.0  # an operator process until it is ready
RESTART_BUDGET = 300.0  # each restart of section 5 (1-2 minutes) is skipped once the run has used this
POLL = 0.25
WARM_UP = "warm-up"  # a lock and a pod taken through the flow before each measurement (first calls load code)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REQUEST_TIMEOUT = 30.0
STRATEGIC_MERGE = "application/strategic-merge-patch+json"


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


# --- processes: CPU and memory from /proc -----------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of the process (all its threads), 0 if there is none."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child_named(pid: int, name: str) -> int | None:
    """The child of ``pid`` whose executable is called ``name`` (the sandbox's etcd)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{child}/exe").resolve().name == name:
                        return int(child)
    return None


class Usage:
    """From a start to now: the CPU seconds of the processes doing the work (and of this client), and the
    writes the emulator's etcd took (its revision: one per object written)."""

    def __init__(self, store: EtcdConfig, pids: dict[str, int | None]) -> None:
        self.store = store
        self.pids = pids
        self.cpu = self._cpu()
        self.revision = 0

    def _cpu(self) -> dict[str, float]:
        return {**{what: cpu_seconds(pid) for what, pid in self.pids.items()}, "client": time.process_time()}

    @classmethod
    async def start(cls, store: EtcdConfig, pids: dict[str, int | None]) -> Usage:
        usage = cls(store, pids)
        usage.revision = await revision(store)
        return usage

    async def used(self) -> tuple[dict[str, float], int]:
        now = self._cpu()
        return {what: now[what] - self.cpu[what] for what in now}, await revision(self.store) - self.revision


async def revision(store: EtcdConfig) -> int:
    """etcd's revision, read with a client of its own (an idle client's pings make etcd send it away)."""
    async with EtcdClient(store) as client:
        return int((await client.range(b"\0")).header.revision)


# --- the emulator and its client ---------------------------------------------------------------------------


class ApiFailed(Exception):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class Api:
    """The emulator's REST API as plain JSON over one aiohttp session."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.created_twice = 0  # creates answered 409 AlreadyExists (see create)
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4 * CONCURRENCY))

    async def close(self) -> None:
        await self.http.close()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = REQUEST_TIMEOUT,
    ) -> Any:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type}
        request = self.http.request(
            method, self.url + path, data=data, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        )
        async with request as response:
            answer = await response.read()
            if response.status >= 300:
                raise ApiFailed(f"{method} {path}: {response.status} {answer[:300]!r}", response.status)
            return json.loads(answer) if answer else None

    @staticmethod
    def pods(namespace: str, name: str = "") -> str:
        return f"/api/v1/namespaces/{namespace}/pods" + (f"/{name}" if name else "")

    @staticmethod
    def locks(namespace: str, name: str = "") -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{LOCKS}" + (f"/{name}" if name else "")

    async def create_namespace(self, name: str) -> None:
        await self.call("POST", "/api/v1/namespaces", {"metadata": {"name": name}})

    async def create_lock(self, namespace: str, name: str, permits: int) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "DistributedLock",
            "metadata": {"name": name},
            "spec": {"permits": permits, "ttlSeconds": LOCK_TTL},
        }
        await self.create(self.locks(namespace), body)

    async def list_locks(self, namespace: str) -> list[dict[str, Any]]:
        return list((await self.call("GET", self.locks(namespace)))["items"])

    async def create_pod(self, namespace: str, name: str, lock: str, *, gated: bool) -> None:
        """An annotated pod; ``gated``: with the gate the webhook adds (for the raw flow, which has none)."""
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "containers": [{"name": "work", "image": "busybox"}],
        }
        if gated:
            spec["schedulingGates"] = [{"name": SCHEDULING_GATE}]
        body = {"metadata": {"name": name, "annotations": {LOCK_ANNOTATION: lock}}, "spec": spec}
        await self.create(self.pods(namespace), body)

    async def create(self, path: str, body: dict[str, Any]) -> None:
        """POST a new object. Every name is new, so 409 AlreadyExists means the emulator ran the create
        twice (its create-if-absent etcd transaction runs with the engine's retries: a retry finds what
        the first run wrote), and the object is there as asked: counted and reported, not fatal."""
        try:
            await self.call("POST", path, body)
        except ApiFailed as exc:
            if exc.status != 409:
                raise
            self.created_twice += 1

    async def patch_pod(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(await self.call("PATCH", self.pods(namespace, name), body, STRATEGIC_MERGE))

    @contextlib.asynccontextmanager
    async def webhooks(self, namespace: str, settings: WebhookSettings) -> AsyncIterator[None]:
        """The pod gate and the lock check for ``namespace`` only, served at ``settings``."""
        name = f"etcdlock-{namespace}"
        admission = "/apis/admissionregistration.k8s.io/v1"
        kinds = {
            "mutatingwebhookconfigurations": configuration(settings, name, namespace),
            "validatingwebhookconfigurations": validation(settings, name, namespace),
        }
        for plural, body in kinds.items():
            await self.call("POST", f"{admission}/{plural}", body)
        try:
            yield
        finally:
            for plural in kinds:
                with contextlib.suppress(ApiFailed, aiohttp.ClientError):
                    await self.call("DELETE", f"{admission}/{plural}/{name}")


async def at_most(concurrency: int, calls: Iterable[Callable[[], Awaitable[Any]]]) -> None:
    """Run ``calls``, ``concurrency`` at a time."""
    pending = iter(calls)

    async def worker() -> None:
        for call in pending:
            await call()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


@dataclass
class Seen:
    gated: bool
    state: str | None
    lease: str | None


class Watch:
    """Every object of one collection as its watch shows it (listed, then watched from that list's
    version); ``seen`` keeps what :meth:`_see` makes of each, by name."""

    def __init__(self, api: Api, path: str) -> None:
        self.api = api
        self.path = path
        self.seen: dict[str, Any] = {}
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _see(self, obj: dict[str, Any]) -> Any:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        listed = await self.api.call("GET", self.path)
        for obj in listed["items"]:
            self.seen[obj["metadata"]["name"]] = self._see(obj)
        self._task = asyncio.create_task(self._follow(listed["metadata"]["resourceVersion"]))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _follow(self, version: str) -> None:
        while True:  # a watch the server ends (its timeout) goes on from the last version seen
            query = f"?watch=1&resourceVersion={version}&timeoutSeconds={int(BOUND * 4)}"
            url = self.api.url + self.path + query
            async with self.api.http.get(url, timeout=aiohttp.ClientTimeout(total=None)) as response:
                async for line in response.content:
                    event = json.loads(line)
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        raise ApiFailed(f"watch of {self.path}: {obj}")
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] == "DELETED":
                        self.seen.pop(obj["metadata"]["name"], None)
                    else:
                        self.seen[obj["metadata"]["name"]] = self._see(obj)
                    self.changed.set()

    async def until(self, done: Callable[[], bool], deadline: float) -> float | None:
        """The moment ``done()`` holds (checked on every event), None at ``deadline``."""
        while not done():
            if self._task is not None and self._task.done():
                self._task.result()
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
        return time.monotonic()


class PodWatch(Watch):
    """Every pod of a namespace: its gate, state and lease."""

    def __init__(self, api: Api, namespace: str) -> None:
        super().__init__(api, Api.pods(namespace))

    def _see(self, obj: dict[str, Any]) -> Seen:
        notes = obj["metadata"].get("annotations") or {}
        gates = obj.get("spec", {}).get("schedulingGates") or []
        return Seen(
            any(g.get("name") == SCHEDULING_GATE for g in gates),
            notes.get(STATE_ANNOTATION),
            notes.get(LEASE_ANNOTATION),
        )

    def count(self, ok: Callable[[Seen], bool], names: Iterable[str]) -> int:
        return sum(ok(self.seen[name]) for name in names if name in self.seen)

    async def pods_until(
        self, ok: Callable[[Seen], bool], names: Collection[str], deadline: float, what: str
    ) -> float | None:
        """The moment every pod of ``names`` is ``ok``; None (and what is missing, printed) at
        ``deadline``."""
        reached = await self.until(lambda: self.count(ok, names) >= len(names), deadline)
        if reached is None:
            states: dict[str, int] = {}
            for name in names:
                seen = self.seen.get(name)
                key = "not seen" if seen is None else f"{'gated' if seen.gated else 'ungated'}/{seen.state}"
                states[key] = states.get(key, 0) + 1
            done = self.count(ok, names)
            print(f"   STALL: {done} of {len(names)} pods {what}; the pods are {states}", flush=True)
        return reached


class LockQueues(Watch):
    """Every DistributedLock of a namespace: the keys its status lists (holders, then waiters)."""

    def __init__(self, api: Api, namespace: str) -> None:
        super().__init__(api, Api.locks(namespace))

    def _see(self, obj: dict[str, Any]) -> list[str]:
        status = obj.get("status") or {}
        return [entry["key"] for entry in (status.get("holders") or []) + (status.get("waiters") or [])]


def holds(seen: Seen) -> bool:
    return not seen.gated and seen.state == HELD


def queued(seen: Seen) -> bool:
    return seen.state in (HELD, WAITING) and seen.lease is not None


# --- one row: the operator and the raw flows -------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """Locks (name, permits) and pods (name, lock), in creation order; ``waiting``: pods the operator
    tells to wait (their raw flow writes state Waiting and stops there)."""

    tag: str
    locks: list[tuple[str, int]]
    pods: list[tuple[str, str]]
    waiting: frozenset[str] = frozenset()

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.pods]

    @property
    def done(self) -> Callable[[Seen], bool]:
        return queued if self.waiting else holds

    @property
    def what(self) -> str:
        return "queued (Held or Waiting)" if self.waiting else "ungated and Held"


def spread(tag: str, locks: int, pods_per_lock: int = 1) -> Workload:
    names = [f"lock-{i}" for i in range(locks)]
    pods = [(f"{lock}-pod-{n}", lock) for n in range(pods_per_lock) for lock in names]
    waiting = frozenset(name for name, _ in pods[locks:])
    return Workload(tag, [(lock, 1) for lock in names], pods, waiting)


def crowd(tag: str, permits: int, pods: int) -> Workload:
    names = [(f"pod-{i}", "crowd") for i in range(pods)]
    return Workload(tag, [("crowd", permits)], names, frozenset(name for name, _ in names[permits:]))


@dataclass
class Result:
    pods: int
    seconds: float | None  # None: stalled
    cpu: dict[str, float]
    writes: int  # objects the emulator wrote (its etcd's revision went up by this much)
    rss: tuple[float, float] = (0.0, 0.0)  # the operator's, before the pods and once they are all done
    rss_samples: list[tuple[int, float]] = field(default_factory=list)  # (pods done, RSS) meanwhile

    @property
    def rate(self) -> float | None:
        return None if self.seconds is None else self.pods / self.seconds


@dataclass
class Env:
    api: Api
    kubeconfig: Path
    certs: Path
    logs: Path
    emulator: int
    emulator_etcd: int | None
    store: EtcdConfig  # the emulator's etcd


async def create_locks(api: Api, namespace: str, locks: list[tuple[str, int]]) -> None:
    await at_most(CONCURRENCY, [partial(api.create_lock, namespace, n, p) for n, p in locks])


async def locks_ready(api: Api, namespace: str, count: int) -> bool:
    """Wait until ``count`` locks of the namespace have a Ready condition that is True (bounded)."""
    deadline = time.monotonic() + BOUND
    while True:
        ready = sum(
            any(c.get("type") == "Ready" and c.get("status") == "True" for c in s.get("conditions") or [])
            for s in ((lock.get("status") or {}) for lock in await api.list_locks(namespace))
        )
        if ready >= count:
            return True
        if time.monotonic() > deadline:
            print(f"   STALL: {ready} of {count} locks Ready after {BOUND:.0f} s", flush=True)
            return False
        await asyncio.sleep(POLL)


async def raw_flow(api: Api, namespace: str, pod: str, lock: str, waits: bool, lease: int) -> None:
    """The requests of the operator's pod flow, made by the client (see the module's docstring), with the
    same annotations (``lease``: a made-up lease ID)."""
    await api.create_pod(namespace, pod, lock, gated=True)
    await api.call("GET", Api.locks(namespace, lock))
    written = await api.patch_pod(
        namespace,
        pod,
        {"metadata": {"annotations": {LEASE_ANNOTATION: f"{lease:x}", CLUSTER_ANNOTATION: None}}},
    )
    key = f"/etcdlock/locks/{namespace}/{lock}/{lease:x}"
    if waits:
        message = f"waiting for a permit of {lock} (etcd key {key})"
        await api.patch_pod(
            namespace,
            pod,
            {"metadata": {"annotations": {STATE_ANNOTATION: WAITING, MESSAGE_ANNOTATION: message}}},
        )
        return
    token = str(written["metadata"]["resourceVersion"])
    annotations = {
        STATE_ANNOTATION: HELD,
        TOKEN_ANNOTATION: token,
        MESSAGE_ANNOTATION: f"holds {lock} (fencing token {token}, etcd key {key})",
    }
    body = {
        "metadata": {"resourceVersion": written["metadata"]["resourceVersion"], "annotations": annotations},
        "spec": {"schedulingGates": [{"$patch": "delete", "name": SCHEDULING_GATE}]},
    }
    await api.patch_pod(namespace, pod, body)


async def raw_rate(env: Env, work: Workload) -> Result:
    """No operator, no webhook: the client makes every pod's requests itself."""
    namespace = f"{work.tag}-raw"
    api = env.api
    await api.create_namespace(namespace)
    await create_locks(api, namespace, [*work.locks, (WARM_UP, 1)])
    await raw_flow(api, namespace, WARM_UP, WARM_UP, False, 0x7E56FFFF)
    async with PodWatch(api, namespace) as watch:
        usage = await Usage.start(env.store, {"emulator": env.emulator, "emulator etcd": env.emulator_etcd})
        started = time.monotonic()
        flows = at_most(
            CONCURRENCY,
            [
                partial(raw_flow, api, namespace, p, lock, p in work.waiting, 0x7E570000 + i)
                for i, (p, lock) in enumerate(work.pods)
            ],
        )
        await asyncio.wait_for(flows, BOUND)
        done = await watch.pods_until(work.done, work.names, started + BOUND, work.what)
        used, writes = await usage.used()
    return Result(len(work.pods), None if done is None else done - started, used, writes)


@contextlib.contextmanager
def operator_process(
    env: Env, etcd: LocalEtcd, namespace: str, log: str, webhook_port: int
) -> Iterator[OperatorProcess]:
    """An operator process watching ``namespace``; stopped (by its PID) on the way out."""
    process = OperatorProcess(
        etcd.endpoint_list,
        env.kubeconfig,
        env.certs,
        env.logs / log,
        namespaces=(namespace,),
        leader_ttl=LEADER_TTL,
        configure_webhook=False,
        webhook_port=webhook_port,
    ).start()
    try:
        yield process
    finally:
        process.stop()


async def webhook_listening(port: int) -> None:
    deadline = time.monotonic() + START_BOUND
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


async def operator_rate(env: Env, work: Workload) -> Result:
    """A fresh operator (and etcd) for a fresh namespace: create the locks, wait until Ready, then the
    pods; until the watch shows them all done."""
    namespace = f"{work.tag}-op"
    api = env.api
    await api.create_namespace(namespace)
    port = free_port()
    settings = WebhookSettings("127.0.0.1", port, env.certs)
    samples: list[tuple[int, float]] = []
    with LocalEtcd(size=1) as etcd:
        async with api.webhooks(namespace, settings):
            with operator_process(env, etcd, namespace, f"{work.tag}.log", port) as operator:
                assert operator.process is not None
                pid = operator.process.pid
                await asyncio.to_thread(operator.wait, "ready", START_BOUND)
                await webhook_listening(port)
                await create_locks(api, namespace, [*work.locks, (WARM_UP, 1)])
                if not await locks_ready(api, namespace, len(work.locks) + 1):
                    return Result(len(work.pods), None, {}, 0)
                async with PodWatch(api, namespace) as watch:
                    await api.create_pod(namespace, WARM_UP, WARM_UP, gated=False)
                    if await watch.pods_until(holds, [WARM_UP], time.monotonic() + BOUND, "warm") is None:
                        return Result(len(work.pods), None, {}, 0)
                    await asyncio.sleep(1.0)  # the warm-up pod's Events, the locks' statuses settle
                    before = rss_mib(pid)
                    usage = await Usage.start(
                        env.store,
                        {
                            "operator": pid,
                            "operator etcd": _member_pid(etcd),
                            "emulator": env.emulator,
                            "emulator etcd": env.emulator_etcd,
                        },
                    )
                    started = time.monotonic()
                    sampling = asyncio.create_task(sample_rss(pid, watch, work, samples))
                    await asyncio.wait_for(
                        at_most(
                            CONCURRENCY,
                            [
                                partial(api.create_pod, namespace, p, lock, gated=False)
                                for p, lock in work.pods
                            ],
                        ),
                        BOUND,
                    )
                    done = await watch.pods_until(work.done, work.names, started + BOUND, work.what)
                    used, writes = await usage.used()
                    sampling.cancel()
                    if work.waiting and done is not None:
                        held = watch.count(holds, work.names)
                        want = len(work.pods) - len(work.waiting)
                        if held != want:
                            print(f"   note: {held} pods hold, {want} expected", flush=True)
                after = rss_mib(pid)
    result = Result(len(work.pods), None if done is None else done - started, used, writes, (before, after))
    result.rss_samples = samples
    return result


async def sample_rss(pid: int, watch: PodWatch, work: Workload, samples: list[tuple[int, float]]) -> None:
    """(pods done, the operator's RSS in MiB) every 0.2 s."""
    while True:
        samples.append((watch.count(work.done, work.names), rss_mib(pid)))
        await asyncio.sleep(0.2)


def _member_pid(etcd: LocalEtcd) -> int | None:
    process = etcd.members[0].process
    return None if process is None else process.pid


async def measured(measuring: Awaitable[Result], work: Workload) -> Result:
    """The measurement, or a stalled one if a request or a batch of them failed or took too long."""
    try:
        return await measuring
    except (TimeoutError, ApiFailed, aiohttp.ClientError) as exc:
        print(f"   STALL: {type(exc).__name__} {exc}"[:200], flush=True)
        return Result(len(work.pods), None, {}, 0)


def describe(result: Result, *, kind: str) -> str:
    if result.seconds is None:
        return f"{kind}: STALLED"
    per_pod = ", ".join(f"{what} {1000 * s / result.pods:.1f}" for what, s in result.cpu.items())
    return (
        f"{kind}: {result.seconds:6.2f} s, {result.rate:7.1f} pods/s; emulator writes/pod "
        f"{result.writes / result.pods:.1f}; CPU ms/pod: {per_pod}"
    )


@dataclass
class Row:
    measurement: str
    value: str
    raw: str = ""
    ratio: str = ""
    target: str = ""
    met: str = ""


async def rate_rows(env: Env, title: str, work: Workload, rows: list[Row]) -> None:
    print(f"\n{title}", flush=True)
    raw = await measured(raw_rate(env, work), work)
    print("   " + describe(raw, kind="raw     "), flush=True)
    ours = await measured(operator_rate(env, work), work)
    print("   " + describe(ours, kind="operator"), flush=True)
    rows.append(compare(title, ours, raw))
    cpu = ours.cpu.get("operator")
    if cpu is not None and ours.seconds is not None:
        per_pod = 1000 * cpu / ours.pods
        target = f"<= {OPERATOR_CPU_TARGET:.0f} ms"
        rows.append(
            Row(
                "  operator CPU per pod",
                f"{per_pod:.1f} ms",
                target=target,
                met=verdict(per_pod <= OPERATOR_CPU_TARGET),
            )
        )
    if ours.seconds is not None and raw.seconds is not None:
        rows.append(why(ours, raw))


def why(ours: Result, raw: Result) -> Row:
    """Where the CPU goes, per pod, over every process: with the operator and in the raw flow; the cores
    cap the rate at cores / CPU per pod."""
    with_operator = 1000 * sum(ours.cpu.values()) / ours.pods
    alone = 1000 * sum(raw.cpu.values()) / raw.pods
    emulator = 1000 * ours.cpu.get("emulator", 0.0) / ours.pods
    cap = 1000 * (os.cpu_count() or 1) / with_operator
    return Row(
        f"  why: CPU per pod, all processes (emulator {emulator:.0f} ms of it)",
        f"{with_operator:.0f} ms",
        f"{alone:.0f} ms",
        target=f"cap {cap:.0f} pods/s",
    )


def compare(title: str, ours: Result, raw: Result) -> Row:
    value = "stalled" if ours.rate is None else f"{ours.rate:.1f} pods/s"
    reference = "stalled" if raw.rate is None else f"{raw.rate:.1f} flows/s"
    if ours.rate is None or raw.rate is None:
        return Row(title, value, reference, "-", f">= {RATIO_TARGET}", "NOT met")
    ratio = ours.rate / raw.rate
    return Row(title, value, reference, f"{ratio:.2f}", f">= {RATIO_TARGET}", verdict(ratio >= RATIO_TARGET))


async def queue_rows(env: Env, rows: list[Row]) -> None:
    title = f"1 lock x 1 permit, {QUEUE_PODS} pods, until queued"
    print(f"\n{title}", flush=True)
    work = crowd("queue", 1, QUEUE_PODS)
    raw = await measured(raw_rate(env, work), work)
    print("   " + describe(raw, kind="raw     "), flush=True)
    ours = await measured(operator_rate(env, work), work)
    print("   " + describe(ours, kind="operator"), flush=True)
    before, after = ours.rss
    print(
        f"   operator RSS: {before:.1f} MiB before the pods, {after:.1f} MiB with them all queued", flush=True
    )
    row = compare(title, ours, raw)
    row.value += "" if ours.seconds is None else f" ({ours.seconds:.1f} s)"
    row.raw += "" if raw.seconds is None else f" ({raw.seconds:.1f} s)"
    rows.append(row)
    if ours.seconds is not None:
        per_thousand = (after - before) * 1000 / QUEUE_PODS
        rows.append(Row("  operator RSS per 1000 queued pods", f"{per_thousand:.1f} MiB"))
        peak = max((rss for _, rss in ours.rss_samples), default=after)
        print(f"   operator RSS: at most {peak:.1f} MiB meanwhile (sampled every 0.2 s)", flush=True)
        rows.append(
            Row("  operator RSS: before / peak / all queued", f"{before:.0f} / {peak:.0f} / {after:.0f} MiB")
        )


# --- 5. restart at scale ---------------------------------------------------------------------------------


@dataclass
class Restart:
    elected: float | None = None  # kill -> the new process logs "elected leader"
    leaders: int = 0  # "elected leader" lines of the new process, AFTERMATH after its first
    sessions_lost: int = 0  # its "session ... lost" lines by then
    leases: float | None = None  # elected -> every lease seen renewed
    statuses: float | None = None  # elected -> every status lists etcd's queue
    lost: int | None = None  # pods' keys gone from (or moved in) etcd's queues AFTERMATH after the election
    note: str = ""


async def elected_after(log: Path, since: float) -> float | None:
    deadline = since + BOUND
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if "elected leader of" in await asyncio.to_thread(log.read_text, errors="replace"):
                return time.monotonic()
        await asyncio.sleep(0.01)
    return None


async def renewals(
    client: EtcdClient, leases: set[int], granted: int, killed: float, deadline: float
) -> float | None:
    """The moment every lease was seen renewed since ``killed``: its remaining TTL exceeds
    ``granted - (time since the kill)`` (etcd rounds down, so a lease not renewed never passes)."""
    pending = set(leases)
    limit = asyncio.Semaphore(32)
    last = 0.0

    async def check(lease: int) -> None:
        nonlocal last
        async with limit:
            sent = time.monotonic()
            with contextlib.suppress(EtcdLockError):
                remaining = await client.time_to_live(lease)
                if remaining > granted - (sent - killed):
                    pending.discard(lease)
                    last = max(last, time.monotonic())

    while pending and time.monotonic() < deadline:
        await asyncio.gather(*(check(lease) for lease in sorted(pending)))
        await asyncio.sleep(0.02)
    if pending:
        print(f"   STALL: {len(pending)} of {len(leases)} leases not seen renewed", flush=True)
        return None
    return last


async def statuses_match(statuses: LockQueues, queues: dict[str, list[str]], deadline: float) -> float | None:
    """The moment every lock's status lists its etcd queue (holder keys, then waiter keys)."""

    def wrong() -> int:
        return sum(statuses.seen.get(name) != queue for name, queue in queues.items())

    matched = await statuses.until(lambda: not wrong(), deadline)
    if matched is None:
        print(f"   STALL: {wrong()} of {len(queues)} lock statuses do not list etcd's queue", flush=True)
    return matched


async def restart_at_scale(env: Env, namespace: str, work: Workload) -> Restart:
    api = env.api
    result = Restart()
    await api.create_namespace(namespace)
    port = free_port()
    settings = WebhookSettings("127.0.0.1", port, env.certs)
    with LocalEtcd(size=1) as etcd, contextlib.ExitStack() as processes:
        async with api.webhooks(namespace, settings):
            first = processes.enter_context(
                operator_process(env, etcd, namespace, f"{namespace}-1.log", port)
            )
            await asyncio.to_thread(first.wait, "ready", START_BOUND)
            await webhook_listening(port)
            began = time.monotonic()
            await create_locks(api, namespace, work.locks)
            if not await locks_ready(api, namespace, len(work.locks)):
                result.note = "the locks never became Ready"
                return result
            async with PodWatch(api, namespace) as watch:
                await at_most(
                    CONCURRENCY,
                    [partial(api.create_pod, namespace, p, lock, gated=False) for p, lock in work.pods],
                )
                if await watch.pods_until(queued, work.names, began + BOUND, work.what) is None:
                    result.note = "not every pod was queued"
                    return result
                leases = {int(seen.lease, 16) for seen in watch.seen.values() if seen.lease}
            keys = {
                name: LockSpec.parse(namespace, name, {"permits": permits}).key
                for name, permits in work.locks
            }
            print(f"   {len(work.pods)} pods queued after {time.monotonic() - began:.1f} s", flush=True)
            async with (
                EtcdClient(EtcdConfig.parse(etcd.endpoints)) as client,
                LockQueues(api, namespace) as statuses,
            ):
                granted = (await client.lease_ttls(next(iter(leases))))[1]
                killed = time.monotonic()
                assert first.process is not None
                first.process.send_signal(signal.SIGKILL)
                first.process.wait()
                second = processes.enter_context(
                    operator_process(env, etcd, namespace, f"{namespace}-2.log", port)
                )
                electing = asyncio.create_task(elected_after(second.log_path, killed))
                async with Session(client, ttl=120) as session:
                    extra = HolderInfo.for_this_process("bench/extra-waiter", 1).encode()
                    await at_most(
                        CONCURRENCY,
                        [partial(Waiter(session, k, 1).join, extra) for k in keys.values()],
                    )
                    joined = time.monotonic()
                    full: dict[str, list[str]] = {}
                    queues = {}
                    for name, key in keys.items():
                        _, contenders = await read_contenders(client, key)
                        full[name] = [c.key for c in contenders]
                        queues[name] = listed(full[name], dict(work.locks)[name])
                    elected = await electing
                    if elected is None:
                        result.note = "the new process never logged its election"
                        return result
                    result.elected = elected - killed
                    if joined > elected:
                        result.note = "the bench's extra keys were written after the new leader was elected"
                    deadline = elected + BOUND
                    renewed, matched = await asyncio.gather(
                        renewals(client, leases, granted, killed, deadline),
                        statuses_match(statuses, queues, deadline),
                    )
                    result.leases = None if renewed is None else renewed - elected
                    result.statuses = None if matched is None else matched - elected
                    # Does the new leader keep leading, and every pod its key and place?
                    await asyncio.sleep(max(0.0, elected + AFTERMATH - time.monotonic()))
                    result.lost = 0
                    for name, key in keys.items():
                        _, contenders = await read_contenders(client, key)
                        now = [c.key for c in contenders]
                        result.lost += sum(1 for k in full[name] if k not in now) + (now != full[name])
                log = await asyncio.to_thread(second.log_path.read_text, errors="replace")
                result.leaders = log.count("elected leader of")
                result.sessions_lost = len(re.findall(r"session \w+ lost", log))
    return result


# --- the run -----------------------------------------------------------------------------------------------


def emulator_url(kubeconfig: Path) -> str:
    return str(json.loads(kubeconfig.read_text())["clusters"][0]["cluster"]["server"])


async def install_crds(api: Api) -> None:
    for name in ("distributedlock.yaml", "etcdcluster.yaml"):
        crd = yaml.safe_load((ROOT / "crds" / name).read_text())
        await api.call("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)


SECTIONS = ("locks", "permits", "queue", "restart")


async def run(
    directory: Path, sandbox: Path, emulator: int, started: float, sections: Collection[str]
) -> list[Row]:
    kubeconfig = sandbox / "kubeconfig"
    api = Api(emulator_url(kubeconfig))
    env = Env(
        api,
        kubeconfig,
        write_webhook_certs(directory / "webhook"),
        directory / "logs",
        emulator,
        child_named(emulator, "etcd"),
        EtcdConfig.parse((sandbox / "etcd-endpoints").read_text()),
    )
    env.logs.mkdir()
    rows: list[Row] = []
    try:
        await install_crds(api)
        for locks in LOCK_COUNTS if "locks" in sections else ():
            await rate_rows(env, f"{locks} locks x 1 pod, until Held", spread(f"locks{locks}", locks), rows)
        for permits in PERMIT_COUNTS if "permits" in sections else ():
            work = crowd(f"permits{permits}", permits, permits)
            await rate_rows(env, f"1 lock x {permits} permits, {permits} pods, until Held", work, rows)
        if "queue" in sections:
            await queue_rows(env, rows)
        if "restart" in sections:
            rows.extend(await restart_section(env, started))
    finally:
        await api.close()
        if api.created_twice:
            print(f"\nthe emulator answered 409 AlreadyExists to {api.created_twice} creates of new names")
    return rows


def listed(queue: list[str], permits: int) -> list[str]:
    """The keys a lock's status lists of ``queue``: the first holders and the first waiters."""
    holders, waiters = queue[:permits], queue[permits:]
    return holders[:MAX_LISTED_HOLDERS] + waiters[:MAX_LISTED_WAITERS]


async def restart_section(env: Env, started: float) -> list[Row]:
    rows = []
    for what, namespace, work in (
        (f"{RESTART_LOCKS} locks x 2 pods", "restart", spread("restart", RESTART_LOCKS, 2)),
        (
            f"1 lock x {CROWD_RESTART_PODS} pods",
            "restart-crowd",
            crowd("restart-crowd", 1, CROWD_RESTART_PODS),
        ),
    ):
        title = f"restart: {what}, SIGKILL, a new process"
        elapsed = time.monotonic() - started
        if elapsed > RESTART_BUDGET:
            reason = f"skipped: {elapsed:.0f} s used, over the {RESTART_BUDGET:.0f} s budget"
            print(f"\n{title}: {reason}", flush=True)
            rows.append(Row(title, reason))
            continue
        print(f"\n{title}", flush=True)
        try:
            restart = await restart_at_scale(env, namespace, work)
        except (TimeoutError, ApiFailed, aiohttp.ClientError, EtcdLockError) as exc:
            restart = Restart(note=f"stalled: {type(exc).__name__} {exc}"[:150])
            print(f"   STALL: {restart.note}", flush=True)
        rows.extend(restart_rows(what, restart))
    return rows


def restart_rows(what: str, restart: Restart) -> list[Row]:
    def seconds(value: float | None) -> str:
        return "not seen" if value is None else f"{value:.2f} s"

    elected = seconds(restart.elected)
    rows = [
        Row(
            f"restart, {what}: elected -> every lease renewed",
            seconds(restart.leases),
            target=f"<= {LEASE_TARGET:.0f} s",
            met=verdict(restart.leases is not None and restart.leases <= LEASE_TARGET),
        ),
        Row(
            "  elected -> every lock status lists etcd's queue",
            seconds(restart.statuses),
            target=f"<= {STATUS_TARGET:.0f} s",
            met=verdict(restart.statuses is not None and restart.statuses <= STATUS_TARGET),
        ),
        Row("  SIGKILL -> the new process elected", elected),
        Row(
            f"  its elections / sessions lost in {AFTERMATH:.0f} s",
            f"{restart.leaders} / {restart.sessions_lost}",
            target="1 / 0",
            met=verdict(restart.leaders == 1 and restart.sessions_lost == 0),
        ),
        Row(
            "  pods' keys lost or moved in etcd's queues",
            "not checked" if restart.lost is None else str(restart.lost),
            target="0",
            met=verdict(restart.lost == 0),
        ),
    ]
    if restart.note:
        rows.append(Row(f"  note: {restart.note}", ""))
    return rows


def print_table(rows: list[Row]) -> None:
    header = Row("measurement", "value", "raw", "ratio", "target", "met")
    widths = [
        max(len(getattr(r, f)) for r in [header, *rows])
        for f in ("measurement", "value", "raw", "ratio", "target", "met")
    ]
    for row in [header, *rows]:
        cells = [row.measurement, row.value, row.raw, row.ratio, row.target, row.met]
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip())


def main() -> int:
    stop_on_sigterm()
    started = time.monotonic()
    print(
        f"etcdlock pod-path scale benchmark: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, "
        f"Python {platform.python_version()}, {CONCURRENCY} requests at a time",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        sandbox = directory / "sandbox"
        daemon.up(sandbox)
        try:
            pid = daemon.running_pid(sandbox)
            assert pid is not None
            sections = sys.argv[1:] or SECTIONS
            unknown = sorted(set(sections) - set(SECTIONS))
            if unknown:
                print(f"unknown sections {unknown}: choose from {', '.join(SECTIONS)}", file=sys.stderr)
                return 2
            rows = asyncio.run(run(directory, sandbox, pid, started, sections))
        finally:
            daemon.down(sandbox)
            logs = [*sorted((directory / "logs").glob("*.log")), sandbox / "sandbox.log"]
            report_log_problems("the operators' and the emulator's logs", [p for p in logs if p.exists()])
    print("\nPod path at scale (the operator as a process; raw: the client makes the same requests itself)\n")
    print_table(rows)
    print(f"\nwhole run: {time.monotonic() - started:.0f} s, load {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
