"""An EtcdCluster's metrics, from what a reconcile pass saw (no etcd request of their own).

:func:`readings` is the pure mapping from a :class:`~.status.Pass` to the gauges' values (its rules are
written there); :class:`ClusterTelemetry` sets them on the operator's
:class:`~etcdlock.operator.metrics.Metrics`, counts the elections it sees, and removes a cluster's series
when the controller forgets it (the EtcdCluster was deleted, or this replica stopped leading: a deposed
replica must not go on reporting what it saw last). Every pass that ends sets the time of the last pass, so
that a cluster whose passes fail (and leave the other series as they were) shows; a pass that ends without
looking at the members (:meth:`ClusterTelemetry.unobserved`) drops what an earlier one saw of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from etcdlock.operator.etcdcluster.rendering import QUOTA_BYTES
from etcdlock.operator.etcdcluster.status import Pass, has_quorum, healthy_voters
from etcdlock.operator.metrics import BACKUP_KINDS, Metrics


@dataclass(frozen=True)
class Readings:
    """One pass's values of the cluster's gauges; ``leader`` (member ID, raft term) identifies the
    election the leader won (None: no member that answered leads); the database sizes are None when no
    member answered (their series are then left out, not set to 0)."""

    desired: int
    members: int
    ready: int
    healthy: int
    learners: int
    quorum: bool
    leader: tuple[int, int] | None
    db_size: int | None
    db_in_use: int | None


def readings(run: Pass) -> Readings:
    """What the pass says of the cluster.

    - desired: the spec's replicas; members and learners: what etcd lists (0 when nobody answers);
    - ready: the voting members that answer (the status' readyMembers); healthy: every member that
      answers, learners included;
    - quorum: a quorum of the voters answers and no quorum's data is known lost (the Available
      condition's rule);
    - the database: the largest of the members that answer (each member's quota applies to its own).
    """
    view = run.view
    if view is None or run.quorum_lost:
        return Readings(run.spec.replicas, 0, 0, 0, 0, False, None, None, None)
    answering = [m for m in view.members if m.healthy]
    leader = view.leader
    return Readings(
        desired=run.spec.replicas,
        members=len(view.members),
        ready=healthy_voters(view),
        healthy=len(answering),
        learners=len(view.learners),
        quorum=has_quorum(view),
        leader=(leader.id, leader.raft_term) if leader is not None else None,
        db_size=max((m.db_size for m in answering), default=None),
        db_in_use=max((m.db_size_in_use for m in answering), default=None),
    )


def elected(last: tuple[int, int] | None, now: tuple[int, int] | None) -> bool:
    """Whether ``now`` is a leader the operator has not seen before: another member, or the same one in
    another term (elected again; a cluster rebuilt from a backup starts its terms again). No leader now, or
    none seen before (a new cluster, a new operator leader), is no change."""
    return last is not None and now is not None and now != last


class ClusterTelemetry:
    """Sets each cluster's series after each pass (nothing without :class:`Metrics`, as in the tests that
    run the controller bare)."""

    def __init__(self, metrics: Metrics | None) -> None:
        self._metrics = metrics
        self._leaders: dict[tuple[str, str], tuple[int, int]] = {}
        self._clusters: set[tuple[str, str]] = set()

    def observed(self, run: Pass) -> None:
        """The pass ``run`` is over: its cluster's series say what it saw."""
        if self._metrics is None:
            return
        key = (run.spec.namespace, run.spec.name)
        self._clusters.add(key)
        seen = readings(run)
        clusters = self._metrics.clusters
        values = {
            clusters.desired: seen.desired,
            clusters.members: seen.members,
            clusters.ready: seen.ready,
            clusters.healthy: seen.healthy,
            clusters.learners: seen.learners,
            clusters.quorum: int(seen.quorum),
            clusters.has_leader: int(seen.leader is not None),
            clusters.db_quota: QUOTA_BYTES,
        }
        for gauge, value in values.items():
            gauge.labels(*key).set(value)
        clusters.last_pass.labels(*key).set(time.time())
        if seen.db_size is not None and seen.db_in_use is not None:
            clusters.db_size.labels(*key).set(seen.db_size)
            clusters.db_in_use.labels(*key).set(seen.db_in_use)
            clusters.quota_used.labels(*key).set(seen.db_size / QUOTA_BYTES)
        else:
            clusters.forget_database(*key)
        self._backups(run, key)
        changes = clusters.leader_changes.labels(*key)  # the series exists from the first pass, at 0
        if elected(self._leaders.get(key), seen.leader):
            changes.inc()
        if seen.leader is not None:
            self._leaders[key] = seen.leader

    def _backups(self, run: Pass, key: tuple[str, str]) -> None:
        """With spec.backup: its full interval (what a backup's age is measured against), the failure count
        from 0 (so that the first failure is an increase), and the last backups the status reports (what a
        new operator leader knows of them before its runner writes one)."""
        assert self._metrics is not None
        backup = run.spec.backup
        if backup is None:
            self._metrics.no_backup(*key)
            return
        self._metrics.backup_full_interval.labels(*key).set(backup.full_interval)
        self._metrics.backup_failures.labels(*key)
        reported = run.previous.get("backup") or {}
        for kind, field in zip(BACKUP_KINDS, ("lastFull", "lastDelta"), strict=True):
            when = reported_time(reported.get(field))
            if when is not None:
                self._metrics.backup_reported(*key, kind, when)

    def unobserved(self, namespace: str, name: str) -> None:
        """A pass over the cluster ended before it looked at the members (an invalid spec; a restore being
        planned; certificates awaited before the first member): it ran, but what an earlier pass saw of the
        members (a quorum, a leader, their number, the database) is no longer claimed: those series are
        dropped until a pass sees the members again. The election count and the backups' series stay."""
        if self._metrics is None:
            return
        self._clusters.add((namespace, name))
        clusters = self._metrics.clusters
        clusters.forget_members(namespace, name)
        clusters.last_pass.labels(namespace, name).set(time.time())

    def forget(self, namespace: str, name: str) -> None:
        """Drop the cluster's series (and its backups')."""
        self._leaders.pop((namespace, name), None)
        self._clusters.discard((namespace, name))
        if self._metrics is not None:
            self._metrics.forget_cluster(namespace, name)

    def close(self) -> None:
        """Drop every cluster's series: this replica no longer reconciles them."""
        for namespace, name in list(self._clusters):
            self.forget(namespace, name)


def reported_time(entry: Any) -> datetime | None:
    """When the status' ``lastFull``/``lastDelta`` entry says that backup was written (None: no entry, or
    no time that reads as one). The previous leader's report: a new leader's runner records a backup only
    when it writes one, and the age of the last full snapshot must not vanish with a failover."""
    if not isinstance(entry, dict) or not isinstance(entry.get("time"), str):
        return None
    try:
        when = datetime.fromisoformat(entry["time"])
    except ValueError:
        return None
    return when if when.tzinfo is not None else None
