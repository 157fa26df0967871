"""The three PATCH flavours kube-apiserver accepts, as pure functions over decoded JSON.

- ``application/merge-patch+json``: RFC 7386 JSON merge patch (:func:`apply_merge_patch`).
- ``application/json-patch+json``: RFC 6902 JSON patch (:func:`apply_json_patch`), applied by the
  ``jsonpatch`` library with its errors translated into ours.
- ``application/strategic-merge-patch+json``: Kubernetes' strategic merge patch
  (:func:`apply_strategic_merge_patch`), kubectl's default for built-in kinds. No maintained Python
  implementation exists, so this module ports the apply half of
  ``k8s.io/apimachinery/pkg/util/strategicpatch`` (``StrategicMergeMapPatch``). The Go code reads the
  merge strategy of each field from the typed API structs; an unstructured emulator has no such
  structs, so :data:`_MERGE_LISTS` names the list fields that merge, by field name and the name of the
  field that holds them. Every other list is replaced and every map merges, as in the Go code.

All three take the stored object and the decoded request body, never mutate either, and return a new
object. A patch that is malformed or cannot apply raises :class:`PatchError` (the caller answers 422
Invalid or 400); a failed JSON-patch ``test`` raises :class:`PatchTestFailed`. The result is what the
patch makes of the object; validating it (kind, name, immutable fields) is the caller's job.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import jsonpatch

__all__ = [
    "PatchError",
    "PatchTestFailed",
    "apply_json_patch",
    "apply_merge_patch",
    "apply_strategic_merge_patch",
]

Json: TypeAlias = Any
"""A decoded JSON value: dict, list, str, int, float, bool or None."""


class PatchError(Exception):
    """The patch document is malformed or cannot apply (HTTP 422 Invalid / 400)."""


class PatchTestFailed(PatchError):
    """A JSON-patch `test` operation failed (kube-apiserver answers 422)."""


# --- RFC 7386 JSON merge patch ------------------------------------------------------------------


def apply_merge_patch(target: dict[str, Any], patch: object) -> dict[str, Any]:
    """Apply an RFC 7386 merge patch: null deletes a member, objects merge recursively, anything else
    (lists included) replaces.

    A patch that is not an object replaces the whole document, which can never leave an API object,
    so that raises :class:`PatchError`.
    """
    result = _merge_patch(copy.deepcopy(target), copy.deepcopy(patch))
    if not isinstance(result, dict):
        raise PatchError(f"a merge patch must be a JSON object, not {_json_type(patch)}")
    return result


def _merge_patch(target: Json, patch: Json) -> Json:
    """RFC 7386 section 2, over values this module owns (it mutates ``target``)."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for name, value in patch.items():
        if value is None:
            target.pop(name, None)
        else:
            target[name] = _merge_patch(target.get(name), value)
    return target


# --- RFC 6902 JSON patch ------------------------------------------------------------------------


def apply_json_patch(target: dict[str, Any], operations: object) -> dict[str, Any]:
    """Apply an RFC 6902 JSON patch: a list of add/remove/replace/move/copy/test operations, all or
    nothing.

    Every operation is checked before any applies, so a malformed one is reported even when an
    earlier ``test`` would fail. Errors name the operation's index, op and path. Like kube-apiserver
    (evanphx/json-patch), a ``test`` of ``null`` passes when the member is absent, which clients use
    to assert that a field is not set.
    """
    if not isinstance(operations, list):
        raise PatchError(f"a JSON patch must be a JSON array of operations, not {_json_type(operations)}")
    operations = copy.deepcopy(operations)
    steps = []
    for index, operation in enumerate(operations):
        try:
            steps.append(jsonpatch.JsonPatch([operation]))
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise PatchError(f"invalid JSON patch: {_describe(index, operation)}: {exc}") from None
    document: Json = copy.deepcopy(target)
    for index, (operation, step) in enumerate(zip(operations, steps, strict=True)):
        where = _describe(index, operation)
        if operation["op"] == "test" and operation.get("value", ...) is None:
            _test_null(document, operation["path"], where)
            continue
        try:
            document = step.apply(document, in_place=True)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise PatchTestFailed(f"jsonpatch test operation does not apply: {where}: {exc}") from None
        except jsonpatch.InvalidJsonPatch as exc:
            raise PatchError(f"invalid JSON patch: {where}: {exc}") from None
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise PatchError(
                f"jsonpatch {operation['op']} operation does not apply: {where}: {exc}"
            ) from None
    if not isinstance(document, dict):
        raise PatchError(f"the JSON patch leaves {_json_type(document)}, not an object")
    return document


def _describe(index: int, operation: object) -> str:
    """Name an operation in an error message: its index, op, path and (for move/copy) from."""
    if not isinstance(operation, Mapping):
        return f"operation {index}"
    text = f"operation {index} ({operation.get('op')!s} {operation.get('path')!s}"
    if "from" in operation:
        text += f" from {operation['from']!s}"
    return text + ")"


def _test_null(document: Json, path: str, where: str) -> None:
    """evanphx/json-patch's ``test`` of ``null``: passes if the member is null or absent, as long as the
    object or array that would hold it exists."""
    pointer = jsonpatch.JsonPointer(path)
    try:
        parent, part = pointer.to_last(document)
        if part is None:
            value = parent
        elif isinstance(parent, dict):
            value = parent.get(part)
        else:
            value = pointer.walk(parent, part)
    except jsonpatch.JsonPointerException as exc:
        raise PatchTestFailed(f"jsonpatch test operation does not apply: {where}: {exc}") from None
    if value is not None:
        raise PatchTestFailed(
            f"jsonpatch test operation does not apply: {where}: {_show(value)} is not equal to null"
        )


# --- Strategic merge patch ----------------------------------------------------------------------

# The list fields that merge instead of being replaced: the `patchStrategy:"merge"` and
# `patchMergeKey:"..."` struct tags of k8s.io/apimachinery meta/v1 ObjectMeta and of the k8s.io/api
# types (core/v1 PodSpec, Container, EphemeralContainerCommon, PodStatus, ServiceSpec, ServiceStatus,
# NamespaceStatus, ServiceAccount, NodeSpec, NodeStatus; apps/v1 StatefulSetStatus, DeploymentStatus;
# policy/v1 PodDisruptionBudgetStatus; admissionregistration/v1 webhook configurations). Without Go
# types we recognise a field by its name and the name of the field holding it: the map it sits in,
# or for a list item the list's field ("" is the root of the object). The value is the merge key;
# _PRIMITIVE marks a list of scalars with patchStrategy=merge, which merges as an ordered set. Lists
# not named here (tolerations, envFrom, args, volumeClaimTemplates, Namespace spec.finalizers, ...)
# are atomic: a patch replaces them. Custom resources have no strategic merge patch at all.
_PRIMITIVE: Final = ""
_CONTAINER_LISTS: Final = ("containers", "initContainers", "ephemeralContainers")
_MERGE_LISTS: Final[Mapping[str, Mapping[str, str]]] = {
    # ObjectMeta
    "finalizers": {"metadata": _PRIMITIVE},
    "ownerReferences": {"metadata": "uid"},
    # PodSpec (also a pod template's spec)
    "containers": {"spec": "name"},
    "initContainers": {"spec": "name"},
    "ephemeralContainers": {"spec": "name"},
    "volumes": {"spec": "name"},
    "imagePullSecrets": {"spec": "name"},
    "hostAliases": {"spec": "ip"},
    "topologySpreadConstraints": {"spec": "topologyKey"},
    "schedulingGates": {"spec": "name"},
    "resourceClaims": {"spec": "name"},
    # Container: ports by containerPort; ServiceSpec.ports by port
    "env": dict.fromkeys(_CONTAINER_LISTS, "name"),
    "volumeMounts": dict.fromkeys(_CONTAINER_LISTS, "mountPath"),
    "volumeDevices": dict.fromkeys(_CONTAINER_LISTS, "devicePath"),
    "ports": {**dict.fromkeys(_CONTAINER_LISTS, "containerPort"), "spec": "port"},
    # PodStatus, ServiceStatus, NamespaceStatus, StatefulSetStatus, PodDisruptionBudgetStatus, ...
    "conditions": {"status": "type"},
    "podIPs": {"status": "ip"},
    "hostIPs": {"status": "ip"},
    # Validating/MutatingWebhookConfiguration
    "webhooks": {"": "name"},
    "matchConditions": {"webhooks": "name"},
    # ServiceAccount, Node
    "secrets": {"": "name"},
    "podCIDRs": {"spec": _PRIMITIVE},
    "addresses": {"status": "type"},
}
# Where a kind's field differs from the table by name: CustomResourceDefinitionStatus.conditions has
# no patch tags (atomic), and PodDisruptionBudgetSpec.selector has patchStrategy=replace.
_ATOMIC_LISTS: Final[Mapping[str, frozenset[tuple[str, str]]]] = {
    "CustomResourceDefinition": frozenset({("status", "conditions")}),
}
_REPLACED_MAPS: Final[Mapping[str, frozenset[tuple[str, str]]]] = {
    "PodDisruptionBudget": frozenset({("spec", "selector")}),
}

_DIRECTIVE: Final = "$patch"
_RETAIN_KEYS: Final = "$retainKeys"
_DELETE_FROM_PRIMITIVE_LIST: Final = "$deleteFromPrimitiveList"
_SET_ELEMENT_ORDER: Final = "$setElementOrder"


def apply_strategic_merge_patch(target: dict[str, Any], patch: object) -> dict[str, Any]:
    """Apply a Kubernetes strategic merge patch, as kube-apiserver does for built-in kinds.

    Maps merge recursively and ``null`` deletes a member. A list named in :data:`_MERGE_LISTS` merges:
    items with the merge key of an existing item are merged into it; a list of scalars is a union.
    Any other list is replaced. The directives are honoured and never stored:

    - ``$patch: replace`` in a map replaces it; as a list item, replaces the list with the other items.
    - ``$patch: delete`` in a map empties it; as a list item, removes the items with its merge key.
    - ``$retainKeys: [...]`` drops the members of the map that it does not name.
    - ``$deleteFromPrimitiveList/<field>: [...]`` removes those scalars from the list.
    - ``$setElementOrder/<field>: [...]`` (sent by ``kubectl apply``) orders the merged list.

    Without ``$setElementOrder``, Kubernetes keeps the patch's order for the items it names and slots
    the others in by their old positions, so new items come *before* the existing ones (kubectl's
    documentation shows a container added by ``kubectl patch`` first). This port keeps that order.
    ``$patch: merge`` is rejected, as kube-apiserver rejects it. A patch that is ``null`` changes
    nothing, as in kube-apiserver.
    """
    if patch is None:
        return copy.deepcopy(target)
    if not isinstance(patch, dict):
        raise PatchError(f"a strategic merge patch must be a JSON object, not {_json_type(patch)}")
    kind = target.get("kind")
    schema = _Schema(kind if isinstance(kind, str) else "")
    return _merge_map(copy.deepcopy(target), copy.deepcopy(patch), "", schema)


@dataclass(frozen=True)
class _Schema:
    """The patch strategy of fields of one kind (Go's LookupPatchMeta), from the tables above."""

    kind: str

    def list_merge_key(self, parent: str, field: str) -> str | None:
        """The merge key of list ``field`` inside ``parent`` (_PRIMITIVE for a set of scalars), or
        None if the list is atomic."""
        if (parent, field) in _ATOMIC_LISTS.get(self.kind, ()):
            return None
        return _MERGE_LISTS.get(field, {}).get(parent)

    def replaces_map(self, parent: str, field: str) -> bool:
        """Whether map ``field`` inside ``parent`` has patchStrategy=replace."""
        return (parent, field) in _REPLACED_MAPS.get(self.kind, ())


# The helpers below own both arguments (deep copies made by the public function) and mutate them, as
# the Go code does; names in comments are the Go functions they port.


def _merge_map(
    original: dict[str, Any], patch: dict[str, Any], parent: str, schema: _Schema
) -> dict[str, Any]:
    """Merge ``patch`` into ``original`` (mergeMap); ``parent`` names the field holding both."""
    if _DIRECTIVE in patch:
        directive = patch.pop(_DIRECTIVE)
        if directive == "replace":
            return _cleaned_map(patch)
        if directive == "delete":
            return {}
        raise PatchError(f"unknown patch type: {_show(directive)} in map: {_show(patch)}")
    _apply_retain_keys(original, patch)
    _apply_set_element_order(original, patch, parent, schema)
    for key, value in patch.items():
        field, delete_list = key, False
        if key.startswith(_DELETE_FROM_PRIMITIVE_LIST):
            field = _directive_field(
                key, _DELETE_FROM_PRIMITIVE_LIST, "invalid patch format of primitive list"
            )
            delete_list = True
        if value is None:
            original.pop(field, None)
            continue
        if field not in original or _kind(original[field]) != _kind(value):
            # A new member (or one changing type) takes the patch's value; a deletion list has
            # nothing to delete from.
            if not delete_list:
                _set_cleaned(original, field, value)
            continue
        current = original[field]
        if isinstance(current, dict):
            if schema.replaces_map(parent, field):
                original[field] = _cleaned_map(value)
            else:
                original[field] = _merge_map(current, value, field, schema)
        elif isinstance(current, list):
            merge_key = schema.list_merge_key(parent, field)
            if merge_key is None and not delete_list:
                _set_cleaned(original, field, value)
            else:
                original[field] = _merge_list(
                    current, value, merge_key or _PRIMITIVE, delete_list, field, schema
                )
        else:
            original[field] = value
    return original


def _apply_retain_keys(original: dict[str, Any], patch: dict[str, Any]) -> None:
    """``$retainKeys`` (applyRetainKeysDirective): clear the members of ``original`` it does not list.

    Every member the patch sets must be listed, or the patch is invalid.
    """
    if _RETAIN_KEYS not in patch:
        return
    retain = patch.pop(_RETAIN_KEYS)
    if not isinstance(retain, list):
        raise PatchError(f"invalid patch format of retainKeys: {_show(retain)} is not a list")
    kept = {name for name in retain if isinstance(name, str)}
    for key, value in patch.items():
        if value is None or key.startswith((_DELETE_FROM_PRIMITIVE_LIST, _SET_ELEMENT_ORDER)):
            continue
        if key not in kept:
            raise PatchError(f"invalid patch format of retainKeys: {key!r} is set but not in {_show(retain)}")
    for key in [key for key in original if key not in kept]:
        del original[key]


def _apply_set_element_order(
    original: dict[str, Any], patch: dict[str, Any], parent: str, schema: _Schema
) -> None:
    """``$setElementOrder/<field>`` (mergePatchIntoOriginal): merge the field's list now and put its
    items in the given order, the items the order does not name keeping their old positions.

    The merged field is removed from ``patch`` so the main loop does not merge it again.
    """
    for key in [key for key in patch if key.startswith(_SET_ELEMENT_ORDER)]:
        order = patch.pop(key)
        field = _directive_field(key, _SET_ELEMENT_ORDER, "invalid patch format of setElementOrder list")
        if not isinstance(order, list):
            raise PatchError(f"invalid patch format of setElementOrder list: {key} is {_json_type(order)}")
        current = original.get(field)
        if current is not None and not isinstance(current, list):
            raise PatchError(f"{key}: {field} is {_json_type(current)}, not a list")
        if field in patch and not isinstance(patch[field], list):
            raise PatchError(f"{key}: the patch's {field} is {_json_type(patch[field])}, not a list")
        changes: list[Any] | None = patch.pop(field, None)
        if current is None and changes is None:
            continue
        merge_key = schema.list_merge_key(parent, field)
        key_name = merge_key or _PRIMITIVE
        kind = _element_kind(current or [], changes or [], field)
        if kind == "map" and not key_name:
            raise PatchError(f"{key}: {field} is not a list that merges by key, so it cannot be ordered")
        _check_order(changes or [], order, key_name, key)
        if changes is None:
            merged = current or []
        elif current is None or merge_key is None:
            merged = _cleaned_list(changes)
        else:
            merged = _merge_list(current, changes, key_name, False, field, schema)
        if kind is None:
            original[field] = merged
            continue
        _require_merge_key(order, key_name, kind)
        named, unnamed = _partition(merged, order, key_name, kind)
        live_order = current or []
        if current and changes and merge_key and kind == "map":
            live_order = _live_order_seen_by_go(current, changes, merge_key)
        original[field] = _normalize_order(named, unnamed, order, live_order, key_name, kind)


def _live_order_seen_by_go(current: list[Any], changes: list[Any], merge_key: str) -> list[Any]:
    """The live list as apimachinery sees it when it orders the items ``$setElementOrder`` does not
    name, after merging ``changes`` into it.

    mergeSlice edits the live list's backing array in place: a ``$patch: delete`` shifts the items
    after it left (leaving stale copies at the end) and new items are appended into the freed slots.
    Where the server-only items land among new ones depends on that array, so we rebuild it: with it,
    a kubectl apply that deletes and adds items orders the list exactly as kube-apiserver does.
    """
    array = list(current)
    length = len(array)
    for item in changes:
        if isinstance(item, dict) and item.get(_DIRECTIVE) == "delete":
            index = 0
            while index < length:
                if _has_key_value(array[index], merge_key, item[merge_key]):
                    array[index : length - 1] = array[index + 1 : length]
                    length -= 1
                else:
                    index += 1
    if any(isinstance(item, dict) and item.get(_DIRECTIVE) == "replace" for item in changes):
        return array
    present = array[:length]
    for item in changes:
        if _has_directive(item) or any(_has_key_value(kept, merge_key, item[merge_key]) for kept in present):
            continue
        if len(present) < len(array):
            array[len(present)] = item
        present.append(item)
    return array


def _check_order(changes: list[Any], order: list[Any], merge_key: str, key: str) -> None:
    """The patch's items must appear in ``$setElementOrder`` in the same relative order
    (validatePatchWithSetOrderList); deletions and other directive items are exempt."""
    items = [item for item in changes if not _has_directive(item)]
    at = 0
    for wanted in order:
        if at == len(items):
            break
        if _merge_key_equal(items[at], wanted, merge_key):
            at += 1
    if at < len(items):
        raise PatchError(f"the order in the patch list {_show(changes)} doesn't match {key}: {_show(order)}")


def _merge_list(
    original: list[Any], patch: list[Any], merge_key: str, delete_list: bool, field: str, schema: _Schema
) -> list[Any]:
    """Merge a list with patchStrategy=merge (mergeSlice), or apply a ``$deleteFromPrimitiveList``."""
    if not original and not patch:
        return original
    kind = _element_kind(original, patch, field) or "null"
    if kind != "map":
        if delete_list:
            return [item for item in original if not any(_same(item, gone) for gone in patch)]
        merged = _dedupe([*original, *patch])
        if merge_key:
            raise PatchError(f"{field} must be a list of objects with the merge key {merge_key!r}")
    else:
        if not merge_key:
            raise PatchError(f"cannot merge lists without merge key for {field}")
        original, patch = _apply_list_directives(original, patch, merge_key)
        merged = _merge_keyed_items(original, patch, merge_key, field, schema)
    named, unnamed = _partition(merged, patch, merge_key, kind)
    return _normalize_order(named, unnamed, patch, original, merge_key, kind)


def _apply_list_directives(
    original: list[Any], patch: list[Any], merge_key: str
) -> tuple[list[Any], list[Any]]:
    """Handle list items carrying ``$patch`` (mergeSliceWithSpecialElements).

    ``delete`` removes every item with that merge key; ``replace`` makes the other patch items the
    whole list. Returns the original and the patch items left to merge.
    """
    plain = []
    replace = False
    for item in patch:
        if _DIRECTIVE not in item:
            plain.append(item)
            continue
        directive = item[_DIRECTIVE]
        if directive == "delete":
            if merge_key not in item:
                raise PatchError(f"map: {_show(item)} does not contain declared merge key: {merge_key}")
            original = [kept for kept in original if not _has_key_value(kept, merge_key, item[merge_key])]
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            raise PatchError("merging lists cannot yet be specified in the patch")
        else:
            raise PatchError(f"unknown patch type: {_show(directive)} in map: {_show(item)}")
    if replace:
        return _cleaned_list(plain), []
    return original, plain


def _merge_keyed_items(
    original: list[Any], patch: list[Any], merge_key: str, field: str, schema: _Schema
) -> list[Any]:
    """Merge each patch item into the first item with its merge key, or add it
    (mergeSliceWithoutSpecialElements)."""
    merged = list(original)
    for item in patch:
        if merge_key not in item:
            raise PatchError(f"map: {_show(item)} does not contain declared merge key: {merge_key}")
        for index, existing in enumerate(merged):
            if not isinstance(existing, dict):
                raise PatchError(f"{field}[{index}] is {_json_type(existing)}, not an object")
            if merge_key in existing and _same(existing[merge_key], item[merge_key]):
                merged[index] = _merge_map(existing, item, field, schema)
                break
        else:
            merged.append(_cleaned_map(item))
    return merged


def _partition(items: list[Any], by: list[Any], merge_key: str, kind: str) -> tuple[list[Any], list[Any]]:
    """Split ``items`` into those ``by`` names and the rest (partition*ByPresentInList)."""
    if merge_key:
        _require_merge_key(items, merge_key, kind)
    named: list[Any] = []
    unnamed: list[Any] = []
    for item in items:
        (named if any(_is_same_item(item, other, merge_key) for other in by) else unnamed).append(item)
    return named, unnamed


def _is_same_item(item: Any, other: Any, merge_key: str) -> bool:
    """Whether ``other`` names ``item``: by merge key for objects, by value for scalars."""
    if not merge_key:
        return _same(item, other)
    return isinstance(other, dict) and merge_key in other and _same(item[merge_key], other[merge_key])


def _normalize_order(
    patch_items: list[Any],
    server_items: list[Any],
    patch_order: list[Any],
    server_order: list[Any],
    merge_key: str,
    kind: str,
) -> list[Any]:
    """Order the merged list (normalizeElementOrder): the patch's items in ``patch_order``, the
    server-only items in ``server_order``, then interleave the two by their old positions."""
    patch_items = _sorted_by(patch_items, patch_order, merge_key, kind)
    server_items = _sorted_by(server_items, server_order, merge_key, kind)
    return _merge_sorted(server_items, patch_items, server_order, merge_key, kind)


def _merge_sorted(
    left: list[Any], right: list[Any], server_order: list[Any], merge_key: str, kind: str
) -> list[Any]:
    """Interleave two ordered lists (mergeSortedSlice): a ``left`` (server-only) item goes first only
    if both items were in the live list and it stood before the ``right`` (patch) item there; so patch
    items that are new go before the server-only items."""
    result = []
    i = j = 0
    while i < len(left) or j < len(right):
        if j == len(right):
            result.append(left[i])
            i += 1
        elif i == len(left):
            result.append(right[j])
            j += 1
        else:
            li = _index(server_order, left[i], merge_key, kind)
            ri = _index(server_order, right[j], merge_key, kind)
            if li >= 0 and ri >= 0 and li < ri:
                result.append(left[i])
                i += 1
            else:
                result.append(right[j])
                j += 1
    return result


def _sorted_by(items: list[Any], order: list[Any], merge_key: str, kind: str) -> list[Any]:
    """Stable sort of ``items`` by their position in ``order`` (normalizeSliceOrder); items missing
    from ``order`` go last."""

    def position(item: Any) -> int:
        found = _index(order, item, merge_key, kind)
        return found if found >= 0 else len(order)

    return sorted(items, key=position)


def _index(items: list[Any], wanted: Any, merge_key: str, kind: str) -> int:
    """Position of ``wanted`` in ``items``, by merge key for objects and by value for scalars; -1 if
    absent."""

    def value(item: Any) -> Any:
        if kind == "map":
            return item.get(merge_key) if isinstance(item, dict) else None
        return item

    target = value(wanted)
    for index, item in enumerate(items):
        if _same(value(item), target):
            return index
    return -1


def _element_kind(original: list[Any], patch: list[Any], field: str) -> str | None:
    """The one JSON type of the items of both lists (sliceElementType); None if both are empty."""
    kinds = {_kind(item) for item in (*original, *patch)}
    if "list" in kinds:
        raise PatchError(f"{field}: lists of lists are not supported")
    if len(kinds) > 1:
        raise PatchError(f"{field}: list element types are not identical: {sorted(kinds)}")
    return kinds.pop() if kinds else None


def _require_merge_key(items: list[Any], merge_key: str, kind: str) -> None:
    """Each item of a keyed list must be an object holding the merge key (validateMergeKeyInLists)."""
    if kind != "map":
        return
    for item in items:
        if not isinstance(item, dict):
            raise PatchError(f"expected an object, but received {_json_type(item)}: {_show(item)}")
        if merge_key not in item:
            raise PatchError(f"map: {_show(item)} does not contain declared merge key: {merge_key}")


def _merge_key_equal(left: Any, right: Any, merge_key: str) -> bool:
    """Whether two items are the same list element (mergeKeyValueEqual)."""
    if not merge_key:
        return _same(left, right)
    for item in (left, right):
        if not isinstance(item, dict):
            raise PatchError(f"expected an object, but received {_json_type(item)}: {_show(item)}")
        if merge_key not in item:
            raise PatchError(f"map: {_show(item)} does not contain declared merge key: {merge_key}")
    return _same(left[merge_key], right[merge_key])


def _directive_field(key: str, prefix: str, message: str) -> str:
    """The field a parallel-list directive names: ``$setElementOrder/containers`` -> ``containers``."""
    head, slash, field = key.partition("/")
    if head != prefix or not slash:
        raise PatchError(f"{message}: {key!r}")
    return field


def _set_cleaned(target: dict[str, Any], key: str, value: Json) -> None:
    """Store a patch value verbatim (directives and nulls removed), or drop the member if the value
    is itself a directive map."""
    if isinstance(value, dict) and _DIRECTIVE in value:
        target.pop(key, None)
    else:
        target[key] = _cleaned(value)


def _cleaned(value: Json) -> Json:
    """A patch value taken verbatim, as the stored object would hold it.

    The Go code strips ``$patch`` maps (removeDirectives) and nulls (discardNullValuesFromPatch) and
    leaves any other directive for the typed decoder to drop; we drop them here. Other members that
    start with ``$`` (``$ref`` in a CRD schema) are data and stay.
    """
    if isinstance(value, dict):
        return _cleaned_map(value)
    if isinstance(value, list):
        return _cleaned_list(value)
    return value


def _cleaned_map(value: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _cleaned(item)
        for key, item in value.items()
        if item is not None
        and not (isinstance(item, dict) and _DIRECTIVE in item)
        and key not in (_DIRECTIVE, _RETAIN_KEYS)
        and not key.startswith((_DELETE_FROM_PRIMITIVE_LIST + "/", _SET_ELEMENT_ORDER + "/"))
    }


def _cleaned_list(value: list[Any]) -> list[Any]:
    return [_cleaned(item) for item in value if not _has_directive(item)]


def _has_directive(item: Any) -> bool:
    return isinstance(item, dict) and _DIRECTIVE in item


def _has_key_value(item: Any, merge_key: str, value: Any) -> bool:
    return isinstance(item, dict) and merge_key in item and _same(item[merge_key], value)


def _dedupe(items: list[Any]) -> list[Any]:
    """Drop repeated scalars, keeping first occurrences."""
    unique: list[Any] = []
    for item in items:
        if not any(_same(item, seen) for seen in unique):
            unique.append(item)
    return unique


def _kind(value: Any) -> str:
    """The JSON type of a decoded value; Go's decoder makes every number a float64, so 1 and 1.0 are
    one kind, while Python's True is not a number here."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "map"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def _same(left: Any, right: Any) -> bool:
    """JSON equality: as ``==``, except that a bool never equals a number."""
    if _kind(left) != _kind(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(_same(left[key], right[key]) for key in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(_same(a, b) for a, b in zip(left, right, strict=True))
    return bool(left == right)


def _json_type(value: object) -> str:
    return {
        "null": "null",
        "bool": "a boolean",
        "number": "a number",
        "string": "a string",
        "map": "an object",
        "list": "an array",
    }.get(_kind(value), type(value).__name__)


def _show(value: object) -> str:
    """A short JSON rendering of a value for an error message."""
    try:
        text = json.dumps(value, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."
