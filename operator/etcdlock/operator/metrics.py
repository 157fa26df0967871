"""The operator's Prometheus metrics: every lock, as the operator sees its etcd queue (whoever the holders
are); the pods' leases it lost; every EtcdCluster, as its last reconcile pass saw it, and its backups.

Counts start when the operator starts watching a lock: holders already there are the baseline, not
acquisitions. Wait time is measured from the moment a waiter was first seen in the queue, hold time from
the moment a holder was seen taking the lock (a baseline holder's hold is not measured). A lock's series
exist while the operator serves it: they are dropped when it is deleted, and nothing re-creates them after
(a pod's lease found lost later counts only for a lock served). The EtcdCluster series are set by
:mod:`etcdlock.operator.etcdcluster.telemetry`.
"""

from __future__ import annotations

import time
from datetime import datetime

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase

from etcdlock import clock
from etcdlock.operator.queueview import QueueChange, QueueView

LABELS = ("namespace", "lock")
BACKUP_LABELS = ("namespace", "cluster", "kind")
BACKUP_KINDS = ("full", "delta")
CLUSTER_LABELS = ("namespace", "cluster")
LEASE_LABELS = ("namespace", "lock", "state")
LEASE_STATES = ("held", "waiting")
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
HOLD_BUCKETS = (0.1, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400)


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
        self.backup_full_interval = Gauge(
            "etcdlock_backup_full_interval_seconds",
            "How often each EtcdCluster with spec.backup takes a full snapshot (spec.backup.fullInterval)",
            ("namespace", "cluster"),
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
        self.hold_seconds = Histogram(
            "etcdlock_lock_hold_seconds",
            "Time from taking a lock to leaving it (released or lost), of the holds seen from their start",
            LABELS,
            buckets=HOLD_BUCKETS,
            registry=registry,
        )
        self.held_since = Gauge(
            "etcdlock_lock_oldest_hold_timestamp_seconds",
            "When the longest-standing holder of each lock took it, or was first seen holding it (Unix "
            "time; no series while nobody holds the lock)",
            LABELS,
            registry=registry,
        )
        self.pod_leases_lost = Counter(
            "etcdlock_pod_leases_lost",
            "Pods whose lease (and with it their place) the operator found gone, by the lock and what the "
            "pod was doing (state: held, waiting)",
            LEASE_LABELS,
            registry=registry,
        )
        self.clusters = ClusterMetrics(registry)
        self._served: set[tuple[str, str]] = set()  # the locks whose series exist (QueueMetrics made them)
        self._backup_times: dict[tuple[str, str, str], float] = {}  # the last-success gauges' values

    def serving(self, namespace: str, lock: str) -> None:
        """The operator serves ``lock``: its pod-lease counters start at 0 (the first loss is an increase)."""
        self._served.add((namespace, lock))
        for state in LEASE_STATES:
            self.pod_leases_lost.labels(namespace, lock, state)

    def backed_up(self, namespace: str, cluster: str, kind: str, size: int) -> None:
        """A full snapshot or a delta of ``size`` bytes was written (kind ``full``, ``delta``), or a
        backup cycle failed (kind ``failure``)."""
        if kind == "failure":
            self.backup_failures.labels(namespace, cluster).inc()
            return
        self._last_success(namespace, cluster, kind, time.time())
        self.backup_bytes.labels(namespace, cluster, kind).inc(size)

    def backup_reported(self, namespace: str, cluster: str, kind: str, when: datetime) -> None:
        """The cluster's status says its last full snapshot or delta (``kind``) was written at ``when``: what
        a new operator leader knows before its own runner writes one (the gauge never goes back)."""
        self._last_success(namespace, cluster, kind, when.timestamp())

    def _last_success(self, namespace: str, cluster: str, kind: str, when: float) -> None:
        key = (namespace, cluster, kind)
        if when > self._backup_times.get(key, float("-inf")):
            self._backup_times[key] = when
            self.backup_last_success.labels(*key).set(when)

    def lease_lost(self, namespace: str, lock: str, state: str) -> None:
        """A pod's lease in ``lock`` was found gone while it held the lock (``held``) or waited. Counted for
        a lock the operator serves only: a pod of a lock already deleted (whose series were dropped) must
        not bring its counter back as a series that nothing removes."""
        if (namespace, lock) in self._served:
            self.pod_leases_lost.labels(namespace, lock, state).inc()

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted lock's series."""
        self._served.discard((namespace, name))
        for metric in (
            self.holders,
            self.waiters,
            self.acquisitions,
            self.releases,
            self.wait_seconds,
            self.hold_seconds,
            self.held_since,
        ):
            _remove(metric, namespace, name)
        for state in LEASE_STATES:
            _remove(self.pod_leases_lost, namespace, name, state)

    def no_backup(self, namespace: str, name: str) -> None:
        """The EtcdCluster has no spec.backup (any more)."""
        _remove(self.backup_full_interval, namespace, name)

    def forget_cluster(self, namespace: str, name: str) -> None:
        """Drop an EtcdCluster's series, its backups' included (the cluster was deleted, or this replica
        no longer leads: what it saw last is not news)."""
        self.clusters.forget(namespace, name)
        _remove(self.backup_failures, namespace, name)
        _remove(self.backup_full_interval, namespace, name)
        for kind in BACKUP_KINDS:
            self._backup_times.pop((namespace, name, kind), None)
            _remove(self.backup_last_success, namespace, name, kind)
            _remove(self.backup_bytes, namespace, name, kind)

    def app(self) -> web.Application:
        """``GET /metrics`` in the Prometheus text format."""

        async def metrics(_: web.Request) -> web.Response:
            response = web.Response(body=generate_latest(self.registry))
            response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
            return response

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        return app


class ClusterMetrics:
    """The gauges of every EtcdCluster (labels: namespace, cluster), as its last reconcile pass saw it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, documentation: str) -> Gauge:
            return Gauge(name, documentation, CLUSTER_LABELS, registry=registry)

        self.desired = gauge("etcdlock_etcdcluster_desired_members", "Members the spec asks for (replicas)")
        self.members = gauge("etcdlock_etcdcluster_members", "Members etcd lists, voters and learners")
        self.ready = gauge(
            "etcdlock_etcdcluster_ready_members",
            "Voting members that answer (the status' readyMembers, the READY column)",
        )
        self.healthy = gauge(
            "etcdlock_etcdcluster_healthy_members",
            "Members, voters and learners, that answer a status request",
        )
        self.learners = gauge("etcdlock_etcdcluster_learners", "Members etcd lists as learners (no vote yet)")
        self.quorum = gauge(
            "etcdlock_etcdcluster_quorum", "1 while a quorum of the voting members answers, else 0"
        )
        self.has_leader = gauge(
            "etcdlock_etcdcluster_has_leader", "1 while a member that answers says it leads, else 0"
        )
        self.db_size = gauge(
            "etcdlock_etcdcluster_db_size_bytes",
            "The largest backend database of the members that answer (what the quota counts)",
        )
        self.db_in_use = gauge(
            "etcdlock_etcdcluster_db_size_in_use_bytes",
            "The most bytes in use in one member's backend (the rest a defragmentation frees)",
        )
        self.db_quota = gauge(
            "etcdlock_etcdcluster_db_quota_bytes", "The backend quota every member runs with"
        )
        self.quota_used = gauge(
            "etcdlock_etcdcluster_db_quota_used_ratio",
            "db_size_bytes / db_quota_bytes: at 1 etcd raises the NOSPACE alarm and takes only reads and "
            "deletes",
        )
        self.last_pass = gauge(
            "etcdlock_etcdcluster_last_pass_timestamp_seconds",
            "When the last reconcile pass over the cluster ended (Unix time); a pass that fails leaves it, "
            "and the other series, as they were",
        )
        self.leader_changes = Counter(
            "etcdlock_etcdcluster_leader_changes",
            "Elections the operator saw won: a pass found a leader other than the last one, or the same in "
            "a later raft term (several between two passes count once)",
            CLUSTER_LABELS,
            registry=registry,
        )

    @property
    def gauges(self) -> tuple[Gauge, ...]:
        return (
            self.desired,
            self.members,
            self.ready,
            self.healthy,
            self.learners,
            self.quorum,
            self.has_leader,
            self.db_size,
            self.db_in_use,
            self.db_quota,
            self.quota_used,
            self.last_pass,
        )

    def forget(self, namespace: str, name: str) -> None:
        for metric in (*self.gauges, self.leader_changes):
            _remove(metric, namespace, name)

    def forget_members(self, namespace: str, name: str) -> None:
        """The last pass did not look at the members: what an earlier one saw (a quorum, a leader) is not
        claimed any more. The election count and the last pass' time stay."""
        for metric in self.gauges:
            if metric is not self.last_pass:
                _remove(metric, namespace, name)

    def forget_database(self, namespace: str, name: str) -> None:
        """No member answered: the sizes are unknown (left out, not 0)."""
        for metric in (self.db_size, self.db_in_use, self.quota_used):
            _remove(metric, namespace, name)


def _remove(metric: MetricWrapperBase, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass


class QueueMetrics:
    """Turns the changes of one lock's queue into its metrics (the first look is the baseline)."""

    def __init__(self, metrics: Metrics, namespace: str, name: str) -> None:
        self._metrics = metrics
        self._labels = (namespace, name)
        self._waiting_since: dict[str, float] = {}
        self._holding_since: dict[str, float] = {}  # the holds seen from their start
        metrics.serving(namespace, name)

    def changed(self, change: QueueChange, queue: QueueView) -> None:
        now = time.monotonic()
        labels, metrics = self._labels, self._metrics
        if change.baseline:
            self._rebaseline(queue)
        for contender in change.joined:
            self._waiting_since.setdefault(contender.key, now)
        for contender in change.left:
            self._waiting_since.pop(contender.key, None)
        for contender in change.released:
            since = self._holding_since.pop(contender.key, None)
            if since is not None:
                metrics.hold_seconds.labels(*labels).observe(now - since)
        for contender in change.acquired:
            waited = now - self._waiting_since.pop(contender.key, now)
            if not change.baseline:
                self._holding_since[contender.key] = now
                metrics.acquisitions.labels(*labels).inc()
                metrics.wait_seconds.labels(*labels).observe(waited)
        if not change.baseline and change.released:
            metrics.releases.labels(*labels).inc(len(change.released))
        metrics.holders.labels(*labels).set(len(queue.holders))
        metrics.waiters.labels(*labels).set(len(queue.waiters))
        self._oldest_hold(queue)

    def _rebaseline(self, queue: QueueView) -> None:
        """The queue was read afresh (a new view: its store was retired, say): a holder still holding is
        the same hold and a waiter still waiting the same wait, measured from when they were first seen;
        who left (or took the lock) meanwhile did so unseen, and is forgotten rather than kept for good."""
        self._holding_since = {k: t for k, t in self._holding_since.items() if k in queue.holders}
        self._waiting_since = {k: t for k, t in self._waiting_since.items() if k in queue.waiters}

    def _oldest_hold(self, queue: QueueView) -> None:
        """The oldest hold's start, as the queue records it (the holder's own acquire time where its key
        carries one, else when the operator first saw it holding)."""
        ages = [clock.age(queue.since.get(key)) for key in queue.holders]
        known = [age for age in ages if age != float("inf")]
        if not known:
            _remove(self._metrics.held_since, *self._labels)
            return
        self._metrics.held_since.labels(*self._labels).set(time.time() - max(known))
