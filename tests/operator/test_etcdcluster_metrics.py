"""An EtcdCluster's metrics end to end in the sandbox: the operator (a real process) runs a one-member cluster
of real etcd, and its /metrics shows the cluster as etcd reports it, with the database size etcd gives; the
series go when the EtcdCluster is deleted. Every wait is bounded."""

from __future__ import annotations

import urllib.request

import pytest
from kubernetes.client import ApiClient
from operator_support import Operated, eventually
from prometheus_client.parser import text_string_to_metric_families
from test_etcdcluster import SLOW, Env, settled

from etcdlock.operator.etcdcluster.rendering import QUOTA_BYTES


class MetricsEnv(Env):
    def __init__(self, api: ApiClient, namespace: str, operator: str) -> None:
        super().__init__(api, namespace)
        self.operator = operator

    def samples(self, cluster: str) -> dict[str, float]:
        """The operator's samples labelled with this namespace and ``cluster``, by name."""
        with urllib.request.urlopen(f"{self.operator}/metrics", timeout=5) as response:
            text = response.read().decode()
        wanted = {"namespace": self.namespace, "cluster": cluster}
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.labels == wanted
        }


@pytest.fixture(scope="module")
def env(operated: Operated) -> MetricsEnv:
    return MetricsEnv(operated.api, operated.namespace, operated.operator.url)


def test_the_operator_exports_a_running_clusters_metrics_and_drops_them_with_it(env: MetricsEnv) -> None:
    env.create("watched", {"replicas": 1})
    eventually(lambda: env.status("watched"), settled(1), "one healthy voter", SLOW)
    samples = eventually(
        lambda: env.samples("watched"),
        lambda s: s.get("etcdlock_etcdcluster_quorum") == 1 and s.get("etcdlock_etcdcluster_has_leader") == 1,
        "the quorum and its leader in the metrics",
    )
    assert samples["etcdlock_etcdcluster_desired_members"] == 1
    assert samples["etcdlock_etcdcluster_members"] == 1
    assert samples["etcdlock_etcdcluster_ready_members"] == 1
    assert samples["etcdlock_etcdcluster_healthy_members"] == 1
    assert samples["etcdlock_etcdcluster_learners"] == 0
    assert samples["etcdlock_etcdcluster_leader_changes_total"] == 0, "one member, one election, before it"
    size = samples["etcdlock_etcdcluster_db_size_bytes"]
    assert 0 < samples["etcdlock_etcdcluster_db_size_in_use_bytes"] <= size, "etcd's own status"
    assert samples["etcdlock_etcdcluster_db_quota_bytes"] == QUOTA_BYTES
    assert samples["etcdlock_etcdcluster_db_quota_used_ratio"] == pytest.approx(size / QUOTA_BYTES)

    env.objects.delete_namespaced_custom_object(
        "etcdlock.io", "v1alpha1", env.namespace, "etcdclusters", "watched"
    )
    eventually(lambda: env.samples("watched"), lambda s: not s, "the deleted cluster's series gone", SLOW)
