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

A lock may also name an etcd the user runs (``spec.etcd``, see :mod:`etcdlock.operator.outside`). It is
reached with what the Secret of the lock's namespace gives, and nothing of the operator's: one client per
(namespace, etcd, content of the Secret), so a connection authenticated with one namespace's Secret never
serves another namespace. Its epoch key is the namespace's own, ``/etcdlock/operator/epoch/<namespace>``
(the etcd user of each namespace needs that one key, not everyone's). The Secret is read again every
``recheck`` seconds (the operator may only ``get`` Secrets by name: nothing tells it of a change); when
its content changed or it is gone, the store is retired as above, and its users resolve it again. Such an
etcd is reached only as the operator's rules allow a lock (:class:`~etcdlock.operator.locks.OutsideRules`),
whoever names it: a pod's ``etcdlock.io/cluster`` names one too, and the pod's owner may write it. Never
the operator's own etcd, by any name: before anything is written there, the cluster ID it answers with is
compared with the operator's etcd's (a Service's FQDN, a pod's DNS name or a ClusterIP is another address
of the same members).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from etcdlock.etcd import EtcdClient, EtcdConfig, EtcdDenied, EtcdError, Fence, Fenced
from etcdlock.etcd.requests import create_revision_is, put_op, range_op, value_is_less
from etcdlock.operator.conditions import find
from etcdlock.operator.credentials import ClientCredentials
from etcdlock.operator.errors import (
    ClusterNotReady,
    EtcdAccessDenied,
    EtcdNotReachable,
    OperatorError,
    OutsideEtcdNotAllowed,
    SecretInvalid,
    SecretNotFound,
    SecretUnreadable,
    StoreNotReady,
)
from etcdlock.operator.kube import Kube
from etcdlock.operator.leadership import Leadership
from etcdlock.operator.locks import LockSpec, OutsideRules
from etcdlock.operator.names import CLUSTERS, client_secret
from etcdlock.operator.outside import OutsideEtcd, SecretCredentials

log = logging.getLogger(__name__)

EPOCH_KEY = b"/etcdlock/operator/epoch"
# How long a retired store's client stays open for the holds leaving it.
RETIRED_GRACE = 60.0
# How long an etcd the user runs that could not be used is not tried again: every pod naming the lock asks
# for its store, and each attempt may take a request timeout.
FAILED_FOR = 2.0

T = TypeVar("T")
# An etcd the user runs, as one namespace reaches it: (namespace, etcd, digest of its Secret's content).
Outside = tuple[str, OutsideEtcd, str]


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
    """The store of every lock: one client per EtcdCluster, and per etcd the user runs as each namespace
    reaches it with its Secret (all closed by :meth:`close`)."""

    def __init__(
        self,
        default: Store,
        kube: Kube,
        credentials: ClientCredentials | None = None,
        rules: OutsideRules | None = None,
    ) -> None:
        self.default = default
        self.leadership = default.leadership
        self._kube = kube
        self._own_credentials = credentials is None
        self._credentials = credentials or ClientCredentials()
        self._rules = rules or OutsideRules()
        self._closing: set[asyncio.Task[None]] = set()
        self._clusters: dict[tuple[str, str], tuple[str, Store]] = {}
        self._locks: dict[object, asyncio.Lock] = {}
        self._retired: list[Store] = []
        self._outside: dict[Outside, Store] = {}
        self._current: dict[tuple[str, OutsideEtcd], Outside] = {}
        self._rechecks: dict[Outside, asyncio.Task[None]] = {}
        self._failed: dict[tuple[str, OutsideEtcd], tuple[float, OperatorError]] = {}
        self._own_cluster_id: int | None = None

    async def for_lock(self, namespace: str, lock: LockSpec) -> Store:
        """The lock's store; :class:`~etcdlock.operator.errors.StoreNotReady` (its kinds) says why it cannot
        be used yet: its EtcdCluster missing or without quorum, its Secret missing or unusable, its etcd
        not answering or refusing the Secret's credentials."""
        return await self.for_cluster(namespace, lock.where)

    async def for_cluster(self, namespace: str, name: str | None) -> Store:
        """The store where a lock lives: ``name`` as :attr:`LockSpec.where` says it (an EtcdCluster's name,
        an etcd the user runs, or None: the operator's etcd)."""
        if name is None:
            return self.default
        outside = OutsideEtcd.from_where(name)
        if outside is not None:
            return await self.for_outside(namespace, outside)
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

    async def for_outside(self, namespace: str, etcd: OutsideEtcd) -> Store:
        """The store of an etcd the user runs, as ``namespace`` reaches it (with its own Secret only).

        :class:`OutsideEtcdNotAllowed` where the operator's rules allow a lock no such etcd, or where it
        answers as the operator's own etcd: a pod's ``etcdlock.io/cluster`` names one too, and it is held
        to the same rules."""
        self._rules.check(etcd)
        async with self._locks.setdefault((namespace, etcd), asyncio.Lock()):
            current = self._current.get((namespace, etcd))
            if current is not None and current in self._outside:
                return self._outside[current]
            loop = asyncio.get_running_loop()
            failed = self._failed.get((namespace, etcd))
            if failed is not None and loop.time() - failed[0] < FAILED_FOR:
                raise type(failed[1])(str(failed[1]))
            try:
                credentials = await self._secret(namespace, etcd)
                ref = (namespace, etcd, credentials.digest if credentials else "")
                store = await self._connect_outside(namespace, etcd, credentials)
            except (StoreNotReady, OutsideEtcdNotAllowed) as exc:
                # From the attempt's end: an attempt may take a request timeout, longer than FAILED_FOR.
                self._failed[(namespace, etcd)] = (loop.time(), exc)
                raise
            self._failed.pop((namespace, etcd), None)
            self._outside[ref] = store
            self._current[(namespace, etcd)] = ref
            if etcd.secret is not None:
                task = asyncio.create_task(self._recheck(ref), name=f"secret-{namespace}/{etcd.secret}")
                self._rechecks[ref] = task
            return store

    def retire(self, namespace: str, name: str) -> None:
        """The EtcdCluster is being rebuilt from a backup, or its client certificate was renewed: its store
        is retired (its users, told by :attr:`Store.retired`, resolve the store again, and get a new one
        once the cluster is available).
        Its client stays open :data:`RETIRED_GRACE` seconds more: holds may still be leaving it."""
        known = self._clusters.pop((namespace, name), None)
        if known is not None:
            self._retire(known[1])

    def _retire(self, store: Store) -> None:
        store.retired.set()
        self._retired.append(store)
        task = asyncio.create_task(self._close_later(store))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _secret(self, namespace: str, etcd: OutsideEtcd) -> SecretCredentials | None:
        """What the lock's Secret gives (None if it names none); read from the lock's namespace only."""
        if etcd.secret is None:
            return None
        try:
            found = await self._kube.call(self._kube.core.read_namespaced_secret, etcd.secret, namespace)
        except OperatorError as exc:
            raise SecretUnreadable(
                f"Secret {etcd.secret} (spec.etcd.secretRef) could not be read: {exc}"
            ) from None
        if found is None:
            raise SecretNotFound(
                f"Secret {etcd.secret} (spec.etcd.secretRef) does not exist in namespace {namespace}"
            )
        return SecretCredentials.of(etcd, found)

    async def _connect_outside(
        self, namespace: str, etcd: OutsideEtcd, credentials: SecretCredentials | None
    ) -> Store:
        own = await self._own_id()
        files = None
        if credentials is not None and credentials.pems:
            files = self._credentials.files(namespace, f"secret:{etcd.secret}", credentials.pems, ())
        config = (credentials or SecretCredentials()).config(etcd, files)
        client = EtcdClient(config)
        try:
            # Before any key is read or written there (the epoch below, pods' leases).
            if await client.cluster_id() == own:
                raise OutsideEtcdNotAllowed(
                    f"spec.etcd names the operator's own etcd (cluster ID {own:x}): leave spec.etcd out to "
                    "use it"
                )
            if self.default.fence is None:
                await client.range(_epoch_key(namespace))  # the credentials work, as a fence would show
                return Store(client, None, self.leadership)
            fence = await _claim(
                client, self.default, _epoch_key(namespace), f"the etcd at {etcd.describe()}"
            )
            return Store(client, fence, self.leadership)
        except EtcdDenied as exc:
            await client.close()
            raise EtcdAccessDenied(
                f"etcd at {etcd.describe()} refuses the credentials given: {exc}"
            ) from None
        except EtcdError as exc:
            await client.close()
            raise EtcdNotReachable(f"etcd at {etcd.describe()} cannot be reached: {exc}") from None
        except BaseException:
            await client.close()
            raise

    async def _own_id(self) -> int:
        """The cluster ID of the operator's own etcd, read once: an etcd the user runs must answer with
        another (no address tells: one etcd has many names)."""
        if self._own_cluster_id is None:
            try:
                self._own_cluster_id = await self.default.etcd.cluster_id()
            except EtcdError as exc:
                raise EtcdNotReachable(f"the operator's own etcd cannot be reached: {exc}") from None
        return self._own_cluster_id

    async def _recheck(self, ref: Outside) -> None:
        """Read the store's Secret again every ``secret_recheck`` seconds; retire the store once its content
        changed or it is gone (an API that does not answer changes nothing)."""
        namespace, etcd, digest = ref
        while True:
            await asyncio.sleep(self._rules.recheck)
            try:
                now = await self._secret(namespace, etcd)
            except SecretUnreadable:
                continue
            except (SecretNotFound, SecretInvalid):
                now = None
            if now is None or now.digest != digest:
                break
        store = self._outside.pop(ref)
        self._rechecks.pop(ref, None)
        log.info("Secret %s/%s changed or went: its etcd client is retired", namespace, etcd.secret)
        self._retire(store)

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
        tasks = [*self._closing, *self._rechecks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        clusters = (store for _, store in self._clusters.values())
        for store in [*clusters, *self._outside.values(), *self._retired]:
            await store.etcd.close()
        self._clusters.clear()
        self._outside.clear()
        self._rechecks.clear()
        self._retired.clear()
        if self._own_credentials:
            self._credentials.close()


async def claim_epoch(cluster: EtcdClient, leader: Store, name: str) -> Fence:
    """Write this term's epoch in ``cluster`` (only over an older one) and return the fence on that write.

    :class:`Fenced` if this replica no longer leads, or a newer leader's epoch is there already.
    """
    try:
        return await _claim(cluster, leader, EPOCH_KEY, f"EtcdCluster {name}")
    except EtcdError as exc:
        raise ClusterNotReady(f"EtcdCluster {name} cannot be reached: {exc}") from None


def _epoch_key(namespace: str) -> bytes:
    """The epoch key of a namespace's locks on an etcd the user runs."""
    return EPOCH_KEY + b"/" + namespace.encode()


async def _claim(cluster: EtcdClient, leader: Store, key: bytes, where: str) -> Fence:
    """:func:`claim_epoch` of ``key``; an etcd error is raised as it is."""
    if leader.fence is None or not await leader.confirmed():
        raise Fenced("this replica no longer leads")
    epoch = f"{leader.fence.revision:020d}".encode()
    put = [put_op(key, epoch)]
    response = await cluster.txn([create_revision_is(key, 0)], put)
    if not response.succeeded:
        response = await cluster.txn([value_is_less(key, epoch)], put, [range_op(key)])
    if not response.succeeded:
        (current,) = response.responses[0].response_range.kvs
        if current.value != epoch:
            raise Fenced(f"a newer leader's epoch is in {where}")
        return Fence(key, int(current.mod_revision), epoch=True)  # this term's, written before
    return Fence(key, int(response.header.revision), epoch=True)
