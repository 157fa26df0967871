"""Where a lock lives: the operator's own etcd, or the EtcdCluster its ``spec.clusterRef`` names.

A :class:`Store` is an etcd client and the fence the operator's lock writes there must pass. On the
operator's etcd that is its election fence; on an EtcdCluster (which holds no election) it is an epoch key
the leader writes once per term before its first lock write there (see :mod:`etcdlock.etcd.fence`), so a
deposed leader's writes fail there too. The epoch is the leader key's create revision, which grows with
every term: it is written only over an older one, so a deposed replica that reaches a cluster late can
never take the epoch back from the leader. A cluster is used once its status says a quorum answers; its
client URL (the client Service) comes from that status. A cluster deleted and created again (another uid)
gets a new client and epoch, and so does a cluster rebuilt from a backup (:meth:`Stores.retire`): it is a
new etcd cluster, whose revisions and epoch key are not those the old client and fence knew. A cluster
with TLS is reached with the client certificate of its Secret (``NAME-client-tls``, written to
files by :class:`~etcdlock.operator.credentials.ClientCredentials`); when that certificate is renewed the
store is retired the same way, and its users connect again with the new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from etcdlock.etcd import EtcdClient, EtcdConfig, EtcdError, Fence, Fenced
from etcdlock.etcd.requests import create_revision_is, put_op, range_op, value_is_less
from etcdlock.operator.conditions import find
from etcdlock.operator.credentials import ClientCredentials
from etcdlock.operator.errors import ClusterNotReady, OperatorError
from etcdlock.operator.kube import Kube
from etcdlock.operator.leadership import Leadership
from etcdlock.operator.locks import LockSpec
from etcdlock.operator.names import CLUSTERS, client_secret

EPOCH_KEY = b"/etcdlock/operator/epoch"
# How long a retired store's client stays open for the holds leaving it.
RETIRED_GRACE = 60.0

T = TypeVar("T")


@dataclass(frozen=True)
class Store:
    """An etcd the operator keeps locks in, the fence its writes there pass, and the leadership behind it.
    ``retired`` is set once it must no longer be used (its cluster was rebuilt, or its client certificate
    renewed): its users resolve the
    lock's store again."""

    etcd: EtcdClient
    fence: Fence | None
    leadership: Leadership
    retired: asyncio.Event = field(default_factory=asyncio.Event, compare=False)

    async def confirmed(self) -> bool:
        """Whether this replica still leads, as this etcd confirms (transient errors waited out)."""
        return await self.leadership.confirmed(self.etcd, self.fence)

    async def persist(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` until it lands, through transient errors, or :class:`Fenced` once deposed."""
        return await self.leadership.persist(call)


class Stores:
    """The store of every lock, one client per EtcdCluster (closed by :meth:`close`)."""

    def __init__(self, default: Store, kube: Kube, credentials: ClientCredentials | None = None) -> None:
        self.default = default
        self.leadership = default.leadership
        self._kube = kube
        self._own_credentials = credentials is None
        self._credentials = credentials or ClientCredentials()
        self._closing: set[asyncio.Task[None]] = set()
        self._clusters: dict[tuple[str, str], tuple[str, Store]] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._retired: list[Store] = []

    async def for_lock(self, namespace: str, lock: LockSpec) -> Store:
        """The lock's store; :class:`ClusterNotReady` if its EtcdCluster is missing or has no quorum."""
        return await self.for_cluster(namespace, lock.cluster)

    async def for_cluster(self, namespace: str, name: str | None) -> Store:
        """The store of the EtcdCluster ``name`` (None: the operator's etcd)."""
        if name is None:
            return self.default
        ref = (namespace, name)
        async with self._locks.setdefault(ref, asyncio.Lock()):
            cluster = await self._read(namespace, name)
            uid = str(cluster["metadata"].get("uid") or "")
            known = self._clusters.get(ref)
            if known is not None and known[0] == uid:
                return known[1]
            if known is not None:
                await known[1].etcd.close()
                del self._clusters[ref]
            store = await self._connect(namespace, name, cluster)
            self._clusters[ref] = (uid, store)
            return store

    def retire(self, namespace: str, name: str) -> None:
        """The EtcdCluster is being rebuilt from a backup, or its client certificate was renewed: its store
        is retired (its users, told by :attr:`Store.retired`, resolve the store again, and get a new one
        once the cluster is available).
        Its client stays open :data:`RETIRED_GRACE` seconds more: holds may still be leaving it."""
        known = self._clusters.pop((namespace, name), None)
        if known is not None:
            known[1].retired.set()
            self._retired.append(known[1])
            task = asyncio.create_task(self._close_later(known[1]))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_later(self, store: Store) -> None:
        await asyncio.sleep(RETIRED_GRACE)
        self._retired.remove(store)
        await store.etcd.close()

    async def _connect(self, namespace: str, name: str, cluster: Any) -> Store:
        status = cluster.get("status") or {}
        available = find(status, "Available")
        if available.get("status") != "True" or not status.get("clientURL"):
            why = available.get("message") or "it is being created"
            raise ClusterNotReady(f"EtcdCluster {name} is not available yet ({why})")
        url = str(status["clientURL"])
        if url.startswith("https://"):
            # By its name, not the status' word for it: whoever may write the status must not point the
            # operator at another Secret.
            files = await self._credentials.read(self._kube, namespace, name, client_secret(name))
            client = EtcdClient(files.config(url))
        else:
            client = EtcdClient(EtcdConfig.parse(url))
        if self.default.fence is None:
            return Store(client, None, self.leadership)
        try:
            return Store(client, await claim_epoch(client, self.default, name), self.leadership)
        except BaseException:
            await client.close()
            raise

    async def _read(self, namespace: str, name: str) -> Any:
        try:
            cluster = await self._kube.custom_object(CLUSTERS, namespace, name)
        except OperatorError as exc:
            raise ClusterNotReady(f"EtcdCluster {name} could not be read: {exc}") from None
        if cluster is None:
            raise ClusterNotReady(f"EtcdCluster {name} does not exist in namespace {namespace}")
        return cluster

    async def close(self) -> None:
        for task in list(self._closing):
            task.cancel()
        await asyncio.gather(*self._closing, return_exceptions=True)
        for store in [*(store for _, store in self._clusters.values()), *self._retired]:
            await store.etcd.close()
        self._clusters.clear()
        self._retired.clear()
        if self._own_credentials:
            self._credentials.close()


async def claim_epoch(cluster: EtcdClient, leader: Store, name: str) -> Fence:
    """Write this term's epoch in ``cluster`` (only over an older one) and return the fence on that write.

    :class:`Fenced` if this replica no longer leads, or a newer leader's epoch is there already.
    """
    if leader.fence is None or not await leader.confirmed():
        raise Fenced("this replica no longer leads")
    epoch = f"{leader.fence.revision:020d}".encode()
    put = [put_op(EPOCH_KEY, epoch)]
    try:
        response = await cluster.txn([create_revision_is(EPOCH_KEY, 0)], put)
        if not response.succeeded:
            response = await cluster.txn([value_is_less(EPOCH_KEY, epoch)], put, [range_op(EPOCH_KEY)])
        if not response.succeeded:
            (current,) = response.responses[0].response_range.kvs
            if current.value != epoch:
                raise Fenced(f"a newer leader's epoch is in EtcdCluster {name}")
            return Fence(EPOCH_KEY, int(current.mod_revision), epoch=True)  # this term's, written before
    except EtcdError as exc:
        raise ClusterNotReady(f"EtcdCluster {name} cannot be reached: {exc}") from None
    return Fence(EPOCH_KEY, int(response.header.revision), epoch=True)
