"""The EtcdCluster controller without kopf: its Kubernetes side against an in-memory Kubernetes
(:mod:`fake_kube`), its Events through a recorder (:class:`fakes.RecordedEvents`). The passes here find no
member running, so they ask etcd nothing; the passes that change membership run against real etcd
processes in test_etcdcluster.py. The operator's own etcd (its leadership) is the real one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from fake_kube import FakeKube
from fakes import RecordedEvents

from etcdlock.etcd import EtcdClient
from etcdlock.operator.etcdcluster import Clusters, ClusterSpec, children
from etcdlock.operator.etcdcluster.objects import KubeObjects
from etcdlock.operator.kube import ApiUnavailable, Conflict
from etcdlock.operator.leadership import Leadership
from etcdlock.operator.stores import Store

NS = "ns"


def cluster(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "etcdlock.io/v1alpha1",
        "kind": "EtcdCluster",
        "metadata": {"name": "e", "namespace": NS, "uid": "u-e", "generation": 1},
        "spec": spec,
        "status": status or {},
    }


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def events() -> RecordedEvents:
    return RecordedEvents()


@pytest.fixture
async def clusters(kube: FakeKube, events: RecordedEvents, client: EtcdClient) -> AsyncIterator[Clusters]:
    controller = Clusters(kube, Store(client, None, Leadership()), events)  # type: ignore[arg-type]
    yield controller
    await controller.close()


def created(events: RecordedEvents) -> list[str]:
    return [e.message for e in events.events if e.reason == "Created"]


async def test_a_new_cluster_gets_its_children_each_told_by_an_event(
    clusters: Clusters, kube: FakeKube, events: RecordedEvents
) -> None:
    status = await clusters.reconcile(cluster({"replicas": 3}))
    assert created(events) == [
        "created Service e",
        "created Service e-client",
        "created StatefulSet e",
        "created PodDisruptionBudget e",
    ]
    assert {(e.type, e.kind, e.name) for e in events.events} == {("Normal", "EtcdCluster", "e")}
    owners = {obj["metadata"]["ownerReferences"][0]["uid"] for obj in kube.objects.values()}
    assert len(kube.objects) == 4 and owners == {"u-e"}
    assert kube.get("PodDisruptionBudget", NS, "e")["spec"]["minAvailable"] == 2  # type: ignore[index]
    assert status["phase"] == "Creating" and status["ready"] == "0/3"


async def test_children_that_exist_are_read_not_created_again(
    clusters: Clusters, kube: FakeKube, events: RecordedEvents
) -> None:
    first = await clusters.reconcile(cluster({"replicas": 3}))
    kube.calls.clear()
    await clusters.reconcile(cluster({"replicas": 3}, first))
    assert [c for c in kube.calls if c.startswith("create")] == []
    assert len(created(events)) == 4


async def test_a_child_created_by_someone_else_meanwhile_ends_the_pass_and_is_read_by_the_next(
    clusters: Clusters, kube: FakeKube, events: RecordedEvents
) -> None:
    spec = ClusterSpec.parse(NS, "e", {"replicas": 3})
    theirs = next(c for c in children(spec) if c["kind"] == "StatefulSet")
    kube.before["create_namespaced_stateful_set"] = lambda: kube.add("StatefulSet", theirs)
    with pytest.raises(Conflict):
        await clusters.reconcile(cluster({"replicas": 3}))
    assert created(events) == ["created Service e", "created Service e-client"]
    await clusters.reconcile(cluster({"replicas": 3}))
    assert created(events)[2:] == ["created PodDisruptionBudget e"]
    assert "ownerReferences" not in kube.get("StatefulSet", NS, "e")["metadata"]  # type: ignore[index]


async def test_an_unavailable_api_ends_the_pass_with_the_adapters_error(
    clusters: Clusters, kube: FakeKube
) -> None:
    def outage() -> None:
        raise ApiUnavailable("API error 503 Service Unavailable")

    kube.before["list_namespaced_pod"] = outage
    with pytest.raises(ApiUnavailable):
        await clusters.reconcile(cluster({"replicas": 3}))


async def test_an_invalid_spec_fails_with_one_warning_and_no_change_to_kubernetes(
    clusters: Clusters, kube: FakeKube, events: RecordedEvents
) -> None:
    status = await clusters.reconcile(cluster({"replicas": 2}))
    assert status["phase"] == "Failed"
    assert [(e.type, e.reason) for e in events.events] == [("Warning", "InvalidSpec")]
    assert "spec.replicas" in events.events[0].message
    await clusters.reconcile(cluster({"replicas": 2}, status))
    assert len(events.events) == 1  # the status says it already
    assert kube.calls == []


async def test_a_cluster_that_ran_and_answers_no_more_is_degraded_and_its_budget_kept(
    clusters: Clusters, kube: FakeKube, events: RecordedEvents
) -> None:
    await clusters.reconcile(cluster({"replicas": 3}))
    # Five voters were listed last (a scale-in under way): the budget keeps their quorum, not that of 3.
    listed = [{"name": f"e-{i}", "id": f"{i + 1}", "healthy": True, "leader": i == 0} for i in range(5)]
    status = await clusters.reconcile(cluster({"replicas": 3}, {"phase": "Scaling", "members": listed}))
    assert kube.get("PodDisruptionBudget", NS, "e")["spec"]["minAvailable"] == 3  # type: ignore[index]
    assert status["phase"] == "Degraded" and status["leader"] == ""
    assert [m["healthy"] for m in status["members"]] == [False] * 5
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "Unreachable")
    assert events.reasons("Warning") == []


async def test_deleting_a_pod_that_was_already_replaced_leaves_its_successor(kube: FakeKube) -> None:
    kube.add("Pod", {"metadata": {"name": "e-1", "namespace": NS, "uid": "successor"}})
    objects = KubeObjects(kube)  # type: ignore[arg-type]
    await objects.delete_pod(NS, "e-1", "the-one-seen")
    assert kube.get("Pod", NS, "e-1") is not None
    await objects.delete_pod(NS, "e-1", "successor")
    assert kube.get("Pod", NS, "e-1") is None
