"""A pod's policies and what it is told: ``etcdlock.io/max-wait`` (it times out, leaves the queue and stays
gated), ``etcdlock.io/on-lost: evict`` (a pod whose hold is lost is evicted, as its PodDisruptionBudget
allows), the state as a label (``kubectl get pods -L etcdlock.io/state``), a lock that does not exist, and
a container reading its fencing token through the downward API (examples/pod-fencing-token.yaml).

The operator runs its real kopf handlers and webhook against the sandbox API and the session's real etcd;
losses are real: the pod's key is deleted in etcd, as an admin (or a lease expiry) would.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiClient
from operator_support import OperatorThread, create_lock, event_reasons, events_of, eventually, status_of
from test_pods import create_pod, finish, gated, held, lock_key, note, read_pod, running

from etcdlock.operator.config import WebhookSettings
from etcdlock.operator.kube import ApiUnavailable, Forbidden, TooManyRequests
from etcdlock.operator.names import (
    ERROR,
    EVICTING,
    LEASE_ANNOTATION,
    LOCK_ANNOTATION,
    MAX_WAIT_ANNOTATION,
    MESSAGE_ANNOTATION,
    ON_LOST_ANNOTATION,
    RELEASED,
    STATE_ANNOTATION,
    TIMED_OUT,
    TOKEN_ANNOTATION,
    WAITING,
)
from etcdlock.operator.pods.eviction import failure
from etcdlock.operator.pods.policies import MAX_DURATION, PolicyError, deadline, max_wait, parse_duration
from etcdlock_sandbox.etcd import LocalEtcd

ROOT = Path(__file__).resolve().parents[2]
Pod = dict[str, Any]


def state_is(expected: str) -> Any:
    return lambda pod: note(pod, STATE_ANNOTATION) == expected


def state_label(pod: Pod) -> str | None:
    return (pod["metadata"].get("labels") or {}).get("etcdlock.io/state")


def waiters(api: ApiClient, namespace: str, lock: str) -> list[str]:
    return [w["holder"] for w in status_of(api, namespace, lock).get("waiters", [])]


def delete_key_of(etcd: LocalEtcd, namespace: str, lock: str, pod: Pod) -> None:
    """Delete the pod's key in etcd, as an admin might: the pod loses its hold at once."""
    key = f"{lock_key(namespace, lock)}/{note(pod, LEASE_ANNOTATION)}"
    assert etcd.etcdctl("del", key).stdout.strip() == "1"


def gone(api: ApiClient, namespace: str, name: str) -> bool:
    try:
        read_pod(api, namespace, name)
    except kubernetes.client.ApiException as exc:
        return exc.status == 404
    return False


# max-wait


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("10m", 600), ("1h30m", 5400), ("1.5h", 5400), ("250ms", 0.25)]
)
def test_max_wait_is_a_go_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "10", "-5s", "1d", "0s", "5 m", "m5", "1h-30m"])
def test_anything_but_a_positive_go_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


HUGE = ["99999999999999999999h", "1" * 400 + "h", "1000000000h", "87601h", "87600h1ms"]


@pytest.mark.parametrize("text", HUGE)
def test_a_duration_beyond_ten_years_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_ten_years_is_the_longest_max_wait() -> None:
    assert parse_duration("87600h") == MAX_DURATION == timedelta(days=3650)


@pytest.mark.parametrize("text", HUGE)
def test_a_huge_max_wait_is_a_policy_error_with_or_without_a_deadline(text: str) -> None:
    metadata = {"creationTimestamp": "2026-12-06T10:00:00Z", "annotations": {MAX_WAIT_ANNOTATION: text}}
    with pytest.raises(PolicyError, match="10 years at most"):
        max_wait({"metadata": metadata})
    with pytest.raises(PolicyError, match="10 years at most"):
        deadline({"metadata": metadata})


def test_a_pod_waiting_past_its_max_wait_times_out_leaves_the_queue_and_stays_gated(
    api: ApiClient, namespace: str, operator: OperatorThread
) -> None:
    """The pod is in the queue when its max-wait passes: it asks for an hour until both waiters are seen
    queued, then for 3s (from its creation: past already, or soon), so that no assertion races the
    deadline on a loaded machine."""
    create_lock(api, namespace, "slow", {"ttlSeconds": 30})
    create_pod(api, namespace, "holder", "slow")
    eventually(lambda: read_pod(api, namespace, "holder"), held, "holder holding")
    create_pod(api, namespace, "impatient", "slow", **{MAX_WAIT_ANNOTATION: "1h"})
    create_pod(api, namespace, "patient", "slow")
    eventually(lambda: waiters(api, namespace, "slow"), lambda w: len(w) == 2, "two waiters")
    shorter = {"metadata": {"annotations": {MAX_WAIT_ANNOTATION: "3s"}}}
    kubernetes.client.CoreV1Api(api).patch_namespaced_pod("impatient", namespace, shorter)
    timed_out = eventually(lambda: read_pod(api, namespace, "impatient"), state_is(TIMED_OUT), "timed out")
    assert gated(timed_out), "a pod that timed out never runs without the lock"
    assert state_label(timed_out) == TIMED_OUT
    assert f"{MAX_WAIT_ANNOTATION} 3s" in (note(timed_out, MESSAGE_ANNOTATION) or "")
    assert note(timed_out, LEASE_ANNOTATION) is None, "its lease was revoked and is no longer named"
    event_reasons(api, namespace, "impatient", "TimedOut")
    event_reasons(api, namespace, "slow", "PodTimedOut")
    eventually(
        lambda: waiters(api, namespace, "slow"),
        lambda w: w == [f"pod/{namespace}/patient"],
        "the timed-out pod gone from the queue",
    )
    finish(api, namespace, "holder")
    eventually(lambda: read_pod(api, namespace, "patient"), held, "the next waiter holding")
    after = read_pod(api, namespace, "impatient")
    assert gated(after) and note(after, STATE_ANNOTATION) == TIMED_OUT
    # It stops asking for the lock: it is let go, as any pod that stops asking.
    unlocked = {"metadata": {"annotations": {LOCK_ANNOTATION: None}}}
    kubernetes.client.CoreV1Api(api).patch_namespaced_pod("impatient", namespace, unlocked)
    let_go = eventually(lambda: read_pod(api, namespace, "impatient"), state_is(RELEASED), "let go")
    assert not gated(let_go)


def test_editing_max_wait_while_the_pod_waits_applies_at_once(
    api: ApiClient, namespace: str, operator: OperatorThread
) -> None:
    create_lock(api, namespace, "busy", {"ttlSeconds": 30})
    create_pod(api, namespace, "holder", "busy")
    eventually(lambda: read_pod(api, namespace, "holder"), held, "holder holding")
    create_pod(api, namespace, "waiter", "busy", **{MAX_WAIT_ANNOTATION: "1h"})
    eventually(lambda: read_pod(api, namespace, "waiter"), state_is(WAITING), "waiter waiting")
    shorter = {"metadata": {"annotations": {MAX_WAIT_ANNOTATION: "2s"}}}
    kubernetes.client.CoreV1Api(api).patch_namespaced_pod("waiter", namespace, shorter)
    timed_out = eventually(lambda: read_pod(api, namespace, "waiter"), state_is(TIMED_OUT), "timed out")
    assert gated(timed_out) and "max-wait 2s" in (note(timed_out, MESSAGE_ANNOTATION) or "")


def test_max_wait_counts_from_the_pods_creation_across_an_operator_restart(
    api: ApiClient, namespace: str, etcd: LocalEtcd, kubeconfig: Path, webhook: WebhookSettings
) -> None:
    """The operator is stopped while the pod waits and started again after its max-wait ran out: the new
    operator times it out at once (within less than a max-wait: it counts from the pod's creation, not
    from when it was adopted)."""
    first = OperatorThread(etcd.endpoint_list, namespace, kubeconfig, webhook=webhook).start()
    try:
        create_lock(api, namespace, "durable", {"ttlSeconds": 60})
        create_pod(api, namespace, "holder", "durable")
        eventually(lambda: read_pod(api, namespace, "holder"), held, "holder holding")
        create_pod(api, namespace, "waiter", "durable", **{MAX_WAIT_ANNOTATION: "20s"})
        pod = eventually(lambda: read_pod(api, namespace, "waiter"), state_is(WAITING), "waiter waiting")
    finally:
        first.stop()
    created = datetime.fromisoformat(pod["metadata"]["creationTimestamp"])
    eventually(
        lambda: datetime.now(created.tzinfo) - created,
        lambda age: age > timedelta(seconds=21),
        "the max-wait to pass",
        30,
    )
    assert note(read_pod(api, namespace, "waiter"), STATE_ANNOTATION) == WAITING, "nobody timed it out"
    second = OperatorThread(etcd.endpoint_list, namespace, kubeconfig, webhook=webhook).start()
    try:
        timed_out = eventually(
            lambda: read_pod(api, namespace, "waiter"), state_is(TIMED_OUT), "timed out by the new operator"
        )
        assert gated(timed_out)
        eventually(lambda: waiters(api, namespace, "durable"), lambda w: w == [], "no waiter left")
    finally:
        second.stop()


@pytest.mark.parametrize(
    ("annotation", "value"),
    [
        (MAX_WAIT_ANNOTATION, "soon"),
        (MAX_WAIT_ANNOTATION, "99999999999999999999h"),
        (ON_LOST_ANNOTATION, "explode"),
    ],
)
def test_an_invalid_policy_is_an_error_naming_it_and_the_pod_stays_gated(
    api: ApiClient, namespace: str, operator: OperatorThread, annotation: str, value: str
) -> None:
    create_lock(api, namespace, "strict", {})
    create_pod(api, namespace, "typo", "strict", **{annotation: value})
    pod = eventually(lambda: read_pod(api, namespace, "typo"), state_is(ERROR), "the Error state")
    assert f'{annotation}: "{value}"' in (note(pod, MESSAGE_ANNOTATION) or "")
    assert gated(pod), "fail closed: it does not run"
    assert state_label(pod) == ERROR
    warned = eventually(lambda: events_of(api, namespace, "typo"), bool, "an event")
    assert any(reason == "InvalidAnnotation" and annotation in message for reason, message in warned)
    # A pod created after it is served at once: the invalid one never queued.
    create_pod(api, namespace, "valid", "strict")
    eventually(lambda: read_pod(api, namespace, "valid"), held, "the valid pod holding")


def test_a_holder_given_a_huge_max_wait_holds_on_and_is_released_when_it_finishes(
    api: ApiClient, namespace: str, operator: OperatorThread
) -> None:
    """Every later event of the pod is still handled: its finishing gives the lock back."""
    create_lock(api, namespace, "long", {})
    create_pod(api, namespace, "holder", "long")
    eventually(lambda: read_pod(api, namespace, "holder"), held, "holder holding")
    create_pod(api, namespace, "next", "long")
    eventually(lambda: read_pod(api, namespace, "next"), state_is(WAITING), "next waiting")
    huge = {"metadata": {"annotations": {MAX_WAIT_ANNOTATION: "1" * 400 + "h"}}}
    kubernetes.client.CoreV1Api(api).patch_namespaced_pod("holder", namespace, huge)
    finish(api, namespace, "holder")
    eventually(lambda: read_pod(api, namespace, "holder"), state_is(RELEASED), "the holder released")
    eventually(lambda: read_pod(api, namespace, "next"), held, "the next pod holding")


# on-lost


def test_on_lost_evict_evicts_a_pod_whose_hold_is_lost_and_keep_lets_it_run(
    api: ApiClient, namespace: str, operator: OperatorThread, etcd: LocalEtcd
) -> None:
    create_lock(api, namespace, "fragile", {"permits": 2, "ttlSeconds": 30})
    create_pod(api, namespace, "evicted", "fragile", **{ON_LOST_ANNOTATION: "evict"})
    create_pod(api, namespace, "kept", "fragile", **{ON_LOST_ANNOTATION: "keep"})
    pods = {
        n: eventually(lambda n=n: read_pod(api, namespace, n), held, f"{n} holding")
        for n in ("evicted", "kept")
    }
    for name in pods:
        eventually(lambda n=name: read_pod(api, namespace, n), running, f"{name} running")
    for pod in pods.values():
        delete_key_of(etcd, namespace, "fragile", pod)
    eventually(lambda: gone(api, namespace, "evicted"), bool, "the evict pod evicted")
    reasons = event_reasons(api, namespace, "evicted", "LockLost", "Evicting")
    assert "EvictionBlocked" not in reasons
    kept = eventually(lambda: read_pod(api, namespace, "kept"), state_is(ERROR), "kept told it lost the lock")
    assert running(kept), "keep: the pod runs on"
    event_reasons(api, namespace, "kept", "LockLost")


def guarded_pod(api: ApiClient, namespace: str, lock: str) -> None:
    """A pod annotated on-lost: evict, selected by a PodDisruptionBudget that allows no disruption now."""
    policy = kubernetes.client.PolicyV1Api(api)
    spec = {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}
    policy.create_namespaced_pod_disruption_budget(namespace, {"metadata": {"name": "guard"}, "spec": spec})
    policy.patch_namespaced_pod_disruption_budget_status("guard", namespace, {"status": REFUSES})
    annotations = {LOCK_ANNOTATION: lock, ON_LOST_ANNOTATION: "evict"}
    body = {
        "metadata": {"name": "guarded", "labels": {"app": "guarded"}, "annotations": annotations},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "work", "image": "busybox:1.36"}]},
    }
    kubernetes.client.CoreV1Api(api).create_namespaced_pod(namespace, body)


REFUSES = {"observedGeneration": 1, "disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1}


def test_an_eviction_refused_by_a_disruption_budget_goes_on_across_an_operator_restart_until_allowed(
    api: ApiClient, namespace: str, etcd: LocalEtcd, kubeconfig: Path, webhook: WebhookSettings
) -> None:
    """The budget refuses: the pod runs on, says Evicting, and is told why; the operator restarts; the
    new one takes the eviction up, and evicts the pod once the budget allows it (taking that disruption)."""
    first = OperatorThread(etcd.endpoint_list, namespace, kubeconfig, webhook=webhook).start()
    try:
        create_lock(api, namespace, "budgeted", {"ttlSeconds": 30})
        guarded_pod(api, namespace, "budgeted")
        pod = eventually(lambda: read_pod(api, namespace, "guarded"), held, "guarded holding")
        eventually(lambda: read_pod(api, namespace, "guarded"), running, "guarded running")
        delete_key_of(etcd, namespace, "budgeted", pod)
        blocked = eventually(
            lambda: [m for r, m in events_of(api, namespace, "guarded") if r == "EvictionBlocked"],
            bool,
            "the eviction blocked",
        )
        assert "disruption budget" in blocked[0]
        evicting = read_pod(api, namespace, "guarded")
        assert running(evicting), "the budget keeps it running"
        assert (note(evicting, STATE_ANNOTATION), state_label(evicting)) == (EVICTING, EVICTING)
    finally:
        first.stop()
    second = OperatorThread(etcd.endpoint_list, namespace, kubeconfig, webhook=webhook).start()
    try:
        policy = kubernetes.client.PolicyV1Api(api)
        allows = {"status": {**REFUSES, "disruptionsAllowed": 1}}
        policy.patch_namespaced_pod_disruption_budget_status("guard", namespace, allows)
        eventually(lambda: gone(api, namespace, "guarded"), bool, "evicted once the budget allows it", 45)
    finally:
        second.stop()
    status = policy.read_namespaced_pod_disruption_budget_status("guard", namespace).status
    assert status.disruptions_allowed == 0, "the eviction took the disruption the budget allowed"


def test_an_eviction_that_fails_otherwise_is_reported_once_and_tried_again_until_it_succeeds(
    api: ApiClient, namespace: str, operator: OperatorThread, etcd: LocalEtcd
) -> None:
    """Two budgets select the pod: the API server answers 500 (it supports one). The pod is told once,
    with what failed, and the eviction is tried again; one budget left, which allows it, lets it through."""
    create_lock(api, namespace, "doubled", {"ttlSeconds": 30})
    guarded_pod(api, namespace, "doubled")
    policy = kubernetes.client.PolicyV1Api(api)
    spec = {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}
    policy.create_namespaced_pod_disruption_budget(namespace, {"metadata": {"name": "second"}, "spec": spec})
    pod = eventually(lambda: read_pod(api, namespace, "guarded"), held, "guarded holding")
    eventually(lambda: read_pod(api, namespace, "guarded"), running, "guarded running")
    delete_key_of(etcd, namespace, "doubled", pod)
    failed = eventually(
        lambda: [m for r, m in events_of(api, namespace, "guarded") if r == "EvictionFailed"],
        bool,
        "the eviction failure reported",
    )
    assert "500" in failed[0] and "tried again" in failed[0], failed
    assert running(read_pod(api, namespace, "guarded")), "not evicted yet"
    allows = {"status": {**REFUSES, "disruptionsAllowed": 1}}
    policy.patch_namespaced_pod_disruption_budget_status("second", namespace, allows)
    policy.delete_namespaced_pod_disruption_budget("guard", namespace)
    eventually(lambda: gone(api, namespace, "guarded"), bool, "evicted once one budget is left", 45)
    reasons = [r for r, _ in events_of(api, namespace, "guarded")]
    assert reasons.count("EvictionFailed") == 1, "reported once, not on every attempt"


def test_an_eviction_the_operator_is_forbidden_stops_with_a_warning_naming_the_missing_permission() -> None:
    forbidden = failure(Forbidden("API error 403 Forbidden"))
    assert not forbidden.retry and forbidden.reason == "EvictionForbidden"
    assert "pods/eviction" in forbidden.message and "create" in forbidden.message
    assert "403" in forbidden.message


def test_an_eviction_refused_by_a_budget_or_failing_otherwise_is_tried_again() -> None:
    blocked = failure(TooManyRequests("Cannot evict pod as it would violate the pod's disruption budget."))
    assert (blocked.reason, blocked.retry) == ("EvictionBlocked", True)
    assert "disruption budget" in blocked.message
    failed = failure(ApiUnavailable("API error 500 Internal Server Error"))
    assert (failed.reason, failed.retry) == ("EvictionFailed", True)
    assert "500" in failed.message and "tried again" in failed.message


# What kubectl shows


@pytest.fixture
def kubectl(kubeconfig: Path, namespace: str, tmp_path: Path) -> Iterator[Any]:
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "KUBECONFIG": str(kubeconfig)}

    def run(*args: str) -> str:
        done = subprocess.run(
            ["kubectl", f"--namespace={namespace}", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    yield run


def state_column(output: str, name: str) -> str:
    """The STATE column (``-L etcdlock.io/state``) of the pod ``name`` in ``kubectl get pods`` output."""
    header, *rows = output.splitlines()
    column = header.index("STATE")
    (row,) = [r for r in rows if r.split()[0] == name]
    return row[column:].split()[0] if len(row) > column else ""


def test_a_pod_naming_a_missing_lock_says_so_in_kubectl_get_pods_until_the_lock_is_created(
    api: ApiClient, namespace: str, operator: OperatorThread, kubectl: Any
) -> None:
    create_pod(api, namespace, "misspelt", "nightly-reprot")
    pod = eventually(lambda: read_pod(api, namespace, "misspelt"), state_is("LockNotFound"), "LockNotFound")
    assert "DistributedLock nightly-reprot does not exist" in (note(pod, MESSAGE_ANNOTATION) or "")
    assert gated(pod)
    event_reasons(api, namespace, "misspelt", "LockNotFound")
    listing = eventually(
        lambda: kubectl("get", "pods", "-L", "etcdlock.io/state"),
        lambda out: state_column(out, "misspelt") == "LockNotFound",
        "kubectl showing LockNotFound",
    )
    assert "SchedulingGated" in listing
    create_lock(api, namespace, "nightly-reprot", {})
    eventually(lambda: read_pod(api, namespace, "misspelt"), held, "served once the lock exists")
    eventually(
        lambda: kubectl("get", "pods", "-L", "etcdlock.io/state"),
        lambda out: state_column(out, "misspelt") == "Held",
        "kubectl showing Held",
    )


# The fencing token, read by the container


def test_the_fencing_token_example_hands_the_container_its_token_through_the_downward_api(
    api: ApiClient, namespace: str, operator: OperatorThread, etcd: LocalEtcd
) -> None:
    """examples/pod-fencing-token.yaml runs for real (the sandbox runs etcd's image as processes): its
    etcdctl writes the token it was started with, which must be the token the lock's status shows."""
    example = yaml.safe_load((ROOT / "examples" / "pod-fencing-token.yaml").read_text())
    (container,) = example["spec"]["containers"]
    for entry in container["env"]:
        if entry["name"] == "ETCDCTL_ENDPOINTS":
            entry["value"] = etcd.endpoint_list  # the etcd the reports go to: the test's
    key = f"/reports/{namespace}/fencing-token"
    container["command"] = [
        word.replace("/reports/nightly-report/", f"/reports/{namespace}/") for word in container["command"]
    ]
    create_lock(api, namespace, example["metadata"]["annotations"][LOCK_ANNOTATION], {})
    kubernetes.client.CoreV1Api(api).create_namespaced_pod(namespace, example)
    pod = eventually(lambda: read_pod(api, namespace, "fenced-report"), held, "the example holding")
    token = note(pod, TOKEN_ANNOTATION)
    eventually(
        lambda: [h["fencingToken"] for h in status_of(api, namespace, "nightly-report").get("holders", [])],
        lambda tokens: tokens == [int(token or 0)],
        "the lock's status showing the pod's token",
    )
    written = eventually(
        lambda: etcd.etcdctl("get", key, "--print-value-only").stdout.strip(), bool, "the write"
    )
    assert written == token
