"""Operator replicas as real ``etcdlock operator`` processes on loopback, for the sandbox, the tests and
the failover benchmark.

Each replica gets its own ports (metrics and probes, webhook) and log file; all share one election. With
``cluster_dns`` (the sandbox's hosts file) a replica resolves names as a pod in the sandbox does, so it can
reach the EtcdClusters running there. With ``configure_webhook`` each replica registers the webhook for
itself when it starts (the last one started wins): every replica serves it, so this stands in for a
Service that routes to any live replica.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from etcdlock_sandbox.etcd import free_port
from etcdlock_sandbox.network import with_cluster_dns


class OperatorProcess:
    """One replica: ``start()``, then ``ready()`` / ``healthy()`` from its probes, signals, ``stop()``."""

    def __init__(
        self,
        etcd_endpoints: str,
        kubeconfig: Path,
        cert_dir: Path,
        log_path: Path,
        *,
        namespaces: tuple[str, ...] = (),
        election: str | None = None,
        leader_ttl: int | None = None,
        configure_webhook: bool = True,
        webhook_port: int | None = None,
        cluster_dns: Path | None = None,
        pod_sweep_interval: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.webhook_port = webhook_port or free_port()
        self.http_port = free_port()
        self.log_path = log_path
        self.cert_dir = cert_dir
        self.command = [
            sys.executable,
            "-m",
            "etcdlock",
            "operator",
            "--etcd-endpoints",
            etcd_endpoints,
            "--kubeconfig",
            str(kubeconfig),
            "--metrics",
            f"127.0.0.1:{self.http_port}",
            "--webhook",
            f"127.0.0.1:{self.webhook_port}",
            "--webhook-cert-dir",
            str(cert_dir),
        ]
        for namespace in namespaces:
            self.command += ["-n", namespace]
        if election is not None:
            self.command += ["--election", election]
        if leader_ttl is not None:
            self.command += ["--leader-ttl", str(leader_ttl)]
        if configure_webhook:
            self.command.append("--webhook-configure")
        if pod_sweep_interval is not None:
            self.command += ["--pod-sweep-interval", str(pod_sweep_interval)]
        self.command += list(extra_args)
        if cluster_dns is not None:
            self.command = with_cluster_dns(cluster_dns, self.command)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> OperatorProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _answers(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.url + path, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def healthy(self) -> bool:
        return self._answers("/healthz")

    def ready(self) -> bool:
        """This replica leads and runs kopf (its webhook is being served)."""
        return self._answers("/readyz")

    def wait(self, check: str, bound: float) -> None:
        """Wait until ``healthy`` or ``ready`` holds; fails if the process exits or the bound passes."""
        probe = self.healthy if check == "healthy" else self.ready
        deadline = time.monotonic() + bound
        while not probe():
            if not self.running():
                raise RuntimeError(f"the operator exited: see {self.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the operator was not {check} within {bound}s: see {self.log_path}")
            time.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None:
            self.process.send_signal(sig)

    def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM (and SIGCONT, in case it was stopped), then SIGKILL after ``grace``; the exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.send_signal(signal.SIGCONT)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode
