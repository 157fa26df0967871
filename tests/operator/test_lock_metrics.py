"""A lock's metrics (:mod:`etcdlock.operator.metrics`): series that stay gone once the lock is deleted, and
the holds and waits carried over when the queue is read afresh (a new view, its first change a baseline)."""

from __future__ import annotations

import pytest

from etcdlock.etcd.keys import Contender
from etcdlock.operator.metrics import Metrics, QueueMetrics
from etcdlock.operator.queueview import QueueView

LABELS = {"namespace": "apps", "lock": "jobs"}


def contender(name: str, revision: int) -> Contender:
    return Contender(key=f"/etcdlock/apps/jobs/{name}", create_revision=revision, lease=revision, value=b"")


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {**LABELS, **labels})


def test_a_lease_lost_after_the_lock_was_deleted_brings_no_series_back() -> None:
    metrics = Metrics()
    QueueMetrics(metrics, "apps", "jobs")
    assert value(metrics, "etcdlock_pod_leases_lost_total", state="held") == 0, "from 0 while served"
    metrics.lease_lost("apps", "jobs", "held")
    assert value(metrics, "etcdlock_pod_leases_lost_total", state="held") == 1
    metrics.forget("apps", "jobs")
    metrics.lease_lost("apps", "jobs", "held")  # a pod of the deleted lock, told late
    metrics.lease_lost("apps", "jobs", "waiting")
    for state in ("held", "waiting"):
        assert value(metrics, "etcdlock_pod_leases_lost_total", state=state) is None, state
    QueueMetrics(metrics, "apps", "jobs")  # created again, served again: counted from 0 again
    metrics.lease_lost("apps", "jobs", "waiting")
    assert value(metrics, "etcdlock_pod_leases_lost_total", state="waiting") == 1


def test_a_queue_read_afresh_keeps_the_holds_and_waits_still_there_and_forgets_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr("etcdlock.operator.metrics.time.monotonic", lambda: now[0])
    metrics = Metrics()
    observer = QueueMetrics(metrics, "apps", "jobs")
    a, b, c, d = (contender(n, r) for r, n in enumerate("abcd", start=1))

    first = QueueView(permits=2)
    observer.changed(first.reset([]), first)  # the baseline: an empty queue
    observer.changed(first.reset([a, b, c]), first)  # a and b take the lock, c waits: seen from t=100
    now[0] = 110.0
    # The store is retired and the queue read anew (a new view): b left and d came meanwhile, unseen.
    second = QueueView(permits=2)
    observer.changed(second.reset([a, c, d]), second)
    assert set(observer._holding_since) == {a.key}, "b's hold ended unseen: forgotten"
    assert set(observer._waiting_since) == {d.key}, "c took the lock unseen: its wait is not measured"
    now[0] = 130.0
    observer.changed(second.reset([c, d]), second)  # a leaves, d takes the lock
    assert value(metrics, "etcdlock_lock_hold_seconds_count") == 1
    assert value(metrics, "etcdlock_lock_hold_seconds_sum") == 30, "a's hold, measured from when it began"
    assert value(metrics, "etcdlock_lock_wait_seconds_sum") == 20, "d's wait from when it was first seen"


def test_a_waiter_seen_before_a_fresh_read_waits_from_when_it_was_first_seen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr("etcdlock.operator.metrics.time.monotonic", lambda: now[0])
    metrics = Metrics()
    observer = QueueMetrics(metrics, "apps", "jobs")
    a, b = contender("a", 1), contender("b", 2)
    first = QueueView(permits=1)
    observer.changed(first.reset([]), first)
    observer.changed(first.reset([a, b]), first)  # b waits from t=100
    now[0] = 150.0
    second = QueueView(permits=1)
    observer.changed(second.reset([a, b]), second)
    now[0] = 160.0
    observer.changed(second.reset([b]), second)
    assert value(metrics, "etcdlock_lock_wait_seconds_sum") == 60, "not 10: the wait did not start anew"
