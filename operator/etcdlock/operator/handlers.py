"""The kopf layer: registration and one-line handlers over the controllers of
:class:`~etcdlock.operator.context.OperatorContext`, kopf's memo. Nothing below this module imports kopf.

One startup handler owns every kopf setting; one ``reconcile`` is reached from create, resume and spec
updates of a DistributedLock; a release request written on a lock (an annotation) is answered from every
watch event that carries it, the first listing included (see :mod:`etcdlock.operator.adminrelease`); every
EtcdCluster is reconciled by a timer; every watch event of a pod labelled ``etcdlock.io/managed`` goes to
the pod flow (the API server filters: other pods never reach the operator). (The webhooks are not kopf
handlers: every replica serves them, see :mod:`etcdlock.operator.webhook`.)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf
import kubernetes

from etcdlock.operator.context import OperatorContext
from etcdlock.operator.etcdcluster import RECONCILE_PERIOD
from etcdlock.operator.names import (
    CLUSTERS,
    FINALIZER,
    GROUP,
    KOPF_STATUS,
    LOCKS,
    MANAGED_LABEL,
    VERSION,
)
from etcdlock.operator.releaserequest import RELEASE_ANNOTATION

log = logging.getLogger(__name__)

USER_AGENT = "etcdlock-operator"


class RoutineSuccess(logging.Filter):
    """Drops kopf's "succeeded" line for the handlers that run on every pod event and every cluster pass
    (thousands a minute in a busy cluster); their failures and everything else are still logged."""

    ROUTINE = ("Handler 'pod-event' succeeded.", "Timer 'etcd-cluster' succeeded.")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.ROUTINE


_ROUTINE_SUCCESS = RoutineSuccess()


class KopfEvents:
    """The :class:`~etcdlock.operator.events.EventRecorder` of a live operator: kopf posts the Events."""

    def info(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        kopf.info(cast(kopf.Body, obj), reason=reason, message=message)

    def warn(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        kopf.warn(cast(kopf.Body, obj), reason=reason, message=message)


def kubernetes_api(kubeconfig: str | None, connections: int) -> kubernetes.client.ApiClient:
    """A client for the cluster: the kubeconfig file if given, else the in-cluster service account; with
    up to ``connections`` connections kept open to the API server."""
    configuration = kubernetes.client.Configuration()
    if kubeconfig:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = connections
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


def build_registry(kube: kubernetes.client.ApiClient) -> kopf.OperatorRegistry:
    """A fresh registry with the operator's handlers (a fresh one per operator run, as kopf advises); they
    reach everything through the memo, an :class:`OperatorContext`."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(id="configure", registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = True
        settings.persistence.finalizer = FINALIZER
        persistence = settings.persistence
        # kopf's bookkeeping goes in status.kopf, not in annotations users see and copy.
        persistence.progress_storage = kopf.StatusProgressStorage(name=KOPF_STATUS)
        persistence.diffbase_storage = kopf.StatusDiffBaseStorage(name=KOPF_STATUS)
        settings.posting.level = logging.INFO
        settings.posting.reporting_component = "etcdlock-operator"
        settings.watching.label_selectors["", "v1", "pods"] = MANAGED_LABEL
        logging.getLogger("kopf.objects").addFilter(_ROUTINE_SUCCESS)

    @kopf.on.login(id="login", registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(kube)

    @kopf.on.cleanup(id="cleanup", registry=registry)
    async def cleanup(memo: OperatorContext, **_: Any) -> None:
        await memo.close()

    @kopf.on.resume(GROUP, VERSION, LOCKS, id="serve-lock", registry=registry)
    @kopf.on.create(GROUP, VERSION, LOCKS, id="serve-lock", registry=registry)
    @kopf.on.update(GROUP, VERSION, LOCKS, field="spec", id="serve-lock", registry=registry)
    async def reconcile(
        body: kopf.Body, name: str, namespace: str | None, memo: OperatorContext, **_: Any
    ) -> None:
        await memo.services.serve(body)
        memo.pods.changes.changed((namespace or "", name))

    @kopf.on.delete(GROUP, VERSION, LOCKS, id="release-lock", registry=registry)
    async def delete(name: str, namespace: str | None, memo: OperatorContext, **_: Any) -> None:
        memo.pods.lock_deleted(namespace or "", name)
        for ref in await memo.services.deleted((namespace or "", name)):
            memo.pods.changes.changed(ref)

    @kopf.on.event(
        GROUP,
        VERSION,
        LOCKS,
        id="admin-release",
        annotations={RELEASE_ANNOTATION: kopf.PRESENT},
        registry=registry,
    )
    async def admin_release(event: kopf.RawEvent, body: kopf.Body, memo: OperatorContext, **_: Any) -> None:
        if event.get("type") != "DELETED":
            await memo.releases.requested(dict(body))

    @kopf.on.event("", "v1", "pods", id="pod-event", registry=registry)
    async def pod_event(event: kopf.RawEvent, body: kopf.Body, memo: OperatorContext, **_: Any) -> None:
        memo.pods.observe(event.get("type"), cast(dict[str, Any], body))

    @kopf.timer(GROUP, VERSION, CLUSTERS, id="etcd-cluster", interval=RECONCILE_PERIOD, registry=registry)
    async def etcd_cluster(body: kopf.Body, patch: kopf.Patch, memo: OperatorContext, **_: Any) -> None:
        patch.status.update(await memo.clusters.reconcile_changes(body))

    @kopf.on.delete(GROUP, VERSION, CLUSTERS, id="forget-etcd-cluster", registry=registry)
    async def etcd_cluster_gone(name: str, namespace: str | None, memo: OperatorContext, **_: Any) -> None:
        await memo.clusters.forget(namespace or "", name)

    return registry
