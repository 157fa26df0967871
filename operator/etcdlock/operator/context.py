"""What the kopf handlers reach: one typed context per term of leadership, kopf's memo.

It is opened before kopf starts (so kopf never waits for its tasks as if they were kopf's own) and closed by
kopf's cleanup handler: it learns the keys of every lock, renews every pod's lease before any pod is
handled (:mod:`etcdlock.operator.takeover`), builds the controllers and starts serving every lock listed
(kopf's resume of each then finds it served). kopf copies its memo shallowly
for every object, so every field is shared by all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from etcdlock.etcd import EtcdClient, EtcdConfig
from etcdlock.operator.adminrelease import AdminReleases
from etcdlock.operator.credentials import ClientCredentials
from etcdlock.operator.errors import LockNotFound
from etcdlock.operator.etcdcluster import Clusters
from etcdlock.operator.events import EventRecorder
from etcdlock.operator.kube import LIST_TIMEOUT, Kube, retrying
from etcdlock.operator.leadership import Leadership
from etcdlock.operator.locks import LockRules, Locks, LockSpec
from etcdlock.operator.lockservice import LockServices
from etcdlock.operator.metrics import Metrics
from etcdlock.operator.names import LOCKS
from etcdlock.operator.pods import PodApi, PodContext, PodHolds
from etcdlock.operator.pods.sweep import PodSweep
from etcdlock.operator.stores import Store, Stores
from etcdlock.operator.takeover import Takeover, list_pods

log = logging.getLogger(__name__)

# How long a new leader waits, at most, for the first renewal of the pods' leases before it starts.
TAKEOVER_WAIT = 2.0


@dataclass
class OperatorContext:
    """The operator's parts for one term: its etcd client, the Kubernetes adapter, the event recorder, the
    lock stores and the controllers of locks, pods, EtcdClusters and admins' release requests."""

    etcd: EtcdClient
    kube: Kube
    events: EventRecorder
    stores: Stores
    takeover: Takeover
    locks: Locks
    services: LockServices
    pods: PodHolds
    clusters: Clusters
    releases: AdminReleases
    exits: contextlib.AsyncExitStack

    @classmethod
    async def open(
        cls,
        etcd: EtcdConfig,
        kube: Kube,
        events: EventRecorder,
        metrics: Metrics,
        leadership: Leadership,
        pod_api: PodApi,
        rules: LockRules,
        namespaces: Sequence[str],
        pod_sweep_interval: float,
        image: str,
    ) -> OperatorContext:
        """The context of a new term. API outages are waited out (a new leader must not give up); if it is
        cancelled meanwhile (stopped, deposed), what it opened so far is closed."""
        async with contextlib.AsyncExitStack() as opened:
            client = EtcdClient(etcd)
            opened.push_async_callback(client.close)
            credentials = ClientCredentials()
            opened.callback(credentials.close)
            stores = Stores(Store(client, leadership.fence, leadership), kube, credentials, rules.outside)
            opened.push_async_callback(stores.close)
            locks = Locks(rules)
            listed_locks, listed_pods = await asyncio.gather(
                retrying(
                    "listing DistributedLocks",
                    lambda: kube.custom_objects(LOCKS, namespaces, timeout=LIST_TIMEOUT),
                ),
                list_pods(kube, namespaces),
            )
            locks.remember(listed_locks)
            takeover = Takeover(stores, rules.pod_ttl_floor / 3)
            opened.push_async_callback(takeover.close)
            started = asyncio.get_running_loop().time()
            await _renewed(takeover, await takeover.start(listed_pods), started)

            async def resolve(namespace: str, name: str) -> LockSpec:
                body = locks.known(namespace, name) or await pod_api.read_lock(namespace, name)
                if body is None:
                    raise LockNotFound(f"DistributedLock {name} does not exist")
                return locks.served(body)

            clusters = Clusters(kube, stores.default, events, image, metrics, stores.retire, credentials)
            opened.push_async_callback(clusters.close)
            pod_context = PodContext(stores, pod_api, rules, resolve, takeover.adopted, events, metrics)
            pods = PodHolds(pod_context, metrics.pod_events)
            services = LockServices(kube, locks, stores, pods.changes, metrics, events)
            opened.push_async_callback(services.stop_all)
            # Every lock listed is served at once (once the pods' leases are renewed: that comes first), not
            # when kopf gets round to resuming it (500 locks took kopf about 3 s): kopf's resume then finds
            # each served with its spec, and changes nothing.
            for body in listed_locks:
                if not (body.get("metadata") or {}).get("deletionTimestamp"):
                    await services.serve(body)
            opened.push_async_callback(pods.stop_all)
            sweep = PodSweep(kube, pod_api, namespaces, pod_sweep_interval)
            opened.push_async_callback(sweep.close)
            sweep.start(listed_pods)
            releases = AdminReleases(kube, locks, stores, events)
            exits = opened.pop_all()
        return cls(client, kube, events, stores, takeover, locks, services, pods, clusters, releases, exits)

    async def close(self) -> None:
        """Stop the holds and the lock services, then close the takeover and the clients; every step runs
        even if one before it fails. Closing again does nothing."""
        await self.exits.aclose()


async def _renewed(takeover: Takeover, kept: int, started: float) -> None:
    """Wait until every pod's lease taken over has been renewed once, before any pod is handled (bounded:
    an etcd that does not answer must not hold the new leader back)."""
    if kept:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TAKEOVER_WAIT):
                await takeover.renewed()
        took = asyncio.get_running_loop().time() - started
        log.info(
            "renewed the leases of %d pods in %.2fs; kept alive until their holds adopt them", kept, took
        )
