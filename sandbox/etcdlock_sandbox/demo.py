"""``make run``: the sandbox with the operator, and pods taking one lock in turn with etcdctl and the CLI.

It starts a fresh ``etcdlock sandbox up --operator`` in ``.sandbox/``, applies the DistributedLock of
``examples/distributedlock.yaml``, and lines up five contenders for it, one after another: ``etcdctl
lock`` from outside the cluster, two annotated pods, ``etcdlock lock`` from outside again, and a third
pod. Each holds the lock for a moment (the pods "run" in the sandbox's pretend kubelet), then the next
takes over; the demo prints every hand-off with its fencing token, in the order etcd served them, from
each contender's own signs (an outside command's output and exit, a pod's annotations). Then it applies
``examples/etcdcluster.yaml``: an EtcdCluster of three members with TLS (certificates from a CA the
operator creates), which the sandbox runs as real etcd processes; it prints the cluster's status as the
operator brings it up, and a pod takes ``examples/distributedlock-on-cluster.yaml``, a lock kept in that
cluster. Last, that cluster is backed up (``spec.backup`` to a folder, ``file://``: a full snapshot, then
deltas of the writes after it) and a second EtcdCluster with TLS is restored from the backup; the key
counts of both are printed. The demo reaches both clusters as a pod would: etcdctl with the client
certificate of the cluster's Secret ``NAME-client-tls``, through the client Service's name (the sandbox's
cluster DNS). The sandbox keeps
running afterwards, to explore with kubectl, unless ``--down`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import kubernetes
import yaml

from etcdlock.etcd import EtcdClient, EtcdConfig, read_contenders
from etcdlock.operator.definitions import crd_folder
from etcdlock.operator.names import (
    CLUSTERS,
    GROUP,
    HELD,
    LOCK_ANNOTATION,
    LOCKS,
    RELEASED,
    STATE_ANNOTATION,
    TOKEN_ANNOTATION,
    VERSION,
    WAITING,
)
from etcdlock_sandbox import daemon
from etcdlock_sandbox.etcd import etcd_binary
from etcdlock_sandbox.kubelet import RUN_SECONDS
from etcdlock_sandbox.network import with_cluster_dns

ROOT = Path.cwd()
LOCK = "nightly-report"
KEY = f"/etcdlock/locks/default/{LOCK}"
HOLD_SECONDS = 1.5
BOUND = 60.0
POLL = 0.1
CLUSTER = "locks-etcd"
CLUSTER_LOCK = "schema-migration"
VALUE = "x" * 100

T = TypeVar("T")


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def wait_for(failure: str, check: Callable[[], T | None]) -> T:
    """Poll ``check`` until it returns something, for at most BOUND seconds; else stop with ``failure``."""
    deadline = time.monotonic() + BOUND
    while (found := check()) is None:
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: {failure} within {BOUND:.0f}s")
        time.sleep(POLL)
    return found


class Contender(Protocol):
    """One contender for the lock, followed through its own observable state.

    Each check returns the line to print once the event happened, or None while it has not. The demo
    never reads how many contenders the lock's status counts: a contender that holds only a moment can
    come and go between two reads of a count.
    """

    name: str

    def joined(self) -> str | None: ...

    def held(self) -> str | None: ...

    def released(self) -> str | None: ...


class Outside:
    """``etcdctl lock`` or ``etcdlock lock`` from outside the cluster, with a command run under the lock.

    Both run the command only while holding and release before they exit, so the command's own output
    line says "holds" and the process's exit says "released". While it waits in line it prints nothing:
    its key in etcd (its holder name in the value) says it joined.
    """

    def __init__(self, name: str, program: str, command: list[str], env: dict[str, str]) -> None:
        self.name = name
        self._program = program
        self._endpoints = env["ETCDLOCK_ENDPOINTS"]
        self._process = subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._holds: str | None = None
        threading.Thread(target=self._read, name=f"output-{name}", daemon=True).start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def joined(self) -> str | None:
        if self.held() is not None or self.name in asyncio.run(_holders(self._endpoints)):
            return f"  [{self.name}] joined the queue"
        return None

    def held(self) -> str | None:
        while self._holds is None:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return None
            if line is None:
                code = self._process.wait()
                raise SystemExit(f"demo: {self._program} for {self.name} exited ({code}) without holding")
            if "holds the lock" in line:
                self._holds = line
        return self._holds

    def released(self) -> str | None:
        code = self._process.poll()
        return None if code is None else f"  [{self.name}] released the lock ({self._program} exited {code})"

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()


async def _holders(endpoints: str) -> list[str | None]:
    """The holder names written in the lock's keys, in queue order (None for etcdctl's empty values)."""
    async with EtcdClient(EtcdConfig.parse(endpoints)) as client:
        _, contenders = await read_contenders(client, KEY)
    return [contender.info.holder for contender in contenders]


class AnnotatedPod:
    """A pod annotated with the lock, followed through the annotations the operator writes on it.

    ``etcdlock.io/state`` is Waiting once the pod's key is in the queue, Held once it holds (with its
    fencing token, which stays after the release), Released once the pod finished and its lease is gone.
    """

    def __init__(self, core: kubernetes.client.CoreV1Api, name: str) -> None:
        self.name = name
        self._core = core
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
        core.create_namespaced_pod("default", pod)

    def _read(self) -> tuple[dict[str, str], str]:
        pod = self._core.read_namespaced_pod(self.name, "default")
        notes = (pod.metadata.annotations if pod.metadata else None) or {}
        return notes, (pod.status.phase if pod.status else None) or "Pending"

    def joined(self) -> str | None:
        state = self._read()[0].get(STATE_ANNOTATION)
        gated = " (held back by the scheduling gate)" if state == WAITING else ""
        return f"  [{self.name}] joined the queue{gated}" if state in (WAITING, HELD, RELEASED) else None

    def held(self) -> str | None:
        notes, _ = self._read()
        token = notes.get(TOKEN_ANNOTATION)
        if notes.get(STATE_ANNOTATION) not in (HELD, RELEASED):
            return None
        if token is None:
            raise SystemExit(f"demo: pod {self.name} left the queue without holding the lock")
        return f"  [{self.name}] lock state Held with fencing token {token}: the pod runs"

    def released(self) -> str | None:
        notes, phase = self._read()
        if notes.get(STATE_ANNOTATION) == RELEASED and phase in ("Succeeded", "Failed"):
            return f"  [{self.name}] lock state Released, pod {phase}"
        return None


class Demo:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.outside: list[Outside] = []
        self.api: kubernetes.client.ApiClient | None = None
        self.env = dict(os.environ)

    def up(self) -> None:
        daemon.down(self.directory)
        kubeconfig = daemon.up(self.directory, 0, Path(str(crd_folder())))
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

    def etcdctl(self) -> Outside:
        command = [etcd_binary("etcdctl"), f"--endpoints={self.env['ETCDLOCK_ENDPOINTS']}", "lock", KEY]
        work = 'echo "  [etcdctl] holds the lock with revision $ETCD_LOCK_REV"; sleep {s}'
        shell = ["--", "sh", "-c", work.format(s=HOLD_SECONDS)]
        self.outside.append(Outside("etcdctl", "etcdctl lock", [*command, *shell], self.env))
        return self.outside[-1]

    def cli(self, holder: str) -> Outside:
        report = f'echo "  [{holder}] holds the lock with fencing token $ETCDLOCK_FENCING_TOKEN"'
        work = f"{report}; sleep {HOLD_SECONDS}"
        command = [sys.executable, "-m", "etcdlock", "lock", KEY, "--holder", holder, "--", "sh", "-c", work]
        self.outside.append(Outside(holder, "etcdlock lock", command, self.env))
        return self.outside[-1]

    def line_up(self) -> list[Contender]:
        """Start the contenders one at a time, each once the one before it is in the queue."""
        starts: list[Callable[[], Contender]] = [
            self.etcdctl,
            lambda: AnnotatedPod(self.core, "report-1"),
            lambda: AnnotatedPod(self.core, "report-2"),
            lambda: self.cli("laptop"),
            lambda: AnnotatedPod(self.core, "report-3"),
        ]
        contenders = []
        for start in starts:
            contender = start()
            print(wait_for(f"{contender.name} did not join the queue", contender.joined), flush=True)
            contenders.append(contender)
        return contenders

    @staticmethod
    def hand_offs(contenders: list[Contender]) -> None:
        """Print each holder's turn in queue order, the release of one before the next one holds.

        That is the order etcd serves them in; a later contender's news (an outside command's line comes
        at once, a pod's annotations a moment after) waits here until the one before it is released.
        """
        for contender in contenders:
            print(wait_for(f"{contender.name} did not hold the lock", contender.held), flush=True)
            print(wait_for(f"{contender.name} did not release the lock", contender.released), flush=True)

    def run(self) -> None:
        self.up()
        self.apply_lock()
        say("five contenders line up: etcdctl, pod report-1, pod report-2, the etcdlock CLI, pod report-3")
        contenders = self.line_up()
        status = self.status()
        holders = [h["holder"] for h in status.get("holders") or []]
        waiters = [w["holder"] for w in status.get("waiters") or []]
        print(f"  kubectl get dlock {LOCK} now: holder {holders}, waiting {waiters}", flush=True)
        say("they take the lock one after another (pods are held back by the scheduling gate until then)")
        self.hand_offs(contenders)
        say("all done; the lock is free again")
        self.etcd_cluster()
        self.lock_on_cluster()
        self.backup_and_restore()

    def apply(self, path: str, plural: str) -> None:
        obj: Any = yaml.safe_load((ROOT / path).read_text())
        kubernetes.client.CustomObjectsApi(self.api).create_namespaced_custom_object(
            GROUP, VERSION, "default", plural, obj
        )

    def etcd_cluster(self) -> None:
        self.apply("examples/etcdcluster.yaml", CLUSTERS)
        say(f"applied examples/etcdcluster.yaml: EtcdCluster {CLUSTER}, three members (etcd processes here)")
        objects = kubernetes.client.CustomObjectsApi(self.api)
        seen: list[tuple[Any, ...]] = [()]

        def running() -> dict[str, Any] | None:
            cluster: Any = objects.get_namespaced_custom_object(GROUP, VERSION, "default", CLUSTERS, CLUSTER)
            status: dict[str, Any] = cluster.get("status") or {}
            now = (status.get("phase"), status.get("ready"), status.get("leader"))
            if now != seen[-1] and now[0]:
                seen.append(now)
                print(f"  [{CLUSTER}] phase {now[0]}, ready {now[1]}, leader {now[2] or '-'}", flush=True)
            return status if now[0] == "Running" else None

        status = wait_for(f"EtcdCluster {CLUSTER} did not start", running)
        for member in status.get("members") or []:
            role = "leader" if member["leader"] else "learner" if member["learner"] else "follower"
            health = "healthy" if member["healthy"] else "not answering"
            print(f"  [{CLUSTER}] member {member['name']} id {member['id']}: {role}, {health}", flush=True)

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

        def held() -> str | None:
            meta = self.core.read_namespaced_pod("migrate", "default").metadata
            notes = (meta.annotations if meta else None) or {}
            return notes.get(TOKEN_ANNOTATION) if notes.get(STATE_ANNOTATION) == HELD else None

        token = wait_for(f"pod migrate did not hold {CLUSTER_LOCK}", held)
        print(f"  [migrate] lock state Held with fencing token {token} (in {CLUSTER})", flush=True)

    def cluster_status(self, name: str) -> dict[str, Any]:
        objects = kubernetes.client.CustomObjectsApi(self.api)
        cluster: Any = objects.get_namespaced_custom_object(GROUP, VERSION, "default", CLUSTERS, name)
        return dict(cluster.get("status") or {})

    def client_files(self, name: str) -> list[str]:
        """etcdctl's TLS flags for the cluster: its client Secret written to ``DIR/clients/NAME``, as a pod
        mounts it."""
        secret = self.core.read_namespaced_secret(f"{name}-client-tls", "default")
        folder = self.directory / "clients" / name
        folder.mkdir(parents=True, exist_ok=True)
        for key, value in (secret.data or {}).items():
            (folder / key).write_bytes(base64.b64decode(value))
        return [
            f"--cacert={folder / 'ca.crt'}",
            f"--cert={folder / 'tls.crt'}",
            f"--key={folder / 'tls.key'}",
        ]

    def etcdctl_in(self, name: str, script: str) -> str:
        """``script`` (sh, ``$ETCDCTL`` being etcdctl for the cluster's client Service) run as in a pod:
        with the sandbox's cluster DNS, where the Service's name resolves and the certificate names it.
        Run again until it succeeds (within :data:`BOUND`): the Service's name resolves once a member's
        pod is ready, a moment after the cluster says it runs (the scripts write the same keys again)."""
        hosts = Path((self.directory / "cluster-dns").read_text())
        etcdctl = shlex.join(
            [
                etcd_binary("etcdctl"),
                f"--endpoints={self.cluster_status(name)['clientURL']}",
                *self.client_files(name),
            ]
        )
        deadline = time.monotonic() + BOUND
        while True:
            done = subprocess.run(
                with_cluster_dns(hosts, ["sh", "-c", script]),
                env={**self.env, "ETCDCTL": etcdctl},
                capture_output=True,
                text=True,
                timeout=BOUND,
                check=False,
            )
            if done.returncode == 0:
                return done.stdout
            if time.monotonic() > deadline:
                raise daemon.SandboxError(f"etcdctl on {name} failed: {done.stderr.strip()}")
            time.sleep(0.5)

    def write(self, name: str, label: str, count: int) -> int:
        """Write ``count`` keys into the cluster; the revision of the last."""
        last = count - 1
        script = (
            f"for i in $(seq 0 {last - 1}); do $ETCDCTL put /demo/{label}/$i {VALUE} >/dev/null || exit 1; "
            f"done; $ETCDCTL put -w json /demo/{label}/{last} {VALUE}"
        )
        return int(json.loads(self.etcdctl_in(name, script))["header"]["revision"])

    def count(self, name: str) -> int:
        """The number of keys in the cluster."""
        shown = self.etcdctl_in(name, '$ETCDCTL get "" --from-key --count-only -w fields')
        found = re.search(r'^"Count" : (\d+)$', shown, re.MULTILINE)
        if found is None:
            raise daemon.SandboxError(f"etcdctl did not count the keys of {name}: {shown.strip()}")
        return int(found.group(1))

    def backup_and_restore(self) -> None:
        store = f"file://{self.directory / 'backups' / CLUSTER}"
        objects = kubernetes.client.CustomObjectsApi(self.api)
        backup = {"backup": {"store": {"url": store}, "deltaInterval": "2s"}}
        objects.patch_namespaced_custom_object(GROUP, VERSION, "default", CLUSTERS, CLUSTER, {"spec": backup})
        say(f"{CLUSTER} backed up to {store}: a full snapshot, then every change in a delta every 2 s")
        self.write(CLUSTER, "before", 100)

        def full() -> dict[str, Any] | None:
            shown = self.cluster_status(CLUSTER).get("backup") or {}
            return shown.get("lastFull") if int((shown.get("lastFull") or {}).get("revision") or 0) else None

        taken = wait_for(f"{CLUSTER} was not backed up", full)
        print(
            f"  [{CLUSTER}] full snapshot at revision {taken['revision']}: {taken['size']} bytes", flush=True
        )
        last = self.write(CLUSTER, "after", 20)

        def delta() -> dict[str, Any] | None:
            shown = (self.cluster_status(CLUSTER).get("backup") or {}).get("lastDelta") or {}
            return shown if int(shown.get("revision") or 0) >= last else None

        flushed = wait_for(f"{CLUSTER}'s writes were not backed up", delta)
        print(f"  [{CLUSTER}] 20 more writes, in a delta up to revision {flushed['revision']}", flush=True)
        copy = f"{CLUSTER}-restored"
        restored: Any = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "EtcdCluster",
            "metadata": {"name": copy},
            "spec": {"replicas": 3, "tls": {}, "restore": {"store": {"url": store}}},
        }
        objects.create_namespaced_custom_object(GROUP, VERSION, "default", CLUSTERS, restored)
        say(
            f"EtcdCluster {copy} restored from that backup: each member restores the snapshot, then the delta"
        )

        def done() -> dict[str, Any] | None:
            status = self.cluster_status(copy)
            finished = (status.get("restore") or {}).get("phase") == "Restored"
            return status if finished and status.get("phase") == "Running" else None

        status = wait_for(f"{copy} was not restored", done)
        record = status["restore"]
        print(
            f"  [{copy}] restored {record['snapshot']} and {record['events']} events after it, up to "
            f"revision {record['revision']}",
            flush=True,
        )
        for name in (CLUSTER, copy):
            print(f"  [{name}] {self.count(name)} keys", flush=True)

    def stop_outside(self) -> None:
        for contender in self.outside:
            contender.stop()


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
        clients = directory / "clients" / CLUSTER
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
  kubectl get secret {CLUSTER}-client-tls        # its client certificate: ca.crt, tls.crt, tls.key
  etcdlock --endpoints https://<pod IP>:2379 --cacert {clients}/ca.crt --cert {clients}/tls.crt \\
      --key {clients}/tls.key --tls-server-name {CLUSTER}-client.default.svc lock my-job -- date
      # a pod's address with a name its certificate carries: the sandbox's names resolve only inside it
  etcdlock sandbox down --dir {args.dir}          # stop it""",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
