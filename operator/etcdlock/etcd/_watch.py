"""Many watches on one Watch stream per member, each created under an ID this client chooses.

etcd lets a client name a watch (``WatchCreateRequest.watch_id``, etcd ≥ 3.4) and answers its creation
under that name, so creations need not wait for one another: a thousand waiters create their watches
concurrently, each answer going to the creation that asked for it (aetcd's watcher lets one creation be
pending at a time and pairs answers by order, which made setting up a deep queue quadratic). A watch
etcd refuses (permission denied, or a stream whose auth token expired: "created" and "canceled" at once)
fails its creation with :class:`WatchRefused`. Events are aetcd's ``Event`` objects, and a compacted
start revision is aetcd's ``RevisionCompactedError``, so the client translates them as before.
Engine-private: the client's ``watch_events`` is how the engine watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aetcd.exceptions
from aetcd import rpc
from aetcd.rtypes import Event, EventKind

if TYPE_CHECKING:
    from etcdlock.etcd._transport import Member

# What a watch's queue carries: an aetcd Event, the error that ended the watch, or None (the stream ended).
Item = Any


class WatchRefused(Exception):
    """etcd answered a watch creation with "created and cancelled"; ``reason`` is etcd's."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Watcher:
    """One Watch stream on one member (opened at the first creation) and the watches on it, by ID.

    When the stream ends, every pending creation fails and every watch ends, with the stream's error
    (a gRPC error, or the reason given to :meth:`close`).
    """

    def __init__(self, stub: Any, metadata: Any = None) -> None:
        self._stub = stub
        self._metadata = metadata
        self._ids = itertools.count(1)
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        self._creating: dict[int, asyncio.Future[None]] = {}
        self._watches: dict[int, asyncio.Queue[Item]] = {}
        self._stream: asyncio.Task[None] | None = None
        self._ended: BaseException | None = None

    @property
    def ended(self) -> bool:
        return self._ended is not None

    async def create(
        self,
        key: bytes,
        range_end: bytes | None = None,
        start_revision: int | None = None,
        kind: EventKind | None = None,
        prev_kv: bool = False,
    ) -> tuple[int, asyncio.Queue[Item]]:
        """Create a watch; its ID and the queue its events come through."""
        if self._ended is not None:
            raise self._ended
        if self._stream is None:
            self._stream = asyncio.create_task(self._serve(), name="etcd-watch-stream")
        watch_id = next(self._ids)
        created: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._creating[watch_id] = created
        self._requests.put_nowait(_create_request(watch_id, key, range_end, start_revision, kind, prev_kv))
        try:
            await created
        except BaseException:
            self._creating.pop(watch_id, None)
            raise
        return watch_id, self._watches[watch_id]

    def cancel(self, watch_id: int) -> None:
        """End the watch (a creation still pending is cancelled once etcd answers it)."""
        if self._watches.pop(watch_id, None) is not None:
            self._send_cancel(watch_id)

    async def close(self, reason: BaseException) -> None:
        """End the stream: pending creations and every watch on it fail with ``reason``."""
        self._end(reason)
        if self._stream is not None:
            self._stream.cancel()
            await asyncio.gather(self._stream, return_exceptions=True)

    async def _serve(self) -> None:
        try:
            async for response in self._stub.Watch(self._outgoing(), metadata=self._metadata):
                self._answer(response)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream broke: a gRPC error, the client translates it
            self._end(exc)
        else:
            self._end(None)

    async def _outgoing(self) -> AsyncIterator[Any]:
        while (request := await self._requests.get()) is not None:
            yield request

    def _answer(self, response: Any) -> None:
        watch_id = response.watch_id
        if response.created:
            self._created(watch_id, response)
        events = self._watches.get(watch_id)
        if events is None:
            return  # a leftover of a cancelled watch
        if response.compact_revision:
            self._watches.pop(watch_id)
            events.put_nowait(aetcd.exceptions.RevisionCompactedError(response.compact_revision))
            return
        for event in response.events:
            events.put_nowait(
                Event(event.type, event.kv, event.prev_kv if event.HasField("prev_kv") else None)
            )
        if response.canceled:
            self._watches.pop(watch_id)
            events.put_nowait(None)

    def _created(self, watch_id: int, response: Any) -> None:
        created = self._creating.pop(watch_id, None)
        if created is None or created.done():
            self._send_cancel(watch_id)  # its creator gave up meanwhile
        elif response.canceled and not response.compact_revision:
            created.set_exception(WatchRefused(response.cancel_reason))
        else:
            self._watches[watch_id] = asyncio.Queue()
            created.set_result(None)

    def _send_cancel(self, watch_id: int) -> None:
        if self._ended is None:
            self._requests.put_nowait(
                rpc.WatchRequest(cancel_request=rpc.WatchCancelRequest(watch_id=watch_id))
            )

    def _end(self, error: BaseException | None) -> None:
        if self._ended is not None:
            return
        self._ended = error or aetcd.exceptions.ConnectionFailedError("watch stream ended")
        for created in self._creating.values():
            if not created.done():
                created.set_exception(self._ended)
        self._creating.clear()
        for events in self._watches.values():
            events.put_nowait(error)
        self._watches.clear()
        self._requests.put_nowait(None)


def _create_request(
    watch_id: int,
    key: bytes,
    range_end: bytes | None,
    start_revision: int | None,
    kind: EventKind | None,
    prev_kv: bool,
) -> Any:
    create = rpc.WatchCreateRequest(key=key, watch_id=watch_id, prev_kv=prev_kv)
    if range_end is not None:
        create.range_end = range_end
    if start_revision is not None:
        create.start_revision = start_revision
    if kind == EventKind.DELETE:
        create.filters.append(rpc.WatchCreateRequest.FilterType.NOPUT)
    elif kind == EventKind.PUT:
        create.filters.append(rpc.WatchCreateRequest.FilterType.NODELETE)
    return rpc.WatchRequest(create_request=create)


class Watch:
    """One watch and the stream it lives on: its events, or the error that ended it, come through a queue.

    It is cancelled on the stream it was created on, whatever stream the client uses by then.
    """

    def __init__(self, member: Member, watcher: Watcher, watch_id: int, events: asyncio.Queue[Item]) -> None:
        self.member = member
        self._watcher = watcher
        self._watch_id = watch_id
        self._events = events

    @classmethod
    async def create(cls, member: Member, watcher: Watcher, key: bytes, **options: Any) -> Watch:
        watch_id, events = await watcher.create(key, **options)
        return cls(member, watcher, watch_id, events)

    async def __aiter__(self) -> AsyncIterator[Any]:
        while (item := await self._events.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    async def cancel(self) -> None:
        self._watcher.cancel(self._watch_id)


async def cancel_watch(watch: Any) -> None:
    with contextlib.suppress(Exception):
        await watch.cancel()
