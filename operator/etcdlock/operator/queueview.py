"""A lock's etcd queue as the operator follows it: its holders and waiters, kept up to date one watch event
at a time at a cost that does not grow with the queue (a deep queue changes many times a second).

The queue order is the keys' create revision: a new key joins at the back, and the first ``permits`` keys
hold. So an event moves at most one contender between the two: a holder that leaves lets the first waiter
in. Each event (and each full read, after a compaction) gives a :class:`QueueChange` for the observers
(Events, metrics), and :attr:`QueueView.since` says when each holder was first seen holding.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from etcdlock import clock
from etcdlock.etcd.keys import Contender


@dataclass(frozen=True)
class QueueChange:
    """What one event or read changed. ``baseline``: the first look at the queue (its holders were there
    before the operator watched; they did not just acquire)."""

    acquired: tuple[Contender, ...] = ()
    released: tuple[Contender, ...] = ()
    joined: tuple[Contender, ...] = ()
    left: tuple[Contender, ...] = ()
    baseline: bool = False


class QueueView:
    """Holders and waiters of one lock, each in queue order (dicts keep insertion order)."""

    def __init__(self, permits: int) -> None:
        self.permits = permits
        self.holders: dict[str, Contender] = {}
        self.waiters: dict[str, Contender] = {}
        # When each holder was first seen holding (keys written by etcdctl carry no time of their own); a
        # new leader may fill it in from the stored status before the first read.
        self.since: dict[str, str] = {}
        self._seen = False

    def reset(self, contenders: Iterable[Contender]) -> QueueChange:
        """The whole queue, as read (in create-revision order); the change from what was known."""
        ordered = list(contenders)
        old_holders, old_waiters = self.holders, self.waiters
        self.holders = {c.key: c for c in ordered[: self.permits]}
        self.waiters = {c.key: c for c in ordered[self.permits :]}
        change = QueueChange(
            acquired=tuple(c for k, c in self.holders.items() if k not in old_holders),
            released=tuple(c for k, c in old_holders.items() if k not in self.holders),
            joined=tuple(c for k, c in self.waiters.items() if k not in old_waiters and k not in old_holders),
            left=tuple(c for k, c in old_waiters.items() if k not in self.waiters and k not in self.holders),
            baseline=not self._seen,
        )
        self._seen = True
        self._track(change)
        self.since = {key: time for key, time in self.since.items() if key in self.holders}
        return change

    def apply(self, event: Any) -> QueueChange:
        """One watch event under the lock's prefix (a put or a delete of a contender key)."""
        contender = Contender.from_kv(event.kv)
        key = contender.key
        if event.kind == "DELETE":
            if self.holders.pop(key, None) is not None:
                change = QueueChange(released=(contender,), acquired=self._promote())
            elif self.waiters.pop(key, None) is not None:
                change = QueueChange(left=(contender,))
            else:
                return QueueChange()
        elif key in self.holders:
            self.holders[key] = contender  # a new value in place: the same holder
            return QueueChange()
        elif key in self.waiters:
            self.waiters[key] = contender
            return QueueChange()
        elif len(self.holders) < self.permits:
            self.holders[key] = contender
            change = QueueChange(acquired=(contender,))
        else:
            self.waiters[key] = contender
            change = QueueChange(joined=(contender,))
        self._track(change)
        return change

    def first_holders(self, count: int) -> list[Contender]:
        return _first(self.holders, count)

    def first_waiters(self, count: int) -> list[Contender]:
        return _first(self.waiters, count)

    def _promote(self) -> tuple[Contender, ...]:
        """Let the first waiter in, if a permit is free."""
        if len(self.holders) >= self.permits or not self.waiters:
            return ()
        key = next(iter(self.waiters))
        contender = self.waiters.pop(key)
        self.holders[key] = contender
        return (contender,)

    def _track(self, change: QueueChange) -> None:
        now = clock.now()
        for contender in change.released:
            self.since.pop(contender.key, None)
        for contender in change.acquired:
            self.since.setdefault(contender.key, contender.info.acquired or now)


def _first(contenders: dict[str, Contender], count: int) -> list[Contender]:
    return list(itertools.islice(contenders.values(), count))
