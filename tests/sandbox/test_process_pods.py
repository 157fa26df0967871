"""The process kubelet with init containers: real etcd tools and the real ``etcdlock`` run as a pod's init
containers, in order and to completion, before its etcd; Secrets reach them as environment variables.

Every effect is observed from outside, as a user would: the pod's status, keys in the run's etcd (which
the init containers reach through a Secret), what the pod's own etcd serves, and the processes on this
machine. The init containers of the first test take a snapshot of the run's etcd and restore it into the
pod's volume, as a restored EtcdCluster member's do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from etcdlock_sandbox.etcd import LocalEtcd, etcd_binary

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
BOUND = 60.0  # a pod's start: Python's and etcd's, each init container's, on a loaded machine
ETCD_IMAGE = "registry.k8s.io/etcd:3.5.21-0"
PROJECT_IMAGE = "ghcr.io/etcdlock/etcdlock:0.1.0"
DATA = {"name": "data", "mountPath": "/var/lib/etcd"}
PEER = "http://0.0.0.0:2380"
Core = kubernetes.client.CoreV1Api
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def core(kubeconfig: Path) -> Core:
    return kubernetes.client.CoreV1Api(kubernetes.config.new_client_from_config(config_file=str(kubeconfig)))


@pytest.fixture
def namespace(core: Core) -> Iterator[str]:
    name = f"processes-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


@pytest.fixture
def prefix() -> str:
    """Keys of this test in the run's etcd."""
    return f"test/processes-{uuid.uuid4().hex[:8]}"


def etcd_container() -> Obj:
    """A one-member etcd on the pod's address, with its data in the volume, ready when healthy."""
    return {
        "name": "etcd",
        "image": ETCD_IMAGE,
        "command": [
            "/usr/local/bin/etcd",
            "--name=m",
            "--data-dir=/var/lib/etcd/data",
            "--listen-client-urls=http://0.0.0.0:2379",
            "--advertise-client-urls=http://0.0.0.0:2379",
            f"--listen-peer-urls={PEER}",
            f"--initial-advertise-peer-urls={PEER}",
            f"--initial-cluster=m={PEER}",
        ],
        "readinessProbe": {"httpGet": {"path": "/health", "port": 2379}},
        "volumeMounts": [DATA],
    }


def create_pod(core: Core, namespace: str, name: str, init: list[Obj], claim: str = "") -> None:
    """The pod's data volume is an emptyDir, or ``claim`` (a PersistentVolumeClaim) if given."""
    volume = {"persistentVolumeClaim": {"claimName": claim}} if claim else {"emptyDir": {}}
    spec = {
        "volumes": [{"name": "data", **volume}],
        "initContainers": init,
        "containers": [etcd_container()],
    }
    core.create_namespaced_pod(namespace, {"metadata": {"name": name}, "spec": spec})


def read(core: Core, namespace: str, name: str) -> Obj:
    pod: Obj = core.api_client.sanitize_for_serialization(core.read_namespaced_pod(name, namespace))
    return pod


def pod_becomes(
    core: Core, namespace: str, name: str, check: Callable[[Obj], bool], bound: float = BOUND
) -> Obj:
    deadline = time.monotonic() + bound
    while True:
        pod = read(core, namespace, name)
        if check(pod):
            return pod
        assert time.monotonic() < deadline, f"pod {name} did not get there in {bound}s: {pod.get('status')}"
        time.sleep(0.1)


def ready(pod: Obj) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def condition(pod: Obj, kind: str) -> str:
    return str(next(c["status"] for c in pod["status"]["conditions"] if c["type"] == kind))


def init_status(pod: Obj, name: str) -> Obj:
    """The init container's status; empty until the kubelet has reported one."""
    found = (s for s in pod.get("status", {}).get("initContainerStatuses") or [] if s["name"] == name)
    return dict(next(found, {}))


def kubectl_status(kubeconfig: Path, namespace: str, name: str) -> str:
    """The STATUS column of ``kubectl get pod``."""
    done = subprocess.run(
        [KUBECTL, "--kubeconfig", str(kubeconfig), "-n", namespace, "get", "pod", name, "--no-headers"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.split()[2]


def served(address: str, key: str) -> str:
    """``key``'s value as the etcd at ``address`` serves it."""
    done = subprocess.run(
        [etcd_binary("etcdctl"), f"--endpoints=http://{address}:2379", "get", key, "--print-value-only"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return done.stdout.strip()


def processes_naming(token: str) -> list[int]:
    """The processes on this machine whose command line contains ``token``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def keys_under(etcd: LocalEtcd, prefix: str) -> list[str]:
    return etcd.etcdctl("get", prefix, "--prefix", "--keys-only").stdout.split()


def wait_until(check: Callable[[], bool], what: str, bound: float = BOUND) -> None:
    deadline = time.monotonic() + bound
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {bound}s"
        time.sleep(0.1)


def test_init_containers_restore_a_snapshot_in_order_before_etcd_starts_and_never_again(
    core: Core, namespace: str, etcd: LocalEtcd, prefix: str
) -> None:
    """The project's image takes a snapshot of the run's etcd under a lock (etcdlock finds etcdctl on PATH;
    both find etcd through a Secret: envFrom with a prefix, and secretKeyRef), etcd's image restores it into
    the volume, and etcd serves it. Each step needs the one before it, so none was tried before its turn."""
    assert etcd.etcdctl("put", f"{prefix}/restored", "from-the-snapshot").returncode == 0
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "store"}, "stringData": {"ENDPOINTS": etcd.endpoint_list}}
    )
    snapshot = {
        "name": "snapshot",
        "image": PROJECT_IMAGE,
        "command": ["etcdlock", "lock", f"{prefix}/lock", "--", "etcdctl", "snapshot", "save"],
        "args": ["/var/lib/etcd/snapshot.db"],
        "envFrom": [
            {"secretRef": {"name": "store"}, "prefix": "ETCDLOCK_"},
            {"secretRef": {"name": "absent", "optional": True}},
        ],
        "env": [
            {
                "name": "ETCDCTL_ENDPOINTS",
                "valueFrom": {"secretKeyRef": {"name": "store", "key": "ENDPOINTS"}},
            },
            {"name": "UNSET", "valueFrom": {"secretKeyRef": {"name": "store", "key": "x", "optional": True}}},
        ],
        "volumeMounts": [DATA],
    }
    restore = {
        "name": "restore",
        "image": ETCD_IMAGE,
        "command": [
            "etcdutl",
            "snapshot",
            "restore",
            "/var/lib/etcd/snapshot.db",
            "--data-dir=/var/lib/etcd/data",
            "--name=m",
            f"--initial-cluster=m={PEER}",
            f"--initial-advertise-peer-urls={PEER}",
        ],
        "volumeMounts": [DATA],
    }
    create_pod(core, namespace, "member", [snapshot, restore])

    pod = pod_becomes(core, namespace, "member", ready)
    address = pod["status"]["podIP"]
    assert served(address, f"{prefix}/restored") == "from-the-snapshot"
    assert (pod["status"]["phase"], condition(pod, "Initialized")) == ("Running", "True")
    first, second = init_status(pod, "snapshot"), init_status(pod, "restore")
    for status in (first, second):
        assert status["state"]["terminated"]["exitCode"] == 0
        assert status["state"]["terminated"]["reason"] == "Completed"
        assert (status["restartCount"], status["ready"]) == (0, True)
    main = pod["status"]["containerStatuses"][0]
    assert main["state"]["running"]["startedAt"] >= second["state"]["terminated"]["finishedAt"]
    assert second["state"]["terminated"]["startedAt"] >= first["state"]["terminated"]["finishedAt"]
    assert keys_under(etcd, f"{prefix}/lock") == []  # etcdlock released it when etcdctl was done

    # etcd killed: it runs again on the data in the pod's volume; the init containers do not run again
    # (a second restore would fail on the data directory it found).
    (pid,) = processes_naming(address + ":2379")
    os.kill(pid, 9)
    pod = pod_becomes(
        core, namespace, "member", lambda p: p["status"]["containerStatuses"][0]["restartCount"] == 1
    )
    assert pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 137
    pod = pod_becomes(core, namespace, "member", ready)
    assert served(address, f"{prefix}/restored") == "from-the-snapshot"
    assert [init_status(pod, n) for n in ("snapshot", "restore")] == [first, second]


def test_a_failing_init_container_runs_again_until_it_succeeds_and_only_then_etcd_starts(
    core: Core, namespace: str, etcd: LocalEtcd, prefix: str
) -> None:
    """The init container gives up at once while the test holds its lock (a key under the lock's prefix, as
    ``etcdctl lock`` would write), so it fails with etcdlock's exit code 2 until the key is deleted."""
    assert etcd.etcdctl("put", f"{prefix}/gate/held-by-test", "x").returncode == 0
    gate = {
        "name": "gate",
        "image": PROJECT_IMAGE,
        "command": [
            "etcdlock",
            "--endpoints",
            etcd.endpoint_list,
            "lock",
            "--timeout",
            "0",
            f"{prefix}/gate",
        ],
        "args": ["--", "true"],
    }
    create_pod(core, namespace, "gated", [gate])

    def backing_off_again(pod: Obj) -> bool:
        status = init_status(pod, "gate")
        return status.get("restartCount", 0) >= 2 and "waiting" in status["state"]

    pod = pod_becomes(core, namespace, "gated", backing_off_again)
    failed = init_status(pod, "gate")
    assert failed["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert failed["lastState"]["terminated"]["exitCode"] == 2
    main = pod["status"]["containerStatuses"][0]
    assert main["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert (main["restartCount"], pod["status"]["phase"], condition(pod, "Initialized")) == (
        0,
        "Pending",
        "False",
    )
    assert processes_naming(pod["status"]["podIP"] + ":2379") == []

    assert etcd.etcdctl("del", f"{prefix}/gate/held-by-test").returncode == 0
    pod = pod_becomes(core, namespace, "gated", ready)
    assert init_status(pod, "gate")["state"]["terminated"]["exitCode"] == 0
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0


def test_a_missing_secret_holds_the_container_in_create_container_config_error_until_it_exists(
    core: Core, namespace: str, kubeconfig: Path
) -> None:
    version = {
        "name": "version",
        "image": ETCD_IMAGE,
        "command": ["etcdutl", "version"],
        "envFrom": [{"secretRef": {"name": "late"}}],
        "volumeMounts": [DATA],
    }
    claim = {
        "metadata": {"name": "data-waiting"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    core.create_namespaced_persistent_volume_claim(namespace, claim)
    create_pod(core, namespace, "waiting", [version], claim="data-waiting")

    def config_error(pod: Obj) -> bool:
        waiting = init_status(pod, "version").get("state", {}).get("waiting") or {}
        return waiting.get("reason") == "CreateContainerConfigError"

    pod = pod_becomes(core, namespace, "waiting", config_error)
    assert init_status(pod, "version")["state"]["waiting"]["message"] == 'secret "late" not found'
    assert (pod["status"]["phase"], condition(pod, "Initialized")) == ("Pending", "False")
    assert kubectl_status(kubeconfig, namespace, "waiting") == "Init:CreateContainerConfigError"

    core.create_namespaced_secret(namespace, {"metadata": {"name": "late"}, "stringData": {"K": "v"}})
    pod = pod_becomes(core, namespace, "waiting", ready)
    assert kubectl_status(kubeconfig, namespace, "waiting") == "Running"
    assert init_status(pod, "version")["state"]["terminated"]["exitCode"] == 0
    assert init_status(pod, "version")["restartCount"] == 0


def test_a_pod_deleted_while_an_init_container_runs_stops_it(
    core: Core, namespace: str, etcd: LocalEtcd, prefix: str
) -> None:
    """The init container holds a lock with a 60 s lease until it is told to stop: the key goes at once only
    if etcdlock got SIGTERM and released it."""
    hold = {
        "name": "hold",
        "image": PROJECT_IMAGE,
        "command": ["etcdlock", "--endpoints", etcd.endpoint_list, "lock", "--ttl", "60", f"{prefix}/held"],
    }
    create_pod(core, namespace, "holder", [hold])
    wait_until(lambda: bool(keys_under(etcd, f"{prefix}/held/")), "the init container holds the lock")
    pod = read(core, namespace, "holder")
    assert "running" in init_status(pod, "hold")["state"]
    assert pod["status"]["phase"] == "Pending"
    assert len(processes_naming(f"{prefix}/held")) == 1

    core.delete_namespaced_pod("holder", namespace)
    wait_until(lambda: keys_under(etcd, f"{prefix}/held/") == [], "the lock released", bound=10)
    wait_until(lambda: processes_naming(f"{prefix}/held") == [], "the process gone", bound=10)
