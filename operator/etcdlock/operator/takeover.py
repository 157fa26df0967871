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
from collections.abc import Iterable, Mapping, Sequence

from etcdlock.etcd.keeper import LeaseKeeper
from etcdlock.operator.kube import LIST_TIMEOUT, Kube, retrying
from etcdlock.operator.names import (
    CLUSTER_ANNOTATION,
    HELD,
    LEASE_ANNOTATION,
    LOCK_ANNOTATION,
    STATE_ANNOTATION,
    WAITING_STATES,
)
from etcdlock.operator.outside import describes_etcd
from etcdlock.operator.pods import annotations_of, parse_lease
from etcdlock.operator.pods.api import Pod
from etcdlock.operator.stores import Stores

log = logging.getLogger(__name__)

WINDOW = 60.0
# How long a new leader tries to reach each etcd the pods name, at most, before it renews the leases there.
PLACE_WAIT = 3.0

# Where pods' leases live: None for the operator's etcd, else a namespace and its pods' cluster annotation.
Place = tuple[str, str] | None


async def list_pods(kube: Kube, namespaces: Sequence[str]) -> list[Pod]:
    """Every pod of ``namespaces`` (none: of all), labelled or not (a pod handled by a release without
    the label names a lease too), listed until the API answers: a new leader must not give up."""
    return await retrying("listing pods", lambda: kube.pods(namespaces, timeout=LIST_TIMEOUT))


class Takeover:
    """The pods' leases a new leader keeps alive until the pods' holds adopt them."""

    def __init__(self, stores: Stores, interval: float) -> None:
        self._stores = stores
        self._interval = interval
        self._keepers: dict[Place, LeaseKeeper] = {}
        self._kept: dict[int, LeaseKeeper] = {}
        self._expiry: asyncio.TimerHandle | None = None

    async def start(self, pods: Iterable[Pod]) -> int:
        """Renew the lease of every pod of ``pods`` (see :func:`list_pods`) that waits for or holds a lock;
        how many were found.

        The leases in the operator's etcd and in EtcdClusters are renewed first, before any etcd a pod's
        annotation names outside them is tried: a pod's owner writes that annotation, and such an etcd may be
        down. Each etcd is tried once, all at once, for :data:`PLACE_WAIT` at most; the leases of one that
        cannot be reached are left to the pods' holds."""
        wanted = _leases_by_place(pods)
        ours = [place for place in wanted if place is None or not describes_etcd(place[1])]
        await self._keep(ours, wanted)
        await self._keep([place for place in wanted if place not in ours], wanted)
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

    async def _keep(self, places: Sequence[Place], wanted: Mapping[Place, list[int]]) -> None:
        """Renew the leases ``wanted`` in each of ``places``, all reached at once."""
        await asyncio.gather(*(self._keep_in(place, wanted[place]) for place in places))

    async def _keep_in(self, place: Place, leases: list[int]) -> None:
        keeper = await self._keeper(place)
        if keeper is None:
            return
        for lease in leases:
            self._kept[lease] = keeper
        keeper.keep(leases)

    async def _keeper(self, place: Place) -> LeaseKeeper | None:
        """A keeper on the etcd of ``place`` (None: the operator's; else a namespace and its pods' cluster
        annotation); None if it cannot be used now (logged)."""
        if place is None:
            store = self._stores.default
        else:
            namespace, cluster = place
            where = f"{cluster[:80]!r} (namespace {namespace})"
            try:
                async with asyncio.timeout(PLACE_WAIT):
                    store = await self._stores.for_cluster(namespace, cluster)
            except TimeoutError:
                log.info("takeover: pod leases in %s not renewed: no answer within %ss", where, PLACE_WAIT)
                return None
            except Exception as exc:  # whatever a pod's owner wrote must not stop the takeover
                log.info("takeover: pod leases in %s not renewed: %s", where, exc)
                return None
        keeper = LeaseKeeper(store.etcd, self._interval)
        self._keepers[place] = keeper
        return keeper


def _leases_by_place(pods: Iterable[Pod]) -> dict[Place, list[int]]:
    """The leases of the pods that wait for or hold a lock, by the etcd they were granted in."""
    wanted: dict[Place, list[int]] = {}
    for pod in pods:
        annotations = annotations_of(pod)
        lease = parse_lease(annotations.get(LEASE_ANNOTATION))
        if lease is None or not annotations.get(LOCK_ANNOTATION):
            continue
        if annotations.get(STATE_ANNOTATION) not in (*WAITING_STATES, HELD):
            continue
        namespace = str(pod["metadata"].get("namespace") or "")
        cluster = annotations.get(CLUSTER_ANNOTATION)
        wanted.setdefault((namespace, cluster) if cluster else None, []).append(lease)
    return wanted
