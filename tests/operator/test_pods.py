"""Pods annotated ``etcdlock.io/lock`` wait behind a scheduling gate until they hold the lock.

The operator runs its real kopf handlers and webhook against the sandbox API and the session's real etcd;
the sandbox's pretend kubelet runs ungated pods. A :class:`PodWatch` follows every pod change in order,
so "never more than N at once" is checked on the whole history, not on samples.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import urllib3
from kubernetes.client import ApiClient
from operator_support import (
    BOUND,
    GROUP,
    PLURAL,
    VERSION,
    OperatorThread,
    create_lock,
    delete_lock,
    event_reasons,
    events_of,
    eventually,
    phase,
    status_of,
    wait_listening,
)

from etcdlock.operator.config import WebhookSettings
from etcdlock.operator.names import (
    HELD,
    LEASE_ANNOTATION,
    LOCK_ANNOTATION,
    LOCK_NOT_FOUND,
    MANAGED_LABEL,
    MESSAGE_ANNOTATION,
    RELEASED,
    SCHEDULING_GATE,
    STATE_ANNOTATION,
    TOKEN_ANNOTATION,
    WAITING,
)
from etcdlock_sandbox.etcd import LocalEtcd, free_port
from etcdlock_sandbox.replicas import OperatorProcess

Pod = dict[str, Any]


def create_pod(api: ApiClient, namespace: str, name: str, lock: str | None, **annotations: str) -> None:
    if lock is not None:
        annotations[LOCK_ANNOTATION] = lock
    body = {
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "work", "image": "busybox:1.36"}]},
    }
    kubernetes.client.CoreV1Api(api).create_namespaced_pod(namespace, body)


def read_pod(api: ApiClient, namespace: str, name: str) -> Pod:
    pod = kubernetes.client.CoreV1Api(api).read_namespaced_pod(name, namespace)
    return dict(api.sanitize_for_serialization(pod))


def finish(api: ApiClient, namespace: str, name: str, phase: str = "Succeeded") -> None:
    """What the kubelet reports when the pod's containers exit."""
    core = kubernetes.client.CoreV1Api(api)
    core.patch_namespaced_pod_status(name, namespace, {"status": {"phase": phase}})


def lock_of(api: ApiClient, namespace: str, name: str) -> dict[str, Any]:
    objects = kubernetes.client.CustomObjectsApi(api)
    return dict(objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))


def gated(pod: Pod) -> bool:
    return any(g["name"] == SCHEDULING_GATE for g in pod["spec"].get("schedulingGates") or [])


def note(pod: Pod, key: str) -> str | None:
    return (pod["metadata"].get("annotations") or {}).get(key)


def running(pod: Pod) -> bool:
    return bool(pod["status"].get("phase") == "Running")


def waiting(pod: Pod) -> bool:
    return note(pod, STATE_ANNOTATION) == WAITING


def held(pod: Pod) -> bool:
    return not gated(pod) and note(pod, STATE_ANNOTATION) == HELD


class PodWatch:
    """Every change of the namespace's pods, in order: counts the pods of each lock running at once
    (ungated, not finished); ``most_running`` is the most for any one lock."""

    def __init__(self, api: ApiClient, namespace: str) -> None:
        self._api = api
        self._namespace = namespace
        self._watch = kubernetes.watch.Watch()
        self._pods: dict[str, Pod] = {}
        self.most_running = 0
        self.ungated_order: list[str] = []
        self._thread = threading.Thread(target=self._follow, name="pod-watch", daemon=True)

    def _follow(self) -> None:
        try:
            self._record()
        except urllib3.exceptions.HTTPError:
            pass  # the namespace went at the end of the test, and its watch with it

    def _record(self) -> None:
        core = kubernetes.client.CoreV1Api(self._api)
        for event in self._watch.stream(core.list_namespaced_pod, self._namespace, timeout_seconds=120):
            pod = self._api.sanitize_for_serialization(event["object"])
            name = pod["metadata"]["name"]
            if event["type"] == "DELETED":
                self._pods.pop(name, None)
            else:
                before = self._pods.get(name)
                if not gated(pod) and (before is None or gated(before)):
                    self.ungated_order.append(name)
                self._pods[name] = pod
            running = Counter(
                note(p, LOCK_ANNOTATION)
                for p in self._pods.values()
                if not gated(p) and p["status"].get("phase") == "Running"
            )
            self.most_running = max(self.most_running, *running.values(), 0)

    def ungated_in(self, names: list[str]) -> None:
        """Wait until the watch has seen ``names`` let go, each once and in that order (its events may come
        a moment after a read already shows the last of them held); other pods are not looked at."""
        eventually(
            lambda: [name for name in self.ungated_order if name in names],
            lambda seen: seen == names,
            f"{names} ungated in order",
        )

    def __enter__(self) -> PodWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._watch.stop()


@pytest.fixture
def pods(api: ApiClient, namespace: str) -> Iterator[PodWatch]:
    with PodWatch(api, namespace) as watch:
        yield watch


def lock_key(namespace: str, lock: str) -> str:
    return f"/etcdlock/locks/{namespace}/{lock}"


def take_turns(api: ApiClient, namespace: str, names: list[str], pods: PodWatch) -> None:
    """Each pod holds in turn and finishes; they were ungated in this order, never two running at once."""
    for name in names:
        eventually(lambda n=name: read_pod(api, namespace, n), held, f"{name} holding")
        finish(api, namespace, name)
    pods.ungated_in(names)
    assert pods.most_running == 1


@contextlib.contextmanager
def cli_holder(etcd: LocalEtcd, key: str, permits: int, holder: str) -> Iterator[str]:
    """``etcdlock lock KEY`` from outside the cluster, holding a permit; yields its key."""
    cli = subprocess.Popen(
        [sys.executable, "-m", "etcdlock", "lock", key, "--permits", str(permits), "--holder", holder],
        env={**os.environ, "ETCDLOCK_ENDPOINTS": etcd.endpoint_list},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert cli.stdout is not None
        line = cli.stdout.readline()
        assert line.startswith(key), line
        yield line.split()[0]
        cli.send_signal(signal.SIGINT)
        assert cli.wait(BOUND) == 0
    finally:
        cli.kill()
        cli.wait(BOUND)


def test_five_pods_take_a_one_permit_lock_one_at_a_time_in_creation_order(
    api: ApiClient, namespace: str, operator: OperatorThread, pods: PodWatch
) -> None:
    create_lock(api, namespace, "report", {"ttlSeconds": 10})
    names = [f"worker-{i}" for i in range(5)]
    for name in names:
        create_pod(api, namespace, name, "report")
    tokens = []
    for turn, name in enumerate(names):
        pod = eventually(lambda n=name: read_pod(api, namespace, n), held, f"{name} to hold the lock")
        tokens.append(int(note(pod, TOKEN_ANNOTATION) or 0))
        for later in names[turn + 1 :]:
            waiting = eventually(
                lambda n=later: read_pod(api, namespace, n),
                lambda p: note(p, STATE_ANNOTATION) == WAITING,
                f"{later} waiting",
            )
            assert gated(waiting), f"{later} was ungated while {name} held the lock"
        queue = [f"pod/{namespace}/{n}" for n in names[turn:]]
        # The status follows etcd a moment later: wait until it shows this holder and the pods behind it.
        status = eventually(
            lambda: status_of(api, namespace, "report"),
            lambda s, q=queue: [c["holder"] for c in s.get("holders", []) + s.get("waiters", [])] == q,
            f"status showing {name} as the holder, then {names[turn + 1 :]}",
        )
        assert status["holders"][0]["fencingToken"] == tokens[-1]
        eventually(
            lambda n=name: read_pod(api, namespace, n),
            lambda p: p["status"].get("phase") == "Running",
            f"{name} running",
        )
        finish(api, namespace, name)
        released = eventually(
            lambda n=name: read_pod(api, namespace, n),
            lambda p: note(p, STATE_ANNOTATION) == RELEASED,
            f"{name} released",
        )
        assert "the pod succeeded" in (note(released, MESSAGE_ANNOTATION) or "")
    assert tokens == sorted(tokens) and len(set(tokens)) == 5
    pods.ungated_in(names)
    assert pods.most_running == 1
    eventually(lambda: status_of(api, namespace, "report"), lambda s: s.get("phase") == "Free", "Free")
    event_reasons(api, namespace, "worker-0", "Acquired", "Released")


def test_deleting_a_waiting_pod_leaves_the_queue_and_deleting_the_holder_releases(
    api: ApiClient, namespace: str, operator: OperatorThread, pods: PodWatch
) -> None:
    create_lock(api, namespace, "mutex", {"ttlSeconds": 10})
    for name in ("first", "second", "third"):
        create_pod(api, namespace, name, "mutex")
    eventually(lambda: read_pod(api, namespace, "first"), held, "first holding")
    eventually(lambda: status_of(api, namespace, "mutex"), lambda s: s.get("waiterCount") == 2, "two waiters")
    core = kubernetes.client.CoreV1Api(api)
    core.delete_namespaced_pod("second", namespace)
    status = eventually(
        lambda: status_of(api, namespace, "mutex"), lambda s: s.get("waiterCount") == 1, "one waiter left"
    )
    assert [w["holder"] for w in status["waiters"]] == [f"pod/{namespace}/third"]
    assert gated(read_pod(api, namespace, "third"))
    core.delete_namespaced_pod("first", namespace)
    eventually(lambda: read_pod(api, namespace, "third"), held, "third holding after the holder went")
    pods.ungated_in(["first", "third"])
    assert pods.most_running == 1


def test_three_permits_are_shared_with_a_cli_holder(
    api: ApiClient, namespace: str, operator: OperatorThread, etcd: LocalEtcd, pods: PodWatch
) -> None:
    create_lock(api, namespace, "workers", {"permits": 3, "ttlSeconds": 10})
    with cli_holder(etcd, lock_key(namespace, "workers"), 3, "nightly-cron"):
        names = [f"shard-{i}" for i in range(4)]
        for name in names:
            create_pod(api, namespace, name, "workers")
        status = eventually(
            lambda: status_of(api, namespace, "workers"),
            lambda s: len(s.get("holders", [])) == 3 and s.get("waiterCount") == 2,
            "three holders (the CLI first) and two waiting pods",
        )
        assert status["holders"][0]["holder"] == "nightly-cron"
        assert [n for n in names if held(read_pod(api, namespace, n))] == ["shard-0", "shard-1"]
        assert all(gated(read_pod(api, namespace, n)) for n in ("shard-2", "shard-3"))
    eventually(lambda: read_pod(api, namespace, "shard-2"), held, "shard-2 holding after the CLI let go")
    assert gated(read_pod(api, namespace, "shard-3"))
    finish(api, namespace, "shard-0", "Failed")
    eventually(lambda: read_pod(api, namespace, "shard-3"), held, "shard-3 holding after shard-0 failed")
    assert pods.most_running == 3


def test_a_pod_waits_for_a_lock_created_after_it(
    api: ApiClient, namespace: str, operator: OperatorThread
) -> None:
    create_pod(api, namespace, "early", "later")
    pod = eventually(
        lambda: read_pod(api, namespace, "early"),
        lambda p: note(p, STATE_ANNOTATION) == LOCK_NOT_FOUND,
        "early waiting for its lock to exist",
    )
    assert "DistributedLock later does not exist" in (note(pod, MESSAGE_ANNOTATION) or "")
    assert gated(pod)
    event_reasons(api, namespace, "early", "LockNotFound")
    create_lock(api, namespace, "later", {})
    eventually(lambda: read_pod(api, namespace, "early"), held, "early holding once the lock exists")


def test_a_pod_naming_an_unusable_lock_waits_and_says_why(
    api: ApiClient, namespace: str, operator: OperatorThread
) -> None:
    create_lock(api, namespace, "remote", {"clusterRef": {"name": "etcd-b"}})
    create_pod(api, namespace, "patient", "remote")
    pod = eventually(
        lambda: read_pod(api, namespace, "patient"),
        lambda p: "does not exist" in (note(p, MESSAGE_ANNOTATION) or ""),
        "the reason in the pod's message",
    )
    assert note(pod, STATE_ANNOTATION) == WAITING and "etcd-b" in (note(pod, MESSAGE_ANNOTATION) or "")
    assert gated(pod)


def test_an_invalid_spec_is_refused_by_the_schema(api: ApiClient, namespace: str) -> None:
    with pytest.raises(kubernetes.client.ApiException) as refused:
        create_lock(api, namespace, "zero", {"permits": 0})
    assert refused.value.status == 422 and "spec.permits" in str(refused.value.body)


def test_removing_the_annotation_releases_the_lock(
    api: ApiClient, namespace: str, operator: OperatorThread
) -> None:
    create_lock(api, namespace, "handover", {})
    for name in ("keeper", "next", "impatient"):
        create_pod(api, namespace, name, "handover")
    eventually(lambda: read_pod(api, namespace, "keeper"), held, "keeper holding")
    core = kubernetes.client.CoreV1Api(api)
    unlocked = {"metadata": {"annotations": {LOCK_ANNOTATION: None}}}
    core.patch_namespaced_pod("keeper", namespace, unlocked)
    eventually(lambda: read_pod(api, namespace, "next"), held, "next holding")
    keeper = read_pod(api, namespace, "keeper")
    assert note(keeper, STATE_ANNOTATION) == RELEASED
    # A waiting pod that stops asking for the lock leaves the queue and is let go.
    core.patch_namespaced_pod("impatient", namespace, unlocked)
    impatient = eventually(
        lambda: read_pod(api, namespace, "impatient"),
        lambda p: note(p, STATE_ANNOTATION) == RELEASED,
        "impatient released",
    )
    assert not gated(impatient), "no longer held back"
    eventually(lambda: status_of(api, namespace, "handover"), lambda s: s["waiterCount"] == 0, "no waiter")


def test_a_restarted_operator_reports_a_holder_whose_key_went_meanwhile(
    api: ApiClient,
    namespace: str,
    operator: OperatorThread,
    etcd: LocalEtcd,
    kubeconfig: Path,
    webhook: WebhookSettings,
) -> None:
    create_lock(api, namespace, "fragile", {"ttlSeconds": 30})
    create_pod(api, namespace, "holder", "fragile")
    create_pod(api, namespace, "waiter", "fragile")
    holder = eventually(lambda: read_pod(api, namespace, "holder"), held, "holder holding")
    eventually(lambda: status_of(api, namespace, "fragile"), lambda s: s.get("waiterCount") == 1, "a waiter")
    operator.stop()
    key = f"{lock_key(namespace, 'fragile')}/{note(holder, LEASE_ANNOTATION)}"
    assert etcd.etcdctl("del", key).stdout.strip() == "1", "deleted by hand, as an admin might"
    metrics = ("127.0.0.1", free_port())
    restarted = OperatorThread(etcd.endpoint_list, namespace, kubeconfig, metrics, webhook).start()
    try:
        lost = eventually(
            lambda: read_pod(api, namespace, "holder"),
            lambda p: note(p, STATE_ANNOTATION) == "Error",
            "the holder told it lost the lock",
        )
        assert "its key was gone" in (note(lost, MESSAGE_ANNOTATION) or "")
        event_reasons(api, namespace, "holder", "LockLost")
        labels = f'lock="fragile",namespace="{namespace}"'
        counted = eventually(
            lambda: pod_leases_lost(f"http://127.0.0.1:{metrics[1]}/metrics", labels),
            lambda lost: lost["held"] == 1,
            "the lost hold counted",
        )
        assert counted["waiting"] == 0, "the waiter kept its place"
        eventually(lambda: read_pod(api, namespace, "waiter"), held, "the waiter holding")
        keys = etcd.etcdctl(
            "get", lock_key(namespace, "fragile") + "/", "--prefix", "--keys-only"
        ).stdout.split()
        assert len(keys) == 1, "no key was re-created for the holder"
    finally:
        restarted.stop()


def test_deleting_the_lock_releases_pod_holds_and_leaves_outside_holders_alone(
    api: ApiClient, namespace: str, operator: OperatorThread, etcd: LocalEtcd
) -> None:
    create_lock(api, namespace, "doomed", {"permits": 2})
    key = lock_key(namespace, "doomed")
    with cli_holder(etcd, key, 2, "outside") as cli_key:
        create_pod(api, namespace, "inside", "doomed")
        create_pod(api, namespace, "queued", "doomed")
        eventually(lambda: read_pod(api, namespace, "inside"), held, "inside holding")
        delete_lock(api, namespace, "doomed")
        inside = eventually(
            lambda: read_pod(api, namespace, "inside"),
            lambda p: note(p, STATE_ANNOTATION) == RELEASED,
            "inside released",
        )
        assert "was deleted" in (note(inside, MESSAGE_ANNOTATION) or "")
        queued = eventually(
            lambda: read_pod(api, namespace, "queued"),
            lambda p: "does not exist" in (note(p, MESSAGE_ANNOTATION) or ""),
            "queued waiting for the lock to come back",
        )
        assert gated(queued)
        keys = etcd.etcdctl("get", key + "/", "--prefix", "--keys-only").stdout.split()
        assert keys == [cli_key], "only the outside holder's key is left"
        create_lock(api, namespace, "doomed", {"permits": 2})
        eventually(lambda: read_pod(api, namespace, "queued"), held, "queued holding once the lock is back")


@pytest.mark.parametrize("created", ["before-the-operator", "while-it-runs"])
def test_a_pod_without_the_gate_is_flagged(
    api: ApiClient, namespace: str, etcd: LocalEtcd, kubeconfig: Path, created: str
) -> None:
    """No webhook registered (not installed): the pod is scheduled at once, unlabelled; the sweep labels
    it (on the new leader's listing of every pod, or on its next look) and the operator tells it that it is
    not guarded."""
    create_lock(api, namespace, "unguarded", {})
    if created == "before-the-operator":
        create_pod(api, namespace, "loose", "unguarded")
    sweep = 0 if created == "before-the-operator" else 1
    running = OperatorThread(etcd.endpoint_list, namespace, kubeconfig, pod_sweep_interval=sweep).start()
    try:
        if created == "while-it-runs":
            create_pod(api, namespace, "loose", "unguarded")
        pod = eventually(
            lambda: read_pod(api, namespace, "loose"),
            lambda p: note(p, STATE_ANNOTATION) == "Error",
            "the Error state",
        )
        assert "mutual exclusion is not enforced" in (note(pod, MESSAGE_ANNOTATION) or "")
        warned = eventually(lambda: events_of(api, namespace, "loose"), bool, "an event")
        assert any(reason == "NotGated" for reason, _ in warned)
        status = eventually(lambda: status_of(api, namespace, "unguarded"), phase("Free"), "the lock free")
        assert status["holders"] == [], "the loose pod does not hold the lock"
    finally:
        running.stop()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_an_operator_restart_keeps_holders_leases_and_queue_order(
    api: ApiClient,
    namespace: str,
    etcd: LocalEtcd,
    kubeconfig: Path,
    webhook: WebhookSettings,
    pods: PodWatch,
    stop_signal: signal.Signals,
    tmp_path: Path,
) -> None:
    def replica(log: str) -> OperatorProcess:
        return OperatorProcess(
            etcd.endpoint_list,
            kubeconfig,
            webhook.cert_dir,
            tmp_path / log,
            namespaces=(namespace,),
            election=f"/etcdlock/test/{namespace}/leader",
            configure_webhook=False,
            webhook_port=webhook.port,
        )

    first = replica("first.log").start()
    second = None
    try:
        first.wait("ready", BOUND)
        wait_listening(webhook.host, webhook.port)
        create_lock(api, namespace, "durable", {"ttlSeconds": 10})
        names = ["a", "b", "c"]
        for name in names:
            create_pod(api, namespace, name, "durable")
        eventually(lambda: read_pod(api, namespace, "a"), held, "a holding")
        before = eventually(
            lambda: status_of(api, namespace, "durable"), lambda s: s.get("waiterCount") == 2, "two waiters"
        )
        leases = {n: note(read_pod(api, namespace, n), LEASE_ANNOTATION) for n in names}
        versions = {n: read_pod(api, namespace, n)["metadata"]["resourceVersion"] for n in names}
        lock_version = lock_of(api, namespace, "durable")["metadata"]["resourceVersion"]
        first.signal(stop_signal)
        assert first.process is not None
        first.process.wait(BOUND)
        second = replica("second.log").start()
        second.wait("ready", BOUND)
        wait_listening(webhook.host, webhook.port)
        # A lock and a pod made after the restart: once the pod waits and the lock is Free, the new leader
        # has handled the pods and locks it found (kopf lists them first) and would have written any.
        create_lock(api, namespace, "sentinel", {})
        create_pod(api, namespace, "sentinel", "sentinel")
        eventually(lambda: read_pod(api, namespace, "sentinel"), held, "the sentinel pod holding")
        eventually(lambda: status_of(api, namespace, "sentinel"), phase("Held"), "the sentinel lock Held")
        after = status_of(api, namespace, "durable")
        assert [h["key"] for h in after["holders"]] == [h["key"] for h in before["holders"]]
        assert [w["key"] for w in after["waiters"]] == [w["key"] for w in before["waiters"]]
        assert {n: note(read_pod(api, namespace, n), LEASE_ANNOTATION) for n in names} == leases
        assert {n: read_pod(api, namespace, n)["metadata"]["resourceVersion"] for n in names} == versions, (
            "the new leader wrote pods that had not changed"
        )
        assert lock_of(api, namespace, "durable")["metadata"]["resourceVersion"] == lock_version, (
            "the new leader rewrote a status that had not changed"
        )
        finish(api, namespace, "sentinel")
        take_turns(api, namespace, names, pods)
    finally:
        for process in (first, second):
            if process is not None:
                process.stop()
    assert "Traceback" not in (tmp_path / "second.log").read_text()


def test_a_missing_webhook_certificate_is_one_clear_line(
    etcd: LocalEtcd, kubeconfig: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "etcdlock",
            "operator",
            "--etcd-endpoints",
            etcd.endpoint_list,
            "--kubeconfig",
            str(kubeconfig),
            "--webhook-cert-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=BOUND * 2,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"etcdlock: webhook certificate {tmp_path}/tls.crt not found: mount the webhook Secret there, "
        "pass --webhook-cert-dir, or --webhook off"
    )


def test_unrelated_pods_never_reach_the_operator(
    api: ApiClient, namespace: str, operator: OperatorThread, metrics_url: str
) -> None:
    """The API server filters the operator's pod watch by the label the webhook sets: pods that ask for
    no lock are not sent to it however much they change (its count of pod events says so)."""
    create_lock(api, namespace, "busy", {})
    create_pod(api, namespace, "first", "busy")
    pod = eventually(lambda: read_pod(api, namespace, "first"), held, "first holding")
    assert pod["metadata"]["labels"] == {MANAGED_LABEL: "true", STATE_ANNOTATION: HELD}
    eventually(
        lambda: read_pod(api, namespace, "first"), lambda p: p["status"].get("phase") == "Running", "running"
    )
    before = pod_events(metrics_url)
    core = kubernetes.client.CoreV1Api(api)
    unrelated = [f"other-{i}" for i in range(15)]
    for name in unrelated:
        create_pod(api, namespace, name, None)
    for name in unrelated:
        eventually(
            lambda n=name: read_pod(api, namespace, n),
            lambda p: p["status"].get("phase") == "Running",
            "running",
        )
        core.patch_namespaced_pod(name, namespace, {"metadata": {"labels": {"touched": "yes"}}})
    finish(api, namespace, "first")
    create_pod(api, namespace, "sentinel", "busy")  # its events come after every unrelated pod's
    eventually(lambda: read_pod(api, namespace, "sentinel"), held, "the sentinel holding")
    seen = pod_events(metrics_url) - before
    assert seen <= 8, f"{seen} pod events for two lock pods: unrelated pods reached the operator"
    assert all(
        MANAGED_LABEL not in (read_pod(api, namespace, n)["metadata"].get("labels") or {}) for n in unrelated
    )


def test_a_pod_annotated_after_creation_is_labelled_and_told_so_and_not_queued(
    api: ApiClient, namespace: str, operator: OperatorThread
) -> None:
    create_lock(api, namespace, "late", {})
    create_pod(api, namespace, "afterwards", None)
    core = kubernetes.client.CoreV1Api(api)
    core.patch_namespaced_pod(
        "afterwards", namespace, {"metadata": {"annotations": {LOCK_ANNOTATION: "late"}}}
    )
    pod = eventually(
        lambda: read_pod(api, namespace, "afterwards"),
        lambda p: note(p, STATE_ANNOTATION) == "Error",
        "the Error state",
    )
    labels = {MANAGED_LABEL: "true", STATE_ANNOTATION: "Error"}
    assert pod["metadata"]["labels"] == labels, "labelled by the webhook on the update; the state mirrored"
    message = note(pod, MESSAGE_ANNOTATION) or ""
    assert "annotation was added after the pod was created" in message
    assert "recreate it" in message and "mutual exclusion is not enforced" in message
    warned = eventually(lambda: events_of(api, namespace, "afterwards"), bool, "an event")
    assert [reason for reason, _ in warned] == ["AnnotatedAfterCreation"]
    status = eventually(lambda: status_of(api, namespace, "late"), phase("Free"), "the lock free")
    assert status["holders"] == [], "a pod that did not wait for the lock does not hold it"


def pod_leases_lost(metrics_url: str, labels: str) -> dict[str, float]:
    """etcdlock_pod_leases_lost_total of one lock, by state (held, waiting); -1 for a missing series."""
    with urllib.request.urlopen(metrics_url, timeout=BOUND) as reply:
        text = reply.read().decode()
    found = {}
    for state in ("held", "waiting"):
        prefix = f'etcdlock_pod_leases_lost_total{{{labels},state="{state}"}} '
        values = [line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix)]
        found[state] = float(values[0]) if values else -1.0
    return found


def pod_events(metrics_url: str) -> float:
    """The operator's count of pod watch events handled (etcdlock_pod_events_total)."""
    with urllib.request.urlopen(metrics_url, timeout=BOUND) as reply:
        text = reply.read().decode()
    (line,) = [line for line in text.splitlines() if line.startswith("etcdlock_pod_events_total ")]
    return float(line.split()[1])
