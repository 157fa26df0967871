"""The etcdlock operator installed in the sandbox: its CRDs applied and ``etcdlock operator`` running.

The operator runs as its own process (the real CLI), against the sandbox's API and etcd, serving its
webhook on loopback with certificates made here and registering the webhook itself
(``--webhook-configure``). It is ready once its liveness endpoint answers and the webhook is registered,
so pods created from then on are gated. Its log is ``DIR/operator.log``.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType

import kubernetes
import yaml

from etcdlock.operator.names import WEBHOOK_CONFIGURATION
from etcdlock.sandbox.certs import write_webhook_certs
from etcdlock.sandbox.etcd import free_port

START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


class OperatorError(Exception):
    """The operator could not be installed or started; the message says where to look."""


class InstalledOperator:
    """``async with InstalledOperator(dir, kubeconfig, etcd_endpoints, crds):`` while the sandbox runs."""

    def __init__(self, directory: Path, kubeconfig: Path, etcd_endpoints: str, crds: Path) -> None:
        self._directory = directory
        self._kubeconfig = kubeconfig
        self._etcd = etcd_endpoints
        self._crds = crds
        self._process: subprocess.Popen[bytes] | None = None
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
        webhook_port, metrics_port, liveness_port = free_port(), free_port(), free_port()
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        liveness = f"http://127.0.0.1:{liveness_port}/healthz"
        log_path = self._directory / "operator.log"
        command = [
            sys.executable,
            "-m",
            "etcdlock",
            "operator",
            "--etcd-endpoints",
            self._etcd,
            "--kubeconfig",
            str(self._kubeconfig),
            "--metrics",
            f"127.0.0.1:{metrics_port}",
            "--liveness",
            liveness,
            "--webhook",
            f"127.0.0.1:{webhook_port}",
            "--webhook-cert-dir",
            str(certs),
            "--webhook-configure",
        ]
        with log_path.open("ab") as log:
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        (self._directory / "metrics-url").write_text(self.metrics_url)
        deadline = time.monotonic() + START_TIMEOUT
        while not (_answers(liveness) and _webhook_registered(api, webhook_port)):
            if self._process.poll() is not None:
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
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _webhook_registered(api: kubernetes.client.ApiClient, port: int) -> bool:
    """The operator's MutatingWebhookConfiguration exists and points at this operator's port."""
    registrations = kubernetes.client.AdmissionregistrationV1Api(api)
    try:
        config = registrations.read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION)
    except kubernetes.client.ApiException:
        return False
    urls = [hook.client_config.url or "" for hook in config.webhooks or []]
    return any(f":{port}/" in url for url in urls)
