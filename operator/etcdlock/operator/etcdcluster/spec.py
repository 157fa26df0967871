"""What an EtcdCluster spec means, checked: its size (an odd number of members that keeps a quorum), its
etcd version and the upgrade path to another one, its maintenance schedule, its backups, restore and
recovery (:mod:`.backup.settings`), its TLS (:mod:`.tls`: every URL is https then), and the names and URLs its
members get (NAME-i, reached as NAME-i.NAME.NAMESPACE.svc through the headless Service NAME; clients use
the Service NAME-client). :mod:`.rendering` turns a :class:`ClusterSpec` into the Kubernetes objects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from etcdlock.operator.errors import InvalidSpec
from etcdlock.operator.etcdcluster.backup.settings import (
    BackupSpec,
    RestoreSpec,
    parse_backup,
    parse_recovery,
    parse_restore,
)
from etcdlock.operator.etcdcluster.membership import ClusterView
from etcdlock.operator.etcdcluster.tls import TlsSpec, parse_tls

SIZES = (1, 3, 5, 7)
DEFAULT_VERSION = "3.5.21"
IMAGE = "registry.k8s.io/etcd:{version}-0"
CLIENT_PORT, PEER_PORT = 2379, 2380
_VERSION = re.compile(r"^3\.(\d+)\.(\d+)$")
_DURATION = re.compile(r"^(\d+)(s|m|h)$")
_UNITS = {"s": 1, "m": 60, "h": 3600}
DEFAULT_DEFRAGMENT_INTERVAL = "24h"
DEFAULT_COMPACTION_RETENTION = "1h"

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
    defragment_interval: float = 24 * 3600.0
    compaction_retention: str = DEFAULT_COMPACTION_RETENTION
    backup: BackupSpec | None = None
    restore: RestoreSpec | None = None
    automatic_recovery: bool = False
    tls: TlsSpec | None = None
    # The cluster token of the members' first start (default NAMESPACE-NAME): a cluster rebuilt from a
    # backup gets a new one, so that no member of the old cluster can join it.
    token: str = ""

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
        maintenance = spec.get("maintenance") or {}
        interval = maintenance.get("defragmentInterval", DEFAULT_DEFRAGMENT_INTERVAL)
        retention = maintenance.get("compactionRetention", DEFAULT_COMPACTION_RETENTION)
        for key, value in (("defragmentInterval", interval), ("compactionRetention", retention)):
            if not isinstance(value, str) or not _DURATION.match(value):
                raise InvalidSpec(f"spec.maintenance.{key} must look like 30s, 10m or 24h, not {value!r}")
        backup = parse_backup(spec.get("backup"), seconds)
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
            defragment_interval=seconds(interval),
            compaction_retention=retention,
            backup=backup,
            restore=parse_restore(spec.get("restore"), backup),
            automatic_recovery=parse_recovery(spec.get("recovery")),
            tls=parse_tls(spec.get("tls"), seconds),
        )

    @property
    def cluster_token(self) -> str:
        return self.token or f"{self.namespace}-{self.name}"

    @property
    def labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": "etcd", "app.kubernetes.io/instance": self.name}

    def member(self, index: int) -> str:
        return f"{self.name}-{index}"

    def ordinal(self, member: str) -> int | None:
        head, _, index = member.rpartition("-")
        return int(index) if head == self.name and index.isdigit() else None

    @property
    def scheme(self) -> str:
        """Of every client and peer URL (the metrics port stays http)."""
        return "http" if self.tls is None else "https"

    def client_url_of(self, index: int) -> str:
        return f"{self.scheme}://{self.member(index)}.{self.name}.{self.namespace}.svc:{CLIENT_PORT}"

    def peer_url(self, index: int) -> str:
        return f"{self.scheme}://{self.member(index)}.{self.name}.{self.namespace}.svc:{PEER_PORT}"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.name}-client.{self.namespace}.svc:{CLIENT_PORT}"

    def initial_cluster(self) -> str:
        return ",".join(f"{self.member(i)}={self.peer_url(i)}" for i in range(self.replicas))

    def wanted(self) -> dict[str, str]:
        """The members this spec asks for: name -> peer URL."""
        return {self.member(i): self.peer_url(i) for i in range(self.replicas)}

    def names(self, view: ClusterView) -> dict[str, str]:
        """Peer URL -> member name, by this spec's naming (a just-added learner has no name in etcd yet)."""
        by_url = {self.peer_url(i): self.member(i) for i in range(max(SIZES))}
        return {m.peer_url: by_url.get(m.peer_url, m.name) for m in view.members}


def seconds(duration: str) -> float:
    """``30s``, ``10m``, ``24h`` in seconds (0 turns the schedule off)."""
    match = _DURATION.match(duration)
    if match is None:
        raise InvalidSpec(f"{duration!r} is not a duration like 30s, 10m or 24h")
    return float(int(match.group(1)) * _UNITS[match.group(2)])


def upgrade_allowed(current: str, wanted: str) -> bool:
    """etcd's upgrade path: any patch of the same minor, or the next minor; never down."""
    now, then = _VERSION.match(current), _VERSION.match(wanted)
    if now is None or then is None:
        return False
    (minor, patch), (new_minor, new_patch) = map(int, now.groups()), map(int, then.groups())
    return (new_minor == minor and new_patch >= patch) or new_minor == minor + 1
