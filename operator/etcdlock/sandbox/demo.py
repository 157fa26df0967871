"""``make run``: the sandbox with the operator, and pods taking one lock in turn with etcdctl and the CLI.

It starts a fresh ``etcdlock sandbox up --operator`` in ``.sandbox/``, applies the DistributedLock of
``examples/distributedlock.yaml``, and lines up five contenders for it, one after another: ``etcdctl
lock`` from outside the cluster, two annotated pods, ``etcdlock lock`` from outside again, and a third
pod. Each holds the lock for a moment (the pods "run" in the sandbox's pretend kubelet), then the next
takes over; the demo prints every hand-off with its fencing token as the operator reports it (pod
annotations, lock status). Then it applies ``examples/etcdcluster.yaml``: an EtcdCluster of three members,
which the sandbox runs as real etcd processes; it prints the cluster's status as the operator brings it up,
and a pod takes ``examples/distributedlock-on-cluster.yaml``, a lock kept in that cluster. The sandbox
keeps running afterwards, to explore with kubectl, unless ``--down`` is given.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from etcdlock.operator.names import (
    CLUSTERS,
    GROUP,
    LOCK_ANNOTATION,
    LOCKS,
    STATE_ANNOTATION,
    TOKEN_ANNOTATION,
    VERSION,
)
from etcdlock.sandbox import daemon
from etcdlock.sandbox.etcd import etcd_binary
from etcdlock.sandbox.kubelet import RUN_SECONDS

ROOT = Path.cwd()
LOCK = "nightly-report"
KEY = f"/etcdlock/locks/default/{LOCK}"
HOLD_SECONDS = 1.5
BOUND = 60.0
CLUSTER = "locks-etcd"
CLUSTER_LOCK = "schema-migration"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


class Demo:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started = time.monotonic()
        self.outside: list[subprocess.Popen[str]] = []
        self.api: kubernetes.client.ApiClient | None = None
        self.env = dict(os.environ)

    def up(self) -> None:
        daemon.down(self.directory)
        kubeconfig = daemon.up(self.directory, 0, ROOT / "crds")
        endpoints = (self.directory / "etcd-endpoints").read_text()
        self.env.update(KUBECONFIG=str(kubeconfig), ETCDLOCK_ENDPOINTS=endpoints, ETCDCTL_API="3")
        self.api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        say(f"sandbox with the etcdlock operator is up (kubeconfig {kubeconfig}, etcd {endpoints})")

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.api)

    def apply_lock(self) -> None:
        lock: Any = yaml.safe_load((ROOT / "examples" / "distributedlock.yaml").read_text())
        objects = kubernetes.client.CustomObjectsApi(self.api)
        objects.create_namespaced_custom_object(GROUP, VERSION, "default", LOCKS, lock)
        say(f"applied examples/distributedlock.yaml: DistributedLock {LOCK} (etcd name {KEY})")

    def status(self) -> dict[str, Any]:
        objects = kubernetes.client.CustomObjectsApi(self.api)
        lock: Any = objects.get_namespaced_custom_object(GROUP, VERSION, "default", LOCKS, LOCK)
        return dict(lock.get("status") or {})

    def queued(self) -> int:
        status = self.status()
        return len(status.get("holders") or []) + int(status.get("waiterCount") or 0)

    def wait_queued(self, count: int, who: str) -> None:
        deadline = time.monotonic() + BOUND
        while self.queued() < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: {who} never showed up in the lock's status")
            time.sleep(0.05)

    def etcdctl(self) -> None:
        command = [etcd_binary("etcdctl"), f"--endpoints={self.env['ETCDLOCK_ENDPOINTS']}", "lock", KEY]
        work = 'echo "  [etcdctl] holds the lock with revision $ETCD_LOCK_REV"; sleep {s}'
        shell = ["--", "sh", "-c", work.format(s=HOLD_SECONDS)]
        self.outside.append(subprocess.Popen([*command, *shell], env=self.env, text=True))

    def cli(self, holder: str) -> None:
        report = f'echo "  [{holder}] holds the lock with fencing token $ETCDLOCK_FENCING_TOKEN"'
        work = f"{report}; sleep {HOLD_SECONDS}"
        command = [sys.executable, "-m", "etcdlock", "lock", KEY, "--holder", holder, "--", "sh", "-c", work]
        self.outside.append(subprocess.Popen(command, env=self.env, text=True))

    def pod(self, name: str) -> None:
        pod: Any = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "annotations": {LOCK_ANNOTATION: LOCK, RUN_SECONDS: str(HOLD_SECONDS)},
            },
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "report", "image": "busybox:1.36", "command": ["sleep", "1"]}],
            },
        }
        self.core.create_namespaced_pod("default", pod)

    def follow(self, pods: list[str]) -> None:
        """Print every change of the pods' lock state until all of them are done."""
        seen: dict[str, tuple[str, str]] = {}
        deadline = time.monotonic() + BOUND
        while True:
            listed = self.core.list_namespaced_pod("default")
            for pod in kubernetes.client.ApiClient().sanitize_for_serialization(listed)["items"]:
                name = pod["metadata"]["name"]
                notes = pod["metadata"].get("annotations") or {}
                now = (notes.get(STATE_ANNOTATION) or "-", pod["status"].get("phase") or "Pending")
                if seen.get(name) != now:
                    seen[name] = now
                    token = notes.get(TOKEN_ANNOTATION)
                    extra = f" with fencing token {token}" if now[0] == "Held" else ""
                    print(f"  [{name}] lock state {now[0]}{extra}, pod {now[1]}", flush=True)
            if all(seen.get(name) in (("Released", "Succeeded"), ("Released", "Failed")) for name in pods):
                break
            if time.monotonic() > deadline:
                raise SystemExit("demo: the pods did not all finish in time")
            time.sleep(0.1)
        for process in self.outside:
            process.wait(BOUND)

    def run(self) -> None:
        self.up()
        self.apply_lock()
        say("five contenders line up: etcdctl, pod report-1, pod report-2, the etcdlock CLI, pod report-3")
        self.etcdctl()
        self.wait_queued(1, "etcdctl")
        pods = ["report-1", "report-2", "report-3"]
        self.pod(pods[0])
        self.wait_queued(2, pods[0])
        self.pod(pods[1])
        self.wait_queued(3, pods[1])
        self.cli("laptop")
        self.wait_queued(4, "the CLI")
        self.pod(pods[2])
        self.wait_queued(5, pods[2])
        holders = [h["holder"] for h in self.status().get("holders") or []]
        waiters = [w["holder"] for w in self.status().get("waiters") or []]
        print(f"  kubectl get dlock {LOCK}: holder {holders}, waiting {waiters}", flush=True)
        say("they take the lock one after another (pods are held back by the scheduling gate until then)")
        self.follow(pods)
        say("all done; the lock is free again")
        self.etcd_cluster()
        self.lock_on_cluster()

    def apply(self, path: str, plural: str) -> None:
        obj: Any = yaml.safe_load((ROOT / path).read_text())
        kubernetes.client.CustomObjectsApi(self.api).create_namespaced_custom_object(
            GROUP, VERSION, "default", plural, obj
        )

    def etcd_cluster(self) -> None:
        self.apply("examples/etcdcluster.yaml", CLUSTERS)
        say(f"applied examples/etcdcluster.yaml: EtcdCluster {CLUSTER}, three members (etcd processes here)")
        objects = kubernetes.client.CustomObjectsApi(self.api)
        seen: tuple[Any, ...] = ()
        deadline = time.monotonic() + BOUND
        while True:
            cluster: Any = objects.get_namespaced_custom_object(GROUP, VERSION, "default", CLUSTERS, CLUSTER)
            status = cluster.get("status") or {}
            now = (status.get("phase"), status.get("ready"), status.get("leader"))
            if now != seen and now[0]:
                seen = now
                print(f"  [{CLUSTER}] phase {now[0]}, ready {now[1]}, leader {now[2] or '-'}", flush=True)
            if status.get("phase") == "Running":
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: EtcdCluster {CLUSTER} did not start in time")
            time.sleep(0.2)
        for member in status.get("members") or []:
            role = "leader" if member["leader"] else "learner" if member["learner"] else "follower"
            print(f"  [{CLUSTER}] member {member['name']} id {member['id']}: {role}, healthy", flush=True)

    def lock_on_cluster(self) -> None:
        self.apply("examples/distributedlock-on-cluster.yaml", LOCKS)
        say(f"applied examples/distributedlock-on-cluster.yaml: lock {CLUSTER_LOCK} kept in {CLUSTER}")
        pod: Any = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "migrate", "annotations": {LOCK_ANNOTATION: CLUSTER_LOCK}},
            "spec": {"containers": [{"name": "migrate", "image": "busybox:1.36"}]},
        }
        self.core.create_namespaced_pod("default", pod)
        deadline = time.monotonic() + BOUND
        while True:
            meta = self.core.read_namespaced_pod("migrate", "default").metadata
            notes = (meta.annotations if meta else None) or {}
            if notes.get(STATE_ANNOTATION) == "Held":
                token = notes.get(TOKEN_ANNOTATION)
                print(f"  [migrate] lock state Held with fencing token {token} (in {CLUSTER})", flush=True)
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: pod migrate never held {CLUSTER_LOCK}")
            time.sleep(0.1)

    def stop_outside(self) -> None:
        for process in self.outside:
            if process.poll() is None:
                process.kill()
                process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dir", default=".sandbox", help="sandbox folder (default .sandbox)")
    parser.add_argument("--down", action="store_true", help="stop the sandbox at the end")
    args = parser.parse_args()
    directory = Path(args.dir).resolve()
    demo = Demo(directory)
    try:
        demo.run()
    except daemon.SandboxError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        demo.stop_outside()
        if args.down:
            daemon.down(directory)
    if not args.down:
        print(
            f"""
The sandbox keeps running. Try:
  export KUBECONFIG={directory / "kubeconfig"} ETCDLOCK_ENDPOINTS={demo.env["ETCDLOCK_ENDPOINTS"]}
  kubectl get dlock,pods
  kubectl apply -f examples/pod.yaml && kubectl get pod nightly-report -o yaml   # annotations etcdlock.io/*
  etcdlock lock {KEY} --holder me          # hold it from outside; the pod waits
  kubectl describe pod nightly-report            # Events: Waiting, Acquired, Released
  kubectl get etcd {CLUSTER} -o wide; kubectl get pods -o wide   # members and their addresses
  kubectl scale etcd {CLUSTER} --replicas=5      # scale out one learner at a time; then back to 3
  kubectl delete pod {CLUSTER}-1                  # a member restarts (pkill -f name={CLUSTER}-1 also)
  kubectl get events --field-selector involvedObject.kind=EtcdCluster
  etcdctl --endpoints http://<pod IP>:2379 member list   # the sandbox's names resolve only inside it
  etcdlock sandbox down --dir {args.dir}          # stop it""",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
