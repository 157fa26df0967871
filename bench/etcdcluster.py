"""EtcdCluster benchmark: how long each lifecycle operation takes until etcd itself reports it done.

The operator (a real ``etcdlock operator`` process with the sandbox's cluster DNS) runs EtcdClusters in
the sandbox, whose members are real etcd processes on loopback. Each row is measured from the user's
action (apply, patch, delete) to the EtcdCluster's status showing every wanted member healthy and voting
(status is read from etcd by the operator every 2 s, so rows include up to one pass of delay); a killed
process is timed until the member's own ``/health`` answers again (the sandbox's kubelet restarts it).
On a 2-core machine, with etcd's default heartbeat (100 ms) and election timeout (1 s). A report, not a
test.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from etcdlock.operator.names import CLUSTERS, GROUP, VERSION
from etcdlock_sandbox.certs import write_webhook_certs
from etcdlock_sandbox.cluster import SandboxThread
from etcdlock_sandbox.etcd import LocalEtcd
from etcdlock_sandbox.replicas import OperatorProcess
from interrupts import stop_on_sigterm

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "default"
BOUND = 120.0


class Clusters:
    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.objects = kubernetes.client.CustomObjectsApi(api)
        self.core = kubernetes.client.CoreV1Api(api)

    def create(self, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EtcdCluster", "metadata": {"name": name}}
        self.objects.create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, CLUSTERS, {**body, "spec": spec}
        )

    def patch(self, name: str, spec: dict[str, Any]) -> None:
        self.objects.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, CLUSTERS, name, {"spec": spec})

    def status(self, name: str) -> dict[str, Any]:
        found: Any = self.objects.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, CLUSTERS, name)
        return dict(found.get("status") or {})

    def settled(
        self, name: str, replicas: int, also: Callable[[dict[str, Any]], bool] = lambda _: True
    ) -> float:
        """Seconds until every wanted member is a healthy voter (and ``also`` holds)."""
        started = time.monotonic()
        while True:
            status = self.status(name)
            members = status.get("members") or []
            if (
                status.get("phase") == "Running"
                and len(members) == replicas
                and all(m["healthy"] and not m["learner"] for m in members)
                and also(status)
            ):
                return time.monotonic() - started
            if time.monotonic() - started > BOUND:
                raise SystemExit(f"bench: {name} did not settle within {BOUND:.0f}s: {status}")
            time.sleep(0.05)

    def pod(self, name: str) -> Any:
        return self.core.read_namespaced_pod(name, NAMESPACE)

    def recovered(self, name: str, replicas: int, changed: Callable[[dict[str, Any]], bool]) -> float:
        """Seconds from now until ``changed`` holds (the disruption is visible) and everything settled."""
        started = time.monotonic()
        self.settled(name, replicas, changed)
        return time.monotonic() - started


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def member_pid(member: str) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"--name={member}".encode() in args and Path(args[0].decode()).name == "etcd":
                return int(entry.name)
    raise SystemExit(f"bench: no etcd process for {member}")


def main() -> int:
    stop_on_sigterm()
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp, LocalEtcd(size=1) as etcd, SandboxThread() as sandbox:
        directory = Path(tmp)
        kubeconfig = sandbox.write_kubeconfig(directory / "kubeconfig")
        api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        extensions = kubernetes.client.ApiextensionsV1Api(api)
        for crd in ("distributedlock.yaml", "etcdcluster.yaml"):
            extensions.create_custom_resource_definition(yaml.safe_load((ROOT / "crds" / crd).read_text()))
        certs = write_webhook_certs(directory / "webhook")
        operator = OperatorProcess(
            etcd.endpoint_list, kubeconfig, certs, directory / "operator.log", cluster_dns=sandbox.hosts
        ).start()
        try:
            operator.wait("ready", 30)
            clusters = Clusters(api)
            clusters.create("bench", {"replicas": 3, "storage": {"size": "1Gi"}})
            rows.append(("create, 3 members (claims)", clusters.settled("bench", 3)))
            clusters.patch("bench", {"replicas": 5})
            rows.append(("scale 3 -> 5 (two learners, one at a time)", clusters.settled("bench", 5)))
            clusters.patch("bench", {"replicas": 3})
            rows.append(("scale 5 -> 3", clusters.settled("bench", 3)))
            health = f"http://{clusters.pod('bench-1').status.pod_ip}:2381/health"
            killed = time.monotonic()
            os.kill(member_pid("bench-1"), signal.SIGKILL)
            while not answers(health):
                if time.monotonic() - killed > BOUND:
                    raise SystemExit("bench: the killed member never answered again")
                time.sleep(0.02)
            rows.append(("member process killed -> its /health answers again", time.monotonic() - killed))
            uid = clusters.pod("bench-2").metadata.uid
            clusters.core.delete_namespaced_pod("bench-2", NAMESPACE)

            def new_pod(status: dict[str, Any]) -> bool:
                member = next(m for m in status["members"] if m["name"] == "bench-2")
                return bool(member.get("podUID") not in (None, uid))

            rows.append(
                ("member pod deleted (claim kept) -> healthy again", clusters.recovered("bench", 3, new_pod))
            )
            clusters.patch("bench", {"version": "3.5.22"})
            rows.append(
                (
                    "upgrade, 3 members one at a time",
                    clusters.settled("bench", 3, lambda s: s.get("version") == "3.5.22"),
                )
            )
            clusters.create("scratch", {"replicas": 3})
            clusters.settled("scratch", 3)
            old = next(m["id"] for m in clusters.status("scratch")["members"] if m["name"] == "scratch-1")
            clusters.core.delete_namespaced_pod("scratch-1", NAMESPACE)

            def replaced(status: dict[str, Any]) -> bool:
                return any(m["name"] == "scratch-1" and m["id"] != old for m in status["members"])

            rows.append(
                ("emptyDir pod deleted -> member replaced", clusters.recovered("scratch", 3, replaced))
            )
        finally:
            operator.stop()
    width = max(len(what) for what, _ in rows)
    print(
        "\nEtcdCluster lifecycle in the sandbox (until etcd reports every wanted member healthy and voting)\n"
    )
    print(f"{'operation'.ljust(width)}  seconds")
    for what, seconds in rows:
        print(f"{what.ljust(width)}  {seconds:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
