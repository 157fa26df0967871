"""The sandbox's pieces for etcd pods, as plain functions: which pods run as processes, the command line a
container gets here, cluster DNS names, and the pods a StatefulSet asks for. (They run together, with
real etcd processes, in tests/operator/test_etcdcluster.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from etcdlock.operator.etcdcluster import ClusterSpec, statefulset
from etcdlock_sandbox.containers import command_line, environment, runs_etcd
from etcdlock_sandbox.etcd import etcd_binary
from etcdlock_sandbox.network import dns_names
from etcdlock_sandbox.statefulsets import pod_for


def pod(image: str) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": image}]}}


def test_only_etcd_images_run_as_processes() -> None:
    for image in (
        "registry.k8s.io/etcd:3.5.21-0",
        "gcr.io/etcd-development/etcd:v3.5.21",
        "quay.io/coreos/etcd",
    ):
        assert runs_etcd(pod(image)), image
    for image in ("busybox:1.36", "registry.k8s.io/etcd-backup:1", "example.com/etcdlock:1"):
        assert not runs_etcd(pod(image)), image


def test_a_member_pod_runs_the_local_etcd_at_its_own_address_with_its_volume(tmp_path: Path) -> None:
    sts = statefulset(ClusterSpec.parse("ns", "e", {"replicas": 3}))
    sts["metadata"]["uid"] = "sts-uid"
    member = pod_for(sts, 1)
    container = member["spec"]["containers"][0]
    env = environment(member, container, "127.9.9.3")
    argv = command_line(container, env, "127.9.9.3", {"/var/lib/etcd": tmp_path})
    flags = dict(arg[2:].split("=", 1) for arg in argv[1:])
    assert argv[0] == etcd_binary()
    assert flags["name"] == "e-1"
    assert flags["data-dir"] == f"{tmp_path}/data"
    assert flags["listen-client-urls"] == "http://127.9.9.3:2379"
    assert flags["listen-peer-urls"] == "http://127.9.9.3:2380"
    assert flags["advertise-client-urls"] == "http://e-1.e.ns.svc:2379"


def test_cluster_dns_names_pods_of_headless_services_and_services_by_readiness() -> None:
    def member(name: str, address: str, ready: bool) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "namespace": "ns", "labels": {"app": "e"}},
            "spec": {"hostname": name, "subdomain": "e"},
            "status": {"podIP": address, "conditions": [{"type": "Ready", "status": str(ready)}]},
        }

    pods = [member("e-0", "127.9.9.2", True), member("e-1", "127.9.9.3", False)]
    services = [
        {
            "metadata": {"name": "e", "namespace": "ns"},
            "spec": {"selector": {"app": "e"}, "publishNotReadyAddresses": True},
        },
        {"metadata": {"name": "e-client", "namespace": "ns"}, "spec": {"selector": {"app": "e"}}},
    ]
    names = dns_names(pods, services)
    assert names["e-1.e.ns.svc"] == ["127.9.9.3"]
    assert names["e-1.e.ns.svc.cluster.local"] == ["127.9.9.3"]
    assert names["e.ns.svc"] == ["127.9.9.2", "127.9.9.3"]
    assert names["e-client.ns.svc"] == ["127.9.9.2"]  # only ready pods behind a normal Service


def test_statefulset_pods_have_stable_names_claims_and_their_owner() -> None:
    sts = statefulset(ClusterSpec.parse("ns", "e", {"replicas": 3, "storage": {"size": "1Gi"}}))
    sts["metadata"]["uid"] = "sts-uid"
    made = pod_for(sts, 2)
    assert made["metadata"]["name"] == "e-2"
    assert (made["spec"]["hostname"], made["spec"]["subdomain"]) == ("e-2", "e")
    assert made["metadata"]["labels"]["apps.kubernetes.io/pod-index"] == "2"
    assert made["metadata"]["ownerReferences"][0]["uid"] == "sts-uid"
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "data-e-2"}} in made["spec"]["volumes"]
