"""The order in which the pods of one lock join its etcd queue: the order they were created in.

kopf hands over the events of different pods in no set order (each pod has a worker of its own), so the
order the operator happens to see pods in is not the order they were created in: pods created a
millisecond apart were seen the other way round. Each pod therefore takes a ticket, when it is first seen,
ordered by its creation (:func:`creation_order`: creationTimestamp, then the resourceVersion its first
event showed, then the order seen); the ticket first in that order takes the next turn, one turn at a
time. Waiting for the lock to be usable, the lease grant and the pod write naming it happen before, each
pod on its own and all at once, so that a turn is one etcd transaction: a burst of pods joins in creation
order however they were seen. Only the ticket at the head is woken when the one before it goes (thousands
may wait in one line).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Mapping
from typing import Any

Order = tuple[str, int]


def creation_order(pod: Mapping[str, Any]) -> Order:
    """How a pod ranks among the pods of its lock: its creationTimestamp (to the second), then the
    resourceVersion of the event it was first seen in (kube-apiserver's are etcd revisions; one that is
    not a number ranks by the order seen)."""
    meta = pod.get("metadata") or {}
    version = str(meta.get("resourceVersion") or "")
    return str(meta.get("creationTimestamp") or ""), int(version) if version.isdigit() else 0


class Line:
    """The tickets of one lock's pods that have not joined its queue yet."""

    def __init__(self) -> None:
        self._arrivals = itertools.count()
        # (order, ticket) for every ticket taken; tickets that left are dropped as they reach the top.
        self._heap: list[tuple[Order, int]] = []
        # Tickets in line, each with the event that wakes it when it may be first.
        self._waiting: dict[int, asyncio.Event] = {}
        self._busy = False

    def ticket(self, order: Order) -> int:
        ticket = next(self._arrivals)
        heapq.heappush(self._heap, (order, ticket))
        self._waiting[ticket] = asyncio.Event()
        self._wake_head()
        return ticket

    @contextlib.asynccontextmanager
    async def turn(self, ticket: int) -> AsyncIterator[None]:
        """The block runs once ``ticket`` is first in line and no other turn runs; the ticket leaves the
        line with the block."""
        try:
            while self._busy or self._head() != ticket:
                woken = self._waiting[ticket] = asyncio.Event()
                await woken.wait()
            self._busy = True
            try:
                yield
            finally:
                self._busy = False
        finally:
            self.leave(ticket)

    def leave(self, ticket: int) -> None:
        if self._waiting.pop(ticket, None) is not None:
            self._wake_head()

    def _head(self) -> int | None:
        while self._heap and self._heap[0][1] not in self._waiting:
            heapq.heappop(self._heap)
        return self._heap[0][1] if self._heap else None

    def _wake_head(self) -> None:
        head = self._head()
        if head is not None and not self._busy:
            self._waiting[head].set()
