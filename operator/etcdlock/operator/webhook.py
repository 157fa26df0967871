"""The admission webhooks: pods annotated ``etcdlock.io/lock`` are created with a scheduling gate and the
label ``etcdlock.io/managed=true`` (a pod annotated later gets the label on that update: the operator
watches only labelled pods; and the annotation ``etcdlock.io/annotated-after-creation``, so that the
operator can tell it why it is not gated), and a DistributedLock whose etcd key its namespace may not use
is refused.

Every replica serves them, leader or standby: adding the gate needs no lock state, so pods created while
leadership moves are still held back (the leader queues them once it runs); checking a lock's key needs
the key rules (every replica has the same flags) and the locks stored, read from the API at each check.
Both listen over HTTPS with the certificate in ``cert_dir`` (``tls.crt``, ``tls.key`` and, if present,
``ca.crt`` for the caBundle: the layout of a cert-manager Secret), and pick up renewed files without a
restart. The webhook configurations come with the manifests or, with ``configure``, are written by the
operator itself pointing at this process (for the sandbox and local development).

The pod gate's failurePolicy is Ignore: where the API server cannot filter by ``matchConditions`` it sees
every pod creation and update, and etcdlock must never stop unrelated pods. A pod that got through
unlabelled is labelled by the operator's sweep (:mod:`etcdlock.operator.pods.sweep`), and one that got
through ungated is then flagged (state Error, a Warning event).
The lock check's failurePolicy is Ignore too: the operator checks every lock again and serves none that
breaks the rules, so a lock stored while the webhook was unreachable gains nothing, and editing or deleting
locks (kopf's own finalizer) never depends on the operator being reachable.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import logging
import ssl
import threading
from typing import Any

from aiohttp import web

from etcdlock.etcd import EtcdLockError
from etcdlock.operator.config import WebhookSettings
from etcdlock.operator.errors import InvalidSpec
from etcdlock.operator.kube import ApiUnavailable, Conflict, Kube
from etcdlock.operator.locks import LockRules, Locks
from etcdlock.operator.names import (
    ANNOTATED_LATE_ANNOTATION,
    GROUP,
    LOCK_ANNOTATION,
    LOCK_CHECK_PATH,
    LOCKS,
    MANAGED_LABEL,
    SCHEDULING_GATE,
    VERSION,
    WEBHOOK_CONFIGURATION,
    WEBHOOK_PATH,
)

log = logging.getLogger(__name__)

RELOAD_INTERVAL = 10.0
POD_WRITES = {
    "apiGroups": [""],
    "apiVersions": ["v1"],
    "resources": ["pods"],
    "operations": ["CREATE", "UPDATE"],
}
# Where the API server can filter (Kubernetes 1.30 on), only pods that ask for a lock reach the webhook:
# creations of annotated pods and updates of annotated pods not yet labelled.
ASKS_FOR_A_LOCK = (
    f"has(object.metadata.annotations) && '{LOCK_ANNOTATION}' in object.metadata.annotations && "
    f"(request.operation == 'CREATE' || !has(object.metadata.labels) || "
    f"!('{MANAGED_LABEL}' in object.metadata.labels))"
)
LOCK_WRITES = {
    "apiGroups": [GROUP],
    "apiVersions": [VERSION],
    "resources": [LOCKS],
    "operations": ["CREATE", "UPDATE"],
}


def asks_for_a_lock(pod: dict[str, Any]) -> bool:
    return bool(((pod.get("metadata") or {}).get("annotations") or {}).get(LOCK_ANNOTATION))


def gate_patch(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON patch that gates an annotated pod; empty if it is not annotated or already gated."""
    if not asks_for_a_lock(pod):
        return []
    gates = (pod.get("spec") or {}).get("schedulingGates")
    if gates is None:
        return [{"op": "add", "path": "/spec/schedulingGates", "value": [{"name": SCHEDULING_GATE}]}]
    if any(gate.get("name") == SCHEDULING_GATE for gate in gates):
        return []
    return [{"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": SCHEDULING_GATE}}]


def label_patch(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON patch that labels an annotated pod for the operator's watch (which selects the label's
    presence, whatever its value); empty if it is not annotated or already labelled."""
    if not asks_for_a_lock(pod):
        return []
    labels = (pod.get("metadata") or {}).get("labels")
    if labels is None:
        return [{"op": "add", "path": "/metadata/labels", "value": {MANAGED_LABEL: "true"}}]
    if MANAGED_LABEL in labels:
        return []
    escaped = MANAGED_LABEL.replace("~", "~0").replace("/", "~1")
    return [{"op": "add", "path": f"/metadata/labels/{escaped}", "value": "true"}]


def late_patch(pod: dict[str, Any], old: Any) -> list[dict[str, Any]]:
    """The JSON patch that marks a pod whose update adds the lock annotation (``old``: the pod before it)
    as annotated after its creation; empty for any other update."""
    if not asks_for_a_lock(pod) or not isinstance(old, dict) or asks_for_a_lock(old):
        return []
    if ANNOTATED_LATE_ANNOTATION in pod["metadata"]["annotations"]:
        return []
    escaped = ANNOTATED_LATE_ANNOTATION.replace("~", "~0").replace("/", "~1")
    return [{"op": "add", "path": f"/metadata/annotations/{escaped}", "value": "true"}]


def _request(body: Any) -> dict[str, Any]:
    request = body.get("request") if isinstance(body, dict) else None
    if not isinstance(request, dict) or "uid" not in request:
        raise web.HTTPBadRequest(text="not an AdmissionReview request\n")
    return request


def _answer(body: Any, response: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": body.get("apiVersion", "admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": response,
    }


def review(body: Any) -> dict[str, Any]:
    """The AdmissionReview answer to one request: always allowed; an annotated pod is labelled, and gated
    if it is being created (a gate cannot be added to a pod that exists: one annotated by an update is
    marked as such instead)."""
    request = _request(body)
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    pod = request.get("object")
    operation = request.get("operation")
    if operation in ("CREATE", "UPDATE") and isinstance(pod, dict):
        if operation == "CREATE":
            patch = label_patch(pod) + gate_patch(pod)
        else:
            patch = label_patch(pod) + late_patch(pod, request.get("oldObject"))
        if patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    return _answer(body, response)


def _ref(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _moves(request: dict[str, Any]) -> bool:
    """Whether the request may put the lock's key somewhere new (a creation, or a spec change of where the
    key is); kopf's own updates (finalizer, annotations) do not, and need no list of every lock."""
    old = request.get("oldObject")
    if request.get("operation") != "UPDATE" or not isinstance(old, dict):
        return True
    new_spec, old_spec = (request.get("object") or {}).get("spec") or {}, old.get("spec") or {}
    return any(new_spec.get(field) != old_spec.get(field) for field in ("key", "clusterRef", "etcd"))


def lock_refusal(lock: dict[str, Any], namespace: str, rules: LockRules, stored: list[dict[str, Any]]) -> str:
    """Why the DistributedLock ``lock`` may not be stored in ``namespace`` ("" if it may): its spec, its
    key against the rules, and against the key of every lock ``stored`` (older than it, by definition)."""
    meta = lock.get("metadata") or {}
    name = str(meta.get("name") or "")
    locks = Locks(rules)
    locks.remember(
        o for o in stored if (o["metadata"].get("namespace"), o["metadata"]["name"]) != (namespace, name)
    )
    newest = {**lock, "metadata": {**meta, "namespace": namespace, "name": name, "creationTimestamp": "~"}}
    try:
        locks.served(newest)
    except InvalidSpec as exc:
        return str(exc)
    return ""


class LockCheck:
    """The lock webhook: a DistributedLock created or changed is checked against the locks stored now."""

    def __init__(self, kube: Kube, rules: LockRules, namespaces: list[str]) -> None:
        self._kube = kube
        self._rules = rules
        self._namespaces = namespaces

    async def review(self, body: Any) -> dict[str, Any]:
        request = _request(body)
        lock = request.get("object")
        response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
        if request.get("operation") in ("CREATE", "UPDATE") and isinstance(lock, dict) and _moves(request):
            stored = await self._kube.custom_objects(LOCKS, self._namespaces)
            why = lock_refusal(lock, str(request.get("namespace") or ""), self._rules, stored)
            if why:
                response = {
                    **response,
                    "allowed": False,
                    "status": {"code": 403, "reason": "Forbidden", "message": why},
                }
        return _answer(body, response)


class WebhookServer:
    """The HTTPS server of the webhooks, for the life of the process (``async with``), on an event loop
    of its own in its own thread: the API server waits for its answers (5 s at most, then the pod goes
    through ungated), so the operator's own work (kopf, thousands of pods) must never delay them.
    Connections are kept alive between calls (aiohttp's default), sparing a TLS handshake per call.
    """

    def __init__(
        self,
        settings: WebhookSettings,
        locks: LockCheck | None = None,
        reload_interval: float = RELOAD_INTERVAL,
    ) -> None:
        self._settings = settings
        self._locks = locks
        self._reload_interval = reload_interval
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._loaded: tuple[float, float] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    async def __aenter__(self) -> WebhookServer:
        self._settings.check()
        self._reload()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._serve_forever, args=(started,), name="webhook")
        self._thread.start()
        try:
            await asyncio.wrap_future(started)
        except BaseException:
            await asyncio.to_thread(self._thread.join)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def _serve_forever(self, started: concurrent.futures.Future[None]) -> None:
        """The webhook thread: serve until told to stop (``started`` says when listening, or why not)."""
        asyncio.run(self._serve_until_stopped(started))

    async def _serve_until_stopped(self, started: concurrent.futures.Future[None]) -> None:
        self._loop, self._stopped = asyncio.get_running_loop(), asyncio.Event()
        app = web.Application()
        app.router.add_post(WEBHOOK_PATH, self._serve)
        if self._locks is not None:
            app.router.add_post(LOCK_CHECK_PATH, self._check_lock)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            host = self._settings.host or None
            await web.TCPSite(runner, host, self._settings.port, ssl_context=self._context).start()
        except BaseException as exc:
            await runner.cleanup()
            started.set_exception(exc)
            return
        started.set_result(None)
        reloader = asyncio.create_task(self._keep_reloading(), name="webhook-certificate")
        try:
            await self._stopped.wait()
        finally:
            reloader.cancel()
            await asyncio.gather(reloader, return_exceptions=True)
            await runner.cleanup()

    async def _serve(self, request: web.Request) -> web.Response:
        return web.json_response(review(await _body(request)))

    async def _check_lock(self, request: web.Request) -> web.Response:
        assert self._locks is not None
        return web.json_response(await self._locks.review(await _body(request)))

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


async def _body(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body is not JSON\n") from None


def configuration(settings: WebhookSettings, name: str = WEBHOOK_CONFIGURATION, namespace: str = "") -> Any:
    """A MutatingWebhookConfiguration sending annotated pods' creations and updates to this process (in
    ``namespace`` only, if given), as the shipped one sends them to the operator's Service."""
    hook = _hook(settings, f"pod-gate.{WEBHOOK_CONFIGURATION}", WEBHOOK_PATH, POD_WRITES, namespace)
    hook["failurePolicy"] = "Ignore"
    hook["matchConditions"] = [{"name": "asks-for-a-lock", "expression": ASKS_FOR_A_LOCK}]
    return _webhooks("MutatingWebhookConfiguration", name, hook)


def validation(settings: WebhookSettings, name: str = WEBHOOK_CONFIGURATION, namespace: str = "") -> Any:
    """A ValidatingWebhookConfiguration sending DistributedLocks created or changed (in ``namespace`` only,
    if given) to this process's lock check, as the shipped one sends them to the operator's Service."""
    hook = _hook(settings, f"lock-keys.{WEBHOOK_CONFIGURATION}", LOCK_CHECK_PATH, LOCK_WRITES, namespace)
    hook["failurePolicy"] = "Ignore"
    return _webhooks("ValidatingWebhookConfiguration", name, hook)


def _hook(
    settings: WebhookSettings, name: str, path: str, rule: dict[str, Any], namespace: str
) -> dict[str, Any]:
    hook: dict[str, Any] = {
        "name": name,
        "clientConfig": {
            "url": settings.url(path),
            "caBundle": base64.b64encode(settings.ca_bundle()).decode(),
        },
        "rules": [rule],
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 5,
    }
    if namespace:
        hook["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    return hook


def _webhooks(kind: str, name: str, hook: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name},
        "webhooks": [hook],
    }


async def register(kube: Kube, settings: WebhookSettings) -> None:
    """Write the webhook configurations that send annotated pods and lock changes to this process
    (``configure``)."""
    registrations = kube.admission
    merge = "application/merge-patch+json"
    writes: list[tuple[Any, Any, Any]] = [
        (
            configuration(settings),
            registrations.create_mutating_webhook_configuration,
            registrations.patch_mutating_webhook_configuration,
        ),
        (
            validation(settings),
            registrations.create_validating_webhook_configuration,
            registrations.patch_validating_webhook_configuration,
        ),
    ]
    try:
        for body, create, patch in writes:
            try:
                written = await kube.call(create, body)
            except Conflict:  # it exists: point it here
                written = await kube.call(patch, WEBHOOK_CONFIGURATION, body, _content_type=merge)
            if written is None:
                raise ApiUnavailable(f"no {body['kind']} API (404)")
    except ApiUnavailable as exc:
        raise EtcdLockError(f"cannot register the webhook: {exc}") from None
    log.info(
        "webhooks registered (%s): pods -> %s, locks -> %s",
        WEBHOOK_CONFIGURATION,
        settings.url(),
        settings.url(LOCK_CHECK_PATH),
    )
