"""Failover benchmark: how long the pod queue stalls when the operator's leader goes away.

Three ``etcdlock operator`` replicas (real processes, leader TTL ``TTL``) serve one DistributedLock in
the sandbox (a local etcd and the Kubernetes API emulator). In each round one pod holds the lock and the
next waits; the leader gets SIGKILL, SIGTERM or SIGSTOP and, at the same moment, the holding pod
finishes. The time measured is from the signal to the next pod being ungated: everything a user waits
for (noticing the loss, electing, starting kopf, adopting the pods' leases, releasing, ungating). Printed
beside the documented defaults of client-go leader election and kopf peering. A report, not a test.
"""

from __future__ import annotations

import logging
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes
import urllib3
import yaml

from etcdlock.operator.config import WebhookSettings
from etcdlock.operator.names import GROUP, LOCK_ANNOTATION, LOCKS, SCHEDULING_GATE, VERSION
from etcdlock.operator.webhook import configuration
from etcdlock_sandbox.certs import write_webhook_certs
from etcdlock_sandbox.cluster import SandboxThread
from etcdlock_sandbox.replicas import OperatorProcess
from interrupts import stop_on_sigterm

ROOT = Path(__file__).resolve().parents[1]
TTL = 5
ROUNDS = 3
BOUND = 60.0
NAMESPACE = "default"
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP)


class Ungated:
    """Watches pods and notes the moment each loses its scheduling gate."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.at: dict[str, float] = {}
        self._api = api
        self._watch = kubernetes.watch.Watch()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            self._record()
        except urllib3.exceptions.HTTPError:
            pass  # the sandbox stopped at the end of the run

    def _record(self) -> None:
        core = kubernetes.client.CoreV1Api(self._api)
        for event in self._watch.stream(core.list_namespaced_pod, NAMESPACE, timeout_seconds=3600):
            pod = event["object"]
            gates = [g.name for g in pod.spec.scheduling_gates or []]
            if SCHEDULING_GATE not in gates:
                self.at.setdefault(pod.metadata.name, time.monotonic())

    def wait(self, name: str) -> float:
        deadline = time.monotonic() + BOUND
        while name not in self.at:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {name} was never ungated")
            time.sleep(0.01)
        return self.at[name]

    def stop(self) -> None:
        self._watch.stop()


def create_pod(core: kubernetes.client.CoreV1Api, name: str, lock: str = "bench") -> None:
    """A pod that takes ``lock`` (through the annotation; the webhook gates it)."""
    body: Any = {
        "metadata": {"name": name, "annotations": {LOCK_ANNOTATION: lock}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }
    core.create_namespaced_pod(NAMESPACE, body)


def queued(api: kubernetes.client.ApiClient) -> None:
    """Wait until the lock shows one holder and one waiter (the new pod is in the queue)."""
    objects = kubernetes.client.CustomObjectsApi(api)
    deadline = time.monotonic() + BOUND
    while True:
        lock: Any = objects.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, LOCKS, "bench")
        status = lock.get("status") or {}
        if len(status.get("holders") or []) == 1 and status.get("waiterCount") == 1:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: the queue never settled: {status}")
        time.sleep(0.02)


def leader(replicas: list[OperatorProcess]) -> OperatorProcess:
    deadline = time.monotonic() + BOUND
    while True:
        ready = [r for r in replicas if r.running() and r.ready()]
        if len(ready) == 1:
            return ready[0]
        if time.monotonic() > deadline:
            raise SystemExit("bench: no single leader")
        time.sleep(0.05)


def measure(workdir: Path) -> dict[signal.Signals, list[float]]:
    results: dict[signal.Signals, list[float]] = {sig: [] for sig in SIGNALS}
    with SandboxThread() as sandbox:
        kubeconfig = sandbox.write_kubeconfig(workdir / "kubeconfig")
        api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        for name in ("distributedlock.yaml", "etcdcluster.yaml"):
            crd = yaml.safe_load((ROOT / "crds" / name).read_text())
            kubernetes.client.ApiextensionsV1Api(api).create_custom_resource_definition(crd)
        core = kubernetes.client.CoreV1Api(api)
        certs = write_webhook_certs(workdir / "certs")
        endpoints = sandbox.etcd.endpoint_list

        def replica(index: int) -> OperatorProcess:
            log = workdir / f"replica-{index}.log"
            return OperatorProcess(endpoints, kubeconfig, certs, log, leader_ttl=TTL, configure_webhook=False)

        replicas = [replica(i).start() for i in range(3)]
        for started in replicas:
            started.wait("healthy", BOUND)  # each serves the webhook from now on
        spawned = len(replicas)
        watcher = Ungated(api)
        try:
            first = leader(replicas)
            settings = WebhookSettings("127.0.0.1", first.webhook_port, certs)
            kubernetes.client.AdmissionregistrationV1Api(api).create_mutating_webhook_configuration(
                configuration(settings)
            )
            lock: Any = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "DistributedLock",
                "metadata": {"name": "bench"},
            }
            lock["spec"] = {"ttlSeconds": 30}
            kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, LOCKS, lock
            )
            serial = 0
            create_pod(core, f"pod-{serial}")
            watcher.wait(f"pod-{serial}")
            for _ in range(ROUNDS):
                for sig in SIGNALS:
                    old = leader(replicas)
                    gate_keeper = next(r for r in replicas if r is not old)
                    settings = WebhookSettings("127.0.0.1", gate_keeper.webhook_port, certs)
                    kubernetes.client.AdmissionregistrationV1Api(api).patch_mutating_webhook_configuration(
                        "etcdlock.io", configuration(settings), _content_type="application/merge-patch+json"
                    )
                    create_pod(core, f"pod-{serial + 1}")
                    queued(api)
                    started = time.monotonic()
                    old.signal(sig)
                    core.patch_namespaced_pod_status(
                        f"pod-{serial}", NAMESPACE, {"status": {"phase": "Succeeded"}}
                    )
                    serial += 1
                    results[sig].append(watcher.wait(f"pod-{serial}") - started)
                    if sig == signal.SIGSTOP:
                        old.signal(signal.SIGCONT)
                        leader(replicas)
                    else:
                        old.stop()
                        replicas.remove(old)
                        fresh = replica(spawned).start()
                        fresh.wait("healthy", BOUND)  # it serves the webhook from now on
                        replicas.append(fresh)
                        spawned += 1
                    print(f"  {sig.name:8} {results[sig][-1]:6.2f} s", flush=True)
        finally:
            watcher.stop()
            for running in replicas:
                running.stop()
    return results


def main() -> int:
    stop_on_sigterm()
    logging.basicConfig(level=logging.WARNING)
    print(f"Failover: leader signalled while a pod hands the lock over ({ROUNDS} rounds, leader TTL {TTL} s)")
    with tempfile.TemporaryDirectory(prefix="etcdlock-failover-") as workdir:
        results = measure(Path(workdir))
    print()
    print("| leader gets | next pod ungated after (median, max) | client-go leader election | kopf peering |")
    print("|---|---|---|---|")
    # client-go: LeaseDuration 15 s, RenewDeadline 10 s, RetryPeriod 2 s. kopf: peering lifetime 60 s.
    others = {
        signal.SIGKILL: ("15-17 s (lease expiry + retry)", "up to 60 s (peer lifetime)"),
        signal.SIGTERM: ("up to 2 s with ReleaseOnCancel, else 15-17 s", "when the peer record is removed"),
        signal.SIGSTOP: ("15-17 s; the paused leader is not fenced", "up to 60 s; not fenced"),
    }
    for sig, seconds in results.items():
        ours = f"{statistics.median(seconds):.2f} s, {max(seconds):.2f} s"
        client_go, kopf_peering = others[sig]
        print(f"| {sig.name} | {ours} | {client_go} | {kopf_peering} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
