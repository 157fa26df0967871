"""Serve a DistributedLock for as long as it exists: mirror its etcd queue into its status, or say in its
status why it cannot be served, until it can.

One task per lock (:func:`serve_lock`) checks the lock (its spec, its key against the rules and the other
locks, its etcd), then reads the keys under the lock's prefix, publishes the status, and reads again after
every change under the prefix (an etcd watch), so holders from any client appear within a round trip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from etcdlock.etcd import EtcdClient, EtcdError, EtcdUnavailable, read_contenders
from etcdlock.etcd.errors import Compacted
from etcdlock.etcd.keys import Contender, prefix, range_end
from etcdlock.operator.conditions import carried_over, without_times
from etcdlock.operator.errors import ClusterNotReady, OperatorError
from etcdlock.operator.events import EventRecorder
from etcdlock.operator.locks import LockChanges, Locks, LockSpec, error_status, lock_status
from etcdlock.operator.stores import Stores

log = logging.getLogger(__name__)

Publish = Callable[[dict[str, Any]], Awaitable[None]]


class QueueObserver(Protocol):
    """Told the whole queue (in order) after every change; events and metrics are observers."""

    def seen(self, contenders: list[Contender], permits: int) -> None: ...


_RETRY_DELAY = 1.0
_QUICK_RETRY = 0.05
# How long etcd may be unavailable to the mirror before the lock's status says so.
OUTAGE_GRACE = 5.0
# A lock whose EtcdCluster is not available yet is tried again this often; one refused for its key or spec
# when another lock changes (or this often at the latest).
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
    told = ""
    while True:
        try:
            spec = locks.served(body)
            store = await stores.for_lock(ref[0], spec)
        except OperatorError as exc:
            if str(exc) != told:
                events.warn(body, exc.reason, str(exc))
                await publish(error_status(exc.reason, str(exc), generation))
                told = str(exc)
            await changes.wait(ref, CLUSTER_RETRY if isinstance(exc, ClusterNotReady) else RECHECK)
            continue
        pod_ttl = spec.pod_ttl(locks.rules)
        await mirror_lock(store.etcd, spec, generation, publish, observers, pod_ttl)


async def mirror_lock(
    client: EtcdClient,
    spec: LockSpec,
    generation: int,
    publish: Publish,
    observers: Sequence[QueueObserver],
    pod_ttl: int,
) -> None:
    """Publish the lock's status now and after every change, until cancelled; tell the observers.

    The queue is read once, then kept up to date by applying every watch event in revision order, so
    no holder is missed however briefly it held (a re-read after each change would skip fast hand-offs).
    A watch that ends (an etcd member failed) starts again from the last revision seen; the queue is
    read again after a compaction or an error that is not transient.
    """
    start = prefix(spec.key)
    since: dict[str, str] = {}
    last: dict[str, Any] | None = None

    async def say_failing(exc: EtcdError) -> None:
        nonlocal last
        log.warning("lock %s: %s", spec.key, exc)
        status = error_status(type(exc).__name__, str(exc), generation)
        status["conditions"] = carried_over(status["conditions"], last)
        if last is None or without_times(status) != without_times(last):
            await publish(status)
            last = status
        await asyncio.sleep(_RETRY_DELAY)

    async def show(contenders: list[Contender]) -> None:
        nonlocal last
        for observer in observers:
            observer.seen(contenders, spec.permits)
        status = lock_status(spec, contenders, generation, since, pod_ttl)
        status["conditions"] = carried_over(status["conditions"], last)
        if last is None or without_times(status) != without_times(last):
            await publish(status)
            last = status

    loop = asyncio.get_running_loop()
    revision: int | None = None
    contenders: list[Contender] = []
    healthy_at = loop.time()
    while True:
        try:
            if revision is None:
                revision, contenders = await read_contenders(client, spec.key)
                await show(contenders)
            async with client.watch_events(start, range_end(start), start_revision=revision + 1) as events:
                healthy_at = loop.time()
                async for event in events:
                    contenders = _apply(contenders, event)
                    revision = int(event.kv.mod_revision)
                    await show(contenders)
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


def _apply(contenders: list[Contender], event: Any) -> list[Contender]:
    """The queue after one watch event: a new key joins at the end (its create revision is the newest)."""
    changed = Contender.from_kv(event.kv)
    if event.kind == "DELETE":
        return [c for c in contenders if c.key != changed.key]
    if any(c.key == changed.key for c in contenders):
        return [changed if c.key == changed.key else c for c in contenders]
    return [*contenders, changed]
