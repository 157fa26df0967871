"""The kopf handlers: thin wrappers around the lock status and the pod flow.

One startup handler owns every setting, learns the keys of every lock, and keeps every pod's lease alive
until its hold takes it over (:mod:`etcdlock.operator.takeover`); one ``reconcile`` is reached from
create, resume and spec updates; every lock gets one service task (:mod:`etcdlock.operator.mirror`) kept
in the operator's memo.
Every EtcdCluster is reconciled by a timer (:mod:`etcdlock.operator.etcdcluster`), which writes its status.
Every pod watch event goes to :class:`~etcdlock.operator.pods.PodHolds`. (The webhook that gates pods is
not a kopf handler: every replica serves it, see :mod:`etcdlock.operator.webhook`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import kopf
import kubernetes

from etcdlock.etcd import EtcdClient, EtcdConfig, Fenced
from etcdlock.etcd.keys import Contender
from etcdlock.operator import events
from etcdlock.operator.errors import LockNotFound
from etcdlock.operator.etcdcluster import RECONCILE_PERIOD, Clusters
from etcdlock.operator.kube import ApiUnavailable, Conflict, Kube
from etcdlock.operator.kubeapi import PodApi, list_locks, retrying
from etcdlock.operator.leadership import Leadership
from etcdlock.operator.locks import LockRules, Locks, LockSpec
from etcdlock.operator.metrics import Metrics, QueueMetrics
from etcdlock.operator.mirror import QueueObserver, serve_lock
from etcdlock.operator.names import (
    ANNOTATION_PREFIX,
    CLUSTERS,
    FINALIZER,
    GROUP,
    LOCKS,
    VERSION,
)
from etcdlock.operator.podhold import PodContext
from etcdlock.operator.pods import PodHolds
from etcdlock.operator.stores import Store, Stores
from etcdlock.operator.takeover import Takeover

log = logging.getLogger(__name__)

USER_AGENT = "etcdlock-operator"
# How long a new leader waits, at most, for the first renewal of the pods' leases before it starts.
TAKEOVER_WAIT = 2.0


class RoutineSuccess(logging.Filter):
    """Drops kopf's "succeeded" line for the handlers that run on every pod event and every cluster pass
    (thousands a minute in a busy cluster); their failures and everything else are still logged."""

    ROUTINE = ("Handler 'pod-event' succeeded.", "Timer 'etcd-cluster' succeeded.")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.ROUTINE


_ROUTINE_SUCCESS = RoutineSuccess()


class LockServices:
    """The running service task of every lock (:func:`~etcdlock.operator.mirror.serve_lock`), by
    (namespace, name), with the spec it serves."""

    def __init__(self) -> None:
        self._tasks: dict[tuple[str, str], tuple[dict[str, Any], asyncio.Task[None]]] = {}

    def running(self, ref: tuple[str, str], spec: dict[str, Any]) -> bool:
        entry = self._tasks.get(ref)
        return entry is not None and entry[0] == spec and not entry[1].done()

    def start(self, ref: tuple[str, str], spec: dict[str, Any], task: asyncio.Task[None]) -> None:
        self._tasks[ref] = (spec, task)

    async def stop(self, ref: tuple[str, str]) -> None:
        entry = self._tasks.pop(ref, None)
        if entry is not None:
            entry[1].cancel()
            await asyncio.gather(entry[1], return_exceptions=True)

    async def stop_all(self) -> None:
        for ref in list(self._tasks):
            await self.stop(ref)


def kubernetes_api(kubeconfig: str | None) -> kubernetes.client.ApiClient:
    """A client for the cluster: the kubeconfig file if given, else the in-cluster service account."""
    if kubeconfig:
        api: kubernetes.client.ApiClient = kubernetes.config.new_client_from_config(config_file=kubeconfig)
    else:
        configuration = kubernetes.client.Configuration()
        kubernetes.config.load_incluster_config(client_configuration=configuration)
        api = kubernetes.client.ApiClient(configuration)
    api.user_agent = USER_AGENT
    return api


def connection_info(api: kubernetes.client.ApiClient) -> kopf.ConnectionInfo:
    """kopf's credentials, taken from the same client configuration the operator uses."""
    config = api.configuration
    token = (config.api_key or {}).get("authorization") or (config.api_key or {}).get("BearerToken")
    scheme, _, token = (token or "").partition(" ") if token and " " in token else ("Bearer", "", token)
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme if token else None,
        token=token or None,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )


def build_registry(
    etcd: EtcdConfig,
    kube: kubernetes.client.ApiClient,
    metrics: Metrics,
    leadership: Leadership | None = None,
    pod_api: PodApi | None = None,
    rules: LockRules | None = None,
    namespaces: Sequence[str] = (),
) -> kopf.OperatorRegistry:
    """A fresh registry with the operator's handlers (a fresh one per operator run, as kopf advises).

    Every lock write made for pods is fenced on ``leadership`` (none: a single replica, never deposed).
    """
    registry = kopf.OperatorRegistry()
    lead = leadership or Leadership()
    lock_rules = rules or LockRules()

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        settings.peering.standalone = True
        settings.persistence.finalizer = FINALIZER
        persistence = settings.persistence
        persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX, v1=False)
        persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=ANNOTATION_PREFIX, v1=False)
        settings.posting.level = logging.INFO
        settings.posting.reporting_component = "etcdlock-operator"
        logging.getLogger("kopf.objects").addFilter(_ROUTINE_SUCCESS)
        memo.etcd = EtcdClient(etcd)
        memo.kube = kube
        memo.metrics = metrics
        memo.services = LockServices()
        memo.stores = Stores(Store(memo.etcd, lead.fence, lead), kube)
        memo.takeover = Takeover(memo.stores, lock_rules.pod_ttl_floor / 3)
        memo.locks = Locks(lock_rules)
        memo.locks.remember(await asyncio.to_thread(list_locks, kube, namespaces))
        started = asyncio.get_running_loop().time()
        kept = await memo.takeover.start(kube, namespaces)
        if kept:
            # Renewed before any pod is handled (bounded: an etcd that does not answer must not hold kopf).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TAKEOVER_WAIT):
                    await memo.takeover.renewed()
            took = asyncio.get_running_loop().time() - started
            log.info(
                "renewed the leases of %d pods in %.2fs; kept alive until their holds adopt them", kept, took
            )

        async def resolve(namespace: str, name: str) -> LockSpec:
            body = await api.read_lock(namespace, name)
            if body is None:
                raise LockNotFound(f"DistributedLock {name} does not exist")
            spec: LockSpec = memo.locks.served(body)
            return spec

        api = pod_api or PodApi(kube)
        context = PodContext(memo.stores, api, lock_rules, resolve, memo.takeover.adopted)
        memo.pods = PodHolds(context)
        memo.clusters = Clusters(Kube(kube), memo.stores.default, events)  # events: kopf-backed recorder

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(kube)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        await memo.pods.stop_all()
        await memo.services.stop_all()
        await memo.takeover.close()
        await memo.clusters.close()
        await memo.stores.close()
        await memo.etcd.close()

    @kopf.on.resume(GROUP, VERSION, LOCKS, registry=registry)
    @kopf.on.create(GROUP, VERSION, LOCKS, registry=registry)
    @kopf.on.update(GROUP, VERSION, LOCKS, field="spec", registry=registry)
    async def reconcile(
        spec: kopf.Spec,
        name: str,
        namespace: str | None,
        meta: kopf.Meta,
        body: kopf.Body,
        memo: Any,
        **_: Any,
    ) -> None:
        await serve(memo, body)
        memo.pods.changes.changed((namespace or "", name))

    @kopf.on.delete(GROUP, VERSION, LOCKS, registry=registry)
    async def delete(name: str, namespace: str | None, memo: Any, **_: Any) -> None:
        memo.pods.lock_deleted(namespace or "", name)
        await memo.services.stop((namespace or "", name))
        memo.metrics.forget(namespace or "", name)
        for ref in memo.locks.forget(namespace or "", name):
            memo.pods.changes.changed(ref)

    @kopf.on.event("", "v1", "pods", id="pod-event", registry=registry)
    async def pod_event(event: kopf.RawEvent, body: kopf.Body, memo: Any, **_: Any) -> None:
        memo.pods.observe(event.get("type"), body)

    @kopf.timer(GROUP, VERSION, CLUSTERS, id="etcd-cluster", interval=RECONCILE_PERIOD, registry=registry)
    async def etcd_cluster(body: kopf.Body, patch: kopf.Patch, memo: Any, **_: Any) -> None:
        try:
            status = await memo.clusters.reconcile(body)
        except (ApiUnavailable, Conflict) as exc:
            log.warning("EtcdCluster %s: %s; next pass", body["metadata"]["name"], exc)
            return
        current = dict(body.get("status") or {})
        changed = {key: value for key, value in status.items() if current.get(key) != value}
        if changed:
            patch.status.update(changed)

    @kopf.on.delete(GROUP, VERSION, CLUSTERS, registry=registry)
    async def etcd_cluster_gone(name: str, namespace: str | None, memo: Any, **_: Any) -> None:
        await memo.clusters.forget(namespace or "", name)

    return registry


async def serve(memo: Any, body: kopf.Body) -> None:
    """Serve one DistributedLock (again, if its spec changed): one task, for as long as the lock exists,
    mirrors its queue into status, or says in status why it cannot be served."""
    meta = body["metadata"]
    ref = (str(meta.get("namespace") or ""), str(meta["name"]))
    snapshot = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(meta),
        "spec": dict(body.get("spec") or {}),
    }
    if memo.services.running(ref, snapshot["spec"]):
        return
    await memo.services.stop(ref)
    publish = _publisher(memo.kube, memo.stores.leadership, *ref)
    observers: list[QueueObserver] = [Announcer(snapshot), QueueMetrics(memo.metrics, *ref)]
    changes = memo.pods.changes
    serving = serve_lock(snapshot, memo.locks, memo.stores, changes, publish, observers)
    memo.services.start(ref, snapshot["spec"], asyncio.create_task(serving, name=f"lock-{ref[0]}/{ref[1]}"))


def _publisher(api: kubernetes.client.ApiClient, leadership: Leadership, namespace: str, name: str) -> Any:
    objects = kubernetes.client.CustomObjectsApi(api)
    patch = objects.patch_namespaced_custom_object_status

    async def attempt(status: dict[str, Any]) -> object:
        try:
            await leadership.assured()
        except Fenced:
            return None  # deposed (maybe while paused): what it saw is stale, the next leader publishes
        return await asyncio.to_thread(patch, GROUP, VERSION, namespace, LOCKS, name, {"status": status})

    async def publish(status: dict[str, Any]) -> None:
        """Patch the status, again until it is written (the status must not stay stale after an API outage
        when etcd then changes nothing); a lock deleted meanwhile is fine."""
        await retrying(f"status of DistributedLock {namespace}/{name}", lambda: attempt(status))

    return publish


class Announcer:
    """Events on the lock when holders come and go, whoever they are (the first look is the baseline)."""

    def __init__(self, body: dict[str, Any]) -> None:
        self._body = body
        self._holders: dict[str, Contender] | None = None

    def seen(self, contenders: list[Contender], permits: int) -> None:
        holders = {c.key: c for c in contenders[:permits]}
        if self._holders is not None:
            for key, holder in holders.items():
                if key not in self._holders:
                    who = holder.info.holder or key
                    message = f"{who} holds the lock (fencing token {holder.fencing_token})"
                    events.info(self._body, "Acquired", message)
            for key, holder in self._holders.items():
                if key not in holders:
                    events.info(self._body, "Released", f"{holder.info.holder or key} released the lock")
        self._holders = holders
