"""An EtcdCluster's metrics from what a reconcile pass saw (:mod:`etcdlock.operator.etcdcluster.telemetry`):
the mapping, the elections counted, and the series removed when the cluster is forgotten."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime

from etcdlock.operator.etcdcluster import ClusterSpec
from etcdlock.operator.etcdcluster.membership import ClusterView, MemberState
from etcdlock.operator.etcdcluster.rendering import QUOTA_BYTES
from etcdlock.operator.etcdcluster.status import Pass
from etcdlock.operator.etcdcluster.telemetry import ClusterTelemetry, elected, readings
from etcdlock.operator.metrics import Metrics

SPEC = ClusterSpec.parse("ns", "e", {"replicas": 3})
LABELS = {"namespace": "ns", "cluster": "e"}
MiB = 1024 * 1024


def member(index: int, healthy: bool = True, leader: bool = False, learner: bool = False) -> MemberState:
    return MemberState(
        id=index + 1,
        name=f"e-{index}",
        peer_url=f"http://e-{index}.e.ns.svc:2380",
        client_url=SPEC.client_url_of(index),
        learner=learner,
        healthy=healthy,
        leader=leader,
        db_size=(index + 1) * MiB if healthy else 0,
        db_size_in_use=MiB if healthy else 0,
        raft_term=7 if healthy else 0,
    )


def seen(*members: MemberState, spec: ClusterSpec = SPEC) -> Pass:
    return Pass(spec, {}, view=ClusterView(tuple(members)))


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {**LABELS, **labels})


def test_a_pass_maps_to_members_quorum_leader_and_the_largest_database() -> None:
    run = seen(member(0, leader=True), member(1), member(2, healthy=False), member(3, learner=True))
    got = readings(run)
    assert (got.desired, got.members, got.ready, got.healthy, got.learners) == (3, 4, 2, 3, 1)
    assert got.quorum and got.leader == (1, 7)
    assert got.db_size == 4 * MiB, "the learner's is the largest, and its quota counts too"
    assert got.db_in_use == MiB


def test_a_minority_answering_has_no_quorum_nor_leader() -> None:
    got = readings(seen(member(0), member(1, healthy=False), member(2, healthy=False)))
    assert (got.ready, got.healthy, got.quorum, got.leader) == (1, 1, False, None)


def test_nobody_answering_or_a_quorum_lost_reads_as_zero_with_the_database_unknown() -> None:
    for run in (Pass(SPEC, {}), replace(seen(member(0), member(1), member(2)), quorum_lost="data gone")):
        got = readings(run)
        assert (got.desired, got.members, got.ready, got.healthy, got.quorum) == (3, 0, 0, 0, False)
        assert got.db_size is None and got.leader is None


def test_an_election_is_another_leader_or_the_same_one_in_another_term() -> None:
    assert not elected(None, (1, 2)), "the first leader seen is no change"
    assert not elected((1, 2), (1, 2))
    assert not elected((1, 2), None), "no leader now is no election won"
    assert elected((1, 2), (2, 3))
    assert elected((1, 2), (1, 4)), "re-elected"


def test_the_gauges_follow_the_passes_and_count_elections() -> None:
    metrics = Metrics()
    telemetry = ClusterTelemetry(metrics)
    telemetry.observed(seen(member(0, leader=True), member(1), member(2)))
    assert value(metrics, "etcdlock_etcdcluster_desired_members") == 3
    assert value(metrics, "etcdlock_etcdcluster_ready_members") == 3
    assert value(metrics, "etcdlock_etcdcluster_quorum") == 1
    assert value(metrics, "etcdlock_etcdcluster_has_leader") == 1
    assert value(metrics, "etcdlock_etcdcluster_db_size_bytes") == 3 * MiB
    assert value(metrics, "etcdlock_etcdcluster_db_quota_bytes") == QUOTA_BYTES
    assert value(metrics, "etcdlock_etcdcluster_db_quota_used_ratio") == 3 * MiB / QUOTA_BYTES
    assert value(metrics, "etcdlock_etcdcluster_leader_changes_total") == 0, "the series starts at 0"
    telemetry.observed(seen(member(0), member(1, leader=True), member(2)))
    telemetry.observed(seen(member(0), member(1, leader=True), member(2)))
    assert value(metrics, "etcdlock_etcdcluster_leader_changes_total") == 1
    telemetry.observed(Pass(SPEC, {}))  # nobody answers
    assert value(metrics, "etcdlock_etcdcluster_quorum") == 0
    assert value(metrics, "etcdlock_etcdcluster_healthy_members") == 0
    assert value(metrics, "etcdlock_etcdcluster_db_size_bytes") is None, "unknown, not 0"
    telemetry.observed(seen(member(0), member(1, leader=True), member(2)))
    assert value(metrics, "etcdlock_etcdcluster_leader_changes_total") == 1, "the same leader, same term"


def test_forgetting_a_cluster_drops_its_series_and_its_backups() -> None:
    metrics = Metrics()
    telemetry = ClusterTelemetry(metrics)
    spec = ClusterSpec.parse("ns", "e", {"replicas": 1, "backup": {"store": {"url": "file:///b"}}})
    telemetry.observed(seen(replace(member(0, leader=True)), spec=spec))
    metrics.backed_up("ns", "e", "full", 10)
    assert value(metrics, "etcdlock_backup_full_interval_seconds") == 3600
    assert value(metrics, "etcdlock_backup_failures_total") == 0, "from 0: the first failure is an increase"
    assert value(metrics, "etcdlock_backup_last_success_timestamp_seconds", kind="full") is not None
    other = ClusterTelemetry(metrics)
    other.observed(Pass(ClusterSpec.parse("ns", "other", {"replicas": 1}), {}))
    telemetry.forget("ns", "e")
    for name in (
        "etcdlock_etcdcluster_desired_members",
        "etcdlock_etcdcluster_db_size_bytes",
        "etcdlock_etcdcluster_leader_changes_total",
        "etcdlock_backup_full_interval_seconds",
        "etcdlock_backup_failures_total",
    ):
        assert value(metrics, name) is None, name
    assert value(metrics, "etcdlock_backup_last_success_timestamp_seconds", kind="full") is None
    assert (
        metrics.registry.get_sample_value(
            "etcdlock_etcdcluster_desired_members", {"namespace": "ns", "cluster": "other"}
        )
        == 1
    ), "other clusters keep theirs"
    other.close()
    assert (
        metrics.registry.get_sample_value(
            "etcdlock_etcdcluster_desired_members", {"namespace": "ns", "cluster": "other"}
        )
        is None
    ), "a replica that stops leading drops every cluster's series"


def test_without_metrics_nothing_is_recorded() -> None:
    ClusterTelemetry(None).observed(seen(member(0, leader=True)))


def test_every_pass_that_ends_says_when() -> None:
    metrics = Metrics()
    telemetry = ClusterTelemetry(metrics)
    before = time.time()
    telemetry.observed(seen(member(0, leader=True), member(1), member(2)))
    stamp = value(metrics, "etcdlock_etcdcluster_last_pass_timestamp_seconds")
    assert stamp is not None and before <= stamp <= time.time()
    telemetry.unobserved("ns", "e")
    assert (value(metrics, "etcdlock_etcdcluster_last_pass_timestamp_seconds") or 0) >= stamp
    telemetry.forget("ns", "e")
    assert value(metrics, "etcdlock_etcdcluster_last_pass_timestamp_seconds") is None


def test_a_pass_that_did_not_look_at_the_members_claims_no_quorum_nor_leader() -> None:
    """An invalid spec, a restore being planned, certificates awaited: what an earlier pass saw is not
    left claiming a healthy cluster (nor an unhealthy one: the series are gone until a pass looks)."""
    metrics = Metrics()
    telemetry = ClusterTelemetry(metrics)
    telemetry.observed(seen(member(0, leader=True), member(1), member(2)))
    telemetry.observed(seen(member(0), member(1, leader=True), member(2)))
    telemetry.unobserved("ns", "e")
    for name in (
        "etcdlock_etcdcluster_quorum",
        "etcdlock_etcdcluster_has_leader",
        "etcdlock_etcdcluster_ready_members",
        "etcdlock_etcdcluster_desired_members",
        "etcdlock_etcdcluster_db_size_bytes",
    ):
        assert value(metrics, name) is None, name
    assert value(metrics, "etcdlock_etcdcluster_leader_changes_total") == 1, "the count goes on"
    telemetry.observed(seen(member(0), member(1, leader=True), member(2)))
    assert value(metrics, "etcdlock_etcdcluster_quorum") == 1
    telemetry.unobserved("ns", "other")
    telemetry.close()
    assert (
        metrics.registry.get_sample_value(
            "etcdlock_etcdcluster_last_pass_timestamp_seconds", {"namespace": "ns", "cluster": "other"}
        )
        is None
    ), "a cluster only ever seen unobserved is dropped too"


def test_a_new_operator_leader_knows_the_last_backups_from_the_status() -> None:
    """After a failover the new leader's runner has written nothing yet: the age of the last full
    snapshot comes from what the previous leader put in the status, so EtcdClusterBackupTooOld still
    sees it; a backup written since counts, an older report never turns the gauge back."""
    metrics = Metrics()
    spec = ClusterSpec.parse("ns", "e", {"replicas": 1, "backup": {"store": {"url": "file:///b"}}})
    previous = {
        "backup": {
            "lastFull": {"time": "2024-05-01T10:00:00Z", "revision": 5, "size": 1, "object": "x"},
            "lastDelta": {"time": "2024-05-01T10:30:00Z", "revision": 9},
        }
    }
    telemetry = ClusterTelemetry(metrics)
    telemetry.observed(replace(seen(member(0, leader=True), spec=spec), previous=previous))
    full = datetime(2024, 5, 1, 10, tzinfo=UTC).timestamp()
    assert value(metrics, "etcdlock_backup_last_success_timestamp_seconds", kind="full") == full
    assert value(metrics, "etcdlock_backup_last_success_timestamp_seconds", kind="delta") == full + 1800
    metrics.backed_up("ns", "e", "full", 10)
    written = value(metrics, "etcdlock_backup_last_success_timestamp_seconds", kind="full")
    assert written is not None and written > full
    telemetry.observed(replace(seen(member(0, leader=True), spec=spec), previous=previous))
    assert value(metrics, "etcdlock_backup_last_success_timestamp_seconds", kind="full") == written
    broken = {"backup": {"lastFull": {"time": "yesterday"}}}
    ClusterTelemetry(metrics).observed(replace(seen(member(0), spec=spec), previous=broken))
    telemetry.forget("ns", "e")
    assert value(metrics, "etcdlock_backup_last_success_timestamp_seconds", kind="full") is None
