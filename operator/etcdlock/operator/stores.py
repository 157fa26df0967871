"""Where a lock lives: the operator's own etcd, or the EtcdCluster its ``spec.clusterRef`` names.

A :class:`Store` is an etcd client and the fence the operator's lock writes there must pass. On the
operator's etcd that is its election fence; on an EtcdCluster (which holds no election) it is an epoch key
the leader writes once per term before its first lock write there (see :mod:`etcdlock.etcd.fence`), so a
deposed leader's writes fail there too. A cluster is used once its status says a quorum answers; its
client URL (the client Service) comes from that status.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from etcdlock.etcd import EtcdClient, EtcdConfig, EtcdUnavailable, Fence
from etcdlock.etcd.client import put_op
from etcdlock.operator.locks import LockSpec
from etcdlock.operator.names import CLUSTERS, GROUP, VERSION

EPOCH_KEY = b"/etcdlock/operator/epoch"


class ClusterNotReady(Exception):
    """The EtcdCluster a lock names cannot be used (yet); the message says why."""


@dataclass(frozen=True)
class Store:
    etcd: EtcdClient
    fence: Fence | None


class Stores:
    """The store of every lock, one client per EtcdCluster (closed by :meth:`close`)."""

    def __init__(self, default: Store, kube: kubernetes.client.ApiClient) -> None:
        self.default = default
        self._objects = kubernetes.client.CustomObjectsApi(kube)
        self._clusters: dict[tuple[str, str], Store] = {}
        self._lock = asyncio.Lock()

    async def for_lock(self, namespace: str, lock: LockSpec) -> Store:
        """The lock's store; :class:`ClusterNotReady` if its EtcdCluster is missing or has no quorum."""
        if lock.cluster is None:
            return self.default
        async with self._lock:
            ref = (namespace, lock.cluster)
            store = self._clusters.get(ref)
            if store is None:
                store = self._clusters[ref] = await self._connect(namespace, lock.cluster)
            return store

    async def _connect(self, namespace: str, name: str) -> Store:
        cluster = await self._read(namespace, name)
        status = cluster.get("status") or {}
        available: dict[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Available"), {}
        )
        if available.get("status") != "True" or not status.get("clientURL"):
            why = available.get("message") or "it is being created"
            raise ClusterNotReady(f"EtcdCluster {name} is not available yet ({why})")
        client = EtcdClient(EtcdConfig.parse(status["clientURL"]))
        fence = None
        if self.default.fence is not None:
            # This term's epoch: the leader key's revision names it; writing it fences off earlier terms.
            epoch = f"{self.default.fence.key.decode()}@{self.default.fence.revision}".encode()
            try:
                response = await client.txn([], [put_op(EPOCH_KEY, epoch)])
            except EtcdUnavailable as exc:
                await client.close()
                raise ClusterNotReady(f"EtcdCluster {name} cannot be reached: {exc}") from None
            fence = Fence(EPOCH_KEY, int(response.header.revision), epoch=True)
        return Store(client, fence)

    async def _read(self, namespace: str, name: str) -> Any:
        def get() -> Any:
            return self._objects.get_namespaced_custom_object(GROUP, VERSION, namespace, CLUSTERS, name)

        try:
            return await asyncio.to_thread(get)
        except ApiException as exc:
            if exc.status == 404:
                raise ClusterNotReady(f"EtcdCluster {name} does not exist in namespace {namespace}") from None
            why = f"{exc.status} {exc.reason}"
            raise ClusterNotReady(f"EtcdCluster {name} could not be read: {why}") from None

    async def close(self) -> None:
        for store in self._clusters.values():
            await store.etcd.close()
        self._clusters.clear()
