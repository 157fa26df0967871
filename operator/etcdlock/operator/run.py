"""Run the operator: check that etcd and the CRD are there (clear errors), then run kopf embedded.

Leader election between replicas is not here yet: run one replica.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import kopf
import kubernetes
from aiohttp import web
from kubernetes.client.exceptions import ApiException

from etcdlock.etcd import EtcdClient, EtcdConfig, EtcdLockError
from etcdlock.operator.handlers import build_registry, kubernetes_api
from etcdlock.operator.metrics import Metrics
from etcdlock.operator.names import GROUP, LOCKS
from etcdlock.operator.webhook import WebhookSettings

CRD_NAME = f"{LOCKS}.{GROUP}"


async def preflight(
    etcd: EtcdConfig, kubeconfig: str | None, webhook: WebhookSettings | None
) -> kubernetes.client.ApiClient:
    """One clear message if etcd, the Kubernetes API, the CRD or the webhook certificate is missing."""
    if webhook is not None:
        webhook.server()
    async with EtcdClient(etcd) as client:
        await client.range(b"/etcdlock/", limit=1)
    try:
        api = await asyncio.to_thread(kubernetes_api, kubeconfig)
        extensions = kubernetes.client.ApiextensionsV1Api(api)
        await asyncio.to_thread(extensions.read_custom_resource_definition, CRD_NAME)
    except kubernetes.config.ConfigException as exc:
        raise EtcdLockError(f"no Kubernetes configuration: {exc}") from None
    except ApiException as exc:
        if exc.status == 404:
            raise EtcdLockError(f"the CRD {CRD_NAME} is not installed: kubectl apply -f crds/") from None
        raise EtcdLockError(f"Kubernetes API error {exc.status}: {exc.reason}") from None
    except OSError as exc:
        raise EtcdLockError(f"cannot reach the Kubernetes API: {exc}") from None
    return api


async def run_operator(
    etcd: EtcdConfig,
    namespaces: Sequence[str] = (),
    liveness: str | None = None,
    kubeconfig: str | None = None,
    metrics: tuple[str, int] | None = None,
    webhook: WebhookSettings | None = None,
    stop_flag: threading.Event | asyncio.Event | None = None,
    ready_flag: threading.Event | asyncio.Event | None = None,
) -> None:
    """Run until stopped (SIGINT/SIGTERM in the main thread, or ``stop_flag``).

    ``kubeconfig`` names the cluster; without it the in-cluster service account is used. ``metrics``
    (host, port) serves ``/metrics`` there; ``webhook`` serves the pod-gating admission webhook.
    """
    api = await preflight(etcd, kubeconfig, webhook)
    collected = Metrics()
    runner = web.AppRunner(collected.app(), access_log=None)
    await runner.setup()
    try:
        if metrics is not None:
            await web.TCPSite(runner, *metrics).start()
        await kopf.operator(
            registry=build_registry(etcd, api, collected, webhook),
            standalone=True,
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            liveness_endpoint=liveness,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        await runner.cleanup()
