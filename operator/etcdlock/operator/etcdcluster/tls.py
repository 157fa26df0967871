"""What ``spec.tls`` of an EtcdCluster means, checked, and the names its certificates live under.

With ``spec.tls`` the members talk TLS to their peers and to their clients, and demand a client certificate
of both (``--client-cert-auth``, ``--peer-client-cert-auth``). The certificates are issued by cert-manager
when ``issuerRef`` names an Issuer or ClusterIssuer, else by a CA the operator creates for the cluster and
keeps in a Secret. Either way they are in Secrets of cert-manager's layout (``tls.crt``, ``tls.key``,
``ca.crt``):

- ``NAME-member-tls``: every member's, for servers and clients (a member is its peers' client too), valid
  for every member's name and the client Service's;
- ``NAME-client-tls``: a client certificate, which the operator presents and users may too;
- ``NAME-ca`` (operator's CA only): the CA's certificate and key.

``duration`` is the certificates' validity; they are renewed once two thirds of it have passed (the
members read a renewed certificate from their Secret's mount without a restart). The members' metrics
port (probes, Prometheus) stays plain HTTP, as kubeadm's etcd serves it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from etcdlock.operator.errors import InvalidSpec

DEFAULT_DURATION = "2160h"
SHORTEST_DURATION = 60.0
CERT_MANAGER_SHORTEST = 3600.0  # cert-manager refuses a shorter duration
ISSUER_KINDS = ("Issuer", "ClusterIssuer")
OWN_CA = "etcdlock"


@dataclass(frozen=True)
class IssuerRef:
    """A cert-manager issuer."""

    name: str
    kind: str = "Issuer"
    group: str = "cert-manager.io"

    def as_ref(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind, "group": self.group}


@dataclass(frozen=True)
class TlsSpec:
    """TLS for peers and clients; ``issuer`` None: the operator's own CA."""

    issuer: IssuerRef | None = None
    duration: float = 2160 * 3600.0

    @property
    def renew_before(self) -> float:
        """Seconds before expiry a certificate is renewed (cert-manager's default ratio)."""
        return self.duration / 3

    def describe(self) -> str:
        """Who issues the certificates, as the status says it."""
        return OWN_CA if self.issuer is None else f"{self.issuer.kind}/{self.issuer.name}"


def parse_tls(value: Any, seconds: Callable[[str], float]) -> TlsSpec | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidSpec("spec.tls must be an object ({} for certificates from the operator's own CA)")
    duration = value.get("duration", DEFAULT_DURATION)
    if not isinstance(duration, str):
        raise InvalidSpec(f"spec.tls.duration must look like 2160h, not {duration!r}")
    try:
        validity = seconds(duration)
    except InvalidSpec:
        raise InvalidSpec(f"spec.tls.duration must look like 2160h, not {duration!r}") from None
    if validity < SHORTEST_DURATION:
        raise InvalidSpec(f"spec.tls.duration must be at least 1m, not {duration!r}")
    ref = value.get("issuerRef")
    if ref is None:
        return TlsSpec(duration=validity)
    if validity < CERT_MANAGER_SHORTEST:
        raise InvalidSpec(
            f"spec.tls.duration must be at least 1h with an issuerRef (cert-manager's), not {duration!r}"
        )
    if not isinstance(ref, dict) or not isinstance(ref.get("name"), str) or not ref["name"]:
        raise InvalidSpec("spec.tls.issuerRef.name must name a cert-manager Issuer or ClusterIssuer")
    kind = ref.get("kind", "Issuer")
    if kind not in ISSUER_KINDS:
        raise InvalidSpec(f"spec.tls.issuerRef.kind must be Issuer or ClusterIssuer, not {kind!r}")
    group = ref.get("group", "cert-manager.io")
    if not isinstance(group, str) or not group:
        raise InvalidSpec(f"spec.tls.issuerRef.group must be an API group, not {group!r}")
    return TlsSpec(IssuerRef(ref["name"], kind, group), validity)


def member_names(namespace: str, name: str) -> tuple[str, ...]:
    """What a member's certificate is valid for: every member's peer name (a wildcard under the headless
    Service), the client Service's names, and loopback (a client inside the member's pod)."""
    names = [f"*.{name}.{namespace}.svc", f"*.{name}.{namespace}.svc.cluster.local"]
    client = f"{name}-client"
    names += [
        client,
        f"{client}.{namespace}",
        f"{client}.{namespace}.svc",
        f"{client}.{namespace}.svc.cluster.local",
    ]
    return (*names, "localhost", "127.0.0.1")
