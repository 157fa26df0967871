"""The Kubernetes objects that run an EtcdCluster, rendered from its spec by plain functions.

A cluster NAME is a StatefulSet NAME whose pods are the members (NAME-0, NAME-1, ...), a headless Service
NAME (stable peer names NAME-i.NAME.NAMESPACE.svc, published before the pods are ready so that members
can find each other) and a client Service NAME-client, plus a PodDisruptionBudget that keeps a quorum.
A new cluster bootstraps with a static ``--initial-cluster`` of the first ``replicas`` members; once it
runs, the template says ``--initial-cluster-state=existing`` with the current membership, so that a pod
created later (scale-out, or a member replaced) joins the running cluster as the member the operator added
for it. Membership changes go through the etcd API, one step at a time (:mod:`.membership`). The
StatefulSet uses the ``OnDelete`` strategy: the operator restarts members itself, one at a time and only
while the cluster is healthy. The flags follow etcd's guidance: default heartbeat and election timeout, a
2 GiB quota, periodic revision compaction (``maintenance.compactionRetention``, default 1h) and the v3.5
recommended snapshot count. Probes use ``/health`` on the metrics port, which every 3.5 release serves:
liveness asks the member alone (``serializable``), readiness that it serves linearizable reads (it is part
of a quorum; a learner is never ready, so clients of the client Service never reach one). etcd 3.4 takes
the same flags and serves ``/health`` there too, but ignores ``serializable``: a 3.4 member's liveness is a
TCP check of the metrics port instead (one that needs a quorum would restart members waiting for one).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from etcdlock.operator.etcdcluster.backup.settings import StoreSpec
from etcdlock.operator.etcdcluster.membership import quorum
from etcdlock.operator.etcdcluster.spec import CLIENT_PORT, PEER_PORT, ClusterSpec
from etcdlock.operator.names import member_secret

METRICS_PORT = 2381
QUOTA_BYTES = 2 * 1024**3
DATA = "/var/lib/etcd"
TLS_DIR = "/etc/etcd/tls"
TEMPLATE_HASH = "etcdlock.io/template-hash"

Obj = dict[str, Any]


def _meta(spec: ClusterSpec, name: str, owner: Obj | None) -> Obj:
    meta: Obj = {"name": name, "namespace": spec.namespace, "labels": described(spec)}
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


@dataclass(frozen=True)
class RestoreSource:
    """What the members of a cluster bootstrapped from a backup restore first, and the image (the
    operator's own) whose ``etcdlock restore-member`` does it."""

    image: str
    store: StoreSpec
    snapshot: str
    sha256: str


def statefulset(
    spec: ClusterSpec,
    owner: Obj | None = None,
    members: dict[str, str] | None = None,
    restore: RestoreSource | None = None,
    ca_digest: str = "",
) -> Obj:
    """The members' StatefulSet (Parallel start: a new cluster's members must all come up to elect).

    Without ``members`` it bootstraps a new cluster (from ``restore``'s snapshot if given: an init
    container restores it into each member's data first); with them (name -> peer URL, the current
    membership) a pod created from it joins the running cluster. ``ca_digest`` (TLS only) is the digest of
    the CA bundle the members trust: etcd reads it only at start, so a member restarts when it changes.
    """
    if members is None:
        initial, state = spec.initial_cluster(), "new"
    else:
        initial, state = ",".join(f"{n}={u}" for n, u in sorted(members.items())), "existing"
    scheme = spec.scheme
    container: Obj = {
        "name": "etcd",
        "image": spec.image,
        "command": [
            "/usr/local/bin/etcd",
            "--name=$(POD_NAME)",
            f"--data-dir={DATA}/data",
            f"--listen-client-urls={scheme}://0.0.0.0:{CLIENT_PORT}",
            f"--advertise-client-urls={scheme}://$(POD_NAME).{spec.name}.{spec.namespace}.svc:{CLIENT_PORT}",
            f"--listen-peer-urls={scheme}://0.0.0.0:{PEER_PORT}",
            f"--initial-advertise-peer-urls={_advertised_peer(spec)}",
            f"--initial-cluster={initial}",
            f"--initial-cluster-state={state}",
            f"--initial-cluster-token={spec.cluster_token}",
            f"--listen-metrics-urls=http://0.0.0.0:{METRICS_PORT}",
            f"--quota-backend-bytes={QUOTA_BYTES}",
            "--auto-compaction-mode=periodic",
            f"--auto-compaction-retention={spec.compaction_retention}",
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
            **_alive(spec.version),
            "initialDelaySeconds": 10,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "readinessProbe": {"httpGet": {"path": "/health", "port": "metrics"}, "periodSeconds": 5},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "data", "mountPath": DATA}],
    }
    if spec.tls is not None:
        container["command"] += _tls_flags()
        container["volumeMounts"].append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
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
    if restore is not None and members is None:
        pod["initContainers"] = [_restore_container(spec, restore, initial, container)]
    for key in ("nodeSelector", "tolerations"):
        if overrides.get(key):
            pod[key] = overrides[key]
    annotations = {**(overrides.get("annotations") or {}), TEMPLATE_HASH: template_hash(pod, ca_digest)}
    # The volumes follow from the storage and TLS settings, which the flags and mounts show already.
    volumes: list[Obj] = [] if spec.storage_size is not None else [{"name": "data", "emptyDir": {}}]
    if spec.tls is not None:
        secret = {"secretName": member_secret(spec.name), "defaultMode": 0o440}
        volumes.append({"name": "tls", "secret": secret})
    if volumes:
        pod["volumes"] = volumes
    template_meta: Obj = {"labels": described(spec), "annotations": annotations}
    sts_spec: Obj = {
        "serviceName": spec.name,
        "replicas": spec.replicas,
        "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "OnDelete"},
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
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(spec, spec.name, owner),
        "spec": sts_spec,
    }


def _restore_container(spec: ClusterSpec, restore: RestoreSource, initial: str, etcd: Obj) -> Obj:
    """``etcdlock restore-member``: the member's data from the snapshot, unless it has data already."""
    store = restore.store
    command = [
        "etcdlock",
        "restore-member",
        f"--store={store.url}",
        f"--snapshot={restore.snapshot}",
        f"--sha256={restore.sha256}",
        f"--data-dir={DATA}/data",
        "--name=$(POD_NAME)",
        f"--initial-cluster={initial}",
        f"--initial-cluster-token={spec.cluster_token}",
        f"--initial-advertise-peer-urls={_advertised_peer(spec)}",
    ]
    if store.endpoint:
        command.insert(3, f"--store-endpoint={store.endpoint}")
    container: Obj = {
        "name": "restore",
        "image": restore.image,
        "command": command,
        "env": etcd["env"],
        "securityContext": etcd["securityContext"],
        "volumeMounts": etcd["volumeMounts"],
    }
    if store.secret:
        container["envFrom"] = [{"secretRef": {"name": store.secret}}]
    return container


def template_hash(pod: Obj, ca_digest: str = "") -> str:
    """What a running member must be restarted for (image, flags, resources, node selection, affinity,
    tolerations, the CA bundle it trusts), leaving out what only matters to a member's first start (the
    bootstrap flags, the restore's init container), and pod annotations, which reach pods created
    afterwards. A renewed member certificate is not among them: etcd reads it again for every handshake."""
    relevant = json.loads(json.dumps(pod))
    relevant.pop("initContainers", None)
    for container in relevant["containers"]:
        container["command"] = [c for c in container["command"] if not c.startswith("--initial-cluster")]
    return digest({"pod": relevant, "ca": ca_digest}) if ca_digest else digest(relevant)


def _alive(version: str) -> Obj:
    """The liveness check: the member answers by itself (3.5), or at least listens (3.4)."""
    if version.startswith("3.4."):
        return {"tcpSocket": {"port": "metrics"}}
    return {"httpGet": {"path": "/health?serializable=true", "port": "metrics"}}


def _advertised_peer(spec: ClusterSpec) -> str:
    return f"{spec.scheme}://$(POD_NAME).{spec.name}.{spec.namespace}.svc:{PEER_PORT}"


def _tls_flags() -> list[str]:
    """Clients and peers over TLS, each demanding a certificate of the cluster's CA."""
    cert, key, ca = f"{TLS_DIR}/tls.crt", f"{TLS_DIR}/tls.key", f"{TLS_DIR}/ca.crt"
    return [
        f"--cert-file={cert}",
        f"--key-file={key}",
        f"--trusted-ca-file={ca}",
        "--client-cert-auth",
        f"--peer-cert-file={cert}",
        f"--peer-key-file={key}",
        f"--peer-trusted-ca-file={ca}",
        "--peer-client-cert-auth",
    ]


def digest(obj: Any) -> str:
    """A short digest of a JSON value, the same for equal values whatever the order of their keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def described(spec: ClusterSpec) -> dict[str, str]:
    """The labels of what the operator creates: the selecting ones (name, instance), and the etcd version
    and the manager, which select nothing (a version change must not orphan a member)."""
    return {
        **spec.labels,
        "app.kubernetes.io/version": spec.version,
        "app.kubernetes.io/managed-by": "etcdlock",
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
        "spec": {"minAvailable": quorum(spec.replicas), "selector": {"matchLabels": dict(spec.labels)}},
    }


def children(
    spec: ClusterSpec, owner: Obj | None = None, restore: RestoreSource | None = None, ca_digest: str = ""
) -> list[Obj]:
    """Every object the cluster needs, owned by the EtcdCluster (deleted with it)."""
    return [
        *services(spec, owner),
        statefulset(spec, owner, restore=restore, ca_digest=ca_digest),
        disruption_budget(spec, owner),
    ]
