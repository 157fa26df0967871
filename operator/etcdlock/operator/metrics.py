"""Prometheus metrics of every lock, as the operator sees its etcd queue (whoever the holders are).

Counts start when the operator starts watching a lock: holders already there are the baseline, not
acquisitions. Wait time is measured from the moment a waiter was first seen in the queue.
"""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from etcdlock.operator.queueview import QueueChange, QueueView

LABELS = ("namespace", "lock")
BACKUP_LABELS = ("namespace", "cluster", "kind")
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)


class Metrics:
    """The operator's metrics, in a registry of their own (one per operator run)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.holders = Gauge("etcdlock_lock_holders", "Holders of each lock", LABELS, registry=registry)
        self.waiters = Gauge("etcdlock_lock_waiters", "Waiters in each queue", LABELS, registry=registry)
        self.acquisitions = Counter(
            "etcdlock_lock_acquisitions", "Holders that took each lock, any client", LABELS, registry=registry
        )
        self.releases = Counter(
            "etcdlock_lock_releases",
            "Holders that left each lock (released or lost)",
            LABELS,
            registry=registry,
        )
        self.pod_events = Counter(
            "etcdlock_pod_events",
            "Pod watch events the operator handled (the API server sends it only pods labelled "
            "etcdlock.io/managed)",
            registry=registry,
        )
        self.backup_last_success = Gauge(
            "etcdlock_backup_last_success_timestamp_seconds",
            "When each EtcdCluster's last full snapshot or delta was written (Unix time)",
            BACKUP_LABELS,
            registry=registry,
        )
        self.backup_bytes = Counter(
            "etcdlock_backup_bytes",
            "Bytes written to each EtcdCluster's backup store, by kind (full, delta)",
            BACKUP_LABELS,
            registry=registry,
        )
        self.backup_failures = Counter(
            "etcdlock_backup_failures",
            "Backup cycles of each EtcdCluster that failed (store, credentials, etcd)",
            ("namespace", "cluster"),
            registry=registry,
        )
        self.wait_seconds = Histogram(
            "etcdlock_lock_wait_seconds",
            "Time from joining a lock's queue to holding it",
            LABELS,
            buckets=WAIT_BUCKETS,
            registry=registry,
        )

    def backed_up(self, namespace: str, cluster: str, kind: str, size: int) -> None:
        """A full snapshot or a delta of ``size`` bytes was written (kind ``full``, ``delta``), or a
        backup cycle failed (kind ``failure``)."""
        if kind == "failure":
            self.backup_failures.labels(namespace, cluster).inc()
            return
        self.backup_last_success.labels(namespace, cluster, kind).set(time.time())
        self.backup_bytes.labels(namespace, cluster, kind).inc(size)

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted lock's series."""
        for metric in (self.holders, self.waiters, self.acquisitions, self.releases, self.wait_seconds):
            try:
                metric.remove(namespace, name)
            except KeyError:
                pass

    def app(self) -> web.Application:
        """``GET /metrics`` in the Prometheus text format."""

        async def metrics(_: web.Request) -> web.Response:
            response = web.Response(body=generate_latest(self.registry))
            response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
            return response

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return app


class QueueMetrics:
    """Turns the changes of one lock's queue into its metrics (the first look is the baseline)."""

    def __init__(self, metrics: Metrics, namespace: str, name: str) -> None:
        self._metrics = metrics
        self._labels = (namespace, name)
        self._waiting_since: dict[str, float] = {}

    def changed(self, change: QueueChange, queue: QueueView) -> None:
        now = time.monotonic()
        labels, metrics = self._labels, self._metrics
        for contender in change.joined:
            self._waiting_since[contender.key] = now
        for contender in change.left:
            self._waiting_since.pop(contender.key, None)
        for contender in change.acquired:
            waited = now - self._waiting_since.pop(contender.key, now)
            if not change.baseline:
                metrics.acquisitions.labels(*labels).inc()
                metrics.wait_seconds.labels(*labels).observe(waited)
        if not change.baseline and change.released:
            metrics.releases.labels(*labels).inc(len(change.released))
        metrics.holders.labels(*labels).set(len(queue.holders))
        metrics.waiters.labels(*labels).set(len(queue.waiters))
