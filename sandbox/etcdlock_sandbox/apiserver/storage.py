"""Objects in etcd the way kube-apiserver keeps them: one key per object under ``/registry/``.

``resourceVersion`` is the key's mod revision, a list's is the read's header revision, and a watch is an
etcd watch from ``resourceVersion + 1``; optimistic concurrency is a transaction on the mod revision. So
the hard semantics (conflicts, resumable watches, 410 after compaction) come from etcd itself.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from etcdlock.etcd.client import EtcdClient
from etcdlock.etcd.errors import Compacted
from etcdlock.etcd.keys import range_end
from etcdlock.etcd.requests import create_revision_is, delete_op, mod_revision_is, put_op, range_op
from etcdlock_sandbox.apiserver import errors
from etcdlock_sandbox.apiserver.resources import ResourceType

PREFIX = "/registry/"


@dataclass(frozen=True)
class WatchEvent:
    """A change of one object: ``ADDED``/``MODIFIED``/``DELETED``, with the object before it (if any)."""

    type: str
    object: dict[str, Any]
    previous: dict[str, Any] | None


def _decode(value: bytes, revision: int) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(value)
    obj.setdefault("metadata", {})["resourceVersion"] = str(revision)
    return obj


def _encode(obj: dict[str, Any]) -> bytes:
    metadata = {k: v for k, v in obj.get("metadata", {}).items() if k != "resourceVersion"}
    return json.dumps({**obj, "metadata": metadata}, separators=(",", ":")).encode()


class Storage:
    """CRUD and watch of objects of any :class:`ResourceType` in etcd."""

    def __init__(self, client: EtcdClient) -> None:
        self.client = client

    @staticmethod
    def collection(rtype: ResourceType, namespace: str | None) -> bytes:
        """Key prefix of a collection (all namespaces when ``namespace`` is None)."""
        group = rtype.group or "core"
        base = f"{PREFIX}{group}/{rtype.plural}/"
        return (base + f"{namespace}/" if rtype.namespaced and namespace else base).encode()

    @classmethod
    def key(cls, rtype: ResourceType, namespace: str | None, name: str) -> bytes:
        return cls.collection(rtype, namespace) + name.encode()

    async def get(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        response = await self.client.range(self.key(rtype, namespace, name))
        if not response.kvs:
            raise errors.not_found(rtype.plural, rtype.group, name)
        kv = response.kvs[0]
        return _decode(kv.value, kv.mod_revision)

    async def list(self, rtype: ResourceType, namespace: str | None) -> tuple[list[dict[str, Any]], int]:
        """All objects of the collection, sorted by key, and the revision of the read."""
        start = self.collection(rtype, namespace)
        response = await self.client.range(start, range_end(start))
        items = [_decode(kv.value, kv.mod_revision) for kv in response.kvs]
        return items, response.header.revision

    async def create(self, rtype: ResourceType, namespace: str | None, obj: dict[str, Any]) -> dict[str, Any]:
        name = obj["metadata"]["name"]
        key = self.key(rtype, namespace, name)
        response = await self.client.txn([create_revision_is(key, 0)], [put_op(key, _encode(obj))])
        if not response.succeeded:
            raise errors.already_exists(rtype.plural, rtype.group, name)
        return _decode(_encode(obj), response.header.revision)

    async def update(
        self, rtype: ResourceType, namespace: str | None, obj: dict[str, Any], expected: int
    ) -> dict[str, Any]:
        """Replace the object if its resourceVersion is still ``expected`` (409 Conflict otherwise)."""
        name = obj["metadata"]["name"]
        key = self.key(rtype, namespace, name)
        response = await self.client.txn(
            [mod_revision_is(key, expected)], [put_op(key, _encode(obj))], [range_op(key)]
        )
        if not response.succeeded:
            if not response.responses[0].response_range.kvs:
                raise errors.not_found(rtype.plural, rtype.group, name)
            raise errors.conflict(rtype.plural, rtype.group, name)
        return _decode(_encode(obj), response.header.revision)

    async def delete(
        self, rtype: ResourceType, namespace: str | None, name: str, expected: int
    ) -> dict[str, Any]:
        """Remove the object if its resourceVersion is still ``expected``; returns it as it was."""
        key = self.key(rtype, namespace, name)
        response = await self.client.txn(
            [mod_revision_is(key, expected)], [range_op(key), delete_op(key)], [range_op(key)]
        )
        kvs = response.responses[0].response_range.kvs
        if not response.succeeded:
            if not kvs:
                raise errors.not_found(rtype.plural, rtype.group, name)
            raise errors.conflict(rtype.plural, rtype.group, name)
        return _decode(kvs[0].value, response.header.revision)

    async def watch(
        self, rtype: ResourceType, namespace: str | None, after: int
    ) -> AsyncIterator[WatchEvent]:
        """Every change of the collection after revision ``after``; 410 Gone if it was compacted."""
        start = self.collection(rtype, namespace)
        try:
            async with self.client.watch_events(
                start, range_end(start), start_revision=after + 1, prev_kv=True
            ) as events:
                async for event in events:
                    # aetcd always gives a prev_kv (an empty protobuf message when the key was just
                    # created); only a real previous version has a create revision.
                    prior = event.prev_kv
                    previous = (
                        _decode(prior.value, prior.mod_revision) if prior and prior.create_revision else None
                    )
                    if event.kind == "DELETE":
                        if previous is None:
                            continue
                        gone = {
                            **previous,
                            "metadata": {
                                **previous["metadata"],
                                "resourceVersion": str(event.kv.mod_revision),
                            },
                        }
                        yield WatchEvent("DELETED", gone, previous)
                    else:
                        kind = "ADDED" if event.kv.version == 1 else "MODIFIED"
                        yield WatchEvent(kind, _decode(event.kv.value, event.kv.mod_revision), previous)
        except Compacted as exc:
            raise errors.gone(f"too old resource version: {after} ({exc.compacted_revision})") from None
