"""The pod path under faults: a member of the operator's three-member etcd dies or hangs in the middle of a
release or an enqueue, and a user changes a pod's annotation while it waits.

Locks here have ``ttlSeconds: 3600``: a pod flow that gave up on an etcd error instead of retrying would
stall the lock for an hour, far beyond every bound below. A :class:`PodWatch` sees every pod change, so
"never two running at once" and the order pods were let go in are checked on the whole history.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiClient
from operator_support import OperatorThread, create_lock, event_reasons, eventually, status_of
from test_pods import PodWatch, create_pod, finish, gated, held, note, read_pod

from etcdlock.operator.config import ElectionSettings, WebhookSettings
from etcdlock.operator.names import (
    LOCK_ANNOTATION,
    LOCK_NOT_FOUND,
    MESSAGE_ANNOTATION,
    RELEASED,
    STATE_ANNOTATION,
    WAITING,
)
from etcdlock_sandbox.etcd import LocalEtcd, Member

HOUR = {"ttlSeconds": 3600}
# Ample for etcd's election (1-2 s) and a retry; far below the lock's TTL.
BOUND = 30.0
FAULTS = [("leader", "sigkill"), ("leader", "sigstop"), ("follower", "sigkill"), ("follower", "sigstop")]


@pytest.fixture
def etcd3() -> Iterator[LocalEtcd]:
    with LocalEtcd(size=3) as three:
        yield three


def operator_on(
    etcd3: LocalEtcd, first: Member, namespace: str, kubeconfig: Path, webhook: WebhookSettings
) -> OperatorThread:
    """The operator on the three-member etcd, elected (so every write is fenced), serving the webhooks,
    with ``first`` as its first endpoint: the member its client talks to until that one fails."""
    endpoints = [first.client_url, *(m.client_url for m in etcd3.members if m is not first)]
    election = ElectionSettings(name=f"/etcdlock/test/{namespace}/leader", ttl=5)
    return OperatorThread(",".join(endpoints), namespace, kubeconfig, webhook=webhook, election=election)


@pytest.fixture
def leader_operator(
    etcd3: LocalEtcd, namespace: str, kubeconfig: Path, webhook: WebhookSettings
) -> Iterator[OperatorThread]:
    running = operator_on(etcd3, etcd3.members[0], namespace, kubeconfig, webhook).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(params=FAULTS, ids=[f"{w}-{h}" for w, h in FAULTS])
def fault(request: pytest.FixtureRequest, etcd3: LocalEtcd) -> tuple[Member, str]:
    """The member to fail (etcd's raft leader, or a follower) and how (SIGKILL or SIGSTOP)."""
    which, how = request.param
    leader = etcd3.leader()
    member = leader if which == "leader" else next(m for m in etcd3.members if m is not leader)
    return member, how


@pytest.fixture
def faulted_operator(
    etcd3: LocalEtcd, fault: tuple[Member, str], namespace: str, kubeconfig: Path, webhook: WebhookSettings
) -> Iterator[OperatorThread]:
    """The operator talking to the member that will fail: the fault always meets its client."""
    running = operator_on(etcd3, fault[0], namespace, kubeconfig, webhook).start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def pods(api: ApiClient, namespace: str) -> Iterator[PodWatch]:
    with PodWatch(api, namespace) as watch:
        yield watch


def waiting(pod: dict[str, Any]) -> bool:
    return note(pod, STATE_ANNOTATION) == WAITING


def waiters_of(api: ApiClient, namespace: str, lock: str) -> list[str]:
    return [w["holder"] for w in status_of(api, namespace, lock).get("waiters", [])]


def fail(etcd3: LocalEtcd, member: Member, how: str) -> None:
    if how == "sigkill":
        etcd3.kill(member)
    else:
        etcd3.pause(member)


def test_a_member_failing_mid_release_and_mid_queueing_stalls_no_pod_and_keeps_the_order(
    api: ApiClient,
    namespace: str,
    etcd3: LocalEtcd,
    fault: tuple[Member, str],
    faulted_operator: OperatorThread,
    pods: PodWatch,
) -> None:
    """At the moment the member fails, the holder finishes (a release) and three pods are created (three
    enqueues): the next pod holds within etcd's election, and the new ones wait in creation order."""
    create_lock(api, namespace, "payroll", HOUR)
    for name in ("first", "second"):
        create_pod(api, namespace, name, "payroll")
    eventually(lambda: read_pod(api, namespace, "first"), held, "first holding")
    eventually(lambda: read_pod(api, namespace, "second"), waiting, "second waiting")
    member, how = fault
    late = ["next-1", "next-2", "next-3"]
    try:
        fail(etcd3, member, how)
        finish(api, namespace, "first")
        for name in late:
            create_pod(api, namespace, name, "payroll")
        eventually(lambda: read_pod(api, namespace, "second"), held, "second holding after it", BOUND)
        expected = [f"pod/{namespace}/{n}" for n in late]
        eventually(
            lambda: waiters_of(api, namespace, "payroll"),
            lambda found: found == expected,
            "the new pods queued, in creation order",
            BOUND,
        )
    finally:
        etcd3.resume(member)
    assert note(read_pod(api, namespace, "first"), STATE_ANNOTATION) == RELEASED
    for name in ["second", *late]:
        eventually(lambda n=name: read_pod(api, namespace, n), held, f"{name} holding in its turn")
        finish(api, namespace, name)
    pods.ungated_in(["first", "second", *late])
    assert pods.most_running == 1


def test_a_waiting_pod_switched_to_another_lock_leaves_then_joins_and_is_never_let_go_unheld(
    api: ApiClient, namespace: str, leader_operator: OperatorThread
) -> None:
    create_lock(api, namespace, "alpha", HOUR)
    create_lock(api, namespace, "beta", HOUR)
    create_pod(api, namespace, "alpha-holder", "alpha")
    create_pod(api, namespace, "beta-holder", "beta")
    for holder in ("alpha-holder", "beta-holder"):
        eventually(lambda h=holder: read_pod(api, namespace, h), held, f"{holder} holding")
    create_pod(api, namespace, "switcher", "alpha")
    create_pod(api, namespace, "alpha-next", "alpha")
    eventually(lambda: status_of(api, namespace, "alpha"), lambda s: s.get("waiterCount") == 2, "two waiters")
    core = kubernetes.client.CoreV1Api(api)
    core.patch_namespaced_pod("switcher", namespace, {"metadata": {"annotations": {LOCK_ANNOTATION: "beta"}}})
    switched = eventually(
        lambda: read_pod(api, namespace, "switcher"),
        lambda p: "beta" in (note(p, MESSAGE_ANNOTATION) or "") and note(p, STATE_ANNOTATION) == WAITING,
        "the switcher waiting for beta",
    )
    assert gated(switched)
    eventually(
        lambda: status_of(api, namespace, "beta"),
        lambda s: [w["holder"] for w in s.get("waiters", [])] == [f"pod/{namespace}/switcher"],
        "the switcher in beta's queue",
    )
    eventually(
        lambda: status_of(api, namespace, "alpha"),
        lambda s: [w["holder"] for w in s["waiters"]] == [f"pod/{namespace}/alpha-next"],
        "the switcher gone from alpha's queue",
    )
    finish(api, namespace, "alpha-holder")
    eventually(lambda: read_pod(api, namespace, "alpha-next"), held, "alpha's next waiter holding")
    assert gated(read_pod(api, namespace, "switcher")), "let go without holding beta"
    finish(api, namespace, "beta-holder")
    switcher = eventually(lambda: read_pod(api, namespace, "switcher"), held, "the switcher holding beta")
    assert "holds beta" in (note(switcher, MESSAGE_ANNOTATION) or "")


def test_a_running_pod_switched_to_another_lock_gives_the_first_back_and_is_told_it_does_not_wait(
    api: ApiClient, namespace: str, leader_operator: OperatorThread
) -> None:
    create_lock(api, namespace, "gamma", HOUR)
    create_lock(api, namespace, "delta", HOUR)
    create_pod(api, namespace, "runner", "gamma")
    create_pod(api, namespace, "gamma-next", "gamma")
    eventually(lambda: read_pod(api, namespace, "runner"), held, "runner holding")
    core = kubernetes.client.CoreV1Api(api)
    core.patch_namespaced_pod("runner", namespace, {"metadata": {"annotations": {LOCK_ANNOTATION: "delta"}}})
    eventually(lambda: read_pod(api, namespace, "gamma-next"), held, "gamma handed on")
    runner = read_pod(api, namespace, "runner")
    assert note(runner, STATE_ANNOTATION) == RELEASED
    assert "does not wait for delta" in (note(runner, MESSAGE_ANNOTATION) or "")
    event_reasons(api, namespace, "runner", "LockChanged")
    assert status_of(api, namespace, "delta").get("waiterCount", 0) == 0


def test_every_pod_waiting_for_a_missing_lock_says_why(
    api: ApiClient, namespace: str, leader_operator: OperatorThread
) -> None:
    names = [f"early-{i}" for i in range(5)]
    for name in names:
        create_pod(api, namespace, name, "not-yet")
    for name in names:
        pod = eventually(
            lambda n=name: read_pod(api, namespace, n),
            lambda p: note(p, STATE_ANNOTATION) == LOCK_NOT_FOUND,
            f"{name} told why it waits",
        )
        assert "DistributedLock not-yet does not exist" in (note(pod, MESSAGE_ANNOTATION) or "")
        assert gated(pod)
    create_lock(api, namespace, "not-yet", {})
    eventually(lambda: read_pod(api, namespace, names[0]), held, "the first holding once the lock exists")
    status = eventually(
        lambda: status_of(api, namespace, "not-yet"), lambda s: s.get("waiterCount") == 4, "4"
    )
    assert [w["holder"] for w in status["waiters"]] == [f"pod/{namespace}/{n}" for n in names[1:]]
