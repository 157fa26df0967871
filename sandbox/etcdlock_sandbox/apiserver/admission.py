"""Admission webhooks: the stored Mutating/ValidatingWebhookConfigurations, called on create and update.

Calls are AdmissionReview v1 over HTTPS, verified with the configuration's ``caBundle``, on connections
kept alive between calls (as kube-apiserver's client keeps them). A webhook given by ``service`` is
reached through that Service's Endpoints (there is no cluster DNS here), by ``url`` as is.
``failurePolicy`` is honoured (Fail by default, as in admissionregistration.k8s.io/v1), and so are
``matchConditions``: CEL expressions over ``object``, ``oldObject`` and ``request`` (evaluated by
cel-python), all of which must be true for the webhook to be called; one that fails to evaluate counts
as a call that failed.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import ssl
import uuid
from typing import TYPE_CHECKING, Any

import aiohttp
import celpy
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

from etcdlock_sandbox.apiserver import patches
from etcdlock_sandbox.apiserver.errors import ApiError
from etcdlock_sandbox.apiserver.resources import ResourceType
from etcdlock_sandbox.apiserver.selectors import label_selector_from_dict

if TYPE_CHECKING:
    from etcdlock_sandbox.apiserver.api import Api

Obj = dict[str, Any]
_GROUP = "admissionregistration.k8s.io"


class Admission:
    """Runs the webhooks that match a request, as kube-apiserver's admission chain does."""

    def __init__(self, api: Api) -> None:
        self._api = api
        # One client (and its kept-alive connections) per webhook endpoint and CA, made on first use.
        self._clients: dict[tuple[str, str | None], aiohttp.ClientSession] = {}
        self._conditions = MatchConditions()

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    async def mutate(
        self, operation: str, rtype: ResourceType, obj: Obj, old: Obj | None, subresource: str | None = None
    ) -> Obj:
        """Run the mutating webhooks whose rules name the resource written (``subresource``: e.g. status,
        which a rule for the resource alone does not match, as in kube-apiserver)."""
        hooks = await self._matching("mutatingwebhookconfigurations", operation, rtype, obj, subresource)
        for webhook in hooks:
            response = await self._call(webhook, operation, rtype, obj, old)
            if response is None:
                continue
            patch = response.get("patch")
            if patch:
                try:
                    obj = patches.apply_json_patch(obj, _json(base64.b64decode(patch)))
                except patches.PatchError as exc:
                    raise ApiError(
                        500, "InternalError", f'admission webhook "{webhook["name"]}" sent a bad patch: {exc}'
                    ) from None
        return obj

    async def validate(
        self, operation: str, rtype: ResourceType, obj: Obj, old: Obj | None, subresource: str | None = None
    ) -> None:
        hooks = await self._matching("validatingwebhookconfigurations", operation, rtype, obj, subresource)
        for webhook in hooks:
            await self._call(webhook, operation, rtype, obj, old)

    async def _matching(
        self, plural: str, operation: str, rtype: ResourceType, obj: Obj, subresource: str | None = None
    ) -> list[Obj]:
        if rtype.group == _GROUP:
            return []
        configs, _ = await self._api.storage.list(self._api.resolve(_GROUP, "v1", plural), None)
        found = []
        for config in configs:
            for webhook in config.get("webhooks") or ():
                if _rules_match(webhook, operation, rtype, subresource) and await self._selectors_match(
                    webhook, rtype, obj
                ):
                    found.append(webhook)
        return found

    async def _selectors_match(self, webhook: Obj, rtype: ResourceType, obj: Obj) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        if not label_selector_from_dict(webhook.get("objectSelector") or {})(labels):
            return False
        selector = webhook.get("namespaceSelector")
        if not selector or not rtype.namespaced:
            return True
        namespace = obj["metadata"].get("namespace")
        try:
            ns = await self._api.storage.get(self._api.resolve("", "v1", "namespaces"), None, namespace)
        except ApiError:
            return False
        return label_selector_from_dict(selector)(ns["metadata"].get("labels") or {})

    async def _call(
        self, webhook: Obj, operation: str, rtype: ResourceType, obj: Obj, old: Obj | None
    ) -> Obj | None:
        """Call one webhook; None when it failed and its failurePolicy is Ignore."""
        name = webhook.get("name", "?")
        review = _review(operation, rtype, obj, old)
        try:
            if not self._conditions.match(webhook, review["request"]):
                return None
            url, context, server_name = await self._endpoint(webhook)
            timeout = aiohttp.ClientTimeout(total=float(webhook.get("timeoutSeconds", 10)))
            client = self._client(url, webhook)
            async with client.post(
                url, json=review, ssl=context, server_hostname=server_name, timeout=timeout
            ) as reply:
                if reply.status != 200:
                    raise RuntimeError(f"HTTP {reply.status}")
                answer = await reply.json()
            response: Obj = answer["response"]
        except (
            aiohttp.ClientError,
            TimeoutError,
            RuntimeError,
            KeyError,
            ValueError,
            ssl.SSLError,
            CELEvalError,
        ) as exc:
            if webhook.get("failurePolicy", "Fail") == "Ignore":
                return None
            raise ApiError(
                500,
                "InternalError",
                f'Internal error occurred: failed calling webhook "{name}": {exc or type(exc).__name__}',
            ) from None
        if not response.get("allowed"):
            status = response.get("status") or {}
            message = status.get("message") or "denied"
            raise ApiError(
                int(status.get("code") or 400),
                status.get("reason") or "BadRequest",
                f'admission webhook "{name}" denied the request: {message}',
            )
        return response

    def _client(self, url: str, webhook: Obj) -> aiohttp.ClientSession:
        origin = url.split("/", 3)[2]
        key = (origin, (webhook.get("clientConfig") or {}).get("caBundle"))
        if key not in self._clients:
            self._clients[key] = aiohttp.ClientSession()
        return self._clients[key]

    async def _endpoint(self, webhook: Obj) -> tuple[str, ssl.SSLContext, str | None]:
        """URL, TLS context (trusting ``caBundle``) and the name the certificate must carry."""
        config = webhook.get("clientConfig") or {}
        bundle = config.get("caBundle")
        cadata = base64.b64decode(bundle).decode() if bundle else None
        context = ssl.create_default_context(cadata=cadata)
        if config.get("url"):
            return str(config["url"]), context, None
        service = config.get("service") or {}
        namespace, name = service.get("namespace"), service.get("name", "")
        try:
            found = await self._api.storage.get(self._api.resolve("", "v1", "endpoints"), namespace, name)
        except ApiError:
            raise RuntimeError(f'service "{namespace}/{name}" has no endpoints') from None
        for subset in found.get("subsets") or ():
            ports = [p["port"] for p in subset.get("ports") or () if "port" in p]
            for address in subset.get("addresses") or ():
                port = ports[0] if ports else service.get("port", 443)
                url = f"https://{address['ip']}:{port}{service.get('path', '')}"
                return url, context, f"{name}.{namespace}.svc"
        raise RuntimeError(f'service "{namespace}/{name}" has no ready endpoints')


def _rules_match(webhook: Obj, operation: str, rtype: ResourceType, subresource: str | None) -> bool:
    for rule in webhook.get("rules") or ():
        operations = rule.get("operations") or []
        if "*" not in operations and operation not in operations:
            continue
        if not _any(rule.get("apiGroups"), rtype.group) or not _any(rule.get("apiVersions"), rtype.version):
            continue
        if not any(_resource_matches(p, rtype.plural, subresource) for p in rule.get("resources") or ()):
            continue
        scope = rule.get("scope", "*")
        if (scope == "Namespaced" and not rtype.namespaced) or (scope == "Cluster" and rtype.namespaced):
            continue
        return True
    return False


def _resource_matches(pattern: str, plural: str, subresource: str | None) -> bool:
    """A rule's resource: ``pods`` (not its subresources), ``pods/status``, ``*``, ``*/status``, ``*/*``."""
    resource, _, sub = pattern.partition("/")
    if resource not in ("*", plural):
        return False
    if subresource is None:
        return not sub
    return sub in ("*", subresource)


def _any(patterns: list[str] | None, value: str) -> bool:
    return any(pattern == "*" or fnmatch.fnmatchcase(value, pattern) for pattern in patterns or ())


def _review(operation: str, rtype: ResourceType, obj: Obj, old: Obj | None) -> Obj:
    gvk = {"group": rtype.group, "version": rtype.version, "kind": rtype.kind}
    gvr = {"group": rtype.group, "version": rtype.version, "resource": rtype.plural}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": obj.get("metadata", {}).get("name", ""),
            "namespace": obj.get("metadata", {}).get("namespace"),
            "operation": operation,
            "userInfo": {"username": "system:admin", "groups": ["system:masters", "system:authenticated"]},
            "object": obj,
            "oldObject": old,
            "dryRun": False,
            "options": {
                "kind": "CreateOptions" if operation == "CREATE" else "UpdateOptions",
                "apiVersion": "meta.k8s.io/v1",
            },
        },
    }


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise patches.PatchError(f"patch is not JSON: {exc}") from None


class MatchConditions:
    """A webhook's ``matchConditions``, compiled once per expression: every one must be true."""

    def __init__(self) -> None:
        self._environment = celpy.Environment()
        self._programs: dict[str, Any] = {}

    def match(self, webhook: Obj, request: Obj) -> bool:
        """Whether every condition holds for ``request`` (an AdmissionRequest); a condition that cannot
        be evaluated raises :class:`~celpy.evaluation.CELEvalError` (compilation errors included)."""
        conditions = webhook.get("matchConditions") or ()
        if not conditions:
            return True
        activation = {
            "object": json_to_cel(request.get("object")),
            "oldObject": json_to_cel(request.get("oldObject")),
            "request": json_to_cel(request),
        }
        for condition in conditions:
            result = self._program(str(condition.get("expression", ""))).evaluate(activation)
            if isinstance(result, CELEvalError):
                raise result
            if not isinstance(result, celpy.celtypes.BoolType):
                raise CELEvalError(f"matchCondition {condition.get('name')!r} is not a boolean")
            if not result:
                return False
        return True

    def _program(self, expression: str) -> Any:
        if expression not in self._programs:
            try:
                self._programs[expression] = self._environment.program(self._environment.compile(expression))
            except CELParseError as exc:
                raise CELEvalError(f"matchCondition does not compile: {exc}") from None
        return self._programs[expression]
