"""OpenAPI v3 as kube-apiserver publishes it (``/openapi/v3`` and one document per group-version), for
``kubectl explain`` and for kubectl's check that a kind accepts ``fieldValidation``.

A custom kind's schema is its CRD's ``openAPIV3Schema`` with ``apiVersion``, ``kind`` and ``metadata``
described as kube-apiserver adds them, named like kube-apiserver's (``io.etcdlock.v1alpha1.DistributedLock``
for group etcdlock.io) and tagged with ``x-kubernetes-group-version-kind``. A built-in kind gets only its
apiVersion, kind and metadata: the sandbox has no copy of Kubernetes' schemas.

Each kind has one path, whose PATCH lists the query parameters the emulator understands and the patch
types it takes, without the strategic merge patch: kubectl then computes an apply's patch from its own
types (as without OpenAPI), not from these schemas, which lack the list merge keys.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from etcdlock_sandbox.apiserver.resources import Catalog, ResourceType

Obj = dict[str, Any]

OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_API_VERSION = {
    "type": "string",
    "description": "APIVersion defines the versioned schema of this representation of an object. Servers "
    "should convert recognized schemas to the latest internal value, and may reject unrecognized values.",
}
_KIND = {
    "type": "string",
    "description": "Kind is a string value representing the REST resource this object represents. Servers "
    "may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase.",
}
_METADATA = {
    "allOf": [{"$ref": f"#/components/schemas/{OBJECT_META}"}],
    "default": {},
    "description": "Standard object's metadata.",
}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string", "default": ""}}
_OBJECT_META_SCHEMA: Obj = {
    "type": "object",
    "description": "ObjectMeta is metadata that all persisted resources must have, which includes all "
    "objects users must create.",
    "properties": {
        "name": {"type": "string", "description": "Name must be unique within a namespace."},
        "generateName": {
            "type": "string",
            "description": "A prefix the server uses to generate a unique name if name is not given.",
        },
        "namespace": {"type": "string", "description": "The namespace the object is in."},
        "labels": {**_STRING_MAP, "description": "Map of string keys and values used to select objects."},
        "annotations": {**_STRING_MAP, "description": "Unstructured key value map of arbitrary metadata."},
        "uid": {"type": "string", "description": "The unique in time and space value of this object."},
        "resourceVersion": {"type": "string", "description": "The version of this object (opaque)."},
        "generation": {"type": "integer", "format": "int64", "description": "The generation of the spec."},
        "creationTimestamp": {"type": "string", "format": "date-time", "description": "When it was created."},
        "deletionTimestamp": {
            "type": "string",
            "format": "date-time",
            "description": "When it will be deleted (set when deletion is requested).",
        },
        "finalizers": {
            "type": "array",
            "items": {"type": "string", "default": ""},
            "description": "Must be empty before the object is deleted from the registry.",
        },
        "ownerReferences": {
            "type": "array",
            "items": {"type": "object"},
            "description": "Objects depended by this object; it is garbage collected when they are gone.",
        },
    },
}
_PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json")
_PATCH_PARAMETERS = ("dryRun", "fieldManager", "fieldValidation")


def index(catalog: Catalog) -> Obj:
    """``/openapi/v3``: each group-version's document, with a hash of its content in the URL."""
    paths = {}
    for group, version in _group_versions(catalog):
        path = _path_of(group, version)
        digest = hashlib.sha512(_encoded(document(catalog, group, version))).hexdigest().upper()
        paths[path] = {"serverRelativeURL": f"/openapi/v3/{path}?hash={digest}"}
    return {"paths": paths}


def document(catalog: Catalog, group: str, version: str) -> Obj:
    """The OpenAPI v3 document of one group-version: a path and a schema per kind."""
    types = catalog.in_group_version(group, version)
    schemas: Obj = {OBJECT_META: _OBJECT_META_SCHEMA}
    paths: Obj = {}
    for rtype in types:
        schemas[schema_name(rtype)] = _schema(rtype)
        paths[_object_path(rtype)] = {"patch": _patch(rtype)}
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0-etcdlock-sandbox"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def schema_name(rtype: ResourceType) -> str:
    """kube-apiserver's name of a kind's schema: the group reversed for custom kinds
    (``io.etcdlock.v1alpha1.DistributedLock``), ``io.k8s.api.<group>.<version>.<Kind>`` for built-in ones."""
    if rtype.schema is not None:
        return ".".join([*reversed(rtype.group.split(".")), rtype.version, rtype.kind])
    short = rtype.group.split(".")[0] if rtype.group else "core"
    return f"io.k8s.api.{short}.{rtype.version}.{rtype.kind}"


def _schema(rtype: ResourceType) -> Obj:
    if rtype.schema is not None:
        schema: Obj = copy.deepcopy(rtype.schema)
    else:
        schema = {"type": "object", "description": f"{rtype.kind} (its fields are not published here)."}
    schema["properties"] = {
        **(schema.get("properties") or {}),
        "apiVersion": _API_VERSION,
        "kind": _KIND,
        "metadata": _METADATA,
    }
    schema["x-kubernetes-group-version-kind"] = [_gvk(rtype)]
    return schema


def _patch(rtype: ResourceType) -> Obj:
    return {
        "operationId": f"patch{rtype.kind}",
        "parameters": [
            {"name": name, "in": "query", "schema": {"type": "string"}} for name in _PATCH_PARAMETERS
        ],
        "requestBody": {"content": {media: {"schema": {"type": "object"}} for media in _PATCH_TYPES}},
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": "patch",
        "x-kubernetes-group-version-kind": _gvk(rtype),
    }


def _gvk(rtype: ResourceType) -> Obj:
    return {"group": rtype.group, "version": rtype.version, "kind": rtype.kind}


def _object_path(rtype: ResourceType) -> str:
    prefix = f"/apis/{rtype.group}/{rtype.version}" if rtype.group else "/api/v1"
    scope = "/namespaces/{namespace}" if rtype.namespaced else ""
    return f"{prefix}{scope}/{rtype.plural}/{{name}}"


def _group_versions(catalog: Catalog) -> list[tuple[str, str]]:
    return sorted({(rtype.group, rtype.version) for rtype in catalog.all()})


def group_version_of(path: str) -> tuple[str, str] | None:
    """The group and version of a document's path (``api/v1``, ``apis/GROUP/VERSION``), None for others."""
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) == 2:
        return "", parts[1]
    if parts[0] == "apis" and len(parts) == 3:
        return parts[1], parts[2]
    return None


def _path_of(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _encoded(doc: Obj) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
