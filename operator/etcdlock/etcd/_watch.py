"""Watches on aetcd's multiplexed watch stream, with two of its flaws worked around.

aetcd takes a watch that etcd refused to create for a live one that never delivers, and cancels a watch on
whatever stream its client has at that moment. :class:`Watcher` fails a refused creation instead, and a
:class:`Watch` is cancelled on the stream it was created on. Engine-private: the client's
``watch_events`` is how the engine watches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aetcd.watcher

if TYPE_CHECKING:
    from etcdlock.etcd._transport import Member


class WatchRefused(Exception):
    """etcd answered a watch creation with "created and cancelled"; ``reason`` is etcd's."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Watcher(aetcd.watcher.Watcher):
    """aetcd's multiplexed watch stream, except that a watch etcd refuses to create fails instead of hanging.

    etcd refuses a watch (permission denied, or a stream whose auth token has expired) by answering
    ``created`` and ``canceled`` at once; aetcd would register that as a live watch that never delivers.
    """

    async def _handle_response(self, response: Any) -> None:
        if response.created and response.canceled:
            async with self._lock:
                if self._new_callback is not None:
                    self._new_callback.error = WatchRefused(response.cancel_reason)
                    self._new_callback_ready.notify_all()
            return
        await super()._handle_response(response)

    async def close(self, reason: Exception) -> None:
        """End the stream: pending creations and every watch on it fail with ``reason``."""
        await self._terminate_stream(reason)


class Watch:
    """One watch and the stream it lives on: its events, or the error that ended it, come through a queue.

    aetcd's own watch objects cancel on whatever stream the client has at that moment, which after a
    restart may carry another watch with the same id.
    """

    def __init__(self, member: Member, watcher: Watcher, watch_id: int, events: asyncio.Queue[Any]) -> None:
        self.member = member
        self._watcher = watcher
        self._watch_id = watch_id
        self._events = events

    @classmethod
    async def create(cls, member: Member, watcher: Watcher, key: bytes, **options: Any) -> Watch:
        events: asyncio.Queue[Any] = asyncio.Queue()
        callback = await watcher.add_callback(key, events.put, **options)
        return cls(member, watcher, callback.watch_id, events)

    async def __aiter__(self) -> AsyncIterator[Any]:
        while (item := await self._events.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item

    async def cancel(self) -> None:
        await self._watcher.cancel(self._watch_id)


async def cancel_watch(watch: Any) -> None:
    with contextlib.suppress(Exception):
        await watch.cancel()
