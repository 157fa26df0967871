"""EtcdCluster end to end in the sandbox: the operator (a real ``etcdlock operator`` process, resolving names
as a pod does) runs etcd clusters whose members are real etcd processes started by the sandbox's process
kubelet and StatefulSet controller.

Two clusters share the module: ``alpha`` (three members on claims) is created, scaled 3 -> 5 -> 3 with a
client writing throughout, has a member's process killed and another's paused (each reported in status and
Events), is upgraded one member at a time, refuses a skipped minor version, and holds a DistributedLock
taken by pods; ``scratch`` (emptyDir) loses a member's pod, and with it its data, and gets the member
replaced while a client writes; it is also defragmented on a short schedule, then deleted. Every wait is
bounded; timings belong to benchmarks, not here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiClient
from operator_support import Operated, create_lock, eventually, status_of
from test_pods import create_pod, finish, held, note, read_pod

from etcdlock.etcd import EtcdClient, EtcdConfig, EtcdUnavailable
from etcdlock.etcd.requests import put_op
from etcdlock.operator.names import CLUSTER_ANNOTATION, TOKEN_ANNOTATION

GROUP, VERSION, CLUSTERS = "etcdlock.io", "v1alpha1", "etcdclusters"
SLOW = 90.0  # bound for membership changes: each member start, learner catch-up and promotion


class Env:
    def __init__(self, api: ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.objects = kubernetes.client.CustomObjectsApi(api)
        self.core = kubernetes.client.CoreV1Api(api)

    def create(self, name: str, spec: dict[str, Any]) -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "EtcdCluster",
            "metadata": {"name": name},
            "spec": spec,
        }
        self.objects.create_namespaced_custom_object(GROUP, VERSION, self.namespace, CLUSTERS, body)

    def patch(self, name: str, spec: dict[str, Any]) -> None:
        self.objects.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, CLUSTERS, name, {"spec": spec}
        )

    def scale(self, name: str, replicas: int) -> None:
        """Through the scale subresource."""
        self.objects.patch_namespaced_custom_object_scale(
            GROUP, VERSION, self.namespace, CLUSTERS, name, {"spec": {"replicas": replicas}}
        )

    def status(self, name: str) -> dict[str, Any]:
        obj = self.objects.get_namespaced_custom_object(GROUP, VERSION, self.namespace, CLUSTERS, name)
        return dict(obj.get("status") or {})

    def pods(self, name: str) -> dict[str, Any]:
        found = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"app.kubernetes.io/instance={name}"
        )
        return {p.metadata.name: p for p in found.items}

    def events(self, name: str) -> list[tuple[str, str]]:
        found = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}")
        return [(e.reason, e.message) for e in found.items]

    def endpoints(self, name: str, members: range) -> list[str]:
        """The members' client URLs by pod address (the test runs outside the sandbox's cluster DNS)."""
        pods = self.pods(name)
        return [f"http://{pods[f'{name}-{i}'].status.pod_ip}:2379" for i in members]


def settled(replicas: int) -> Any:
    def check(status: dict[str, Any]) -> bool:
        members = status.get("members") or []
        return (
            status.get("phase") == "Running"
            and status.get("readyMembers") == replicas
            and len(members) == replicas
            and all(m["healthy"] and not m["learner"] for m in members)
        )

    return check


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


@pytest.fixture(scope="module")
def env(operated: Operated) -> Env:
    """A namespace, the webhook registered for it, and the operator as a process with cluster DNS."""
    return Env(operated.api, operated.namespace)


@pytest.fixture(scope="module")
def alpha(env: Env) -> str:
    env.create("alpha", {"replicas": 3, "version": "3.5.21", "storage": {"size": "1Gi"}})
    return "alpha"


@pytest.fixture(scope="module")
def scratch(env: Env) -> str:
    env.create("scratch", {"replicas": 3, "maintenance": {"defragmentInterval": "5s"}})
    return "scratch"


class Writer:
    """A client writing a new key every few milliseconds; remembers every write etcd acknowledged."""

    def __init__(self, endpoints: list[str]) -> None:
        self._config = EtcdConfig.parse(endpoints, request_timeout=2)
        self.acknowledged: list[bytes] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="writer")

    async def _run(self) -> None:
        async with EtcdClient(self._config) as client:
            n = 0
            while not self._stop.is_set():
                key = f"/writer/{n:06d}".encode()
                try:
                    await client.txn([], [put_op(key, b"x")])
                    self.acknowledged.append(key)
                except EtcdUnavailable:
                    self.failures += 1
                n += 1
                await asyncio.sleep(0.02)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def missing(self) -> list[bytes]:
        async def read() -> set[bytes]:
            async with EtcdClient(self._config) as client:
                response = await client.range(b"/writer/", b"/writer0")
                return {kv.key for kv in response.kvs}

        present = asyncio.run(read())
        return [key for key in self.acknowledged if key not in present]


def member_pid(namespace: str, member: str) -> int:
    """The pid of the etcd process of ``member`` (its command line names the member and the namespace)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"--name={member}".encode() in args and any(f".{namespace}.svc".encode() in a for a in args):
            if Path(args[0].decode()).name == "etcd":
                return int(entry.name)
    raise AssertionError(f"no etcd process for {member}")


def test_a_cluster_comes_up_with_healthy_members_in_its_status(env: Env, alpha: str) -> None:
    status = eventually(lambda: env.status(alpha), settled(3), "three healthy voters", SLOW)
    assert status["ready"] == "3/3" and status["version"] == "3.5.21"
    assert status["clientURL"] == f"http://alpha-client.{env.namespace}.svc:2379"
    assert sorted(m["name"] for m in status["members"]) == ["alpha-0", "alpha-1", "alpha-2"]
    assert [m["name"] for m in status["members"] if m["leader"]] == [status["leader"]]
    assert all(
        m["peerURL"] == f"http://{m['name']}.alpha.{env.namespace}.svc:2380" for m in status["members"]
    )
    assert condition(status, "Available")["status"] == "True"
    assert condition(status, "Degraded")["status"] == "False"
    assert condition(status, "Progressing")["status"] == "False"
    # One Ready for tools that read nothing else (kubectl wait, kstatus, Argo CD, Flux).
    ready = eventually(
        lambda: condition(env.status(alpha), "Ready"), lambda c: c["status"] == "True", "Ready", SLOW
    )
    assert ready["reason"] == "Ready"
    # The scale subresource names the members' selector (HPA and VPA need it).
    scale = env.objects.get_namespaced_custom_object_scale(GROUP, VERSION, env.namespace, CLUSTERS, alpha)
    assert scale["status"]["selector"] == f"app.kubernetes.io/name=etcd,app.kubernetes.io/instance={alpha}"
    # kopf's bookkeeping is in status.kopf, not in annotations a user sees and copies.
    cluster = env.objects.get_namespaced_custom_object(GROUP, VERSION, env.namespace, CLUSTERS, alpha)
    assert not (cluster["metadata"].get("annotations") or {}), cluster["metadata"].get("annotations")
    reasons = [reason for reason, _ in env.events(alpha)]
    assert reasons.count("Created") == 4  # two Services, the StatefulSet, the PodDisruptionBudget
    budget = kubernetes.client.PolicyV1Api(env.api).read_namespaced_pod_disruption_budget(
        alpha, env.namespace
    )
    assert budget.spec.min_available == 2


def test_scaling_out_and_in_one_member_at_a_time_loses_no_write(env: Env, alpha: str) -> None:
    eventually(lambda: env.status(alpha), settled(3), "three healthy voters", SLOW)
    with Writer(env.endpoints(alpha, range(3))) as writer:
        env.patch(alpha, {"replicas": 5})
        seen_learners = eventually(
            lambda: env.status(alpha),
            lambda s: any(m["learner"] for m in s.get("members") or []),
            "a learner",
            SLOW,
        )
        assert len(seen_learners["members"]) == 4  # one learner at a time
        status = eventually(lambda: env.status(alpha), settled(5), "five healthy voters", SLOW)
        assert status["ready"] == "5/5"
        budget = kubernetes.client.PolicyV1Api(env.api).read_namespaced_pod_disruption_budget(
            alpha, env.namespace
        )
        assert budget.spec.min_available == 3
        # The member with the highest ordinal leads: it is the first to go, and must hand leadership over
        # before the StatefulSet shrinks from the top.
        move_leadership(env, alpha, status, "alpha-4")
        staying = {name: incarnation(pod) for name, pod in env.pods(alpha).items() if name < "alpha-3"}
        env.scale(alpha, 3)  # as kubectl scale does
        eventually(lambda: env.status(alpha), settled(3), "three healthy voters again", SLOW)
        eventually(
            lambda: sorted(env.pods(alpha)),
            lambda names: names == ["alpha-0", "alpha-1", "alpha-2"],
            "two pods gone",
            SLOW,
        )
    claims = env.core.list_namespaced_persistent_volume_claim(
        env.namespace, label_selector="app.kubernetes.io/instance=alpha"
    )
    assert sorted(c.metadata.name for c in claims.items) == ["data-alpha-0", "data-alpha-1", "data-alpha-2"]
    assert len(writer.acknowledged) > 100
    assert writer.missing() == []
    reasons = [reason for reason, _ in env.events(alpha)]
    assert reasons.count("MemberAdded") == 2 and reasons.count("MemberPromoted") == 2
    assert reasons.count("MemberRemoved") == 2 and reasons.count("LeaderMoved") == 1
    removed = [message for reason, message in env.events(alpha) if reason == "MemberRemoved"]
    assert sorted(removed) == ["removed alpha-3 (not wanted)", "removed alpha-4 (not wanted)"]
    assert {name: incarnation(pod) for name, pod in env.pods(alpha).items()} == staying  # none restarted


def incarnation(pod: Any) -> tuple[str, int]:
    return pod.metadata.uid, pod.status.container_statuses[0].restart_count


def move_leadership(env: Env, name: str, status: dict[str, Any], to: str) -> None:
    """Make ``to`` the raft leader (MoveLeader is served by the current leader only)."""
    ordinal = int(status["leader"].rsplit("-", 1)[1])
    target = next(int(m["id"], 16) for m in status["members"] if m["name"] == to)
    if status["leader"] != to:

        async def move() -> None:
            config = EtcdConfig.parse(env.endpoints(name, range(ordinal, ordinal + 1)), request_timeout=5)
            async with EtcdClient(config) as leader:
                await leader.move_leader(target)

        asyncio.run(move())
    eventually(lambda: env.status(name)["leader"], lambda leader: leader == to, f"{to} leading", SLOW)


def test_a_killed_member_process_is_restarted_and_recovers(env: Env, alpha: str) -> None:
    eventually(lambda: env.status(alpha), settled(3), "three healthy voters", SLOW)
    before = {m["name"]: m["id"] for m in env.status(alpha)["members"]}
    os.kill(member_pid(env.namespace, "alpha-1"), signal.SIGKILL)
    eventually(
        lambda: env.pods(alpha)["alpha-1"].status.container_statuses[0].restart_count,
        lambda n: n >= 1,
        "a restart",
        SLOW,
    )
    status = eventually(lambda: env.status(alpha), settled(3), "three healthy voters after the kill", SLOW)
    assert {m["name"]: m["id"] for m in status["members"]} == before  # the same member, with its data
    restarts = env.pods(alpha)["alpha-1"].status.container_statuses[0].restart_count
    eventually(
        lambda: {m["name"]: m.get("restarts") for m in env.status(alpha)["members"]}["alpha-1"],
        lambda n: n == restarts,
        "the restart in status",
        SLOW,
    )
    told = eventually(
        lambda: [m for reason, m in env.events(alpha) if reason == "MemberProcessRestarted"],
        lambda messages: len(messages) == 1,
        "an Event for the restart",
        SLOW,
    )
    assert told == [
        f"alpha-1: its etcd process exited and the kubelet restarted it (restart count {restarts})"
    ]


def test_a_member_that_stops_answering_is_reported_and_its_recovery_too(env: Env, alpha: str) -> None:
    eventually(lambda: env.status(alpha), settled(3), "three healthy voters", SLOW)

    def health_events() -> Counter[tuple[str, str]]:
        return Counter(e for e in env.events(alpha) if e[0] in ("MemberUnhealthy", "MemberRecovered"))

    before = health_events()
    pid = member_pid(env.namespace, "alpha-2")
    os.kill(pid, signal.SIGSTOP)
    try:
        status = eventually(
            lambda: env.status(alpha),
            lambda s: not next(m for m in s["members"] if m["name"] == "alpha-2")["healthy"],
            "alpha-2 not healthy",
            SLOW,
        )
        assert condition(status, "Degraded")["reason"] == "MembersUnhealthy"
        assert condition(status, "Available")["status"] == "True"  # two of three still answer
    finally:
        os.kill(pid, signal.SIGCONT)
    eventually(lambda: env.status(alpha), settled(3), "three healthy voters after the pause", SLOW)
    told = eventually(
        lambda: health_events() - before, lambda new: sum(new.values()) >= 2, "both Events", SLOW
    )
    assert told == Counter(
        [("MemberUnhealthy", "alpha-2 does not answer"), ("MemberRecovered", "alpha-2 answers again")]
    )


def test_an_upgrade_restarts_one_member_at_a_time(env: Env, alpha: str) -> None:
    eventually(lambda: env.status(alpha), settled(3), "three healthy voters", SLOW)
    env.patch(alpha, {"version": "3.5.22"})
    healthy_counts: list[int] = []

    def upgraded(status: dict[str, Any]) -> bool:
        healthy_counts.append(sum(1 for m in status.get("members") or [] if m["healthy"]))
        return status.get("version") == "3.5.22" and settled(3)(status)

    eventually(lambda: env.status(alpha), upgraded, "every member on 3.5.22", SLOW)
    images = {p.spec.containers[0].image for p in env.pods(alpha).values()}
    assert images == {"registry.k8s.io/etcd:3.5.22-0"}
    assert min(healthy_counts) >= 2  # never below quorum
    restarts = [message for reason, message in env.events(alpha) if reason == "MemberRestarted"]
    assert len(restarts) == 3


def test_an_upgrade_that_skips_a_minor_version_is_refused(env: Env, alpha: str) -> None:
    eventually(lambda: env.status(alpha), settled(3), "three healthy voters", SLOW)
    uids = {name: pod.metadata.uid for name, pod in env.pods(alpha).items()}
    env.patch(alpha, {"version": "3.7.0"})
    status = eventually(
        lambda: env.status(alpha),
        lambda s: condition(s, "Degraded")["reason"] == "Refused",
        "the refusal",
        SLOW,
    )
    assert "3.7.0" in condition(status, "Degraded")["message"] and status["version"] == "3.5.22"
    assert any(reason == "UpgradeRefused" for reason, _ in env.events(alpha))
    env.patch(alpha, {"version": "3.5.22"})
    eventually(
        lambda: env.status(alpha),
        lambda s: condition(s, "Degraded")["status"] == "False",
        "the refusal gone",
        SLOW,
    )
    assert {name: pod.metadata.uid for name, pod in env.pods(alpha).items()} == uids  # nothing restarted


def test_a_lock_on_the_cluster_is_taken_by_pods_in_turn(env: Env, alpha: str) -> None:
    eventually(lambda: env.status(alpha), settled(3), "three healthy voters", SLOW)
    create_lock(env.api, env.namespace, "on-alpha", {"clusterRef": {"name": alpha}})
    create_pod(env.api, env.namespace, "first", "on-alpha")
    create_pod(env.api, env.namespace, "second", "on-alpha")
    first = eventually(lambda: read_pod(env.api, env.namespace, "first"), held, "first holding", SLOW)
    assert note(first, CLUSTER_ANNOTATION) == alpha  # where its lease lives, for a release without the lock
    lock = env.objects.get_namespaced_custom_object(
        GROUP, VERSION, env.namespace, "distributedlocks", "on-alpha"
    )
    assert not (lock["metadata"].get("annotations") or {}), "kopf's bookkeeping is in status.kopf"
    assert "last-handled-configuration" in lock["status"]["kopf"]
    status = eventually(
        lambda: status_of(env.api, env.namespace, "on-alpha"),
        lambda s: len(s.get("waiters") or []) == 1,
        "second waiting",
    )
    assert status["holders"][0]["holder"] == f"pod/{env.namespace}/first"
    finish(env.api, env.namespace, "first")
    second = eventually(lambda: read_pod(env.api, env.namespace, "second"), held, "second holding", SLOW)
    assert int(note(second, TOKEN_ANNOTATION) or 0) > int(note(first, TOKEN_ANNOTATION) or 0)

    async def keys() -> list[bytes]:
        async with EtcdClient(EtcdConfig.parse(env.endpoints(alpha, range(3)))) as client:
            response = await client.range(b"/etcdlock/locks/", b"/etcdlock/locks0")
            return [kv.key for kv in response.kvs]

    (key,) = asyncio.run(keys())  # the lock lives in the cluster's etcd
    assert key.decode().startswith(f"/etcdlock/locks/{env.namespace}/on-alpha/")


def test_a_member_whose_data_is_gone_is_replaced(env: Env, scratch: str) -> None:
    status = eventually(lambda: env.status(scratch), settled(3), "three healthy voters", SLOW)
    before = {m["name"]: m["id"] for m in status["members"]}
    with Writer(env.endpoints(scratch, range(0, 3, 2))) as writer:
        env.core.delete_namespaced_pod("scratch-1", env.namespace)  # emptyDir: its data goes with the pod
        status = eventually(
            lambda: env.status(scratch),
            lambda s: (
                settled(3)(s)
                and {m["name"]: m["id"] for m in s["members"]}.get("scratch-1")
                not in (None, before["scratch-1"])
            ),
            "scratch-1 replaced by a new member",
            SLOW,
        )
    assert len(writer.acknowledged) > 50
    assert writer.missing() == []
    assert {m["name"]: m["id"] for m in status["members"]}["scratch-0"] == before["scratch-0"]
    reasons = [reason for reason, _ in env.events(scratch)]
    for expected in ("MemberRemoved", "MemberAdded", "MemberReplaced", "MemberPromoted"):
        assert expected in reasons


def test_members_are_defragmented_on_schedule(env: Env, scratch: str) -> None:
    status = eventually(
        lambda: env.status(scratch),
        lambda s: settled(3)(s) and all("lastDefragmentation" in m for m in s["members"]),
        "every member defragmented",
        SLOW,
    )
    assert len(status["members"]) == 3
    assert sum(1 for reason, _ in env.events(scratch) if reason == "Defragmented") >= 3


def test_a_cluster_size_that_cannot_keep_a_quorum_is_refused_by_the_schema(env: Env) -> None:
    with pytest.raises(kubernetes.client.ApiException) as refused:
        env.create("even", {"replicas": 2})
    assert refused.value.status == 422 and "spec.replicas" in str(refused.value.body)


def test_deleting_a_cluster_stops_its_members(env: Env, scratch: str) -> None:
    eventually(lambda: env.status(scratch), settled(3), "three healthy voters", SLOW)
    env.objects.delete_namespaced_custom_object(GROUP, VERSION, env.namespace, CLUSTERS, scratch)
    eventually(lambda: env.pods(scratch), lambda pods: not pods, "the members' pods gone", SLOW)

    def running() -> list[str]:
        found = []
        for member in ("scratch-0", "scratch-1", "scratch-2"):
            try:
                member_pid(env.namespace, member)
                found.append(member)
            except AssertionError:
                pass
        return found

    eventually(running, lambda members: members == [], "no etcd process of the cluster left", SLOW)
    apps = kubernetes.client.AppsV1Api(env.api)
    assert [s.metadata.name for s in apps.list_namespaced_stateful_set(env.namespace).items] == ["alpha"]
