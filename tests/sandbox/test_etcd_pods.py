"""The sandbox's pieces for etcd pods, as plain functions: which pods run as processes, the command line and
environment a container gets here, cluster DNS names, and the pods a StatefulSet asks for. (They run
together, with real processes, in tests/sandbox/test_process_pods.py and
tests/operator/test_etcdcluster.py.)"""

from __future__ import annotations

import base64
import sys
from pathlib import Path
from typing import Any

import pytest

from etcdlock.operator.etcdcluster import ClusterSpec, statefulset
from etcdlock_sandbox.etcd import etcd_binary
from etcdlock_sandbox.network import dns_names
from etcdlock_sandbox.podspec import (
    FROM_THIS_MACHINE,
    CannotRun,
    ContainerConfigError,
    command_line,
    environment,
    process_environment,
    runs_as_processes,
    secret_data,
)
from etcdlock_sandbox.statefulsets import pod_for


def pod(image: str, *init_images: str) -> dict[str, Any]:
    init = [{"name": f"i{n}", "image": i} for n, i in enumerate(init_images)]
    return {
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"containers": [{"name": "c", "image": image}], "initContainers": init},
    }


def test_only_etcd_images_run_as_processes() -> None:
    for image in (
        "registry.k8s.io/etcd:3.5.21-0",
        "gcr.io/etcd-development/etcd:v3.5.21",
        "quay.io/coreos/etcd",
    ):
        assert runs_as_processes(pod(image)), image
    for image in ("busybox:1.36", "registry.k8s.io/etcd-backup:1", "example.com/etcdlock:1"):
        assert not runs_as_processes(pod(image)), image


def test_init_containers_of_etcd_or_the_project_image_run_as_processes_too() -> None:
    etcd = "registry.k8s.io/etcd:3.5.21-0"
    for image in (
        "ghcr.io/etcdlock/etcdlock:0.1.0",
        "etcdlock:dev",
        "example.com/x/etcdlock@sha256:ab",
        etcd,
    ):
        assert runs_as_processes(pod(etcd, etcd, image)), image
    for image in ("busybox:1.36", "ghcr.io/etcdlock/etcdlock-tools:1", "example.com:5000/etcdlock/x:1"):
        assert not runs_as_processes(pod(etcd, image)), image


def init_command(image: str, **fields: list[str]) -> list[str]:
    return command_line(
        {"name": "i", "image": image, **fields}, {}, "127.9.9.3", {"/var/lib/etcd": Path("/v")}
    )


def test_init_containers_run_the_local_etcd_tools_or_etcdlock_from_this_python() -> None:
    etcd, project = "registry.k8s.io/etcd:3.5.21-0", "ghcr.io/etcdlock/etcdlock:0.1.0"
    assert init_command(etcd, command=["/usr/local/bin/etcdutl", "version"]) == [
        etcd_binary("etcdutl"),
        "version",
    ]
    assert init_command(etcd, command=["etcdctl"], args=["get", "k"]) == [etcd_binary("etcdctl"), "get", "k"]
    assert init_command(
        project, command=["etcdlock", "restore-member"], args=["--data-dir=/var/lib/etcd/d"]
    ) == [
        sys.executable,
        "-m",
        "etcdlock",
        "restore-member",
        "--data-dir=/v/d",
    ]
    # Without a command, the image's entrypoint (``etcdlock operator``) gets the args, as in a container.
    assert init_command(project, args=["--help"]) == [sys.executable, "-m", "etcdlock", "operator", "--help"]
    with pytest.raises(CannotRun, match='"sh"'):
        init_command(project, command=["sh", "-c", "etcdlock --help"])


def secret(**data: str) -> dict[str, str]:
    return secret_data({"data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})


def test_env_from_secrets_comes_first_and_env_entries_override_it() -> None:
    container = {
        "envFrom": [
            {"secretRef": {"name": "store"}, "prefix": "AWS_"},
            {"secretRef": {"name": "absent", "optional": True}},
        ],
        "env": [
            {"name": "AWS_REGION", "value": "eu-west-1"},
            {"name": "URL", "value": "$(AWS_ENDPOINT)/bucket $(UNKNOWN)"},
            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "id"}}},
            {"name": "NONE", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "x", "optional": True}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
    }
    secrets = {
        "store": secret(ENDPOINT="http://s3", REGION="us-east-1"),
        "keys": secret(id="é"),
        "absent": None,
    }
    assert environment(pod("etcd"), container, "127.9.9.3", secrets) == {
        "AWS_ENDPOINT": "http://s3",
        "AWS_REGION": "eu-west-1",
        "URL": "http://s3/bucket $(UNKNOWN)",
        "KEY": "é",
        "POD": "p",
    }


def config_error(container: dict[str, Any], secrets: dict[str, dict[str, str] | None]) -> str:
    with pytest.raises(ContainerConfigError) as raised:
        environment(pod("etcd"), container, "127.9.9.3", secrets)
    return str(raised.value)


def test_a_missing_secret_or_key_is_a_container_config_error_unless_optional() -> None:
    by_key = {"env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "id"}}}]}
    assert config_error(by_key, {"keys": None}) == 'secret "keys" not found'
    assert config_error(by_key, {"keys": secret(other="x")}) == "couldn't find key id in Secret ns/keys"
    by_ref = {"envFrom": [{"secretRef": {"name": "store"}}]}
    assert config_error(by_ref, {"store": None}) == 'secret "store" not found'


def test_a_process_gets_its_container_env_and_etcd_tools_first_on_path_but_not_this_machines_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in FROM_THIS_MACHINE:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("HOME", "/home/tester")
    monkeypatch.setenv("AWS_CA_BUNDLE", "/etc/ssl/ca.pem")  # set where the tests run, not in a pod
    monkeypatch.setenv("ETCDCTL_ENDPOINTS", "http://127.0.0.1:1")
    tools = str(Path(etcd_binary("etcdutl")).parent)
    assert process_environment({"AWS_REGION": "us-east-1"}) == {
        "AWS_REGION": "us-east-1",
        "HOME": "/home/tester",
        "PATH": f"{tools}:/usr/bin:/bin",
    }
    assert process_environment({"PATH": "/opt/bin", "HOME": "/root"})["PATH"] == f"{tools}:/opt/bin"


def test_a_member_pod_runs_the_local_etcd_at_its_own_address_with_its_volume(tmp_path: Path) -> None:
    sts = statefulset(ClusterSpec.parse("ns", "e", {"replicas": 3}))
    sts["metadata"]["uid"] = "sts-uid"
    member = pod_for(sts, 1)
    container = member["spec"]["containers"][0]
    env = environment(member, container, "127.9.9.3", {})
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


def test_the_downward_api_hands_over_an_annotation_or_a_label_as_the_pod_is_at_start() -> None:
    started = pod("etcd")
    started["metadata"]["annotations"] = {"etcdlock.io/fencing-token": "42"}
    started["metadata"]["labels"] = {"app": "report"}
    container = {
        "env": [
            {
                "name": "TOKEN",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['etcdlock.io/fencing-token']"}},
            },
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "NONE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['absent']"}}},
        ]
    }
    assert environment(started, container, "127.9.9.3", {}) == {"TOKEN": "42", "APP": "report", "NONE": ""}
