"""The operator's configuration: parsed once at start (flags, with ``ETCDLOCK_`` environment fallbacks,
see :mod:`etcdlock.cli.operator`) into frozen values that nothing changes afterwards.

Plain values only (no kopf, kubernetes or aiohttp), so that the command line builds them, and reports a
bad value, before the operator's libraries are even loaded.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from etcdlock import __version__
from etcdlock.etcd import EtcdConfig, EtcdLockError
from etcdlock.operator.names import WEBHOOK_PATH

DEFAULT_CERT_DIR = Path("/etc/etcdlock/webhook")
DEFAULT_ELECTION = "/etcdlock/operator/leader"
DEFAULT_LEADER_TTL = 5
# How often the pods the webhook did not label are looked for (see etcdlock.operator.pods.sweep).
DEFAULT_POD_SWEEP_INTERVAL = 600
# The image of this release (manifests/base/operator.yaml runs it; --image names another).
DEFAULT_IMAGE = f"ghcr.io/etcdlock/etcdlock:{__version__}"
# How often the Secret of a lock on an etcd the user runs (spec.etcd) is read again.
DEFAULT_SECRET_RECHECK_INTERVAL = 30


def _identity() -> str:
    return f"{socket.gethostname()}/{os.getpid()}"


@dataclass(frozen=True)
class ElectionSettings:
    """Which election the replicas share, their session TTL, and this replica's name in it."""

    name: str = DEFAULT_ELECTION
    ttl: int = DEFAULT_LEADER_TTL
    identity: str = field(default_factory=_identity)


@dataclass(frozen=True)
class WebhookSettings:
    """Where the webhook listens, its certificate folder, and whether the operator registers it itself."""

    host: str
    port: int
    cert_dir: Path = DEFAULT_CERT_DIR
    configure: bool = False

    @property
    def cert_file(self) -> Path:
        return self.cert_dir / "tls.crt"

    @property
    def key_file(self) -> Path:
        return self.cert_dir / "tls.key"

    def check(self) -> None:
        """A clear error if the certificate is missing."""
        for path in (self.cert_file, self.key_file):
            if not path.is_file():
                raise EtcdLockError(
                    f"webhook certificate {path} not found: mount the webhook Secret there, "
                    "pass --webhook-cert-dir, or --webhook off"
                )

    def url(self, path: str = WEBHOOK_PATH) -> str:
        """How the API server reaches ``path`` of this process (``configure`` only: loopback for a wildcard
        address)."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"https://{host}:{self.port}{path}"

    def ca_bundle(self) -> bytes:
        ca = self.cert_dir / "ca.crt"
        return (ca if ca.is_file() else self.cert_file).read_bytes()


@dataclass(frozen=True)
class OperatorConfig:
    """Everything one operator process runs with.

    ``namespaces`` empty: the whole cluster. ``kubeconfig`` None: the in-cluster service account.
    ``metrics`` (host, port) serves ``/metrics``, ``/healthz`` and ``/readyz``; ``webhook`` serves the
    admission webhooks; ``election`` None runs a single replica that never campaigns. ``exit_if_stuck``:
    leave the process if kopf does not stop after leadership is lost (the command line sets it; tests that
    run the operator in a thread do not). ``pod_sweep_interval``: seconds between two looks for annotated
    pods the webhook did not label (0: only when a replica starts leading). ``image``: the operator's own
    image, which restores EtcdCluster members from backups (their init container).
    ``allow_outside_etcd``: whether a DistributedLock may name an etcd of its own (``spec.etcd``);
    ``secret_recheck_interval``: seconds between two reads of such a lock's Secret.
    """

    etcd: EtcdConfig
    namespaces: tuple[str, ...] = ()
    kubeconfig: str | None = None
    metrics: tuple[str, int] | None = None
    webhook: WebhookSettings | None = None
    election: ElectionSettings | None = None
    shared_key_prefixes: tuple[str, ...] = ()
    exit_if_stuck: bool = False
    pod_sweep_interval: int = DEFAULT_POD_SWEEP_INTERVAL
    image: str = DEFAULT_IMAGE
    allow_outside_etcd: bool = True
    secret_recheck_interval: int = DEFAULT_SECRET_RECHECK_INTERVAL


def host_port(option: str, value: str) -> tuple[str, int] | None:
    """``HOST:PORT`` (an empty host listens everywhere), or None for ``off``."""
    if value == "off":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise EtcdLockError(f"{option} must be HOST:PORT or off, not {value!r}")
    return host or "0.0.0.0", int(port)
