"""Request bodies in Kubernetes' protobuf encoding, decoded to the JSON form the emulator stores.

kubectl's typed clients send ``Content-Type: application/vnd.kubernetes.protobuf`` (``kubectl create
namespace``, ``create configmap``, ``create secret``, ``create serviceaccount``) and client-go does not fall
back to JSON on 415, so the emulator must read them. Only the kinds in :data:`KINDS` are understood; another
kind is answered 415. Responses stay JSON: these clients accept ``application/json`` as well.

The envelope is ``k8s\\x00`` followed by a ``runtime.Unknown`` (typeMeta 1, raw 2); the messages follow
``k8s.io/api/core/v1/generated.proto`` and ``k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto``.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from etcdlock_sandbox.apiserver.errors import ApiError

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

# A message: field number -> (JSON name, type). A type is "string", "bytes" (base64 in JSON), "int",
# "bool", "time" (meta/v1 Time), ("map", value type), ("list", element type) or a nested message.
Message = dict[int, tuple[str, Any]]

_TIME: Message = {1: ("seconds", "int"), 2: ("nanos", "int")}
_OWNER_REFERENCE: Message = {
    1: ("kind", "string"),
    3: ("name", "string"),
    4: ("uid", "string"),
    5: ("apiVersion", "string"),
    6: ("controller", "bool"),
    7: ("blockOwnerDeletion", "bool"),
}
_OBJECT_META: Message = {
    1: ("name", "string"),
    2: ("generateName", "string"),
    3: ("namespace", "string"),
    5: ("uid", "string"),
    6: ("resourceVersion", "string"),
    7: ("generation", "int"),
    8: ("creationTimestamp", "time"),
    9: ("deletionTimestamp", "time"),
    10: ("deletionGracePeriodSeconds", "int"),
    11: ("labels", ("map", "string")),
    12: ("annotations", ("map", "string")),
    13: ("ownerReferences", ("list", _OWNER_REFERENCE)),
    14: ("finalizers", ("list", "string")),
}
_OBJECT_REFERENCE: Message = {
    1: ("kind", "string"),
    2: ("namespace", "string"),
    3: ("name", "string"),
    4: ("uid", "string"),
    5: ("apiVersion", "string"),
    6: ("resourceVersion", "string"),
    7: ("fieldPath", "string"),
}
KINDS: dict[tuple[str, str], Message] = {
    ("v1", "Namespace"): {
        1: ("metadata", _OBJECT_META),
        2: ("spec", {1: ("finalizers", ("list", "string"))}),
    },
    ("v1", "ConfigMap"): {
        1: ("metadata", _OBJECT_META),
        2: ("data", ("map", "string")),
        3: ("binaryData", ("map", "bytes")),
        4: ("immutable", "bool"),
    },
    ("v1", "Secret"): {
        1: ("metadata", _OBJECT_META),
        2: ("data", ("map", "bytes")),
        3: ("type", "string"),
        4: ("stringData", ("map", "string")),
        5: ("immutable", "bool"),
    },
    ("v1", "ServiceAccount"): {
        1: ("metadata", _OBJECT_META),
        2: ("secrets", ("list", _OBJECT_REFERENCE)),
        3: ("imagePullSecrets", ("list", {1: ("name", "string")})),
        4: ("automountServiceAccountToken", "bool"),
    },
}
_UNKNOWN: Message = {1: ("typeMeta", {1: ("apiVersion", "string"), 2: ("kind", "string")}), 2: ("raw", "raw")}


class ProtobufError(ValueError):
    """The bytes are not a protobuf message of the expected shape."""


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs: an int for varint and fixed fields, bytes for length-delimited ones."""
    fields: list[tuple[int, int | bytes]] = []
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, position = _varint(data, position)
        elif wire == 2:
            length, position = _varint(data, position)
            value, position = data[position : position + length], position + length
            if len(value) != length:
                raise ProtobufError("truncated field")
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, position = int.from_bytes(data[position : position + size], "little"), position + size
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        fields.append((number, value))
    return fields


def _scalar(kind: Any, value: int | bytes) -> Any:
    if isinstance(kind, dict):
        return _message(_expect_bytes(value), kind)
    if kind == "raw":
        return _expect_bytes(value)
    if kind == "string":
        return _expect_bytes(value).decode()
    if kind == "bytes":
        return base64.b64encode(_expect_bytes(value)).decode()
    if kind == "time":
        seconds = _message(_expect_bytes(value), _TIME).get("seconds", 0)
        stamp = datetime.fromtimestamp(seconds, UTC) if seconds else None
        return stamp.isoformat().replace("+00:00", "Z") if stamp else None
    if isinstance(value, bytes):
        raise ProtobufError(f"expected a {kind}, found bytes")
    if kind == "bool":
        return bool(value)
    return value - (1 << 64) if value >= 1 << 63 else value  # int64 as two's complement


def _expect_bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise ProtobufError("expected a length-delimited field")
    return value


def _message(data: bytes, message: Message) -> dict[str, Any]:
    """Decode ``data``; fields left at their zero value are omitted, as ``omitempty`` JSON would."""
    result: dict[str, Any] = {}
    for number, value in _fields(data):
        if number not in message:
            continue
        name, kind = message[number]
        if isinstance(kind, tuple) and kind[0] == "map":
            entry = _message(_expect_bytes(value), {1: ("key", "string"), 2: ("value", kind[1])})
            result.setdefault(name, {})[entry.get("key", "")] = entry.get("value", "")
        elif isinstance(kind, tuple) and kind[0] == "list":
            result.setdefault(name, []).append(_scalar(kind[1], value))
        else:
            decoded = _scalar(kind, value)
            if decoded in ("", 0, False, None, {}):
                result.pop(name, None)
            else:
                result[name] = decoded
    return result


def decode(body: bytes) -> dict[str, Any]:
    """The JSON-shaped object of a ``k8s\\x00``-prefixed protobuf body (400 or 415 if it cannot be read)."""
    if not body.startswith(MAGIC):
        raise ApiError(400, "BadRequest", "the protobuf body does not start with the k8s envelope prefix")
    try:
        envelope = _message(body[len(MAGIC) :], _UNKNOWN)
        type_meta = envelope.get("typeMeta", {})
        api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
        message = KINDS.get((api_version, kind))
        if message is None:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the sandbox cannot decode {kind or 'objects'} ({api_version}) sent as {MEDIA_TYPE}: "
                "send it as application/json",
            )
        obj = _message(envelope.get("raw", b""), message)
    except (ProtobufError, UnicodeDecodeError) as exc:
        raise ApiError(400, "BadRequest", f"the protobuf body could not be decoded: {exc}") from None
    return {"apiVersion": api_version, "kind": kind, **obj}
