"""Where a waiting acquire stands in NAME's queue, told as it changes: ``acquire(on_queue=callback)``.

The reports come from the watch the waiter already keeps on its queue (see :mod:`etcdlock.etcd._ranks`):
following the queue costs etcd nothing more, except one read of a holder's key when a new holder comes to
the front (its value names it; the watch's keys are read without values). A report is made only when the
count of keys ahead or the holders change, and never for an acquire that is granted at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from etcdlock.etcd._ranks import Holders
from etcdlock.etcd.client import EtcdClient
from etcdlock.etcd.errors import EtcdError
from etcdlock.etcd.keys import Contender

log = logging.getLogger(__name__)

# The holders a report names (with their values): a semaphore of many permits is reported by its oldest.
MAX_NAMED_HOLDERS = 8


@dataclass(frozen=True)
class QueuePosition:
    """One waiting acquire's place: ``ahead`` keys have a lower create revision than its own key, of
    which the first ``held`` hold the ``permits`` (``holders``: the oldest of them, at most
    :data:`MAX_NAMED_HOLDERS`, with the values they wrote; an empty value for etcdctl's keys, and an empty
    value and lease 0 for a key that could not be read). ``revision``: etcd's revision the queue was seen
    at."""

    name: str
    key: str
    permits: int
    ahead: int
    held: int
    holders: tuple[Contender, ...]
    revision: int


OnQueue = Callable[[QueuePosition], None]


class PositionReporter:
    """Turns the ranks' changes into :class:`QueuePosition` reports, reading each new holder's key once.

    Runs as a task beside the wait (:meth:`start`, :meth:`stop`); a report superseded while the values were
    read is not made, only the newest. The callback runs in the event loop and must not block; if it
    raises, the error is logged and reporting goes on.
    """

    def __init__(self, client: EtcdClient, name: str, key: str, permits: int, on_queue: OnQueue) -> None:
        self._client = client
        self._name = name
        self._key = key
        self._permits = permits
        self._on_queue = on_queue
        self._latest: tuple[int, Holders, int] | None = None
        self._known: dict[tuple[bytes, int], Contender] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def moved(self, ahead: int, holders: Holders, revision: int) -> None:
        self._latest = (ahead, holders, revision)
        self._changed.set()

    def rewritten(self, key: bytes, value: bytes) -> None:
        for holder, known in self._known.items():
            if holder[0] == key:
                self._known[holder] = replace(known, value=value)
                self._changed.set()
                return

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"queue-position-{self._key}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # asyncio.wait: awaiting the task under suppress(CancelledError) would also swallow a
            # cancellation of the caller.
            await asyncio.wait([self._task])

    async def _run(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            if self._latest is None:
                continue
            ahead, holders, revision = self._latest
            contenders = await self._contenders(holders[:MAX_NAMED_HOLDERS])
            if self._changed.is_set():
                continue  # superseded while reading: report the newest only
            position = QueuePosition(
                self._name, self._key, self._permits, ahead, len(holders), contenders, revision
            )
            try:
                self._on_queue(position)
            except Exception:
                log.exception("the on_queue callback of %s failed", self._key)

    async def _contenders(self, holders: Holders) -> tuple[Contender, ...]:
        missing = [h for h in holders if h not in self._known]
        read = await asyncio.gather(*(self._read(key, rev) for key, rev in missing))
        self._known = {h: self._known[h] for h in holders if h in self._known}
        self._known.update((h, c) for h, c in zip(missing, read, strict=True) if c is not None)
        return tuple(
            self._known.get((key, rev)) or Contender(key.decode(errors="replace"), rev, 0, b"")
            for key, rev in holders
        )

    async def _read(self, key: bytes, create_revision: int) -> Contender | None:
        """The holder's key as etcd has it (no value if it is gone or was made again since); None if etcd
        did not answer (read again at the next change)."""
        try:
            response = await self._client.range(key)
        except EtcdError as exc:
            log.debug("holder %s not read: %s", key.decode(errors="replace"), exc)
            return None
        if not response.kvs or response.kvs[0].create_revision != create_revision:
            return Contender(key.decode(errors="replace"), create_revision, 0, b"")
        return Contender.from_kv(response.kvs[0])
