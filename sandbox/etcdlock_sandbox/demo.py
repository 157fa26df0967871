"""``make run``: the sandbox with the operator, and pods taking one lock in turn with etcdctl and the CLI.

It starts a fresh ``etcdlock sandbox up --operator`` in ``.sandbox/``, applies the DistributedLock of
``examples/distributedlock.yaml``, and lines up five contenders for it, one after another: ``etcdctl
lock`` from outside the cluster, two annotated pods, ``etcdlock lock`` from outside again, and a third
pod. etcdctl holds the lock until all five are in line (so each pod is seen gated); then each holds it
for a moment (the pods "run" in the sandbox's pretend kubelet) and the next takes over. Every step is
printed from one etcd watch on the lock's keys (:mod:`etcdlock_sandbox.handoffs`), in revision order:
each release before the next holder, fencing tokens rising; the pods' annotations are checked against it
afterwards. Then it applies ``examples/etcdcluster.yaml``: an EtcdCluster of three members with TLS
(certificates from a CA the operator creates), which the sandbox runs as real etcd processes; it prints
the cluster's status as the operator brings it up, and a pod takes
``examples/distributedlock-on-cluster.yaml``, a lock kept in that cluster. Last, that cluster is backed
up (``spec.backup`` to a folder, ``file://``: a full snapshot, then deltas of the writes after it) and a
second EtcdCluster with TLS is restored from the backup; the key counts of both are printed. The demo
reaches both clusters as a pod would: etcdctl with the client certificate of the cluster's Secret
``NAME-client-tls``, through the client Service's name (the sandbox's cluster DNS). Its own files live in
the sandbox's ``work`` folder, which ``etcdlock sandbox down`` removes. The sandbox keeps running
afterwards, to explore with the printed commands (:func:`hints`), unless ``--down`` is given.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import yaml

from etcdlock.etcd import EtcdLockError
from etcdlock.operator.definitions import crd_folder
from etcdlock.operator.names import (
    CLUSTERS,
    GROUP,
    HELD,
    LOCK_ANNOTATION,
    LOCKS,
    SCHEDULING_GATE,
    STATE_ANNOTATION,
    TOKEN_ANNOTATION,
    VERSION,
    WAITING,
)
from etcdlock.operator.names import RELEASED as RELEASED_STATE
from etcdlock_sandbox import daemon
from etcdlock_sandbox.cli import exports
from etcdlock_sandbox.etcd import etcd_binary
from etcdlock_sandbox.handoffs import HOLDS, JOINED, LEFT, RELEASED, LockWatch, Turn
from etcdlock_sandbox.kubelet import RUN_SECONDS
from etcdlock_sandbox.network import with_cluster_dns

ROOT = Path.cwd()
LOCK = "nightly-report"
KEY = f"/etcdlock/locks/default/{LOCK}"
STATE = STATE_ANNOTATION.replace(".", "\\.")
"""The state annotation's name in a kubectl JSONPath, where a dot in a name is escaped."""
ORDER = ["etcdctl", "report-1", "report-2", "laptop", "report-3"]
"""The contenders in the order they line up: etcdctl and laptop (``etcdlock lock``) outside, pods inside."""
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


class Outside:
    """``etcdctl lock`` or ``etcdlock lock`` from outside the cluster, running a command under the lock.

    Its turns come from the lock's watch, like every contender's; what is its own is the exit status,
    checked once it released.
    """

    def __init__(self, name: str, program: str, command: list[str], env: dict[str, str]) -> None:
        self.name = name
        self._program = program
        self._process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._tell, name=f"{name}-stderr", daemon=True).start()

    def _tell(self) -> None:
        """Print what the client says on stderr (``etcdlock lock``: whom it waits behind), as its own."""
        assert self._process.stderr is not None
        for line in self._process.stderr:
            print(f"  [{self.name}] {self._program} says: {line.rstrip()}", flush=True)

    def exited(self) -> str:
        """The line saying it exited with 0, once it did (within BOUND); else the demo stops."""
        try:
            code = self._process.wait(BOUND)
        except subprocess.TimeoutExpired:
            raise SystemExit(
                f"demo: {self._program} for {self.name} did not exit within {BOUND:.0f}s"
            ) from None
        if code != 0:
            raise SystemExit(f"demo: {self._program} for {self.name} exited {code}")
        return f"  [{self.name}] {self._program} exited 0"

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()


class TakingTurns:
    """Five contenders take the lock in turn; every step is printed from one etcd watch on the lock's keys.

    etcdctl takes the lock first and holds it until the other four are in line (its command waits for a
    file the demo writes: etcdctl gives its command no stdin), so each pod is seen held back by its
    scheduling gate and the lock's status shows the whole line. Then they are served in arrival order.
    """

    def __init__(self, api: kubernetes.client.ApiClient | None, env: dict[str, str], work: Path) -> None:
        self.api = api
        self.env = env
        self.release = work / "release-etcdctl"
        self.release.unlink(missing_ok=True)
        self.outside: list[Outside] = []
        self.pods: list[str] = []
        self.tokens: dict[str, int] = {}
        self.watch = LockWatch(env["ETCDLOCK_ENDPOINTS"], KEY)

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.api)

    def run(self) -> None:
        self.watch.start(BOUND)
        try:
            say(
                "five contenders line up: etcdctl, pod report-1, pod report-2, the etcdlock CLI, pod report-3"
            )
            print(
                "  (each step as etcd's watch on the lock's keys reports it, in revision order)", flush=True
            )
            self.line_up()
            self.show_status()
            say("etcdctl finishes; each release comes before the next holder, fencing tokens increase")
            self.release.touch()
            for name in ORDER:
                self.follow(name, RELEASED)
            say("what each contender saw: the pods' annotations (the operator's), the commands' exit")
            self.records()
            say("all done; the lock is free again")
        finally:
            self.watch.stop()
            for outside in self.outside:
                outside.stop()

    def line_up(self) -> None:
        """Start the contenders one at a time, each once the one before it is in line."""
        for name in ORDER:
            if name == "etcdctl":
                self.etcdctl()
            elif name.startswith("report-"):
                self.pod(name)
            else:
                self.cli(name)
            self.follow(name, JOINED)

    def follow(self, name: str, step: str) -> None:
        """Print every turn, in revision order, up to ``name`` taking ``step``."""
        while True:
            try:
                turn = self.watch.next(BOUND)
            except (OSError, EtcdLockError) as exc:  # a timeout, or what ended the watch
                raise SystemExit(f"demo: waiting for {name} to have {step}: {exc}") from None
            print(self.describe(turn), flush=True)
            if turn.step == LEFT:
                raise SystemExit(f"demo: {turn.name} left the line without holding the lock")
            if turn.step == HOLDS:
                self.tokens[turn.name] = turn.token
            if (turn.name, turn.step) == (name, step):
                return

    def describe(self, turn: Turn) -> str:
        if turn.step == JOINED:
            return f"  [{turn.name}] joined the line at revision {turn.revision}{self.gated(turn.name)}"
        if turn.step == HOLDS:
            return (
                f"  [{turn.name}] holds the lock with fencing token {turn.token} (revision {turn.revision})"
            )
        if turn.step == RELEASED:
            return f"  [{turn.name}] released the lock (revision {turn.revision})"
        return f"  [{turn.name}] left the line without holding (revision {turn.revision})"

    def gated(self, name: str) -> str:
        """For a pod: whether it carries the scheduling gate now (read as it joins)."""
        if name not in self.pods:
            return ""
        spec = self.core.read_namespaced_pod(name, "default").spec
        gates = [gate.name for gate in (spec.scheduling_gates if spec else None) or []]
        return f", pod SchedulingGated ({SCHEDULING_GATE})" if SCHEDULING_GATE in gates else ", pod not gated"

    def show_status(self) -> None:
        """The lock's status once the operator shows the whole line: one holder, four waiting."""
        objects = kubernetes.client.CustomObjectsApi(self.api)

        def whole_line() -> dict[str, Any] | None:
            lock: Any = objects.get_namespaced_custom_object(GROUP, VERSION, "default", LOCKS, LOCK)
            status: dict[str, Any] = lock.get("status") or {}
            counts = (len(status.get("holders") or []), len(status.get("waiters") or []))
            return status if counts == (1, len(ORDER) - 1) else None

        status = wait_for(f"DistributedLock {LOCK} did not show the line", whole_line)
        holders = [h.get("holder") or h.get("key") for h in status["holders"]]
        waiters = [w.get("holder") or w.get("key") for w in status["waiters"]]
        shown = f"phase {status.get('phase')}, holder {holders}, waiting {waiters}"
        print(f"  kubectl get dlock {LOCK}: {shown}", flush=True)

    def records(self) -> None:
        """Each pod's own record, which must agree with etcd's; each outside command exited 0."""
        for name in self.pods:
            notes, phase = wait_for(f"pod {name} did not finish", functools.partial(self.finished, name))
            token = notes.get(TOKEN_ANNOTATION)
            if token != str(self.tokens[name]):
                raise SystemExit(f"demo: pod {name}'s fencing token is {token}, etcd's {self.tokens[name]}")
            state = notes[STATE_ANNOTATION]
            print(
                f"  [{name}] pod {phase}, {STATE_ANNOTATION}={state}, {TOKEN_ANNOTATION}={token}", flush=True
            )
        for outside in self.outside:
            print(outside.exited(), flush=True)

    def finished(self, name: str) -> tuple[dict[str, str], str] | None:
        pod = self.core.read_namespaced_pod(name, "default")
        notes = (pod.metadata.annotations if pod.metadata else None) or {}
        phase = (pod.status.phase if pod.status else None) or "Pending"
        done = notes.get(STATE_ANNOTATION) == RELEASED_STATE and phase in ("Succeeded", "Failed")
        return (notes, phase) if done else None

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
        self.pods.append(name)

    def etcdctl(self) -> None:
        command = [etcd_binary("etcdctl"), f"--endpoints={self.env['ETCDLOCK_ENDPOINTS']}", "lock", KEY]
        wait = ["--", "sh", "-c", 'until [ -e "$1" ]; do sleep 0.1; done', "sh", str(self.release)]
        self.outside.append(Outside("etcdctl", "etcdctl lock", [*command, *wait], self.env))

    def cli(self, holder: str) -> None:
        command = [sys.executable, "-m", "etcdlock", "lock", KEY, "--holder", holder]
        work = ["--", "sleep", str(HOLD_SECONDS)]
        self.outside.append(Outside(holder, "etcdlock lock", [*command, *work], self.env))


class Demo:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
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

    def run(self) -> None:
        self.up()
        self.apply_lock()
        TakingTurns(self.api, self.env, daemon.work_folder(self.directory)).run()
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
        """etcdctl's TLS flags for the cluster: its client Secret written to ``DIR/work/clients/NAME``, as a
        pod mounts it."""
        secret = self.core.read_namespaced_secret(f"{name}-client-tls", "default")
        folder = daemon.work_folder(self.directory) / "clients" / name
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
        store = f"file://{daemon.work_folder(self.directory) / 'backups' / CLUSTER}"
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


def hints(directory: Path, endpoints: str) -> str:
    """What to try next, each command as it works when pasted into a new shell from the repository root
    (after the one ``export`` line first). The first steps show a pod held back by its gate: the lock is
    taken from outside first, and each ``kubectl wait`` returns once the state it names was reached."""
    clients = daemon.work_folder(directory) / "clients" / CLUSTER
    member = f"$(kubectl get pod {CLUSTER}-0 -o jsonpath='{{.status.podIP}}')"
    steps = [
        ("kubectl get dlock,pods", "the lock, free again, and the demo's pods"),
        (f"etcdlock lock {KEY} --holder me &", "hold the lock in the background (prints key and token)"),
        (f"kubectl wait dlock/{LOCK} --for=jsonpath='{{.status.phase}}'=Held", "until its status shows it"),
        ("kubectl apply -f examples/pod.yaml", "a pod annotated for the lock: the webhook gates it"),
        (f"kubectl wait pod/nightly-report --for=jsonpath='{{.metadata.annotations.{STATE}}}'={WAITING}", ""),
        ("kubectl get pod nightly-report", "STATUS SchedulingGated: it waits for the lock"),
        (f"kubectl get pods -L {STATE_ANNOTATION}", "the state as a column (Waiting, Held...)"),
        (f"kubectl etcdlock queue {LOCK}", "the kubectl plugin: who holds, who waits (locks -A: all)"),
        ("kill %1", "release the lock: the pod takes it, runs 5 s, releases it"),
        ("kubectl wait pod/nightly-report --for=jsonpath='{.status.phase}'=Succeeded --timeout=60s", ""),
        ("kubectl describe pod nightly-report", "Events: Waiting, Acquired, Released"),
        (f"etcdctl lock {KEY} -- echo etcdctl holds it too", "the same lock, from etcdctl"),
        (f"kubectl get etcd {CLUSTER} -o wide; kubectl get pods -o wide", "members and their addresses"),
        (f"kubectl logs {CLUSTER}-0 --tail 3", "a member's etcd log"),
        ("kubectl explain dlock.spec", "every field, from the CRD's schema"),
        (f"kubectl scale etcd {CLUSTER} --replicas=5", "scale out one learner at a time; then back to 3"),
        (f"kubectl delete pod {CLUSTER}-1", "kill a member: its StatefulSet starts it again"),
        ("kubectl get events --field-selector involvedObject.kind=EtcdCluster", ""),
        (f"kubectl get secret {CLUSTER}-client-tls", "its client certificate: ca.crt, tls.crt, tls.key"),
        (
            f"etcdlock --endpoints https://{member}:2379 \\\n"
            f"      --cacert {clients}/ca.crt --cert {clients}/tls.crt --key {clients}/tls.key \\\n"
            f"      --tls-server-name {CLUSTER}-client.default.svc lock my-job -- date",
            "a member's address, and a name its certificate carries",
        ),
        (f"etcdlock sandbox down --dir {directory}", "stop it: its processes and its files go"),
    ]
    lines = [f"  {command:<64}  # {comment}" if comment else f"  {command}" for command, comment in steps]
    return "\n".join(
        [
            f"The sandbox keeps running. In a new shell, from {ROOT}, first run:",
            f"  {exports(directory / 'kubeconfig', endpoints)}",
            "then, in this order:",
            *lines,
        ]
    )


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
        if args.down:
            daemon.down(directory)
    if not args.down:
        print("\n" + hints(directory, demo.env["ETCDLOCK_ENDPOINTS"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
