"""Run the operator: check that etcd and the CRD are there (clear errors), then run kopf embedded.

With an election (``etcdlock operator`` always has one) the replica campaigns first and runs kopf only
while it leads (:mod:`etcdlock.operator.leadership`). On SIGTERM a leader resigns before it stops kopf,
so a standby takes over at once; the fence keeps the stopping kopf from changing lock state meanwhile.
When leadership is lost, kopf is stopped at once and the replica campaigns again; if kopf does not stop
within ``STOP_BOUND`` the process exits (``exit_if_stuck``), since a stuck old leader must not linger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aetcd
import grpc
import kopf
import kubernetes
from aiohttp import web

from etcdlock import __version__
from etcdlock.aio import race
from etcdlock.etcd import Election, EtcdClient, EtcdConfig, EtcdLockError, Session
from etcdlock.operator.config import ElectionSettings, OperatorConfig, WebhookSettings
from etcdlock.operator.context import OperatorContext
from etcdlock.operator.definitions import crd_folder, crds, served_versions
from etcdlock.operator.handlers import KopfEvents, build_registry, kubernetes_api
from etcdlock.operator.kube import KUBE_THREADS, ApiUnavailable, Kube
from etcdlock.operator.leadership import Leadership, ReplicaStatus
from etcdlock.operator.lockkeys import KeyPolicy
from etcdlock.operator.locks import MIN_TTL, LockRules, OutsideRules
from etcdlock.operator.metrics import Metrics
from etcdlock.operator.pods import PodApi
from etcdlock.operator.webhook import LockCheck, WebhookServer, register

log = logging.getLogger(__name__)

STOP_BOUND = 10.0
_RETRY_DELAY = 1.0

Flag = threading.Event | asyncio.Event


async def preflight(etcd: EtcdConfig, kubeconfig: str | None, webhook: WebhookSettings | None) -> Kube:
    """One clear message if etcd, the Kubernetes API, a CRD or the webhook certificate is missing."""
    if webhook is not None:
        webhook.check()
    async with EtcdClient(etcd) as client:
        await client.range(b"/etcdlock/", limit=1)
    try:
        kube = Kube(await asyncio.to_thread(kubernetes_api, kubeconfig, KUBE_THREADS))
    except kubernetes.config.ConfigException as exc:
        raise EtcdLockError(f"no Kubernetes configuration: {exc}") from None
    try:
        for shipped in crds():
            await _check_crd(kube, shipped)
    except BaseException as exc:
        kube.close()
        if isinstance(exc, ApiUnavailable):
            raise EtcdLockError(f"cannot check the CRDs with the Kubernetes API: {exc}") from None
        raise
    return kube


async def _check_crd(kube: Kube, shipped: dict[str, Any]) -> None:
    """The CRD this release ships is installed and serves its versions; a different schema is logged
    (an older CRD still serves, but may lack fields this release writes)."""
    name = shipped["metadata"]["name"]
    fix = f"kubectl apply -f {crd_folder()}"
    installed = await kube.call(kube.extensions.read_custom_resource_definition, name)
    if installed is None:
        raise EtcdLockError(f"the CRD {name} is not installed: {fix}")
    missing = served_versions(shipped) - served_versions(installed)
    if missing:
        raise EtcdLockError(f"the CRD {name} does not serve {', '.join(sorted(missing))}: {fix}")
    if installed["spec"].get("versions") != shipped["spec"]["versions"]:
        log.warning("the installed CRD %s differs from the one etcdlock %s ships: %s", name, __version__, fix)


@dataclass
class _Kopf:
    """What one kopf run needs; the task :meth:`start` returns ends once kopf has stopped."""

    etcd: EtcdConfig
    kube: Kube
    metrics: Metrics
    namespaces: Sequence[str]
    pod_api: PodApi
    rules: LockRules
    pod_sweep_interval: float
    image: str

    def start(self, leadership: Leadership, stop: asyncio.Event, ready: asyncio.Event) -> asyncio.Task[None]:
        return asyncio.create_task(self._run(leadership, stop, ready), name="kopf")

    async def _run(self, leadership: Leadership, stop: asyncio.Event, ready: asyncio.Event) -> None:
        """Open the term's context (unless told to stop first), run kopf with it, close it."""
        opening = OperatorContext.open(
            self.etcd,
            self.kube,
            KopfEvents(),
            self.metrics,
            leadership,
            self.pod_api,
            self.rules,
            self.namespaces,
            self.pod_sweep_interval,
            self.image,
        )
        index, context = await race(opening, stop.wait())
        if index:
            return  # stopped, or deposed, while opening: the context closed what it had opened
        try:
            await _kopf_operator(
                registry=build_registry(self.kube.api),
                memo=context,
                standalone=True,
                clusterwide=not self.namespaces,
                namespaces=list(self.namespaces),
                stop_flag=stop,
                ready_flag=ready,
            )
        finally:
            await context.close()


async def _kopf_operator(**options: Any) -> None:
    """``kopf.operator``, except that the etcd clients' transport tasks are not counted as kopf's.

    As it stops, kopf waits 5 s for every task started while it ran, then cancels them. A gRPC stream or
    an aetcd watch stream re-opened on another member during the run (after a member failure) is such a
    task, but it belongs to an etcd client that its owner closes: waiting for it only delayed every stop.
    """
    existing = _NotKopfs(asyncio.all_tasks())
    await kopf.run_tasks(await kopf.spawn_tasks(**options), ignored=existing)


class _NotKopfs(Collection["asyncio.Task[Any]"]):
    """The tasks kopf must leave alone: those from before it started, and the etcd clients' transport."""

    # Python sources of aetcd and grpc, and grpc's Cython ones (named as in grpc's repository).
    _TRANSPORT = (
        *(str(Path(module.__file__ or "").parent) for module in (aetcd, grpc)),
        "src/python/grpcio/",
    )

    def __init__(self, before: Collection[asyncio.Task[Any]]) -> None:
        self.before = frozenset(before)

    def __contains__(self, task: object) -> bool:
        return task in self.before or (isinstance(task, asyncio.Task) and self._is_transport(task))

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(self.before)

    def __len__(self) -> int:
        return len(self.before)

    def _is_transport(self, task: asyncio.Task[Any]) -> bool:
        code = getattr(task.get_coro(), "cr_code", None)
        return code is not None and code.co_filename.startswith(self._TRANSPORT)


async def run_operator(
    config: OperatorConfig, stop_flag: Flag | None = None, ready_flag: Flag | None = None
) -> None:
    """Run until stopped (SIGINT/SIGTERM in the main thread, or ``stop_flag``).

    ``ready_flag`` is set each time this replica is leading with kopf running.
    """
    etcd, webhook, election = config.etcd, config.webhook, config.election
    rules = lock_rules(config.shared_key_prefixes, election, outside_rules(config))
    kube = await preflight(etcd, config.kubeconfig, webhook)
    collected = Metrics()
    replica = ReplicaStatus(collected)
    app = collected.app()
    replica.add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    bridge = asyncio.create_task(_follow_flag(stop_flag, stop)) if stop_flag is not None else None
    _on_signals(stop)
    pod_api = PodApi(kube)
    operator = _Kopf(
        etcd, kube, collected, config.namespaces, pod_api, rules, config.pod_sweep_interval, config.image
    )
    try:
        async with contextlib.AsyncExitStack() as serving:
            if webhook is not None:
                locks = LockCheck(kube, rules, list(config.namespaces))
                await serving.enter_async_context(WebhookServer(webhook, locks))
                if webhook.configure:
                    await register(kube, webhook)
            if config.metrics is not None:
                await web.TCPSite(runner, *config.metrics).start()
            await _run(operator, etcd, election, stop, replica, ready_flag, config.exit_if_stuck)
    finally:
        if bridge is not None:
            bridge.cancel()
        await runner.cleanup()
        kube.close()


def outside_rules(config: OperatorConfig) -> OutsideRules:
    """Whether locks may name an etcd of their own, never the operator's (its endpoints)."""
    own = frozenset((e.host.lower(), e.port) for e in config.etcd.endpoints)
    return OutsideRules(config.allow_outside_etcd, own, float(config.secret_recheck_interval))


def lock_rules(
    shared_key_prefixes: Sequence[str],
    election: ElectionSettings | None,
    outside: OutsideRules | None = None,
) -> LockRules:
    """What this operator allows locks: keys per namespace (and the shared prefixes), never its own keys;
    pods' leases at least three leader TTLs long, so that they outlive a failover (a new leader is elected
    within one TTL and renews every pod's lease at once, see :mod:`etcdlock.operator.takeover`); which etcds
    they may name (``outside``; default: any but the operator's)."""
    try:
        keys = KeyPolicy.parse(shared_key_prefixes, election.name if election else None)
    except ValueError as exc:
        raise EtcdLockError(str(exc)) from None
    floor = max(MIN_TTL, 3 * election.ttl) if election else MIN_TTL
    return LockRules(keys, floor, outside or OutsideRules())


async def _run(
    operator: _Kopf,
    etcd: EtcdConfig,
    election: ElectionSettings | None,
    stop: asyncio.Event,
    replica: ReplicaStatus,
    ready_flag: Flag | None,
    exit_if_stuck: bool,
) -> None:
    """Run kopf: at once without an election, else whenever this replica is elected."""
    if election is None:
        replica.became_leader()
        await _lead(operator, None, None, stop, replica, ready_flag, exit_if_stuck)
    else:
        await _campaign_and_lead(operator, etcd, election, stop, replica, ready_flag, exit_if_stuck)


async def _campaign_and_lead(
    operator: _Kopf,
    etcd: EtcdConfig,
    settings: ElectionSettings,
    stop: asyncio.Event,
    replica: ReplicaStatus,
    ready_flag: Flag | None,
    exit_if_stuck: bool,
) -> None:
    """Campaign, lead while elected, and campaign again after losing leadership, until stopped.

    Each term has an etcd client of its own: kopf cancels, as it stops, the tasks started while it ran,
    and a client's watch stream may be one of them.
    """
    while not stop.is_set():
        async with EtcdClient(etcd) as client:
            try:
                async with Session(client, settings.ttl) as session:
                    candidate = Election(session, settings.name)
                    log.info("campaigning for %s as %s", settings.name, settings.identity)
                    if not await _first(candidate.campaign(settings.identity), stop):
                        return
                    log.info("elected leader of %s (fencing token %s)", settings.name, candidate.token)
                    replica.became_leader()
                    if await _lead(operator, candidate, session, stop, replica, ready_flag, exit_if_stuck):
                        return
            except EtcdLockError as exc:
                log.warning("campaign for %s interrupted: %s; campaigning again", settings.name, exc)
                replica.stopped_leading("lost")
                await _sleep_unless(stop, _RETRY_DELAY)


async def _lead(
    operator: _Kopf,
    candidate: Election | None,
    session: Session | None,
    stop: asyncio.Event,
    replica: ReplicaStatus,
    ready_flag: Flag | None,
    exit_if_stuck: bool,
) -> bool:
    """Run kopf while leading; True if the operator is to stop, False if leadership was lost."""
    kopf_stop, kopf_ready = asyncio.Event(), asyncio.Event()
    # Our own tasks start before kopf does (see _kopf_operator). The watch on the leader key is one of ours.
    if candidate is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(candidate.session.client.config.request_timeout):
                await candidate.watching()
    stopping = asyncio.ensure_future(stop.wait())
    lost = asyncio.ensure_future(candidate.wait_lost()) if candidate else None
    ready = asyncio.create_task(_when_ready(kopf_ready, stop, replica, ready_flag))
    await asyncio.sleep(0)
    kopf_task = operator.start(Leadership(candidate), kopf_stop, kopf_ready)
    watched: list[asyncio.Future[Any]] = [kopf_task, stopping]
    if lost is not None:
        watched.append(lost)
    try:
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        if lost is not None and lost.done() and not stop.is_set():
            log.warning("leadership lost: %s; stopping kopf", lost.result())
            replica.stopped_leading("lost")
            kopf_stop.set()
            await _bounded_stop(kopf_task, exit_if_stuck)
            return False
        if candidate is not None and session is not None:
            await _resign(candidate)
        replica.stopped_leading("resigned")
        kopf_stop.set()
        await _bounded_stop(kopf_task, exit_if_stuck)
        failure = kopf_task.exception() if kopf_task.done() and not kopf_task.cancelled() else None
        if failure is not None:
            raise failure
        return True
    finally:
        for task in (ready, *watched[1:]):
            task.cancel()
        _on_signals(stop)  # kopf's own SIGTERM handler must not outlive it


async def _when_ready(
    kopf_ready: asyncio.Event, stop: asyncio.Event, replica: ReplicaStatus, ready_flag: Flag | None
) -> None:
    """kopf is up: report ready, and take SIGTERM back from kopf (which installed its own handlers), so
    that a leader resigns before it stops."""
    await kopf_ready.wait()
    replica.ready = True
    _on_signals(stop)
    if ready_flag is not None:
        ready_flag.set()


async def _resign(candidate: Election) -> None:
    """Hand leadership over now (a standby is elected in one round trip); best effort, bounded."""
    try:
        async with asyncio.timeout(candidate.session.client.config.request_timeout):
            await candidate.resign()
        log.info("resigned leadership of %s", candidate.name)
    except (EtcdLockError, TimeoutError) as exc:
        log.warning("could not resign (the lease expires by itself): %s", exc)


async def _bounded_stop(kopf_task: asyncio.Task[None], exit_if_stuck: bool) -> None:
    done, _ = await asyncio.wait([kopf_task], timeout=STOP_BOUND)
    if done:
        return
    if exit_if_stuck:
        log.critical("kopf did not stop within %ss after leadership ended; exiting", STOP_BOUND)
        logging.shutdown()
        os._exit(70)
    kopf_task.cancel()
    await asyncio.wait([kopf_task], timeout=STOP_BOUND)
    raise EtcdLockError(f"kopf did not stop within {STOP_BOUND}s after leadership ended")


async def _first(campaign: Awaitable[object], stop: asyncio.Event) -> bool:
    """Await the campaign unless ``stop`` is set first (the campaign is then cancelled: no key is left)."""
    index, _ = await race(campaign, stop.wait())
    return index == 0


async def _follow_flag(flag: Flag, stop: asyncio.Event) -> None:
    """Set ``stop`` when an outside flag is set (a threading.Event is polled: it has no awaitable)."""
    if isinstance(flag, asyncio.Event):
        await flag.wait()
    else:
        # A threading.Event cannot be awaited; polling it is cheap and bounded.
        while not flag.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    stop.set()


def _on_signals(stop: asyncio.Event) -> None:
    if threading.current_thread() is threading.main_thread():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)


async def _sleep_unless(stop: asyncio.Event, delay: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await stop.wait()
