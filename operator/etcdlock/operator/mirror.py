"""Mirror a lock's etcd queue into its DistributedLock status, for as long as the lock exists.

One task per lock reads the keys under the lock's prefix, publishes the status, and reads again after
every change under the prefix (an etcd watch), so holders from any client appear within a round trip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from etcdlock.etcd import EtcdClient, EtcdUnavailable, read_contenders
from etcdlock.etcd.errors import Compacted
from etcdlock.etcd.keys import Contender, prefix, range_end
from etcdlock.operator.locks import LockSpec, error_status, lock_status

log = logging.getLogger(__name__)

Publish = Callable[[dict[str, Any]], Awaitable[None]]


class QueueObserver(Protocol):
    """Told the whole queue (in order) after every change; events and metrics are observers."""

    def seen(self, contenders: list[Contender], permits: int) -> None: ...


_RETRY_DELAY = 1.0


async def mirror_lock(
    client: EtcdClient, spec: LockSpec, generation: int, publish: Publish, observers: Sequence[QueueObserver]
) -> None:
    """Publish the lock's status now and after every change, until cancelled; tell the observers.

    The queue is read once, then kept up to date by applying every watch event in revision order, so
    no holder is missed however briefly it held (a re-read after each change would skip fast hand-offs).
    It is read again after an etcd outage or a compaction.
    """
    start = prefix(spec.key)
    since: dict[str, str] = {}
    last: dict[str, Any] | None = None

    async def show(contenders: list[Contender]) -> None:
        nonlocal last
        for observer in observers:
            observer.seen(contenders, spec.permits)
        status = _keep_transition_times(lock_status(spec, contenders, generation, since), last)
        if last is None or _differs(status, last):
            await publish(status)
            last = status

    while True:
        try:
            revision, contenders = await read_contenders(client, spec.key)
            await show(contenders)
            async with client.watch_events(start, range_end(start), start_revision=revision + 1) as events:
                async for event in events:
                    contenders = _apply(contenders, event)
                    await show(contenders)
        except Compacted:
            continue
        except EtcdUnavailable as exc:
            log.warning("lock %s: %s", spec.key, exc)
            status = _keep_transition_times(error_status("EtcdUnavailable", str(exc), generation), last)
            if last is None or _differs(status, last):
                await publish(status)
                last = status
            await asyncio.sleep(_RETRY_DELAY)


def _apply(contenders: list[Contender], event: Any) -> list[Contender]:
    """The queue after one watch event: a new key joins at the end (its create revision is the newest)."""
    changed = Contender.from_kv(event.kv)
    if event.kind == "DELETE":
        return [c for c in contenders if c.key != changed.key]
    if any(c.key == changed.key for c in contenders):
        return [changed if c.key == changed.key else c for c in contenders]
    return [*contenders, changed]


def _keep_transition_times(status: dict[str, Any], last: dict[str, Any] | None) -> dict[str, Any]:
    """A condition whose status and reason did not change keeps its lastTransitionTime."""
    before = {c["type"]: c for c in (last or {}).get("conditions", [])}
    for condition in status.get("conditions", []):
        old = before.get(condition["type"])
        if old and (old["status"], old["reason"]) == (condition["status"], condition["reason"]):
            condition["lastTransitionTime"] = old["lastTransitionTime"]
    return status


def _differs(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """True if anything but the conditions' transition times changed."""

    def bare(status: dict[str, Any]) -> dict[str, Any]:
        conditions = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions", [])
        ]
        return {**status, "conditions": conditions}

    return bare(new) != bare(old)
