"""EtcdCluster rendering: the spec's meaning and the objects that run a cluster, checked against the
Kubernetes schemas and against what etcd needs (static bootstrap, stable peer names, quorum PDB)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from etcdlock.operator.errors import InvalidSpec
from etcdlock.operator.etcdcluster import (
    TEMPLATE_HASH,
    ClusterSpec,
    children,
    disruption_budget,
    services,
    statefulset,
    upgrade_allowed,
)

OWNER = {"apiVersion": "etcdlock.io/v1alpha1", "kind": "EtcdCluster", "metadata": {"name": "e", "uid": "u-1"}}


def flags(sts: dict[str, Any]) -> dict[str, str]:
    command = sts["spec"]["template"]["spec"]["containers"][0]["command"]
    return dict(arg[2:].split("=", 1) for arg in command[1:])


def test_defaults_and_refusals() -> None:
    spec = ClusterSpec.parse("ns", "e", {})
    assert (spec.replicas, spec.version, spec.image) == (3, "3.5.21", "registry.k8s.io/etcd:3.5.21-0")
    for bad, field in (({"replicas": 2}, "spec.replicas"), ({"version": "v3.5"}, "spec.version")):
        with pytest.raises(InvalidSpec, match=field):
            ClusterSpec.parse("ns", "e", bad)


@pytest.mark.parametrize("version", ["1.30", "1.37"])
@pytest.mark.parametrize("storage", [None, {"size": "2Gi", "storageClassName": "fast"}])
def test_every_child_validates_against_the_kubernetes_schemas(version: str, storage: Any) -> None:
    raw: dict[str, Any] = {"replicas": 5, "resources": {"requests": {"cpu": "100m"}}}
    if storage:
        raw["storage"] = storage
    for obj in children(ClusterSpec.parse("ns", "e", raw), OWNER):
        assert kubernetes_validate.validate(obj, version, strict=True) == version, obj["kind"]
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "u-1"


@pytest.mark.parametrize(("replicas", "quorum"), [(1, 1), (3, 2), (5, 3), (7, 4)])
def test_the_budget_keeps_a_quorum(replicas: int, quorum: int) -> None:
    pdb = disruption_budget(ClusterSpec.parse("ns", "e", {"replicas": replicas}))
    assert pdb["spec"]["minAvailable"] == quorum


def test_members_bootstrap_from_stable_peer_names() -> None:
    sts = statefulset(ClusterSpec.parse("ns", "e", {"replicas": 3}))
    given = flags(sts)
    assert given["initial-cluster"] == ",".join(f"e-{i}=http://e-{i}.e.ns.svc:2380" for i in range(3))
    assert given["initial-cluster-state"] == "new"
    assert given["initial-advertise-peer-urls"] == "http://$(POD_NAME).e.ns.svc:2380"
    assert given["quota-backend-bytes"] == str(2 * 1024**3)
    assert sts["spec"]["podManagementPolicy"] == "Parallel" and sts["spec"]["serviceName"] == "e"
    container = sts["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health?serializable=true"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert sts["spec"]["updateStrategy"] == {"type": "OnDelete"}
    assert sts["spec"]["template"]["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]


def test_pod_template_overrides_reach_the_pods() -> None:
    overrides = {
        "annotations": {"example.com/team": "locks"},
        "nodeSelector": {"disk": "ssd"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "etcd", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {}},
    }
    sts = statefulset(ClusterSpec.parse("ns", "e", {"podTemplate": overrides}))
    template = sts["spec"]["template"]
    assert template["metadata"]["annotations"]["example.com/team"] == "locks"
    assert template["spec"]["nodeSelector"] == {"disk": "ssd"}
    assert template["spec"]["tolerations"] == overrides["tolerations"]
    assert template["spec"]["affinity"] == {"nodeAffinity": {}}


@pytest.mark.parametrize(
    ("current", "wanted", "allowed"),
    [
        ("3.5.17", "3.5.21", True),
        ("3.5.21", "3.5.21", True),
        ("3.5.21", "3.6.0", True),
        ("3.4.30", "3.6.0", False),
        ("3.6.0", "3.5.21", False),
        ("3.5.21", "3.5.17", False),
    ],
)
def test_upgrades_go_one_minor_at_a_time(current: str, wanted: str, allowed: bool) -> None:
    assert upgrade_allowed(current, wanted) is allowed


def test_a_running_cluster_template_joins_the_current_membership() -> None:
    spec = ClusterSpec.parse("ns", "e", {"replicas": 3})
    members = {"e-0": spec.peer_url(0), "e-1": spec.peer_url(1), "e-3": spec.peer_url(3)}
    sts = statefulset(spec, members=members)
    given = flags(sts)
    assert given["initial-cluster-state"] == "existing"
    assert given["initial-cluster"] == ",".join(f"e-{i}=http://e-{i}.e.ns.svc:2380" for i in (0, 1, 3))


def test_the_template_hash_changes_with_what_needs_a_restart_only() -> None:
    spec = ClusterSpec.parse("ns", "e", {"replicas": 3})

    def digest(sts: dict[str, Any]) -> str:
        return str(sts["spec"]["template"]["metadata"]["annotations"][TEMPLATE_HASH])

    bootstrap = digest(statefulset(spec))
    assert digest(statefulset(spec, members={"e-0": spec.peer_url(0)})) == bootstrap
    assert digest(statefulset(ClusterSpec.parse("ns", "e", {"version": "3.5.22"}))) != bootstrap
    limits = {"resources": {"limits": {"memory": "1Gi"}}}
    assert digest(statefulset(ClusterSpec.parse("ns", "e", limits))) != bootstrap


def test_maintenance_settings() -> None:
    spec = ClusterSpec.parse(
        "ns", "e", {"maintenance": {"defragmentInterval": "10m", "compactionRetention": "5m"}}
    )
    assert spec.defragment_interval == 600.0
    assert flags(statefulset(spec))["auto-compaction-retention"] == "5m"
    assert ClusterSpec.parse("ns", "e", {}).defragment_interval == 24 * 3600.0
    assert (
        ClusterSpec.parse("ns", "e", {"maintenance": {"defragmentInterval": "0s"}}).defragment_interval == 0
    )
    with pytest.raises(InvalidSpec, match=r"spec\.maintenance\.defragmentInterval"):
        ClusterSpec.parse("ns", "e", {"maintenance": {"defragmentInterval": "daily"}})


def test_children_say_the_etcd_version_and_their_manager_and_select_by_name_and_instance_only() -> None:
    spec = ClusterSpec.parse("ns", "e", {"version": "3.5.22", "storage": {"size": "1Gi"}})
    selecting = {"app.kubernetes.io/name": "etcd", "app.kubernetes.io/instance": "e"}
    described = {
        **selecting,
        "app.kubernetes.io/version": "3.5.22",
        "app.kubernetes.io/managed-by": "etcdlock",
    }
    for child in children(spec):
        assert child["metadata"]["labels"] == described, child["kind"]
    sts = statefulset(spec)
    assert sts["spec"]["template"]["metadata"]["labels"] == described
    assert sts["spec"]["selector"] == {"matchLabels": selecting}
    assert all(s["spec"]["selector"] == selecting for s in services(spec))
    assert disruption_budget(spec)["spec"]["selector"] == {"matchLabels": selecting}


def test_a_3_4_member_is_alive_while_it_listens_a_3_5_one_while_it_answers_alone() -> None:
    """etcd 3.4 ignores ``serializable``: its /health needs a quorum, which a liveness probe must not."""
    old = statefulset(ClusterSpec.parse("ns", "e", {"version": "3.4.23"}))["spec"]["template"]["spec"]
    new = statefulset(ClusterSpec.parse("ns", "e", {"version": "3.5.21"}))["spec"]["template"]["spec"]
    assert old["containers"][0]["livenessProbe"]["tcpSocket"] == {"port": "metrics"}
    assert "httpGet" not in old["containers"][0]["livenessProbe"]
    assert new["containers"][0]["livenessProbe"]["httpGet"]["path"] == "/health?serializable=true"
    for version in ("1.30", "1.37"):
        assert kubernetes_validate.validate(
            statefulset(ClusterSpec.parse("ns", "e", {"version": "3.4.23"})), version, strict=True
        )
