"""Keeps an EtcdCluster's TLS Secrets there and current (see :mod:`.tls` for what they are).

With the operator's own CA, it creates the CA Secret once, and issues the member and client certificates
again when they are missing, not signed by that CA, not valid for the names the cluster needs, or due for
renewal. With cert-manager it creates the two Certificates and waits for cert-manager's Secrets. It reads
the Secrets (and Certificates) again only when a renewal falls due, or every :data:`RECHECK` seconds
(cert-manager renews on its own schedule, and a Certificate may be edited), not on every pass. A CA Secret
deleted while the member certificates it signed are still in use is not replaced behind the members'
backs: a new CA would cut every member off from its peers until all restart.
"""

from __future__ import annotations

import base64
import datetime
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm

from etcdlock.operator.credentials import CA, CERT, KEY, secret_pems
from etcdlock.operator.etcdcluster import certificates
from etcdlock.operator.etcdcluster.certificates import Issued
from etcdlock.operator.etcdcluster.tls import TlsSpec, member_names
from etcdlock.operator.events import EventRecorder
from etcdlock.operator.kube import Conflict, Kube
from etcdlock.operator.names import ca_secret, client_secret, member_secret

log = logging.getLogger(__name__)

Obj = dict[str, Any]

RECHECK = 10.0
CERT_MANAGER = ("cert-manager.io", "v1", "certificates")


@dataclass(frozen=True)
class TlsState:
    """What a pass needs of the cluster's TLS: whether its Secrets are ready, why not, what is wrong with
    them though they serve, the CA bundle's digest (members restart when it changes: etcd reads its
    trusted CAs only at start), the client certificate's PEM data, and the earliest expiry."""

    ready: bool
    waiting: str = ""
    problem: str = ""
    ca_digest: str = ""
    client: Mapping[str, bytes] = field(default_factory=dict)
    not_after: str = ""


class TlsIssuer:
    """One per operator: the TLS of every EtcdCluster with ``spec.tls``."""

    def __init__(self, kube: Kube, events: EventRecorder) -> None:
        self._kube = kube
        self._events = events
        self._known: dict[tuple[str, str], tuple[TlsState, float]] = {}

    def forget(self, namespace: str, name: str) -> None:
        self._known.pop((namespace, name), None)

    async def ensure(self, body: Mapping[str, Any], tls: TlsSpec) -> TlsState:
        """The cluster's TLS Secrets, issued or renewed as needed (see the module docstring)."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        known = self._known.get(key)
        if known is not None and known[0].ready and time.monotonic() < known[1]:
            return known[0]
        try:
            if tls.issuer is None:
                state, recheck = await self._own_ca(body, tls)
            else:
                state, recheck = await self._cert_manager(body, tls)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            # A Secret edited into something that is no certificate or key (cryptography's errors).
            state, recheck = (
                TlsState(False, f"the certificates in the cluster's Secrets cannot be used: {exc}"),
                RECHECK,
            )
        self._known[key] = (state, time.monotonic() + recheck)
        return state

    async def _own_ca(self, body: Mapping[str, Any], tls: TlsSpec) -> tuple[TlsState, float]:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        now = datetime.datetime.now(datetime.UTC)
        names = (ca_secret(name), member_secret(name), client_secret(name))
        found = {secret: await self._read(namespace, secret) for secret in names}
        foreign = _foreign(body, found)
        if foreign:
            return TlsState(False, foreign), RECHECK
        ca_found, member, client = [
            (there.pems if (there := found[secret]) is not None else None) for secret in names
        ]
        if ca_found is None and member is not None:
            message = (
                f"the CA Secret {ca_secret(name)} is gone while the members trust the CA it held: their "
                f"certificates cannot be renewed; restore it (to start over with a new CA, delete "
                f"{ca_secret(name)}, {member_secret(name)} and {client_secret(name)}: every member then "
                "restarts at once)"
            )
            return self._kept(member, client, message), RECHECK
        if ca_found is None:
            ca = await self._create_ca(body, now)
        else:
            ca = Issued(ca_found.get(CERT, b""), ca_found.get(KEY, b""))
        if member is not None and member.get(CA) and member[CA] != ca.cert:
            message = (
                f"the CA in {ca_secret(name)} is not the one the members trust (ca.crt of "
                f"{member_secret(name)}): nothing is issued from it, which would cut the members off from "
                "each other; restore the CA they trust (to change a cluster's CA, restore a backup into a "
                "new EtcdCluster)"
            )
            return self._kept(member, client, message), RECHECK
        validity = datetime.timedelta(seconds=tls.duration)
        wanted = {
            member_secret(name): (f"{name} member", member_names(namespace, name), True, member),
            client_secret(name): (f"{name}-client", (), False, client),
        }
        issued: dict[str, Mapping[str, bytes]] = {}
        for secret, (common_name, subject_names, server, current) in wanted.items():
            why = reissue_reason(current, ca.cert, set(subject_names), tls, now)
            if not why:
                assert current is not None
                issued[secret] = current
                continue
            cert = certificates.issue(ca, common_name, validity, now, names=subject_names, server=server)
            pems = {CA: ca.cert, CERT: cert.cert, KEY: cert.key}
            await self._write(body, secret, pems, current)
            issued[secret] = pems
            if current is not None:
                self._events.info(body, "CertificateRenewed", f"issued {secret} again: {why}")
        state = self._serving(issued[member_secret(name)], issued[client_secret(name)])
        due = (datetime.datetime.fromisoformat(state.not_after) - now).total_seconds() - tls.renew_before
        return state, max(1.0, min(RECHECK, due))

    async def _create_ca(self, body: Mapping[str, Any], now: datetime.datetime) -> Issued:
        """A new CA in its Secret; one created meanwhile (by another replica) is used instead, never
        replaced."""
        meta = body["metadata"]
        ca = certificates.new_ca(f"etcdlock {meta['namespace']}/{meta['name']} CA", now)
        secret = ca_secret(meta["name"])
        try:
            await self._kube.call(
                self._kube.core.create_namespaced_secret,
                meta["namespace"],
                _secret_object(body, secret, {CA: ca.cert, CERT: ca.cert, KEY: ca.key}),
            )
        except Conflict:
            there = await self._read(meta["namespace"], secret)
            if there is None:
                raise
            return Issued(there.pems.get(CERT, b""), there.pems.get(KEY, b""))
        self._events.info(body, "CertificateAuthorityCreated", f"created the CA in Secret {secret}")
        return ca

    def _kept(
        self, member: Mapping[str, bytes] | None, client: Mapping[str, bytes] | None, problem: str
    ) -> TlsState:
        """The certificates as they are, with what is wrong; not ready if they are incomplete."""
        if (
            member is None
            or client is None
            or not all(p.get(k) for p in (member, client) for k in (CA, CERT, KEY))
        ):
            return TlsState(False, problem)
        return self._serving(member, client, problem)

    @staticmethod
    def _serving(member: Mapping[str, bytes], client: Mapping[str, bytes], problem: str = "") -> TlsState:
        expiry = min(certificates.not_after(p[CERT]) for p in (member, client))
        return TlsState(
            True,
            problem=problem,
            ca_digest=certificates.fingerprint(member[CA]),
            client=client,
            not_after=expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )

    async def _cert_manager(self, body: Mapping[str, Any], tls: TlsSpec) -> tuple[TlsState, float]:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        for certificate in certificate_requests(body, tls):
            problem = await self._keep_certificate(body, certificate)
            if problem:
                return TlsState(False, problem), RECHECK
        member = await self._read(namespace, member_secret(name))
        client = await self._read(namespace, client_secret(name))
        for secret, found in ((member_secret(name), member), (client_secret(name), client)):
            if found is None or not all(found.pems.get(k) for k in (CA, CERT, KEY)):
                lacks = (
                    "is not issued yet"
                    if found is None
                    else "lacks ca.crt, tls.crt or tls.key (the issuer must write ca.crt, as CA issuers do)"
                )
                message = f"waiting for cert-manager ({tls.describe()}): Secret {secret} {lacks}"
                return TlsState(False, message), RECHECK
        assert member is not None and client is not None
        return self._serving(member.pems, client.pems), RECHECK

    async def _keep_certificate(self, body: Mapping[str, Any], certificate: Obj) -> str:
        """Create the Certificate, or bring its spec back to what the cluster needs; what stands in the
        way, if anything (a Certificate of that name that is not this cluster's, no cert-manager)."""
        group, version, plural = CERT_MANAGER
        objects = self._kube.objects
        namespace, name = certificate["metadata"]["namespace"], certificate["metadata"]["name"]
        current = await self._kube.call(
            objects.get_namespaced_custom_object, group, version, namespace, plural, name
        )
        if current is None:
            created = await self._kube.call(
                objects.create_namespaced_custom_object, group, version, namespace, plural, certificate
            )
            if created is None:
                return "cert-manager is not installed: the API has no Certificate kind (cert-manager.io/v1)"
            return ""
        if _owned_by_other(body, current.get("metadata") or {}):
            return (
                f"Certificate {name} exists and is not this EtcdCluster's: delete it, or rename the cluster"
            )
        if {k: current.get("spec", {}).get(k) for k in certificate["spec"]} != certificate["spec"]:
            await self._kube.call(
                objects.patch_namespaced_custom_object,
                group,
                version,
                namespace,
                plural,
                name,
                {"spec": certificate["spec"]},
            )
        return ""

    async def _read(self, namespace: str, name: str) -> Found | None:
        found = await self._kube.call(self._kube.core.read_namespaced_secret, name, namespace)
        return None if found is None else Found(secret_pems(found), found.get("metadata") or {})

    async def _write(
        self,
        body: Mapping[str, Any],
        name: str,
        pems: Mapping[str, bytes],
        current: Mapping[str, bytes] | None,
    ) -> None:
        """Create the Secret (owned by the cluster: deleted with it), or replace its data."""
        meta = body["metadata"]
        if current is None:
            try:
                await self._kube.call(
                    self._kube.core.create_namespaced_secret,
                    meta["namespace"],
                    _secret_object(body, name, pems),
                )
                return
            except Conflict:
                log.info("Secret %s/%s was created meanwhile; replacing its data", meta["namespace"], name)
        data = {key: base64.b64encode(value).decode() for key, value in pems.items()}
        await self._kube.call(
            self._kube.core.patch_namespaced_secret, name, meta["namespace"], {"data": data}
        )


@dataclass(frozen=True)
class Found:
    """A Secret as read: its PEM data, and its metadata (who owns it)."""

    pems: dict[str, bytes]
    meta: Obj


def _owned_by_other(body: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    """Owned, and not by this cluster (an earlier cluster of this name being deleted, or another owner).
    An object without owners (restored by hand) is taken as the cluster's."""
    owners = {str(o.get("uid")) for o in meta.get("ownerReferences") or []}
    return bool(owners) and str(body["metadata"]["uid"]) not in owners


def _foreign(body: Mapping[str, Any], found: Mapping[str, Found | None]) -> str:
    """Why the operator's CA may not use these Secrets: some are owned by something else."""
    others = sorted(
        name for name, there in found.items() if there is not None and _owned_by_other(body, there.meta)
    )
    if not others:
        return ""
    return (
        f"Secret {', '.join(others)} exists and is not this EtcdCluster's (an earlier cluster of this name "
        "still being deleted, or another owner): waiting; delete it to let the operator issue its own"
    )


def _secret_object(body: Mapping[str, Any], name: str, pems: Mapping[str, bytes]) -> Obj:
    meta = body["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {
                "app.kubernetes.io/name": "etcd",
                "app.kubernetes.io/instance": meta["name"],
                "app.kubernetes.io/managed-by": "etcdlock",
            },
            "ownerReferences": [_owner(body)],
        },
        "data": {key: base64.b64encode(value).decode() for key, value in pems.items()},
    }


def certificate_requests(body: Mapping[str, Any], tls: TlsSpec) -> list[Obj]:
    """The cert-manager Certificates of a cluster whose ``spec.tls.issuerRef`` names an issuer."""
    assert tls.issuer is not None
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    duration, renew = f"{int(tls.duration)}s", f"{int(tls.renew_before)}s"

    def certificate(suffix: str, secret: str, spec: Obj) -> Obj:
        return {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": {
                "name": f"{name}-{suffix}",
                "namespace": namespace,
                "labels": {
                    "app.kubernetes.io/name": "etcd",
                    "app.kubernetes.io/instance": name,
                    "app.kubernetes.io/managed-by": "etcdlock",
                },
                "ownerReferences": [_owner(body)],
            },
            "spec": {
                "secretName": secret,
                "issuerRef": tls.issuer.as_ref() if tls.issuer else {},
                "duration": duration,
                "renewBefore": renew,
                "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                **spec,
            },
        }

    names = member_names(namespace, name)
    return [
        certificate(
            "member",
            member_secret(name),
            {
                "commonName": f"{name} member",
                "dnsNames": [n for n in names if not n[0].isdigit()],
                "ipAddresses": [n for n in names if n[0].isdigit()],
                "usages": ["server auth", "client auth", "digital signature", "key encipherment"],
            },
        ),
        certificate(
            "client",
            client_secret(name),
            {
                "commonName": f"{name}-client",
                "usages": ["client auth", "digital signature", "key encipherment"],
            },
        ),
    ]


def reissue_reason(
    current: Mapping[str, bytes] | None, ca: bytes, names: set[str], tls: TlsSpec, now: datetime.datetime
) -> str:
    """Why a certificate of the operator's CA must be issued (again); empty if it need not."""
    if current is None:
        return "missing"
    cert = current.get(CERT)
    if not cert or not current.get(KEY):
        return "it lacks tls.crt or tls.key"
    if current.get(CA) != ca or not certificates.signed_by(cert, ca):
        return "it is not signed by the cluster's CA"
    if not names <= certificates.names_of(cert):
        return "it is not valid for every name the members answer to"
    expiry = certificates.not_after(cert)
    lifetime = (expiry - certificates.not_before(cert)).total_seconds()
    if abs(lifetime - tls.duration - certificates.BACKDATE.total_seconds()) > 1:
        return "spec.tls.duration changed"
    if (expiry - now).total_seconds() <= tls.renew_before:
        return f"it expires at {expiry:%Y-%m-%dT%H:%M:%SZ}"
    return ""


def _owner(body: Mapping[str, Any]) -> Obj:
    meta = body["metadata"]
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
