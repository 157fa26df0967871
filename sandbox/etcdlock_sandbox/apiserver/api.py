"""What kube-apiserver does to objects, without the HTTP: create, update, patch, delete, list, watch.

Covered: uid, creationTimestamp, generateName, generation (bumped on spec changes only), the status
subresource, a CRD's scale subresource (:mod:`.scale`), CRD schemas (pruning, defaults, validation),
finalizers and deletionTimestamp, background garbage collection through ownerReferences, namespace and CRD
deletion cascades, pod scheduling gates, a Secret's ``stringData`` (stored as ``data``), and watches that
turn selector transitions into ADDED/DELETED as the real server does.
Not covered: pod spec immutability, server-side apply, foreground deletion (treated as background).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from etcdlock_sandbox.apiserver import errors, patches, scale, schema
from etcdlock_sandbox.apiserver.admission import Admission
from etcdlock_sandbox.apiserver.errors import ApiError
from etcdlock_sandbox.apiserver.resources import CRD_TYPE, Catalog, ResourceType, from_crd
from etcdlock_sandbox.apiserver.selectors import SelectorError, parse_field_selector, parse_label_selector
from etcdlock_sandbox.apiserver.storage import Storage

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Matcher = Callable[[Obj], bool]

INITIAL_NAMESPACES = ("default", "kube-system", "kube-public")
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_MAX_RETRIES = 20

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"


def now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _name_of(rtype: ResourceType, obj: Obj) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


class Api:
    """The behaviour of the API server over :class:`Storage`, for every kind in the :class:`Catalog`."""

    def __init__(self, storage: Storage, catalog: Catalog | None = None) -> None:
        self.storage = storage
        self.catalog = catalog or Catalog()
        self.admission = Admission(self)
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Create the initial namespaces and serve the kinds of the CRDs already stored."""
        namespaces = self.resolve("", "v1", "namespaces")
        for name in INITIAL_NAMESPACES:
            try:
                await self.create(
                    namespaces, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
                )
            except ApiError as exc:
                if exc.code != 409:
                    raise
        crds, _ = await self.storage.list(CRD_TYPE, None)
        for crd in crds:
            self.catalog.set_crd(crd)

    async def close(self) -> None:
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.admission.close()

    def resolve(self, group: str, version: str, plural: str) -> ResourceType:
        rtype = self.catalog.get(group, version, plural)
        if rtype is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({plural})")
        return rtype

    # -- reads --------------------------------------------------------------------------------------

    async def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        return await self.storage.get(rtype, namespace, name)

    def matcher(self, rtype: ResourceType, label_selector: str | None, field_selector: str | None) -> Matcher:
        try:
            labels = parse_label_selector(label_selector or "")
            fields = parse_field_selector(field_selector or "", rtype.fields)
        except SelectorError as exc:
            raise errors.bad_request(str(exc)) from None
        return lambda obj: labels(obj.get("metadata", {}).get("labels") or {}) and fields(obj)

    async def list_matching(
        self, rtype: ResourceType, namespace: str | None, match: Matcher
    ) -> tuple[list[Obj], int]:
        items, revision = await self.storage.list(rtype, namespace)
        return [item for item in items if match(item)], revision

    async def watch(
        self, rtype: ResourceType, namespace: str | None, resource_version: str | None, match: Matcher
    ) -> AsyncIterator[tuple[str, Obj]]:
        """Events as kube-apiserver sends them; without a resourceVersion, the current state comes first."""
        if not resource_version or resource_version == "0":
            items, after = await self.list_matching(rtype, namespace, match)
            for item in items:
                yield "ADDED", item
        else:
            try:
                after = int(resource_version)
            except ValueError:
                raise errors.bad_request(f"invalid resourceVersion {resource_version!r}") from None
        async for event in self.storage.watch(rtype, namespace, after):
            was = event.previous is not None and match(event.previous)
            if event.type == "DELETED":
                if was:
                    yield "DELETED", event.object
                continue
            matches = match(event.object)
            if matches:
                yield ("MODIFIED" if was else "ADDED"), event.object
            elif was:
                yield "DELETED", event.object

    # -- writes -------------------------------------------------------------------------------------

    def _checked_body(self, rtype: ResourceType, namespace: str | None, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        obj: Obj = copy.deepcopy(body)
        kind = obj.get("kind")
        if kind and kind != rtype.kind:
            raise errors.bad_request(f"the kind {kind!r} does not match the resource {rtype.plural!r}")
        api_version = obj.get("apiVersion")
        if api_version and api_version != rtype.group_version:
            raise errors.bad_request(f"the apiVersion {api_version!r} does not match {rtype.group_version!r}")
        obj["kind"], obj["apiVersion"] = rtype.kind, rtype.group_version
        metadata = obj.setdefault("metadata", {})
        if not isinstance(metadata, dict):
            raise errors.bad_request("metadata must be an object")
        if rtype.namespaced:
            given = metadata.get("namespace")
            if given and namespace and given != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            metadata["namespace"] = namespace
        else:
            metadata.pop("namespace", None)
        if rtype.group == "" and rtype.plural == "secrets":
            _store_string_data(obj)
        return obj

    async def create(
        self,
        rtype: ResourceType,
        namespace: str | None,
        body: Any,
        *,
        dry_run: bool = False,
        field_validation: str = "",
    ) -> Obj:
        obj = self._checked_body(rtype, namespace, body)
        self._check_fields(rtype, obj, field_validation)
        metadata = obj["metadata"]
        if not metadata.get("name"):
            prefix = metadata.get("generateName")
            if not prefix:
                raise errors.invalid(
                    rtype.kind,
                    rtype.group,
                    "",
                    ["metadata.name: Required value: name or generateName is required"],
                )
            metadata["name"] = prefix + "".join(secrets.choice(_NAME_ALPHABET) for _ in range(5))
        name = metadata["name"]
        if rtype.namespaced:
            await self._require_namespace(namespace or "")
        for field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            metadata.pop(field, None)
        metadata["uid"] = str(uuid.uuid4())
        metadata["creationTimestamp"] = now()
        metadata["generation"] = 1
        if rtype.status_subresource:
            obj.pop("status", None)
        obj = self._on_create(rtype, obj)
        obj = await self.admission.mutate("CREATE", rtype, obj, None)
        obj = self._custom_schema(rtype, obj)
        await self.admission.validate("CREATE", rtype, obj, None)
        if dry_run:
            metadata["resourceVersion"] = ""
            return obj
        stored = await self.storage.create(rtype, namespace, obj)
        if rtype is CRD_TYPE:
            self.catalog.set_crd(stored)
        log.debug("created %s %s/%s", rtype.kind, namespace, name)
        return stored

    async def _require_namespace(self, namespace: str) -> None:
        namespaces = self.resolve("", "v1", "namespaces")
        try:
            found = await self.storage.get(namespaces, None, namespace)
        except ApiError:
            raise errors.not_found("namespaces", "", namespace) from None
        if found["metadata"].get("deletionTimestamp"):
            raise ApiError(403, "Forbidden", f"namespace {namespace} is being terminated")

    def _on_create(self, rtype: ResourceType, obj: Obj) -> Obj:
        """Defaults the real server's strategies set at creation (no controllers run here)."""
        if rtype.group == "" and rtype.plural == "pods":
            obj["status"] = {"phase": "Pending", "conditions": _gate_conditions(obj)}
        elif rtype.group == "" and rtype.plural == "namespaces":
            obj["status"] = {"phase": "Active"}
            labels = obj["metadata"].setdefault("labels", {})
            labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
        elif rtype.group == "" and rtype.plural == "secrets" and not obj.get("type"):
            obj["type"] = "Opaque"
        elif rtype is CRD_TYPE:
            obj["status"] = _crd_status(obj)
        return obj

    def _check_fields(self, rtype: ResourceType, obj: Obj, field_validation: str) -> None:
        """``fieldValidation=Strict``: refuse fields the CRD schema does not know (else they are pruned)."""
        if field_validation != "Strict" or rtype.schema is None:
            return
        unknown = schema.unknown_fields(obj, rtype.schema)
        if unknown:
            fields = ", ".join(f'unknown field "{field}"' for field in unknown)
            raise errors.bad_request(
                f'{rtype.kind} in version "{rtype.version}" cannot be handled as a {rtype.kind}: '
                f"strict decoding error: {fields}"
            )

    def _custom_schema(self, rtype: ResourceType, obj: Obj) -> Obj:
        if rtype.schema is None:
            return obj
        obj = schema.prune(obj, rtype.schema)
        obj = schema.apply_defaults(obj, rtype.schema)
        problems = schema.validate(obj, rtype.schema)
        if problems:
            raise errors.invalid(rtype.kind, rtype.group, _name_of(rtype, obj), problems)
        return obj

    def _merged_update(self, rtype: ResourceType, current: Obj, new: Obj, subresource: str | None) -> Obj:
        """The object to store when ``current`` is replaced by ``new`` through the main or /status path."""
        if subresource == "status":
            result = copy.deepcopy(current)
            if "status" in new:
                result["status"] = new["status"]
            else:
                result.pop("status", None)
            return result
        if subresource is not None:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({subresource})"
            )
        result = copy.deepcopy(new)
        meta, old_meta = result["metadata"], current["metadata"]
        for field in (
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or ()) - set(old_meta.get("finalizers") or ())
            if added:
                raise errors.invalid(
                    rtype.kind,
                    rtype.group,
                    meta["name"],
                    [
                        "metadata.finalizers: Forbidden: no new finalizers can be added if the object is "
                        f"being deleted, found new finalizers {sorted(added)}"
                    ],
                )
        if rtype.status_subresource:
            if "status" in current:
                result["status"] = copy.deepcopy(current["status"])
            else:
                result.pop("status", None)
        if rtype.group == "" and rtype.plural == "pods":
            _check_gates(current, result)
        if rtype is CRD_TYPE:
            result["status"] = _crd_status(result)
        ignored = ("metadata", "status") if rtype.status_subresource else ("metadata",)
        if _content(current, ignored) != _content(result, ignored):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        return result

    async def update(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        subresource: str | None = None,
        field_validation: str = "",
    ) -> Obj:
        new = self._checked_body(rtype, namespace, body)
        self._check_fields(rtype, new, field_validation)
        if new["metadata"].get("name", name) != name:
            raise errors.bad_request("the name of the object does not match the name on the URL")
        new["metadata"]["name"] = name
        current = await self.storage.get(rtype, namespace, name)
        given = new["metadata"].get("resourceVersion")
        expected = int(given) if given else int(current["metadata"]["resourceVersion"])
        if given and given != current["metadata"]["resourceVersion"]:
            raise errors.conflict(rtype.plural, rtype.group, name)
        obj = self._merged_update(rtype, current, new, subresource)
        return await self._replace(rtype, namespace, current, obj, expected, subresource)

    async def _replace(
        self,
        rtype: ResourceType,
        namespace: str | None,
        current: Obj,
        obj: Obj,
        expected: int,
        subresource: str | None = None,
    ) -> Obj:
        """Store an update: admission (of the subresource written, if one), schema, then either the new
        object or its removal (last finalizer)."""
        obj = await self.admission.mutate("UPDATE", rtype, obj, current, subresource)
        obj = self._custom_schema(rtype, obj)
        await self.admission.validate("UPDATE", rtype, obj, current, subresource)
        if obj["metadata"].get("deletionTimestamp") and not obj["metadata"].get("finalizers"):
            removed = await self.storage.delete(rtype, namespace, obj["metadata"]["name"], expected)
            self._after_removal(rtype, removed)
            return obj
        stored = await self.storage.update(rtype, namespace, obj, expected)
        if rtype is CRD_TYPE:
            self.catalog.set_crd(stored)
        return stored

    async def patch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        document: bytes,
        subresource: str | None = None,
        field_validation: str = "",
    ) -> Obj:
        """Apply a merge, JSON or strategic merge patch; retried on conflicts unless it names a version."""
        media, patch = _decode_patch(content_type, document, custom=rtype.schema is not None)
        for _ in range(_MAX_RETRIES):
            current = await self.storage.get(rtype, namespace, name)
            current_version = current["metadata"]["resourceVersion"]
            patched = _apply_patch(media, current, patch)
            new = self._checked_body(rtype, namespace, patched)
            self._check_fields(rtype, new, field_validation)
            new["metadata"]["name"] = name
            asked = str(new["metadata"].get("resourceVersion") or current_version)
            if asked != current_version:
                raise errors.conflict(rtype.plural, rtype.group, name)
            obj = self._merged_update(rtype, current, new, subresource)
            try:
                return await self._replace(rtype, namespace, current, obj, int(current_version), subresource)
            except ApiError as exc:
                if exc.reason != "Conflict" or _pins_version(media, patch):
                    raise
        raise errors.conflict(rtype.plural, rtype.group, name)

    async def get_scale(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        return scale.scale_of(rtype, await self.storage.get(rtype, namespace, name))

    async def update_scale(self, rtype: ResourceType, namespace: str | None, name: str, body: Any) -> Obj:
        """PUT of a Scale: a resourceVersion in it must be the object's; without one it is retried."""
        pinned = isinstance(body, dict) and bool((body.get("metadata") or {}).get("resourceVersion"))
        return await self._rescale(rtype, namespace, name, lambda _: body, retry=not pinned)

    async def patch_scale(
        self, rtype: ResourceType, namespace: str | None, name: str, content_type: str, document: bytes
    ) -> Obj:
        """A patch of the Scale (kubectl scale sends a merge patch); retried on conflicts unless it names a
        version."""
        media, patch = _decode_patch(content_type, document, custom=False)
        return await self._rescale(
            rtype,
            namespace,
            name,
            lambda current: _apply_patch(media, current, patch),
            retry=not _pins_version(media, patch),
        )

    async def _rescale(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        change: Callable[[Obj], Any],
        retry: bool,
    ) -> Obj:
        """Write the replicas of ``change(current Scale)`` into the object, as an update of the object."""
        for _ in range(_MAX_RETRIES):
            current = await self.storage.get(rtype, namespace, name)
            new = scale.scaled(rtype, current, change(scale.scale_of(rtype, current)))
            if new["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]:
                raise errors.conflict(rtype.plural, rtype.group, name)
            obj = self._merged_update(rtype, current, new, None)
            try:
                stored = await self._replace(
                    rtype, namespace, current, obj, int(current["metadata"]["resourceVersion"]), "scale"
                )
            except ApiError as exc:
                if exc.reason != "Conflict" or not retry:
                    raise
                continue
            return scale.scale_of(rtype, stored)
        raise errors.conflict(rtype.plural, rtype.group, name)

    async def delete(
        self, rtype: ResourceType, namespace: str | None, name: str, options: Obj | None = None
    ) -> Obj:
        """Delete now, or mark for deletion (deletionTimestamp) while finalizers remain."""
        preconditions = (options or {}).get("preconditions") or {}
        for _ in range(_MAX_RETRIES):
            current = await self.storage.get(rtype, namespace, name)
            meta = current["metadata"]
            if preconditions.get("uid") and preconditions["uid"] != meta.get("uid"):
                raise errors.conflict(rtype.plural, rtype.group, name)
            if (
                preconditions.get("resourceVersion")
                and preconditions["resourceVersion"] != meta["resourceVersion"]
            ):
                raise errors.conflict(rtype.plural, rtype.group, name)
            expected = int(meta["resourceVersion"])
            try:
                if meta.get("finalizers"):
                    if meta.get("deletionTimestamp"):
                        return current
                    marked = copy.deepcopy(current)
                    marked["metadata"]["deletionTimestamp"] = now()
                    marked["metadata"]["deletionGracePeriodSeconds"] = 0
                    return await self.storage.update(rtype, namespace, marked, expected)
                removed = await self.storage.delete(rtype, namespace, name, expected)
            except ApiError as exc:
                if exc.reason == "Conflict":
                    continue
                raise
            self._after_removal(rtype, removed)
            return removed
        raise errors.conflict(rtype.plural, rtype.group, name)

    async def delete_collection(
        self, rtype: ResourceType, namespace: str | None, match: Matcher
    ) -> list[Obj]:
        items, _ = await self.list_matching(rtype, namespace, match)
        deleted = []
        for item in items:
            try:
                deleted.append(await self.delete(rtype, namespace, item["metadata"]["name"]))
            except ApiError as exc:
                if exc.code != 404:
                    raise
        return deleted

    # -- cascades -----------------------------------------------------------------------------------

    def _after_removal(self, rtype: ResourceType, removed: Obj) -> None:
        """Background work the real controllers do once an object is gone."""
        if rtype is CRD_TYPE:
            self.catalog.drop_crd(removed["metadata"]["name"])
        self._spawn(self._cascade(rtype, removed))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _cascade(self, rtype: ResourceType, removed: Obj) -> None:
        try:
            if rtype is CRD_TYPE:
                for custom in from_crd(removed):
                    await self._delete_all(custom, None)
            if rtype.group == "" and rtype.plural == "namespaces":
                for other in list(self.catalog.all()):
                    if other.namespaced:
                        await self._delete_all(other, removed["metadata"]["name"])
            await self._collect_dependents(removed)
        except ApiError as exc:
            log.warning(
                "cascade after removing %s %s failed: %s", rtype.kind, removed["metadata"]["name"], exc
            )

    async def _delete_all(self, rtype: ResourceType, namespace: str | None) -> None:
        items, _ = await self.storage.list(rtype, namespace)
        for item in items:
            await self._delete_quietly(rtype, item)

    async def _collect_dependents(self, owner: Obj) -> None:
        """Background garbage collection: delete every object that names ``owner`` in ownerReferences."""
        uid = owner["metadata"].get("uid")
        scope = owner["metadata"].get("namespace")
        for rtype in list(self.catalog.all()):
            items, _ = await self.storage.list(rtype, scope if rtype.namespaced else None)
            for item in items:
                refs = item["metadata"].get("ownerReferences") or []
                if any(ref.get("uid") == uid for ref in refs):
                    await self._delete_quietly(rtype, item)

    async def _delete_quietly(self, rtype: ResourceType, item: Obj) -> None:
        try:
            await self.delete(rtype, item["metadata"].get("namespace"), item["metadata"]["name"])
        except ApiError as exc:
            if exc.code != 404:
                raise


def _decode_patch(content_type: str, document: bytes, custom: bool) -> tuple[str, Any]:
    """The patch's media type and document; strategic merge patch is refused for custom resources."""
    media = content_type.split(";")[0].strip()
    if media == STRATEGIC_MERGE_PATCH and custom:
        raise ApiError(
            415, "UnsupportedMediaType", "strategic merge patch is not supported for custom resources"
        )
    if media not in (MERGE_PATCH, JSON_PATCH, STRATEGIC_MERGE_PATCH):
        raise ApiError(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: "
            f"{MERGE_PATCH}, {JSON_PATCH}, {STRATEGIC_MERGE_PATCH}",
        )
    try:
        return media, json.loads(document or b"null")
    except ValueError as exc:
        raise errors.bad_request(f"error decoding patch: {exc}") from None


def _apply_patch(media: str, target: Obj, patch: Any) -> Obj:
    try:
        if media == JSON_PATCH:
            return patches.apply_json_patch(target, patch)
        if media == MERGE_PATCH:
            return patches.apply_merge_patch(target, patch)
        return patches.apply_strategic_merge_patch(target, patch)
    except patches.PatchError as exc:
        # kube-apiserver answers every patch that does not apply (a failed test included) with the same
        # 422 that names neither the object nor the operation.
        log.debug("patch of %s %s not applied: %s", target.get("kind"), target["metadata"].get("name"), exc)
        raise errors.patch_not_applied() from None


def _pins_version(media: str, patch: Any) -> bool:
    """A merge patch that names a resourceVersion is a precondition: a conflict is not retried."""
    if media == JSON_PATCH or not isinstance(patch, dict):
        return False
    return "resourceVersion" in (patch.get("metadata") or {})


def _content(obj: Obj, ignored: tuple[str, ...]) -> Obj:
    return {k: v for k, v in obj.items() if k not in ignored}


def _gate_conditions(pod: Obj) -> list[Obj]:
    if not (pod.get("spec") or {}).get("schedulingGates"):
        return []
    return [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "SchedulingGated",
            "message": "Scheduling is blocked due to non-empty scheduling gates",
            "lastProbeTime": None,
            "lastTransitionTime": now(),
        }
    ]


def _store_string_data(secret: Obj) -> None:
    """A Secret's ``stringData`` is write-only: its keys go into ``data`` (base64), over any there."""
    string_data = secret.pop("stringData", None) or {}
    if string_data:
        encoded = {key: base64.b64encode(str(value).encode()).decode() for key, value in string_data.items()}
        secret["data"] = {**(secret.get("data") or {}), **encoded}


def _check_gates(current: Obj, new: Obj) -> None:
    """Scheduling gates may be removed after creation, never added (as in Kubernetes)."""
    before = {g.get("name") for g in (current.get("spec") or {}).get("schedulingGates") or ()}
    after = [g.get("name") for g in (new.get("spec") or {}).get("schedulingGates") or ()]
    added = [name for name in after if name not in before]
    if added:
        raise errors.invalid(
            "Pod",
            "",
            new["metadata"]["name"],
            [
                "spec.schedulingGates: Forbidden: only deletion is allowed, "
                f"but found new scheduling gate '{added[0]}'"
            ],
        )
    if not after:
        status = new.get("status") or {}
        conditions = [c for c in status.get("conditions") or () if c.get("reason") != "SchedulingGated"]
        if status:
            new["status"] = {**status, "conditions": conditions}


def _crd_status(crd: Obj) -> Obj:
    spec = crd.get("spec") or {}
    stamp = now()
    storage = [v["name"] for v in spec.get("versions", []) if v.get("storage")]
    return {
        "acceptedNames": spec.get("names", {}),
        "conditions": [
            {
                "type": "NamesAccepted",
                "status": "True",
                "reason": "NoConflicts",
                "message": "no conflicts found",
                "lastTransitionTime": stamp,
            },
            {
                "type": "Established",
                "status": "True",
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
                "lastTransitionTime": stamp,
            },
        ],
        "storedVersions": storage,
    }
