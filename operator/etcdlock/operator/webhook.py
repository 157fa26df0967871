"""The mutating admission webhook: pods annotated ``etcdlock.io/lock`` are created with a scheduling gate.

Every replica serves it, leader or standby: adding the gate needs no lock state, so pods created while
leadership moves are still held back (the leader queues them once it runs). It listens over HTTPS with
the certificate in ``cert_dir`` (``tls.crt``, ``tls.key`` and, if present, ``ca.crt`` for the caBundle:
the layout of a cert-manager Secret), and picks up renewed files without a restart. The
MutatingWebhookConfiguration comes with the manifests or, with ``configure``, is written by the operator
itself pointing at this process (for the sandbox and local development). Its failurePolicy is Ignore: it
sees every pod creation, and etcdlock must never stop unrelated pods; a pod that got through ungated is
flagged by the operator instead (state Error, a Warning event).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
from aiohttp import web
from kubernetes.client.exceptions import ApiException

from etcdlock.etcd import EtcdLockError
from etcdlock.operator.names import LOCK_ANNOTATION, SCHEDULING_GATE, WEBHOOK_CONFIGURATION, WEBHOOK_PATH

log = logging.getLogger(__name__)

DEFAULT_CERT_DIR = Path("/etc/etcdlock/webhook")
RELOAD_INTERVAL = 10.0
POD_CREATE = {"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "operations": ["CREATE"]}


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

    @property
    def url(self) -> str:
        """How the API server reaches this process (``configure`` only: loopback for a wildcard address)."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"https://{host}:{self.port}{WEBHOOK_PATH}"

    def ca_bundle(self) -> bytes:
        ca = self.cert_dir / "ca.crt"
        return (ca if ca.is_file() else self.cert_file).read_bytes()


def gate_patch(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON patch that gates an annotated pod; empty if it is not annotated or already gated."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if not annotations.get(LOCK_ANNOTATION):
        return []
    gates = (pod.get("spec") or {}).get("schedulingGates")
    if gates is None:
        return [{"op": "add", "path": "/spec/schedulingGates", "value": [{"name": SCHEDULING_GATE}]}]
    if any(gate.get("name") == SCHEDULING_GATE for gate in gates):
        return []
    return [{"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": SCHEDULING_GATE}}]


def review(body: Any) -> dict[str, Any]:
    """The AdmissionReview answer to one request: always allowed, with the gate patch for annotated pods."""
    request = body.get("request") if isinstance(body, dict) else None
    if not isinstance(request, dict) or "uid" not in request:
        raise web.HTTPBadRequest(text="not an AdmissionReview request\n")
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    pod = request.get("object")
    if request.get("operation") == "CREATE" and isinstance(pod, dict):
        patch = gate_patch(pod)
        if patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return {
        "apiVersion": body.get("apiVersion", "admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": response,
    }


class WebhookServer:
    """The HTTPS server of the webhook, for the life of the process (``async with``)."""

    def __init__(self, settings: WebhookSettings, reload_interval: float = RELOAD_INTERVAL) -> None:
        self._settings = settings
        self._reload_interval = reload_interval
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._loaded: tuple[float, float] | None = None
        self._runner: web.AppRunner | None = None
        self._reloader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WebhookServer:
        self._settings.check()
        self._reload()
        app = web.Application()
        app.router.add_post(WEBHOOK_PATH, self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self._settings.host or None, self._settings.port, ssl_context=self._context
        )
        await site.start()
        self._reloader = asyncio.create_task(self._keep_reloading(), name="webhook-certificate")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reloader is not None:
            self._reloader.cancel()
            await asyncio.gather(self._reloader, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="the body is not JSON\n") from None
        return web.json_response(review(body))

    def _reload(self) -> None:
        """Load the certificate files if they changed (new connections use them; open ones keep theirs)."""
        settings = self._settings
        stamp = (settings.cert_file.stat().st_mtime, settings.key_file.stat().st_mtime)
        if stamp != self._loaded:
            self._context.load_cert_chain(settings.cert_file, settings.key_file)
            if self._loaded is not None:
                log.info("webhook certificate reloaded from %s", settings.cert_dir)
            self._loaded = stamp

    async def _keep_reloading(self) -> None:
        while True:
            await asyncio.sleep(self._reload_interval)
            try:
                self._reload()
            except (OSError, ssl.SSLError) as exc:
                log.warning("webhook certificate in %s not reloaded: %s", self._settings.cert_dir, exc)


def configuration(settings: WebhookSettings, name: str = WEBHOOK_CONFIGURATION, namespace: str = "") -> Any:
    """A MutatingWebhookConfiguration sending pod creations to this process (in ``namespace`` only, if
    given), as the shipped one sends them to the operator's Service."""
    hook: dict[str, Any] = {
        "name": f"pod-gate.{WEBHOOK_CONFIGURATION}",
        "clientConfig": {"url": settings.url, "caBundle": base64.b64encode(settings.ca_bundle()).decode()},
        "rules": [POD_CREATE],
        "failurePolicy": "Ignore",
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 5,
    }
    if namespace:
        hook["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [hook],
    }


def registered_urls(api: kubernetes.client.ApiClient) -> list[str]:
    """Where the MutatingWebhookConfiguration ``etcdlock.io`` sends pods now (none if it does not exist)."""
    registrations = kubernetes.client.AdmissionregistrationV1Api(api)
    try:
        config = registrations.read_mutating_webhook_configuration(WEBHOOK_CONFIGURATION)
    except ApiException as exc:
        if exc.status == 404:
            return []
        raise
    return [hook.client_config.url or "" for hook in config.webhooks or []]


async def register(api: kubernetes.client.ApiClient, settings: WebhookSettings) -> None:
    """Write the MutatingWebhookConfiguration that sends pod creations to this process (``configure``)."""
    registrations = kubernetes.client.AdmissionregistrationV1Api(api)
    body = configuration(settings)

    def replace() -> None:
        registrations.patch_mutating_webhook_configuration(
            WEBHOOK_CONFIGURATION, body, _content_type="application/merge-patch+json"
        )

    try:
        try:
            await asyncio.to_thread(registrations.create_mutating_webhook_configuration, body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            await asyncio.to_thread(replace)
    except ApiException as exc:
        raise EtcdLockError(f"cannot register the webhook: {exc.status} {exc.reason}") from None
    log.info("webhook registered: MutatingWebhookConfiguration %s -> %s", WEBHOOK_CONFIGURATION, settings.url)
