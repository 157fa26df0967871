"""Three operator replicas elect one leader through etcd; the pod queue survives every way of losing it.

Replicas are real ``etcdlock operator`` processes (SIGKILL, SIGTERM and SIGSTOP are real signals), each
registering the webhook for itself when it leads. A :class:`PodWatch` sees every pod change, so "never
two pods running at once" is checked on the whole history. Failover speed is measured by ``make bench``;
here every wait is bounded generously (the TTL plus a margin), and what is checked is that leadership
moved and that the queue kept its order.
"""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes.client import ApiClient
from operator_support import (
    BOUND,
    create_lock,
    events_of,
    eventually,
    forget_self_registered_webhooks,
    status_of,
)
from test_pods import PodWatch, create_pod, finish, gated, held, note, read_pod, take_turns

from etcdlock.operator.config import WebhookSettings
from etcdlock.operator.kube import Kube
from etcdlock.operator.names import LEASE_ANNOTATION, STATE_ANNOTATION
from etcdlock.operator.webhook import register
from etcdlock_sandbox.etcd import LocalEtcd
from etcdlock_sandbox.operator import registered_urls
from etcdlock_sandbox.replicas import OperatorProcess

TTL = 3
FAILOVER_BOUND = TTL + 10.0


class Replicas:
    """Three replicas of the operator sharing one election, watching one namespace."""

    def __init__(
        self, etcd: LocalEtcd, kubeconfig: Path, certs: Path, namespace: str, logs: Path, ttl: int = TTL
    ) -> None:
        self.all = [
            OperatorProcess(
                etcd.endpoint_list,
                kubeconfig,
                certs,
                logs / f"replica-{i}.log",
                namespaces=(namespace,),
                election=f"/etcdlock/test/{namespace}/leader",
                leader_ttl=ttl,
            )
            for i in range(3)
        ]

    def start(self) -> Replicas:
        for replica in self.all:
            replica.start()
        for replica in self.all:
            replica.wait("healthy", BOUND)
        return self

    def leaders(self) -> list[OperatorProcess]:
        return [r for r in self.all if r.running() and r.ready()]

    def leader(self, bound: float = BOUND, other_than: OperatorProcess | None = None) -> OperatorProcess:
        """The one ready replica (waits until there is exactly one, other than ``other_than``)."""
        found = eventually(
            self.leaders,
            lambda ready: len(ready) == 1 and ready[0] is not other_than,
            "exactly one ready replica",
            bound,
        )
        return found[0]

    def stop(self) -> None:
        for replica in self.all:
            replica.stop()


@pytest.fixture
def replicas(
    etcd: LocalEtcd, kubeconfig: Path, webhook_certs: Path, namespace: str, api: ApiClient, tmp_path: Path
) -> Iterator[Replicas]:
    running = Replicas(etcd, kubeconfig, webhook_certs, namespace, tmp_path).start()
    try:
        yield running
    finally:
        running.stop()
        forget_self_registered_webhooks(api)
    for replica in running.all:
        assert "Traceback" not in replica.log_path.read_text(), replica.log_path.read_text()


@pytest.fixture
def pods(api: ApiClient, namespace: str) -> Iterator[PodWatch]:
    with PodWatch(api, namespace) as watch:
        yield watch


def gauge(replica: OperatorProcess, name: str) -> float:
    with urllib.request.urlopen(f"{replica.url}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in the metrics of {replica.url}")


def webhook_of_a_replica(api: ApiClient, replicas: Replicas) -> None:
    """Wait until the webhooks are registered by one of the replicas (each registers itself as it starts;
    the last one to do so is the one called)."""
    ports = {f":{replica.webhook_port}/" for replica in replicas.all}
    eventually(
        lambda: registered_urls(api),
        lambda found: any(port in url for url in found for port in ports),
        "the webhook registration",
    )


def queue_three(api: ApiClient, namespace: str, replicas: Replicas) -> list[str]:
    """A lock and three pods: the first holds, two wait."""
    webhook_of_a_replica(api, replicas)
    create_lock(api, namespace, "ha", {"ttlSeconds": 30})
    names = ["first", "second", "third"]
    for name in names:
        create_pod(api, namespace, name, "ha")
    eventually(lambda: read_pod(api, namespace, "first"), held, "first holding")
    for name in names[1:]:
        assert gated(read_pod(api, namespace, name))
    return names


def test_three_replicas_elect_exactly_one_leader_and_serve_pods_in_turn(
    replicas: Replicas, api: ApiClient, namespace: str, pods: PodWatch
) -> None:
    leader = replicas.leader()
    for replica in replicas.all:
        assert replica.healthy()
        assert gauge(replica, "etcdlock_operator_leader") == (1 if replica is leader else 0)
    names = queue_three(api, namespace, replicas)
    for name in names:
        eventually(lambda n=name: read_pod(api, namespace, n), held, f"{name} holding")
        finish(api, namespace, name)
    eventually(
        lambda: [r for r, _ in events_of(api, namespace, names[-1])],
        lambda reasons: "Released" in reasons,
        "the last release",
    )
    pods.ungated_in(names)
    assert pods.most_running == 1
    for name in names:
        acquired = [r for r, _ in events_of(api, namespace, name) if r == "Acquired"]
        assert len(acquired) == 1, f"{name} was granted by more than one replica"
    assert replicas.leaders() == [leader]


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_standby_takes_over_and_the_queue_keeps_moving(
    replicas: Replicas, api: ApiClient, namespace: str, pods: PodWatch, stop_signal: signal.Signals
) -> None:
    leader = replicas.leader()
    names = queue_three(api, namespace, replicas)
    leader.signal(stop_signal)
    successor = replicas.leader(FAILOVER_BOUND, other_than=leader)
    assert gauge(successor, "etcdlock_operator_leader") == 1
    assert gauge(successor, 'etcdlock_operator_leadership_transitions_total{transition="acquired"}') == 1
    take_turns(api, namespace, names, pods)


def test_pods_created_while_no_replica_leads_are_gated_by_a_standby(
    replicas: Replicas, api: ApiClient, namespace: str, pods: PodWatch
) -> None:
    leader = replicas.leader()
    names = queue_three(api, namespace, replicas)
    standby = next(r for r in replicas.all if r is not leader)
    settings = WebhookSettings("127.0.0.1", standby.webhook_port, standby.cert_dir)
    asyncio.run(register(Kube(api), settings))  # as a Service would: the webhook reaches a live replica
    leader.signal(signal.SIGKILL)
    create_pod(api, namespace, "during-failover", "ha")
    assert gated(read_pod(api, namespace, "during-failover")), "gated although nobody leads"
    replicas.leader(FAILOVER_BOUND, other_than=leader)
    take_turns(api, namespace, [*names, "during-failover"], pods)


def test_a_paused_leader_is_fenced_and_steps_down(
    replicas: Replicas, api: ApiClient, namespace: str, pods: PodWatch
) -> None:
    leader = replicas.leader()
    names = queue_three(api, namespace, replicas)
    leader.signal(signal.SIGSTOP)
    try:
        successor = replicas.leader(FAILOVER_BOUND, other_than=leader)
        finish(api, namespace, "first")
        eventually(lambda: read_pod(api, namespace, "second"), held, "second holding under the new leader")
    finally:
        leader.signal(signal.SIGCONT)
    eventually(
        lambda: gauge(leader, "etcdlock_operator_leader"), lambda v: v == 0, "the old leader stepping down"
    )
    lost = 'etcdlock_operator_leadership_transitions_total{transition="lost"}'
    assert gauge(leader, lost) == 1
    assert leader.running() and leader.healthy(), "it stays as a standby"
    assert replicas.leaders() == [successor]
    second = read_pod(api, namespace, "second")
    assert note(second, STATE_ANNOTATION) == "Held", events_of(api, namespace, "second")
    assert all(reason != "NotGated" for reason, _ in events_of(api, namespace, "second"))
    assert gated(read_pod(api, namespace, "third"))
    finish(api, namespace, "second")
    eventually(lambda: read_pod(api, namespace, "third"), held, "third holding")
    pods.ungated_in(names)
    assert pods.most_running == 1
    assert (
        "no longer leads" in leader.log_path.read_text() or "leadership lost" in leader.log_path.read_text()
    )


def test_replicas_ride_out_a_member_loss_stop_without_quorum_and_lead_again_after(
    etcd_cluster: LocalEtcd,
    kubeconfig: Path,
    webhook_certs: Path,
    namespace: str,
    api: ApiClient,
    tmp_path: Path,
    pods: PodWatch,
) -> None:
    running = Replicas(etcd_cluster, kubeconfig, webhook_certs, namespace, tmp_path).start()
    try:
        running.leader()
        names = queue_three(api, namespace, running)
        first, second = etcd_cluster.members[:2]
        etcd_cluster.kill(first)
        running.leader(FAILOVER_BOUND)
        etcd_cluster.kill(second)
        eventually(
            running.leaders, lambda ready: ready == [], "every replica to stop leading", FAILOVER_BOUND
        )
        assert all(r.running() and r.healthy() for r in running.all), (
            "without quorum replicas wait, not crash"
        )
        for member in (first, second):
            etcd_cluster.start_member(member, wait=False)
        etcd_cluster.wait_healthy([first, second])
        running.leader(FAILOVER_BOUND * 2)
        take_turns(api, namespace, names, pods)
    finally:
        running.stop()


def lease_remaining(etcd: LocalEtcd, lease: str) -> int:
    """Seconds the lease has left, as etcd says (``etcdctl lease timetolive``); -1 once it is gone."""
    done = etcd.etcdctl("lease", "timetolive", lease, "-w", "json")
    return int(json.loads(done.stdout)["ttl"]) if done.returncode == 0 else -1


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGSTOP], ids=["sigkill", "sigstop"])
def test_a_hold_with_the_shortest_ttl_outlives_a_leader_crash(
    etcd: LocalEtcd,
    kubeconfig: Path,
    webhook_certs: Path,
    namespace: str,
    api: ApiClient,
    tmp_path: Path,
    pods: PodWatch,
    stop_signal: signal.Signals,
) -> None:
    """ttlSeconds: 5, the schema's minimum, with the default leader TTL (5 s): a failover takes longer than
    5 s, so pods' leases get three leader TTLs, and the new leader renews them as it takes over."""
    running = Replicas(etcd, kubeconfig, webhook_certs, namespace, tmp_path, ttl=5).start()
    try:
        leader = running.leader()
        webhook_of_a_replica(api, running)
        create_lock(api, namespace, "brief", {"ttlSeconds": 5})
        for name in ("first", "second"):
            create_pod(api, namespace, name, "brief")
        first = eventually(lambda: read_pod(api, namespace, "first"), held, "first holding")
        status = eventually(
            lambda: status_of(api, namespace, "brief"), lambda s: s.get("waiterCount") == 1, "1"
        )
        assert status["podLeaseTTLSeconds"] == 15
        assert "a pod's hold must outlive an operator failover" in status["conditions"][0]["message"]
        lease = note(first, LEASE_ANNOTATION) or ""
        leader.signal(stop_signal)
        try:
            running.leader(5 + 10.0, other_than=leader)
            # Renewed by the new leader: more left than 15 s minus the failover, had nobody renewed it.
            eventually(lambda: lease_remaining(etcd, lease), lambda left: left >= 12, "the lease renewed")
        finally:
            if stop_signal == signal.SIGSTOP:
                leader.signal(signal.SIGCONT)
        assert note(read_pod(api, namespace, "first"), STATE_ANNOTATION) == "Held"
        assert gated(read_pod(api, namespace, "second"))
        take_turns(api, namespace, ["first", "second"], pods)
    finally:
        running.stop()
        forget_self_registered_webhooks(api)
