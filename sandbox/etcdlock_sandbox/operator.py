"""The etcdlock operator installed in the sandbox: its CRDs applied and ``etcdlock operator`` running.

The operator runs as its own process (the real CLI) with the sandbox's cluster DNS, as a pod there would,
against the sandbox's API and etcd, serving its webhook on loopback with certificates made here and
registering the webhook itself (``--webhook-configure``). It is ready once it leads (``/readyz``) and
the webhook is registered, so pods created from then on are gated. Its log is ``DIR/operator.log``, new
at each start; its pid is in ``DIR/operator.pid`` while it runs (``etcdlock sandbox up`` reads it). Its
webhook certificates are in ``DIR/webhook``, its metrics URL in ``DIR/metrics-url``: all of them stay until
``etcdlock sandbox down`` removes them (the log is there to read after a failed start).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import TracebackType

import kubernetes
import yaml
from kubernetes.client.exceptions import ApiException

from etcdlock.operator.names import WEBHOOK_CONFIGURATION
from etcdlock_sandbox.certs import write_webhook_certs
from etcdlock_sandbox.replicas import OperatorProcess

START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


class OperatorError(Exception):
    """The operator could not be installed or started; the message says where to look."""


class InstalledOperator:
    """``async with InstalledOperator(dir, kubeconfig, etcd_endpoints, crds):`` while the sandbox runs."""

    def __init__(
        self,
        directory: Path,
        kubeconfig: Path,
        etcd_endpoints: str,
        crds: Path,
        cluster_dns: Path | None = None,
    ) -> None:
        self._directory = directory
        self._cluster_dns = cluster_dns
        self._kubeconfig = kubeconfig
        self._etcd = etcd_endpoints
        self._crds = crds
        self._replica: OperatorProcess | None = None
        self.metrics_url = ""

    async def __aenter__(self) -> InstalledOperator:
        await asyncio.to_thread(self._start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self._stop)

    def _start(self) -> None:
        api = kubernetes.config.new_client_from_config(config_file=str(self._kubeconfig))
        self._install_crds(api)
        certs = write_webhook_certs(self._directory / "webhook")
        log_path = self._directory / "operator.log"
        log_path.unlink(missing_ok=True)  # the replica appends to its log: this run's log starts empty
        self._replica = OperatorProcess(
            self._etcd, self._kubeconfig, certs, log_path, cluster_dns=self._cluster_dns
        ).start()
        self.metrics_url = f"{self._replica.url}/metrics"
        (self._directory / "metrics-url").write_text(self.metrics_url)
        assert self._replica.process is not None
        (self._directory / "operator.pid").write_text(str(self._replica.process.pid))
        deadline = time.monotonic() + START_TIMEOUT
        registered = f":{self._replica.webhook_port}/"
        while not (self._replica.ready() and any(registered in url for url in registered_urls(api))):
            if not self._replica.running():
                raise OperatorError(f"the operator exited during start-up: see {log_path}")
            if time.monotonic() > deadline:
                self._stop()
                raise OperatorError(f"the operator did not start within {START_TIMEOUT:.0f}s: see {log_path}")
            time.sleep(0.1)

    def _install_crds(self, api: kubernetes.client.ApiClient) -> None:
        extensions = kubernetes.client.ApiextensionsV1Api(api)
        for path in sorted(self._crds.glob("*.yaml")):
            for document in yaml.safe_load_all(path.read_text()):
                if document:
                    extensions.create_custom_resource_definition(document)

    def _stop(self) -> None:
        (self._directory / "operator.pid").unlink(missing_ok=True)
        if self._replica is not None:
            self._replica.stop(STOP_TIMEOUT)


def registered_urls(api: kubernetes.client.ApiClient) -> list[str]:
    """Where the MutatingWebhookConfiguration ``etcdlock.io`` sends pods now (none if it does not exist)."""
    registrations = kubernetes.client.AdmissionregistrationV1Api(api)
    try:
        config = registrations.read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION)
    except ApiException as exc:
        if exc.status == 404:
            return []
        raise
    return [hook.client_config.url or "" for hook in config.webhooks or []]
