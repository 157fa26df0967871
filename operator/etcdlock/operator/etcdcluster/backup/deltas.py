"""Continuous deltas: every change to the cluster's keys, followed by one watch from the revision the last
backup holds, flushed to the store every few seconds as one object (see :mod:`.catalog` for the names).

A delta is a JSON document ``{"full", "first", "last", "time", "events": [...]}``; an event is ``{"r":
revision, "k": key, "v": value, "l": lease}`` for a put and ``{"r", "k", "d": 1}`` for a delete (keys
and values base64). What was not flushed when the operator stops is the loss a restore can have: at most
one flush interval of writes.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from etcdlock.etcd import EtcdClient
from etcdlock.operator.etcdcluster.backup.catalog import Full, delta_object
from etcdlock.operator.etcdcluster.backup.store import BackupStore

ALL_KEYS = b"\0"


@dataclass(frozen=True)
class Flushed:
    """One delta written: its object, last revision, size in bytes and time."""

    object: str
    revision: int
    size: int
    time: datetime


def event_record(event: Any) -> dict[str, Any]:
    kv = event.kv
    record: dict[str, Any] = {"r": kv.mod_revision, "k": base64.b64encode(kv.key).decode()}
    if event.kind == "DELETE":
        record["d"] = 1
    else:
        record["v"] = base64.b64encode(kv.value).decode()
        if kv.lease:
            record["l"] = kv.lease
    return record


class DeltaRecorder:
    """Watches every key from ``start`` and keeps the events until :meth:`flush` writes them as deltas of
    the full snapshot ``full``."""

    def __init__(self, client: EtcdClient, store: BackupStore, full: Full, start: int) -> None:
        self._client = client
        self._store = store
        self.full = full
        self.start = start
        self._pending: list[dict[str, Any]] = []

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def follow(self) -> None:
        """Collect events until cancelled; raises :class:`~etcdlock.etcd.Compacted` if the revisions
        to follow are gone, and the engine's errors if the watch breaks."""
        async with self._client.watch_events(ALL_KEYS, ALL_KEYS, start_revision=self.start) as events:
            async for event in events:
                self._pending.append(event_record(event))

    async def flush(self) -> Flushed | None:
        """Write what was collected (nothing to write: None). On a store error the events stay here, and
        the runner's next cycle watches them again from the last revision written."""
        if not self._pending:
            return None
        batch = list(self._pending)
        first, last = batch[0]["r"], batch[-1]["r"]
        path = delta_object(self.full.cluster, self.full.revision, first, last)
        now = datetime.now(UTC)
        document = {
            "full": self.full.revision,
            "first": first,
            "last": last,
            "time": now.isoformat(),
            "events": batch,
        }
        size = await self._store.put_json(path, document)
        del self._pending[: len(batch)]
        self.start = last + 1
        return Flushed(path, last, size, now)
