"""Takeover: the first thing a new leader does, before it handles any pod, is to renew every pod's lease.

Pods' leases are kept alive by whichever replica leads. When a leader dies, its pods' leases go unrenewed
from its last renewal until the new leader's hold of each pod adopts its lease, one pod at a time as kopf
hands them over: for thousands of pods that took longer than a short lease lives, and the pods lost their
places. So the new leader lists the pods that name a lease and renews all of those leases at once, on one
keepalive stream per etcd (:class:`~etcdlock.etcd.keeper.LeaseKeeper`), until each pod's hold has adopted
its own (or for :data:`WINDOW` at most: a pod deleted while nobody led is never handed over, and its lease
must then expire).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from etcdlock.etcd import Fenced
from etcdlock.etcd.keeper import LeaseKeeper
from etcdlock.operator.errors import OperatorError
from etcdlock.operator.kube import LIST_TIMEOUT, Kube, retrying
from etcdlock.operator.names import (
    CLUSTER_ANNOTATION,
    HELD,
    LEASE_ANNOTATION,
    LOCK_ANNOTATION,
    STATE_ANNOTATION,
    WAITING_STATES,
)
from etcdlock.operator.pods import annotations_of, parse_lease
from etcdlock.operator.pods.api import Pod
from etcdlock.operator.stores import Stores

log = logging.getLogger(__name__)

WINDOW = 60.0


async def list_pods(kube: Kube, namespaces: Sequence[str]) -> list[Pod]:
    """Every pod of ``namespaces`` (none: of all), labelled or not (a pod handled by a release without
    the label names a lease too), listed until the API answers: a new leader must not give up."""
    return await retrying("listing pods", lambda: kube.pods(namespaces, timeout=LIST_TIMEOUT))


class Takeover:
    """The pods' leases a new leader keeps alive until the pods' holds adopt them."""

    def __init__(self, stores: Stores, interval: float) -> None:
        self._stores = stores
        self._interval = interval
        self._keepers: dict[tuple[str, str] | None, LeaseKeeper] = {}
        self._kept: dict[int, LeaseKeeper] = {}
        self._expiry: asyncio.TimerHandle | None = None

    async def start(self, pods: Iterable[Pod]) -> int:
        """Renew the lease of every pod of ``pods`` (see :func:`list_pods`) that waits for or holds a lock;
        how many were found."""
        for pod in pods:
            annotations = annotations_of(pod)
            lease = parse_lease(annotations.get(LEASE_ANNOTATION))
            if lease is None or not annotations.get(LOCK_ANNOTATION):
                continue
            if annotations.get(STATE_ANNOTATION) not in (*WAITING_STATES, HELD):
                continue
            namespace = str(pod["metadata"].get("namespace") or "")
            cluster = annotations.get(CLUSTER_ANNOTATION) or None
            keeper = await self._keeper(namespace, cluster)
            if keeper is not None:
                self._kept[lease] = keeper
        for keeper in set(self._kept.values()):
            keeper.keep(lease for lease, kept in self._kept.items() if kept is keeper)
        self._expiry = asyncio.get_running_loop().call_later(WINDOW, self._expire)
        return len(self._kept)

    async def renewed(self) -> None:
        """Wait until every kept lease has been renewed once (or found gone)."""
        await asyncio.gather(*(keeper.renewed() for keeper in set(self._kept.values())))

    def adopted(self, lease: int) -> None:
        """A pod's hold keeps its lease alive from now on."""
        keeper = self._kept.pop(lease, None)
        if keeper is not None:
            keeper.drop(lease)

    def _expire(self) -> None:
        if self._kept:
            log.info("takeover: %d leases not adopted within %ss are left to expire", len(self._kept), WINDOW)
        for lease in list(self._kept):
            self.adopted(lease)

    async def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        for keeper in self._keepers.values():
            await keeper.close()

    async def _keeper(self, namespace: str, cluster: str | None) -> LeaseKeeper | None:
        place = (namespace, cluster) if cluster else None
        if place not in self._keepers:
            try:
                store = await self._stores.for_cluster(namespace, cluster)
            except (OperatorError, Fenced) as exc:
                log.info("takeover: pod leases in EtcdCluster %s/%s not renewed: %s", namespace, cluster, exc)
                return None
            self._keepers[place] = LeaseKeeper(store.etcd, self._interval)
        return self._keepers[place]
