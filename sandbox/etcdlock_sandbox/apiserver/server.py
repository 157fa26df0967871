"""The HTTP face of the emulator: kube-apiserver's URLs, discovery, JSON bodies, watch streams, tables,
OpenAPI v3 and pod logs.

Plain HTTP on loopback, no authentication: a sandbox and a test double, never a production server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from etcdlock_sandbox.apiserver import errors, logs, openapi, protobuf, tables
from etcdlock_sandbox.apiserver.api import Api
from etcdlock_sandbox.apiserver.errors import ApiError
from etcdlock_sandbox.apiserver.eviction import evict
from etcdlock_sandbox.apiserver.logs import LogFiles
from etcdlock_sandbox.apiserver.resources import ResourceType

log = logging.getLogger(__name__)

Obj = dict[str, Any]

VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-etcdlock-sandbox",
    "gitCommit": "",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "",
    "compiler": "",
    "platform": "linux/amd64",
}
# OpenAPI v2 has no schemas: kubectl reads OpenAPI v3 (:mod:`.openapi`), where it finds that every kind
# takes fieldValidation, so it leaves validation to the server (custom resources are validated against
# their CRD's schema).
OPENAPI_V2: dict[str, Any] = {
    "swagger": "2.0",
    "info": {"title": "etcdlock sandbox", "version": VERSION["gitVersion"]},
    "paths": {},
    "definitions": {},
}
DEFAULT_WATCH_SECONDS = 1800
_SUBRESOURCES = ("status", "finalize")


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body, separators=(",", ":")), status=status, content_type="application/json"
    )


@web.middleware
async def _status_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as exc:
        return _json(exc.status(), exc.code)


@dataclass(frozen=True)
class AuditRecord:
    """One resource request, as kube-apiserver's audit log and RBAC see it."""

    user_agent: str
    verb: str
    group: str
    resource: str
    namespace: str | None
    name: str | None


class ApiServer:
    """An aiohttp application serving :class:`Api` the way kube-apiserver does.

    With ``audit`` every resource request is recorded in :attr:`audit` (for checking RBAC rules against
    what a client really does). ``logs`` says where the containers' logs are (``pods/NAME/log``).
    """

    def __init__(self, api: Api, audit: bool = False, logs: LogFiles | None = None) -> None:
        self.api = api
        self.logs = logs
        self.audit: list[AuditRecord] | None = [] if audit else None
        self.app = web.Application(middlewares=[_status_errors], client_max_size=16 * 1024 * 1024)
        get = self.app.router.add_get
        for path in ("/healthz", "/livez", "/readyz"):
            get(path, self._ok)
        get("/openapi/v2", self._openapi_v2)
        get("/openapi/v3", self._openapi_v3_index)
        get("/openapi/v3/{path:.+}", self._openapi_v3)
        # The kubernetes Python client asks for discovery with a trailing slash ("/version/", "/api/v1/").
        for path, handler in (
            ("/version", self._version),
            ("/api", self._core_versions),
            ("/apis", self._groups),
            ("/api/v1", self._core_resources),
            ("/apis/{group}", self._group),
            ("/apis/{group}/{version}", self._group_resources),
        ):
            get(path, handler)
            get(path + "/", handler)
        self.app.router.add_route("*", "/api/v1/{path:.+}", self._core_object)
        self.app.router.add_route("*", "/apis/{group}/{version}/{path:.+}", self._group_object)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on host:port (0 = a free port); returns the server's URL."""
        # handler_cancellation: a watch whose client went away ends at once (and its etcd watch with it)
        # instead of lingering until the next event fails to be written.
        self._runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, handler_cancellation=True
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.url = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- discovery ----------------------------------------------------------------------------------

    async def _ok(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _version(self, _: web.Request) -> web.Response:
        return _json(VERSION)

    async def _openapi_v2(self, request: web.Request) -> web.Response:
        """An OpenAPI v2 document without schemas, as JSON or (kubectl asks for it) protobuf.

        Protobuf goes out as ``application/octet-stream``, as kube-openapi sends it: kubectl's media-type
        parser rejects the ``@`` of the protobuf media type it asks for.
        """
        if "protobuf" in request.headers.get("Accept", ""):
            return web.Response(body=_openapi_v2_protobuf(), content_type="application/octet-stream")
        return _json(OPENAPI_V2)

    async def _openapi_v3_index(self, _: web.Request) -> web.Response:
        return _json(openapi.index(self.api.catalog))

    async def _openapi_v3(self, request: web.Request) -> web.Response:
        """One group-version's document (``api/v1``, ``apis/GROUP/VERSION``); the ``hash`` is not checked."""
        found = openapi.group_version_of(request.match_info["path"])
        if found is None or not self.api.catalog.in_group_version(*found):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        group, version = found
        return _json(openapi.document(self.api.catalog, group, version))

    async def _core_versions(self, _: web.Request) -> web.Response:
        return _json({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})

    def _group_doc(self, group: str, versions: list[str]) -> Obj:
        listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": listed, "preferredVersion": listed[0]}

    async def _groups(self, _: web.Request) -> web.Response:
        groups = [self._group_doc(g, vs) for g, vs in self.api.catalog.groups().items()]
        return _json({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})

    async def _group(self, request: web.Request) -> web.Response:
        group = request.match_info["group"]
        versions = self.api.catalog.groups().get(group)
        if not versions:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({group})")
        return _json({"kind": "APIGroup", "apiVersion": "v1", **self._group_doc(group, versions)})

    def _resource_list(self, group: str, version: str) -> Obj:
        types = self.api.catalog.in_group_version(group, version)
        if not types:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        resources = [entry for rtype in types for entry in rtype.discovery()]
        group_version = f"{group}/{version}" if group else version
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        }

    async def _core_resources(self, _: web.Request) -> web.Response:
        return _json(self._resource_list("", "v1"))

    async def _group_resources(self, request: web.Request) -> web.Response:
        return _json(self._resource_list(request.match_info["group"], request.match_info["version"]))

    # -- objects ------------------------------------------------------------------------------------

    async def _core_object(self, request: web.Request) -> web.StreamResponse:
        return await self._object(request, "", "v1", request.match_info["path"])

    async def _group_object(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        return await self._object(request, info["group"], info["version"], info["path"])

    async def _object(self, request: web.Request, group: str, version: str, path: str) -> web.StreamResponse:
        parts = [p for p in path.split("/") if p]
        namespace: str | None = None
        if len(parts) >= 3 and parts[0] == "namespaces" and parts[2] not in _SUBRESOURCES:
            namespace, parts = parts[1], parts[2:]
        if not parts or len(parts) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        plural = parts[0]
        name = parts[1] if len(parts) > 1 else None
        subresource = parts[2] if len(parts) > 2 else None
        rtype = self.api.resolve(group, version, plural)
        if self.audit is not None:
            self.audit.append(_audit(request, group, plural, subresource, namespace, name))
        if rtype.namespaced and name is not None and namespace is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rtype.namespaced and namespace is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if name is None:
            return await self._collection(request, rtype, namespace)
        if subresource == "log" and (rtype.group, rtype.plural) == ("", "pods") and request.method == "GET":
            return await logs.serve(request, await self.api.get(rtype, namespace, name), self.logs)
        return await self._single(request, rtype, namespace, name, subresource)

    async def _collection(
        self, request: web.Request, rtype: ResourceType, namespace: str | None
    ) -> web.StreamResponse:
        query = request.query
        match = self.api.matcher(rtype, query.get("labelSelector"), query.get("fieldSelector"))
        if request.method == "GET":
            if query.get("watch") in ("1", "true", "True"):
                return await self._watch(request, rtype, namespace, match)
            items, revision = await self.api.list_matching(rtype, namespace, match)
            if _wants_table(request):
                return _json(tables.table(rtype, items, str(revision), _include_object(request)))
            return _json(
                {
                    "kind": f"{rtype.kind}List",
                    "apiVersion": rtype.group_version,
                    "metadata": {"resourceVersion": str(revision)},
                    "items": items,
                }
            )
        if request.method == "POST":
            body = await _body(request)
            created = await self.api.create(
                rtype,
                namespace,
                body,
                dry_run="dryRun" in query,
                field_validation=query.get("fieldValidation", ""),
            )
            return _json(created, 201)
        if request.method == "DELETE":
            deleted = await self.api.delete_collection(rtype, namespace, match)
            return _json(
                {
                    "kind": f"{rtype.kind}List",
                    "apiVersion": rtype.group_version,
                    "metadata": {},
                    "items": deleted,
                }
            )
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not allowed on a collection")

    async def _single(
        self,
        request: web.Request,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        subresource: str | None,
    ) -> web.StreamResponse:
        if subresource == "scale" and rtype.scale is not None:
            return await self._scale(request, rtype, namespace, name)
        if subresource == "eviction" and (rtype.group, rtype.plural) == ("", "pods") and namespace:
            if request.method != "POST":
                raise ApiError(405, "MethodNotAllowed", f"{request.method} is not allowed on an eviction")
            return _json(await evict(self.api, namespace, name, await _body(request)), 201)
        if subresource is not None and (subresource != "status" or not rtype.status_subresource):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if request.method == "GET":
            obj = await self.api.get(rtype, namespace, name)
            if _wants_table(request):
                version = obj["metadata"]["resourceVersion"]
                return _json(tables.table(rtype, [obj], version, _include_object(request)))
            return _json(obj)
        if request.method == "PUT":
            body = await _body(request)
            validation = request.query.get("fieldValidation", "")
            return _json(await self.api.update(rtype, namespace, name, body, subresource, validation))
        if request.method == "PATCH":
            document = await request.read()
            return _json(
                await self.api.patch(
                    rtype,
                    namespace,
                    name,
                    request.content_type,
                    document,
                    subresource,
                    request.query.get("fieldValidation", ""),
                )
            )
        if request.method == "DELETE":
            raw = await request.read()
            options = json.loads(raw) if raw.strip() else {}
            return _json(await self.api.delete(rtype, namespace, name, options))
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not allowed on an object")

    async def _scale(
        self, request: web.Request, rtype: ResourceType, namespace: str | None, name: str
    ) -> web.StreamResponse:
        if request.method == "GET":
            return _json(await self.api.get_scale(rtype, namespace, name))
        if request.method == "PUT":
            return _json(await self.api.update_scale(rtype, namespace, name, await _body(request)))
        if request.method == "PATCH":
            document = await request.read()
            return _json(await self.api.patch_scale(rtype, namespace, name, request.content_type, document))
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not allowed on a scale subresource")

    async def _watch(
        self, request: web.Request, rtype: ResourceType, namespace: str | None, match: Any
    ) -> web.StreamResponse:
        """A chunked stream of ``{"type": ..., "object": ...}`` lines until timeoutSeconds or disconnect;
        each object a Table of one row when the client asks for tables (column definitions in the first)."""
        seconds = float(request.query.get("timeoutSeconds") or DEFAULT_WATCH_SECONDS)
        shown = _watch_shape(request, rtype)
        events = self.api.watch(rtype, namespace, request.query.get("resourceVersion"), match)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            async with asyncio.timeout(seconds):
                async for kind, obj in events:
                    await response.write(json.dumps({"type": kind, "object": shown(obj)}).encode() + b"\n")
        except TimeoutError:
            pass
        except ApiError as exc:
            await response.write(json.dumps({"type": "ERROR", "object": exc.status()}).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            with contextlib.suppress(Exception):
                await events.aclose()  # type: ignore[attr-defined]
            raise
        await response.write_eof()
        return response


def _audit(
    request: web.Request,
    group: str,
    plural: str,
    subresource: str | None,
    namespace: str | None,
    name: str | None,
) -> AuditRecord:
    """The RBAC verb of a request: get/list/watch/create/update/patch/delete/deletecollection."""
    if request.method == "GET":
        watching = request.query.get("watch") in ("1", "true", "True")
        verb = "get" if name is not None else "watch" if watching else "list"
    elif request.method == "DELETE":
        verb = "delete" if name is not None else "deletecollection"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(
            request.method, request.method.lower()
        )
    resource = f"{plural}/{subresource}" if subresource else plural
    return AuditRecord(request.headers.get("User-Agent", ""), verb, group, resource, namespace, name)


def _protobuf_string(field: int, value: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2); the values here are all shorter than 128 bytes."""
    return bytes([field << 3 | 2, len(value)]) + value


def _openapi_v2_protobuf() -> bytes:
    """OPENAPI_V2 as gnostic's ``openapi_v2.Document``: swagger (1) and info (2: title 1, version 2)."""
    info = OPENAPI_V2["info"]
    encoded_info = _protobuf_string(1, info["title"].encode()) + _protobuf_string(2, info["version"].encode())
    return _protobuf_string(1, OPENAPI_V2["swagger"].encode()) + _protobuf_string(2, encoded_info)


def _wants_table(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "as=Table" in accept


def _include_object(request: web.Request) -> str:
    """The ``includeObject`` of a Table request (Metadata when not given); any other value is refused."""
    value = request.query.get("includeObject") or "Metadata"
    if value not in tables.INCLUDE_OBJECT:
        raise errors.bad_request(f"unrecognized includeObject value: {json.dumps(value)}")
    return value


def _watch_shape(request: web.Request, rtype: ResourceType) -> Callable[[Obj], Obj]:
    """What a watch sends of each object: itself, or a Table of it (:class:`_TablesOfEvents`)."""
    if not _wants_table(request):
        return lambda obj: obj
    return _TablesOfEvents(rtype, _include_object(request))


class _TablesOfEvents:
    """Each watched object as a Table of one row; only the first carries the column definitions."""

    def __init__(self, rtype: ResourceType, include_object: str) -> None:
        self._rtype = rtype
        self._include_object = include_object
        self._headers = True

    def __call__(self, obj: Obj) -> Obj:
        version = obj["metadata"].get("resourceVersion", "")
        shown = tables.table(self._rtype, [obj], version, self._include_object, self._headers)
        self._headers = False
        return shown


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if request.content_type == protobuf.MEDIA_TYPE:
        return protobuf.decode(raw)
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise errors.bad_request(f"the body of the request could not be decoded as JSON: {exc}") from None
