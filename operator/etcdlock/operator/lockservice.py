"""The DistributedLock controller: one service task per lock (:func:`~etcdlock.operator.mirror.serve_lock`),
started when the lock is created or resumed, restarted when its spec changes, stopped when it is deleted.

Each task publishes the lock's status (patched until it lands, by this leader only) and tells its
observers every change of the queue: Events on the lock when holders come and go, and the metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from etcdlock.etcd import Fenced
from etcdlock.operator.events import EventRecorder
from etcdlock.operator.kube import Kube, retrying
from etcdlock.operator.leadership import Leadership
from etcdlock.operator.locks import LockChanges, Locks
from etcdlock.operator.metrics import Metrics, QueueMetrics
from etcdlock.operator.mirror import Publish, QueueObserver, serve_lock
from etcdlock.operator.names import LOCKS
from etcdlock.operator.queueview import QueueChange, QueueView
from etcdlock.operator.stores import Stores

Ref = tuple[str, str]


class LockServices:
    """The running service task of every lock, by (namespace, name), with the spec it serves."""

    def __init__(
        self,
        kube: Kube,
        locks: Locks,
        stores: Stores,
        changes: LockChanges,
        metrics: Metrics,
        events: EventRecorder,
    ) -> None:
        self._kube = kube
        self._locks = locks
        self._stores = stores
        self._changes = changes
        self._metrics = metrics
        self._events = events
        self._tasks: dict[Ref, tuple[dict[str, Any], asyncio.Task[None]]] = {}

    async def serve(self, body: Mapping[str, Any]) -> None:
        """Serve the lock ``body`` (again, if its spec changed): one task, for as long as the lock exists,
        mirrors its queue into status, or says in status why it cannot be served."""
        meta = body["metadata"]
        ref = (str(meta.get("namespace") or ""), str(meta["name"]))
        snapshot: dict[str, Any] = {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "metadata": dict(meta),
            "spec": dict(body.get("spec") or {}),
            "status": dict(body.get("status") or {}),
        }
        if self._running(ref, snapshot["spec"]):
            return
        await self.stop(ref)
        publish = _publisher(self._kube, self._stores.leadership, *ref)
        observers: list[QueueObserver] = [
            Announcer(snapshot, self._events),
            QueueMetrics(self._metrics, *ref),
        ]
        serving = serve_lock(
            snapshot, self._locks, self._stores, self._changes, publish, observers, self._events
        )
        self._tasks[ref] = (snapshot["spec"], asyncio.create_task(serving, name=f"lock-{ref[0]}/{ref[1]}"))

    async def deleted(self, ref: Ref) -> list[Ref]:
        """Stop serving a deleted lock; the locks its key kept out, which may be served now."""
        await self.stop(ref)
        self._metrics.forget(*ref)
        return self._locks.forget(*ref)

    async def stop(self, ref: Ref) -> None:
        entry = self._tasks.pop(ref, None)
        if entry is not None:
            entry[1].cancel()
            await asyncio.gather(entry[1], return_exceptions=True)

    async def stop_all(self) -> None:
        for ref in list(self._tasks):
            await self.stop(ref)

    def _running(self, ref: Ref, spec: dict[str, Any]) -> bool:
        entry = self._tasks.get(ref)
        return entry is not None and entry[0] == spec and not entry[1].done()


def _publisher(kube: Kube, leadership: Leadership, namespace: str, name: str) -> Publish:
    async def attempt(status: dict[str, Any]) -> object:
        try:
            await leadership.assured()
        except Fenced:
            return None  # deposed (maybe while paused): what it saw is stale, the next leader publishes
        return await kube.patch_status(LOCKS, namespace, name, status)

    async def publish(status: dict[str, Any]) -> None:
        """Patch the status, again until it is written (the status must not stay stale after an API outage
        when etcd then changes nothing); a lock deleted meanwhile is fine."""
        await retrying(f"status of DistributedLock {namespace}/{name}", lambda: attempt(status))

    return publish


class Announcer:
    """Events on the lock when holders come and go, whoever they are (the first look is the baseline)."""

    def __init__(self, body: dict[str, Any], events: EventRecorder) -> None:
        self._body = body
        self._events = events

    def changed(self, change: QueueChange, queue: QueueView) -> None:
        if change.baseline:
            return
        for holder in change.acquired:
            message = (
                f"{holder.info.holder or holder.key} holds the lock (fencing token {holder.fencing_token})"
            )
            self._events.info(self._body, "Acquired", message)
        for holder in change.released:
            self._events.info(self._body, "Released", f"{holder.info.holder or holder.key} released the lock")
