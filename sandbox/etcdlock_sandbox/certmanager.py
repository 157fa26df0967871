"""A stand-in for cert-manager in the sandbox: its Certificate, Issuer and ClusterIssuer kinds, and a
controller that issues Certificates from CA issuers (``spec.ca.secretName``), as cert-manager's CA issuer
does, so that what asks cert-manager for certificates can run here.

For each Certificate whose issuer is a CA issuer, the controller writes the Secret ``spec.secretName``
(``tls.crt``, ``tls.key``, ``ca.crt``) with a certificate for ``dnsNames`` and ``ipAddresses`` (for servers
and clients: trustme's leaf certificates carry both usages), valid for ``duration`` (default 90 days), and
issues it again when the Certificate's spec changes or ``renewBefore`` (default a third of the duration)
is reached; its status says Ready with ``notAfter`` and ``renewalTime``. A Certificate whose issuer is
missing, or not a CA issuer, is left not Ready, saying why. The CA issuer's Secret is looked for in the
Issuer's namespace (a ClusterIssuer's in ``cert-manager``, cert-manager's default). It is sandbox tooling,
written with trustme: the operator's own certificate code is not used to check itself.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import json
import logging
import re
from typing import Any

import trustme

from etcdlock_sandbox.apiserver.api import MERGE_PATCH, Api
from etcdlock_sandbox.apiserver.errors import ApiError

log = logging.getLogger(__name__)

Obj = dict[str, Any]

GROUP, VERSION = "cert-manager.io", "v1"
CLUSTER_RESOURCE_NAMESPACE = "cert-manager"
PERIOD = 1.0
SPEC_ANNOTATION = "sandbox.cert-manager.io/spec-digest"
DEFAULT_DURATION = datetime.timedelta(days=90)
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def _crd(kind: str, plural: str, scope: str) -> Obj:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            },
                        }
                    },
                }
            ],
        },
    }


CRDS = (
    _crd("Certificate", "certificates", "Namespaced"),
    _crd("Issuer", "issuers", "Namespaced"),
    _crd("ClusterIssuer", "clusterissuers", "Cluster"),
)


def duration(text: str | None, default: datetime.timedelta) -> datetime.timedelta:
    """A Go duration of hours, minutes and seconds (``2160h``, ``1h30m``, ``90s``)."""
    match = _DURATION.match(text or "")
    if not text or match is None:
        return default
    hours, minutes, secs = (int(part or 0) for part in match.groups())
    return datetime.timedelta(hours=hours, minutes=minutes, seconds=secs)


def spec_digest(spec: Obj) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class CertManager:
    """Installs the kinds, then issues the Certificates of CA issuers (see the module docstring)."""

    def __init__(self, api: Api) -> None:
        self._api = api

    async def run(self) -> None:
        crds = self._api.resolve("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        for crd in CRDS:
            try:
                await self._api.create(crds, None, crd)
            except ApiError as exc:
                if exc.code != 409:
                    raise
        while True:
            try:
                certificates = self._api.resolve(GROUP, VERSION, "certificates")
                break
            except ApiError:
                await asyncio.sleep(0.1)
        while True:
            items, _ = await self._api.list_matching(certificates, None, lambda _: True)
            for certificate in items:
                try:
                    await self._reconcile(certificate)
                except ApiError as exc:
                    log.info("cert-manager stand-in: %s: %s", certificate["metadata"]["name"], exc)
            await asyncio.sleep(PERIOD)

    async def _reconcile(self, certificate: Obj) -> None:
        meta, spec = certificate["metadata"], certificate.get("spec") or {}
        namespace = meta["namespace"]
        ca, why = await self._issuer_ca(namespace, spec.get("issuerRef") or {})
        if ca is None:
            await self._set_status(certificate, "False", "IssuerNotReady", why)
            return
        secrets = self._api.resolve("", "v1", "secrets")
        digest = spec_digest(spec)
        try:
            current: Obj | None = await self._api.get(secrets, namespace, spec["secretName"])
        except ApiError as exc:
            if exc.code != 404:
                raise
            current = None
        now = datetime.datetime.now(datetime.UTC)
        valid_for = duration(spec.get("duration"), DEFAULT_DURATION)
        renew_before = duration(spec.get("renewBefore"), valid_for / 3)
        renewal = (certificate.get("status") or {}).get("renewalTime")
        due = renewal is None or datetime.datetime.fromisoformat(renewal) <= now
        if (
            current is not None
            and not due
            and (current["metadata"].get("annotations") or {}).get(SPEC_ANNOTATION) == digest
        ):
            return
        names = [*(spec.get("dnsNames") or []), *(spec.get("ipAddresses") or [])]
        common_name = spec.get("commonName") or (names[0] if names else meta["name"])
        # trustme names at least one identity (an empty subjectAltName is malformed): a client
        # certificate with a common name only is issued for that name.
        leaf = ca.issue_cert(
            *(names or [common_name]),
            common_name=common_name,
            not_before=now - datetime.timedelta(minutes=1),
            not_after=now + valid_for,
        )
        data = {
            "tls.crt": b"".join(blob.bytes() for blob in leaf.cert_chain_pems),
            "tls.key": leaf.private_key_pem.bytes(),
            "ca.crt": ca.cert_pem.bytes(),
        }
        annotations = {SPEC_ANNOTATION: digest, "cert-manager.io/certificate-name": meta["name"]}
        encoded = {key: base64.b64encode(value).decode() for key, value in data.items()}
        secret: Obj = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {
                "name": spec["secretName"],
                "namespace": namespace,
                "annotations": annotations,
            },
            "data": encoded,
        }
        if current is None:
            await self._api.create(secrets, namespace, secret)
        else:
            patch = {"metadata": {"annotations": annotations}, "data": encoded}
            await self._api.patch(
                secrets, namespace, spec["secretName"], MERGE_PATCH, json.dumps(patch).encode()
            )
        expiry = now + valid_for
        extra = {"notAfter": _rfc3339(expiry), "renewalTime": _rfc3339(expiry - renew_before)}
        await self._set_status(
            certificate, "True", "Ready", "Certificate is up to date and has not expired", extra
        )

    async def _issuer_ca(self, namespace: str, ref: Obj) -> tuple[trustme.CA | None, str]:
        kind = ref.get("kind") or "Issuer"
        plural, where = ("clusterissuers", None) if kind == "ClusterIssuer" else ("issuers", namespace)
        try:
            issuer = await self._api.get(
                self._api.resolve(GROUP, VERSION, plural), where, ref.get("name", "")
            )
        except ApiError:
            return None, f"{kind} {ref.get('name')!r} not found"
        secret_name = ((issuer.get("spec") or {}).get("ca") or {}).get("secretName")
        if not secret_name:
            return (
                None,
                f"{kind} {ref.get('name')!r} is not a CA issuer (the sandbox issues from CA issuers only)",
            )
        home = where or CLUSTER_RESOURCE_NAMESPACE
        try:
            secret = await self._api.get(self._api.resolve("", "v1", "secrets"), home, secret_name)
        except ApiError:
            return None, f"the CA Secret {home}/{secret_name} of {kind} {ref.get('name')!r} is missing"
        data = {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}
        try:
            return trustme.CA.from_pem(data["tls.crt"], data["tls.key"]), ""
        except (KeyError, ValueError) as exc:
            return None, f"the CA Secret {home}/{secret_name} holds no CA certificate and key: {exc}"

    async def _set_status(
        self, certificate: Obj, status: str, reason: str, message: str, extra: Obj | None = None
    ) -> None:
        meta = certificate["metadata"]
        current = certificate.get("status") or {}
        ready: Obj = next((c for c in current.get("conditions") or [] if c.get("type") == "Ready"), {})
        if ready.get("status") == status and ready.get("message") == message and not extra:
            return
        condition = {"type": "Ready", "status": status, "reason": reason, "message": message}
        body = {"status": {"conditions": [condition], **(extra or {})}}
        await self._api.patch(
            self._api.resolve(GROUP, VERSION, "certificates"),
            meta["namespace"],
            meta["name"],
            MERGE_PATCH,
            json.dumps(body).encode(),
            subresource="status",
        )


def _rfc3339(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
