"""Serve a DistributedLock for as long as it exists: mirror its etcd queue into its status, or say in its
status why it cannot be served, until it can.

One task per lock (:func:`serve_lock`) checks the lock (its spec, its key against the rules and the other
locks, its etcd), then reads the keys under the lock's prefix once and follows every change under it (an
etcd watch) in a :class:`~etcdlock.operator.queueview.QueueView`, so holders from any client appear within
a round trip and each event costs the same however deep the queue. The status is published by a
:class:`StatusPublisher`: the latest state wins, and a lock's status is written at most once every
:data:`PUBLISH_INTERVAL`, however often its queue changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from etcdlock.aio import race
from etcdlock.etcd import EtcdClient, EtcdError, EtcdUnavailable, read_contenders
from etcdlock.etcd.errors import Compacted
from etcdlock.etcd.keys import prefix, range_end
from etcdlock.operator.conditions import carried_over, without_times
from etcdlock.operator.errors import OperatorError, StoreNotReady
from etcdlock.operator.events import EventRecorder
from etcdlock.operator.locks import LockChanges, Locks, LockSpec, error_status, lock_status
from etcdlock.operator.names import KOPF_STATUS
from etcdlock.operator.queueview import QueueChange, QueueView
from etcdlock.operator.stores import Stores

log = logging.getLogger(__name__)

Publish = Callable[[dict[str, Any]], Awaitable[None]]
Status = dict[str, Any]


class QueueObserver(Protocol):
    """Told every change of the queue (and the queue after it); events and metrics are observers."""

    def changed(self, change: QueueChange, queue: QueueView) -> None: ...


# At most one status write per lock this often (the first change after a quiet spell is written at once).
PUBLISH_INTERVAL = 0.2


class StatusPublisher:
    """Publishes one lock's status from one task (:meth:`run`): what is offered last wins, each status is
    built when it is written (from the queue as it is then), and one that says nothing new than what was
    published (``published``: the status stored already, as a new leader finds it) is not written.
    """

    def __init__(
        self, publish: Publish, interval: float = PUBLISH_INTERVAL, published: Status | None = None
    ) -> None:
        self._publish = publish
        self._interval = interval
        self._build: Callable[[], Status] | None = None
        self._offered = asyncio.Event()
        self._published: Status | None = published or None

    def offer(self, build: Callable[[], Status]) -> None:
        self._build = build
        self._offered.set()

    async def run(self) -> None:
        while True:
            await self._offered.wait()
            self._offered.clear()
            build, self._build = self._build, None
            if build is None:
                continue
            status = build()
            status["conditions"] = carried_over(status["conditions"], self._published)
            if self._published is not None and without_times(status) == without_times(self._published):
                continue
            await self._publish(status)
            self._published = status
            await asyncio.sleep(self._interval)


_RETRY_DELAY = 1.0
_QUICK_RETRY = 0.05
# How long etcd may be unavailable to the mirror before the lock's status says so.
OUTAGE_GRACE = 5.0
# A lock whose etcd is not available yet (its EtcdCluster, its Secret) is tried again this often; one
# refused for its key or spec when another lock changes (or this often at the latest).
CLUSTER_RETRY = 3.0
RECHECK = 10.0


async def serve_lock(
    body: dict[str, Any],
    locks: Locks,
    stores: Stores,
    changes: LockChanges,
    publish: Publish,
    observers: Sequence[QueueObserver],
    events: EventRecorder,
) -> None:
    """Serve the lock ``body`` (a snapshot: a spec change starts a new task) until cancelled; why it cannot
    be served is an Event (once per reason) as well as its status."""
    meta = body["metadata"]
    ref = (meta["namespace"], meta["name"])
    generation = int(meta.get("generation") or 1)
    # What the lock's status says (kopf's bookkeeping beside it is not the operator's to compare).
    stored: Status = {k: v for k, v in (body.get("status") or {}).items() if k != KOPF_STATUS}
    publisher = StatusPublisher(publish, published=stored)
    publishing = asyncio.create_task(publisher.run(), name=f"status-{ref[0]}/{ref[1]}")
    told = ""
    try:
        while True:
            try:
                spec = locks.served(body)
                store = await stores.for_lock(ref[0], spec)
            except OperatorError as exc:
                if str(exc) != told:
                    events.warn(body, exc.reason, str(exc))
                    publisher.offer(_fixed(error_status(exc.reason, str(exc), generation)))
                    told = str(exc)
                await changes.wait(ref, CLUSTER_RETRY if isinstance(exc, StoreNotReady) else RECHECK)
                continue
            if told:
                changes.changed(ref)  # the pods waiting for it need not wait for their next look
                told = ""
            pod_ttl = spec.pod_ttl(locks.rules)
            since = {h["key"]: h["since"] for h in stored.get("holders") or () if h.get("since")}
            # A store retired (its cluster rebuilt from a backup) is left for the one resolved next.
            await race(
                mirror_lock(store.etcd, spec, generation, publisher, observers, pod_ttl, since),
                store.retired.wait(),
            )
    finally:
        publishing.cancel()
        await asyncio.gather(publishing, return_exceptions=True)


async def mirror_lock(
    client: EtcdClient,
    spec: LockSpec,
    generation: int,
    publisher: StatusPublisher,
    observers: Sequence[QueueObserver],
    pod_ttl: int,
    since: dict[str, str] | None = None,
) -> None:
    """Publish the lock's status now and after every change, until cancelled; tell the observers.
    ``since``: when holders were first seen holding, as the stored status says (a new leader keeps it).

    The queue is read once, then kept up to date by applying every watch event in revision order, so
    no holder is missed however briefly it held (a re-read after each change would skip fast hand-offs).
    A watch that ends (an etcd member failed) starts again from the last revision seen; the queue is
    read again after a compaction or an error that is not transient.
    """
    start = prefix(spec.key)
    queue = QueueView(spec.permits)
    queue.since.update(since or {})

    def status() -> Status:
        return lock_status(spec, queue, generation, pod_ttl)

    async def say_failing(exc: EtcdError) -> None:
        log.warning("lock %s: %s", spec.key, exc)
        publisher.offer(_fixed(error_status(type(exc).__name__, str(exc), generation)))
        await asyncio.sleep(_RETRY_DELAY)

    def show(change: QueueChange) -> None:
        if change != QueueChange():
            for observer in observers:
                observer.changed(change, queue)
        publisher.offer(status)  # a holder's new value (its name, its time) shows as well

    loop = asyncio.get_running_loop()
    revision: int | None = None
    healthy_at = loop.time()
    while True:
        try:
            if revision is None:
                revision, contenders = await read_contenders(client, spec.key)
                show(queue.reset(contenders))
            async with client.watch_events(start, range_end(start), start_revision=revision + 1) as events:
                healthy_at = loop.time()
                async for event in events:
                    change = queue.apply(event)
                    revision = int(event.kv.mod_revision)
                    show(change)
        except Compacted:
            revision = None
        except EtcdUnavailable as exc:
            # A member dying or hanging ends the watch (the client moves to another member): watch again from
            # the revision seen, quietly; the status says etcd is unavailable only if that lasts.
            if loop.time() - healthy_at < OUTAGE_GRACE:
                log.debug("lock %s: %s; watching again", spec.key, exc)
                await asyncio.sleep(_QUICK_RETRY)
                continue
            await say_failing(exc)
        except EtcdError as exc:
            # Not transient (EtcdDenied: an admin must act): the mirror tries again, reading afresh.
            revision = None
            await say_failing(exc)


def _fixed(status: Status) -> Callable[[], Status]:
    """A status known in advance (an error), offered as the publisher takes them: built when written."""
    return lambda: dict(status)
