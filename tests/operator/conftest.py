"""Fixtures of the operator tests: the sandbox API with the CRDs, a namespace per test, the webhook's
certificates and MutatingWebhookConfiguration, and the operator itself (its real kopf handlers, in a thread;
or as a process serving a module's namespace: ``operated``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiClient
from operator_support import Operated, OperatorThread, operator_in, tolerating, webhooks_registered

from etcdlock.operator.config import WebhookSettings
from etcdlock_sandbox.certs import write_webhook_certs
from etcdlock_sandbox.cluster import SandboxThread
from etcdlock_sandbox.etcd import LocalEtcd, free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def api(kubeconfig: Path) -> ApiClient:
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    extensions = kubernetes.client.ApiextensionsV1Api(client)
    for name in ("distributedlock.yaml", "etcdcluster.yaml"):
        crd = yaml.safe_load((ROOT / "crds" / name).read_text())
        with tolerating(409):  # created by an earlier module of the session
            extensions.create_custom_resource_definition(crd)
    return client


@pytest.fixture
def namespace(api: ApiClient) -> Iterator[str]:
    name = f"op-{uuid.uuid4().hex[:8]}"
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


@pytest.fixture
def metrics_url() -> str:
    return f"http://127.0.0.1:{free_port()}/metrics"


@pytest.fixture(scope="session")
def webhook_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_webhook_certs(tmp_path_factory.mktemp("webhook"))


@pytest.fixture
def webhook(api: ApiClient, namespace: str, webhook_certs: Path) -> Iterator[WebhookSettings]:
    """Where the operator serves the webhooks, registered for the test's namespace only."""
    settings = WebhookSettings("127.0.0.1", free_port(), webhook_certs)
    with webhooks_registered(api, settings, namespace):
        yield settings


@pytest.fixture
def operator(
    namespace: str, etcd: LocalEtcd, kubeconfig: Path, metrics_url: str, webhook: WebhookSettings
) -> Iterator[OperatorThread]:
    """The operator in its own thread, watching the test's namespace and serving its webhook."""
    metrics = ("127.0.0.1", int(metrics_url.split(":")[2].split("/")[0]))
    running = OperatorThread(etcd.endpoint_list, namespace, kubeconfig, metrics, webhook).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def operated(
    request: pytest.FixtureRequest,
    k8s_sandbox: SandboxThread,
    api: ApiClient,
    etcd: LocalEtcd,
    kubeconfig: Path,
    webhook_certs: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Operated]:
    """A namespace named after the test module, served by the operator as a process that resolves cluster
    names as a pod does (:func:`operator_in`)."""
    prefix = request.module.__name__.removeprefix("test_").replace("_", "-")[:30]
    namespace = f"{prefix}-{uuid.uuid4().hex[:8]}"
    logs = tmp_path_factory.mktemp(prefix)
    with operator_in(namespace, k8s_sandbox, api, etcd, kubeconfig, webhook_certs, logs) as operator:
        yield Operated(api, namespace, operator, k8s_sandbox.hosts)
