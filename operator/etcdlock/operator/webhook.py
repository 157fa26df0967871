"""The mutating admission webhook: pods annotated ``etcdlock.io/lock`` are created with a scheduling gate.

kopf serves it over TLS with the certificate in ``cert_dir`` (``tls.crt``, ``tls.key`` and, if present,
``ca.crt`` for the caBundle: the layout of a cert-manager Secret), reloading it when the files change.
The MutatingWebhookConfiguration comes with the manifests, or, with ``configure``, the operator writes
one itself that points at this process (for the sandbox and local development). Its failurePolicy is
Ignore: it sees every pod creation, and a missing webhook must never stop unrelated pods; a pod that got
through ungated is flagged by the operator instead (state Error, Warning event).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import kopf

from etcdlock.etcd import EtcdLockError
from etcdlock.operator.names import SCHEDULING_GATE

DEFAULT_CERT_DIR = Path("/etc/etcdlock/webhook")


@dataclass(frozen=True)
class WebhookSettings:
    """Where the webhook listens, its certificate folder, and whether the operator registers it itself."""

    host: str
    port: int
    cert_dir: Path = DEFAULT_CERT_DIR
    configure: bool = False

    def server(self) -> kopf.WebhookServer:
        """kopf's HTTPS server for the webhook; a clear error if the certificate is missing."""
        cert, key, ca = (self.cert_dir / name for name in ("tls.crt", "tls.key", "ca.crt"))
        for path in (cert, key):
            if not path.is_file():
                raise EtcdLockError(
                    f"webhook certificate {path} not found: mount the webhook Secret there, "
                    "pass --webhook-cert-dir, or --webhook off"
                )
        return kopf.WebhookServer(
            addr=self.host,
            port=self.port,
            certfile=str(cert),
            pkeyfile=str(key),
            cafile=str(ca) if ca.is_file() else None,
        )


def add_gate(spec: kopf.Spec, patch: kopf.Patch) -> None:
    """Add the scheduling gate unless the pod already has it (the patch becomes the webhook's answer)."""
    gates = list(spec.get("schedulingGates") or [])
    if not any(gate.get("name") == SCHEDULING_GATE for gate in gates):
        patch.spec["schedulingGates"] = [*gates, {"name": SCHEDULING_GATE}]
