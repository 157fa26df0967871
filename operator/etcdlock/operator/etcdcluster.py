"""EtcdCluster: what its spec means and the Kubernetes objects that run it, as plain functions.

A cluster NAME is a StatefulSet NAME whose pods are the members (NAME-0, NAME-1, ...), a headless Service
NAME (stable peer names NAME-i.NAME.NAMESPACE.svc, published before the pods are ready so that members
can find each other) and a client Service NAME-client, plus a PodDisruptionBudget that keeps a quorum.
Every member starts with the same static ``--initial-cluster`` of the first ``replicas`` members; later
membership changes go through the etcd API, one step at a time (not in this module). The flags follow
etcd's guidance: default heartbeat and election timeout, a 2 GiB quota, hourly revision compaction and
the v3.5 recommended snapshot count; probes use etcd's ``/livez`` and ``/readyz`` on the metrics port.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from etcdlock.operator.locks import InvalidSpec

SIZES = (1, 3, 5, 7)
DEFAULT_VERSION = "3.5.21"
IMAGE = "registry.k8s.io/etcd:{version}-0"
CLIENT_PORT, PEER_PORT, METRICS_PORT = 2379, 2380, 2381
QUOTA_BYTES = 2 * 1024**3
DATA = "/var/lib/etcd"
_VERSION = re.compile(r"^3\.(\d+)\.(\d+)$")

Obj = dict[str, Any]


@dataclass(frozen=True)
class ClusterSpec:
    """A validated EtcdCluster spec."""

    namespace: str
    name: str
    replicas: int
    version: str
    image: str
    storage_size: str | None = None
    storage_class: str | None = None
    resources: Obj = field(default_factory=dict)
    pod_template: Obj = field(default_factory=dict)

    @classmethod
    def parse(cls, namespace: str, name: str, spec: Any) -> ClusterSpec:
        """Check the spec as the CRD schema does (it may have been stored before the schema existed)."""
        if not isinstance(spec, dict):
            raise InvalidSpec("spec must be an object")
        replicas = spec.get("replicas", 3)
        if replicas not in SIZES or isinstance(replicas, bool):
            raise InvalidSpec(f"spec.replicas must be one of {', '.join(map(str, SIZES))}, not {replicas!r}")
        version = spec.get("version", DEFAULT_VERSION)
        if not isinstance(version, str) or not _VERSION.match(version):
            raise InvalidSpec(f"spec.version must look like 3.5.21, not {version!r}")
        storage = spec.get("storage") or {}
        return cls(
            namespace=namespace,
            name=name,
            replicas=replicas,
            version=version,
            image=spec.get("image") or IMAGE.format(version=version),
            storage_size=storage.get("size"),
            storage_class=storage.get("storageClassName"),
            resources=dict(spec.get("resources") or {}),
            pod_template=dict(spec.get("podTemplate") or {}),
        )

    @property
    def quorum(self) -> int:
        return self.replicas // 2 + 1

    @property
    def labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": "etcd", "app.kubernetes.io/instance": self.name}

    def member(self, index: int) -> str:
        return f"{self.name}-{index}"

    def peer_url(self, index: int) -> str:
        return f"http://{self.member(index)}.{self.name}.{self.namespace}.svc:{PEER_PORT}"

    @property
    def client_url(self) -> str:
        return f"http://{self.name}-client.{self.namespace}.svc:{CLIENT_PORT}"

    def initial_cluster(self) -> str:
        return ",".join(f"{self.member(i)}={self.peer_url(i)}" for i in range(self.replicas))


def upgrade_allowed(current: str, wanted: str) -> bool:
    """etcd's upgrade path: any patch of the same minor, or the next minor; never down."""
    now, then = _VERSION.match(current), _VERSION.match(wanted)
    if now is None or then is None:
        return False
    (minor, patch), (new_minor, new_patch) = map(int, now.groups()), map(int, then.groups())
    return (new_minor == minor and new_patch >= patch) or new_minor == minor + 1


def _meta(spec: ClusterSpec, name: str, owner: Obj | None) -> Obj:
    meta: Obj = {"name": name, "namespace": spec.namespace, "labels": dict(spec.labels)}
    if owner is not None:
        meta["ownerReferences"] = [
            {
                "apiVersion": owner["apiVersion"],
                "kind": owner["kind"],
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


def services(spec: ClusterSpec, owner: Obj | None = None) -> list[Obj]:
    """The headless peer Service (names for every member, ready or not) and the client Service."""
    peer: Obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(spec, spec.name, owner),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": spec.labels,
            "ports": [
                {"name": "client", "port": CLIENT_PORT},
                {"name": "peer", "port": PEER_PORT},
            ],
        },
    }
    client: Obj = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(spec, f"{spec.name}-client", owner),
        "spec": {"selector": spec.labels, "ports": [{"name": "client", "port": CLIENT_PORT}]},
    }
    return [peer, client]


def statefulset(spec: ClusterSpec, owner: Obj | None = None) -> Obj:
    """The members' StatefulSet (Parallel start: a new cluster's members must all come up to elect)."""
    container: Obj = {
        "name": "etcd",
        "image": spec.image,
        "command": [
            "/usr/local/bin/etcd",
            "--name=$(POD_NAME)",
            f"--data-dir={DATA}/data",
            f"--listen-client-urls=http://0.0.0.0:{CLIENT_PORT}",
            f"--advertise-client-urls=http://$(POD_NAME).{spec.name}.{spec.namespace}.svc:{CLIENT_PORT}",
            f"--listen-peer-urls=http://0.0.0.0:{PEER_PORT}",
            f"--initial-advertise-peer-urls=http://$(POD_NAME).{spec.name}.{spec.namespace}.svc:{PEER_PORT}",
            f"--initial-cluster={spec.initial_cluster()}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={spec.namespace}-{spec.name}",
            f"--listen-metrics-urls=http://0.0.0.0:{METRICS_PORT}",
            f"--quota-backend-bytes={QUOTA_BYTES}",
            "--auto-compaction-mode=periodic",
            "--auto-compaction-retention=1h",
            "--snapshot-count=10000",
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "ports": [
            {"name": "client", "containerPort": CLIENT_PORT},
            {"name": "peer", "containerPort": PEER_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT},
        ],
        "livenessProbe": {
            "httpGet": {"path": "/livez", "port": "metrics"},
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "data", "mountPath": DATA}],
    }
    if spec.resources:
        container["resources"] = spec.resources
    overrides = spec.pod_template
    pod: Obj = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "affinity": overrides.get("affinity") or _spread(spec),
        "containers": [container],
    }
    for key in ("nodeSelector", "tolerations"):
        if overrides.get(key):
            pod[key] = overrides[key]
    template_meta: Obj = {"labels": dict(spec.labels)}
    if overrides.get("annotations"):
        template_meta["annotations"] = dict(overrides["annotations"])
    sts_spec: Obj = {
        "serviceName": spec.name,
        "replicas": spec.replicas,
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": dict(spec.labels)},
        "template": {"metadata": template_meta, "spec": pod},
    }
    if spec.storage_size is not None:
        claim: Obj = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": spec.storage_size}},
        }
        if spec.storage_class:
            claim["storageClassName"] = spec.storage_class
        sts_spec["volumeClaimTemplates"] = [{"metadata": {"name": "data"}, "spec": claim}]
    else:
        pod["volumes"] = [{"name": "data", "emptyDir": {}}]
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(spec, spec.name, owner),
        "spec": sts_spec,
    }


def _spread(spec: ClusterSpec) -> Obj:
    """Members on different nodes when possible (a node loss then costs one member, not a quorum)."""
    term = {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": dict(spec.labels)}}
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]
        }
    }


def disruption_budget(spec: ClusterSpec, owner: Obj | None = None) -> Obj:
    """Voluntary disruptions (drains) never take the cluster below quorum."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(spec, spec.name, owner),
        "spec": {"minAvailable": spec.quorum, "selector": {"matchLabels": dict(spec.labels)}},
    }


def children(spec: ClusterSpec, owner: Obj | None = None) -> list[Obj]:
    """Every object the cluster needs, owned by the EtcdCluster (deleted with it)."""
    return [*services(spec, owner), statefulset(spec, owner), disruption_budget(spec, owner)]
