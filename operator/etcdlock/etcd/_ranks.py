"""The ranks in one queue, kept for all of a client's waiters there by one watch (engine-private).

A waiter holds one of N permits once fewer than N keys under the prefix have a lower create revision, so
with N permits a deletion anywhere ahead of it may be its turn. A waiter that watched the whole prefix
itself made every deletion an event for every waiter: O(n) per deletion, O(n²) to fill or drain a queue;
one that watched only its predecessor (etcd's ``waitDeletes``, one permit) had to read the queue after
every wake-up to find the next, and etcd 3.5 reads and sorts every key's value for that (a create-revision
filter or sort makes it apply ``limit`` last). Here a client keeps one :class:`Ranks` per queue prefix for
as long as it has waiters there: the create revisions of the keys under the prefix, read once and then kept
by one watch of every change under the prefix. Each change (a key created, rewritten or deleted) costs
each client with waiters one event, a bisection and a list update, and no read; of its waiters only the
one whose key moves into the last permit's place is woken. The price is that every waiting client hears of
every change, where ``waitDeletes`` sends one event in all: with as many clients as waiters (one process
each) a change costs etcd n small events instead of one read of n keys per hand-off.

The ranks decide the grant themselves, for they are exact: the watch is created first, from etcd's current
revision (a watch from a past revision is served only at etcd's next sync, up to 100 ms later), then the
prefix is read, and the events at or before the read's revision (already in it) are skipped; from there
the watch delivers every change in revision order. So the ranks are the queue as etcd had it at the
revision of the last event applied, and granted by them is granted by etcd: a key ahead never comes
back and a new key is behind everyone, so a grant, once true, stays true while the key exists. A waiter
is judged when it starts waiting, when its own key's creation is applied (it may start waiting before the
watch has delivered it), when its key moves into the last permit's place, and after every rebuild; its
key's deletion ends its wait with :class:`LockLost`. A watch that breaks (an etcd outage, the client moving
to another member, re-authentication) or is compacted is set up again by the same watch-then-read, after
which every waiter is judged again; an error that retrying does not mend (permission denied) ends every
wait with it.

A waiter may bring a :class:`Listener` (``acquire(on_queue=...)``, see :mod:`etcdlock.etcd.position`): it
is told, from the same events, each change of how many keys are ahead of its own and which hold the
permits, and each new value of a holder's key (a watch event carries it). Without listeners this costs
nothing but a counter's check per event.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from etcdlock.etcd.errors import Compacted, EtcdUnavailable, LockLost

if TYPE_CHECKING:
    from etcdlock.etcd.client import EtcdClient

# The keys that hold permits, oldest first: (key, create revision) each.
Holders = tuple[tuple[bytes, int], ...]


class Listener(Protocol):
    """Hears where one waiter stands, from the ranks' own watch (no read of its own): see
    :mod:`etcdlock.etcd.position`."""

    def moved(self, ahead: int, holders: Holders, revision: int) -> None:
        """The keys ahead of the waiter's, or the holders among them, changed (called when first known)."""

    def rewritten(self, key: bytes, value: bytes) -> None:
        """A holder's key got a new value (a holder that waited rewrites its acquired time)."""


log = logging.getLogger(__name__)

_RETRY_DELAY = 0.2


@dataclass(eq=False)
class _Waiting:
    """One waiter: its key, the key's create revision, its permits, and where its answer goes."""

    key: bytes
    my_rev: int
    permits: int
    answer: asyncio.Future[int]
    listener: Listener | None = None
    told: tuple[int, Holders] | None = None


class Ranks:
    """The keys under ``[prefix, end)`` by create revision, as one client sees them through one watch."""

    def __init__(self, client: EtcdClient, prefix: bytes, end: bytes) -> None:
        self._client = client
        self._prefix = prefix
        self._end = end
        self._revision = 0  # the revision the ranks are exact at; 0 while they are (re)built
        self._creations: dict[bytes, int] = {}  # key -> create revision
        self._order: list[int] = []  # the create revisions, ascending
        self._keys: dict[int, bytes] = {}  # create revision -> key
        self._listened = 0  # how many waiters have a listener: without any, nothing is told
        self._waiting: dict[int, list[_Waiting]] = {}  # by the create revision of the waiter's key
        self._permits: Counter[int] = Counter()  # how many waiters wait with each number of permits
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, client: EtcdClient, prefix: bytes, end: bytes) -> Ranks:
        """The client's ranks for the queue, shared by all its waiters there."""
        ranks = client.ranks.get(prefix)
        if ranks is None:
            ranks = client.ranks[prefix] = cls(client, prefix, end)
        return ranks

    async def wait_granted(
        self, key: bytes, my_rev: int, permits: int, listener: Listener | None = None
    ) -> int:
        """Wait until fewer than ``permits`` keys have a lower create revision than ``key`` (created at
        ``my_rev``); returns the revision that was seen at. Raises :class:`LockLost` if the key is deleted
        first, or the error that stopped the watch for good. ``listener`` hears of every change ahead."""
        waiting = _Waiting(key, my_rev, permits, asyncio.get_running_loop().create_future(), listener)
        self._waiting.setdefault(my_rev, []).append(waiting)
        self._permits[permits] += 1
        self._listened += listener is not None
        if self._task is None or self._task.done():  # done: a failure ended the waits before this one
            self._task = asyncio.create_task(
                self._keep(), name=f"ranks-{self._prefix.decode(errors='replace')}"
            )
        self._judge(waiting)
        self._tell(waiting)
        try:
            return await waiting.answer
        finally:
            self._forget(waiting)

    def _forget(self, waiting: _Waiting) -> None:
        """Drop a waiter; the last one leaving ends the watch and the ranks (a later waiter reads again)."""
        if not waiting.answer.done():
            waiting.answer.cancel()
        elif not waiting.answer.cancelled():
            waiting.answer.exception()  # retrieved: a waiter cancelled as it was answered is no error
        self._waiting[waiting.my_rev].remove(waiting)
        if not self._waiting[waiting.my_rev]:
            del self._waiting[waiting.my_rev]
        self._permits[waiting.permits] -= 1
        self._listened -= waiting.listener is not None
        if not self._permits[waiting.permits]:
            del self._permits[waiting.permits]
        if not self._waiting:
            if self._task is not None:
                self._task.cancel()
            if self._client.ranks.get(self._prefix) is self:
                del self._client.ranks[self._prefix]

    def _judge(self, waiting: _Waiting) -> None:
        """Answer a waiter if the ranks (once they have seen its key's creation) tell its fate."""
        if waiting.answer.done() or self._revision < waiting.my_rev:
            return
        if self._creations.get(waiting.key) != waiting.my_rev:
            waiting.answer.set_exception(
                LockLost(f"own key {waiting.key.decode()} was deleted while waiting")
            )
        elif bisect.bisect_left(self._order, waiting.my_rev) < waiting.permits:
            waiting.answer.set_result(self._revision)

    def _judge_at(self, create_revision: int) -> None:
        for waiting in self._waiting.get(create_revision, ()):
            self._judge(waiting)

    def _tell(self, waiting: _Waiting) -> None:
        """Tell a waiter's listener where it stands, if that changed (and the ranks have seen its key)."""
        if waiting.listener is None or waiting.answer.done() or self._revision < waiting.my_rev:
            return
        ahead = bisect.bisect_left(self._order, waiting.my_rev)
        holders = tuple((self._keys[rev], rev) for rev in self._order[: min(ahead, waiting.permits)])
        if waiting.told != (ahead, holders):
            waiting.told = (ahead, holders)
            waiting.listener.moved(ahead, holders, self._revision)

    def _tell_at(self, create_revision: int) -> None:
        if self._listened:
            for waiting in self._waiting.get(create_revision, ()):
                self._tell(waiting)

    def _tell_all(self) -> None:
        if self._listened:
            for waiters in self._waiting.values():
                for waiting in waiters:
                    self._tell(waiting)

    def _tell_rewritten(self, key: bytes, create_revision: int, value: bytes) -> None:
        if self._listened:
            for waiters in self._waiting.values():
                for waiting in waiters:
                    if (
                        waiting.listener is not None
                        and waiting.told
                        and (key, create_revision) in waiting.told[1]
                    ):
                        waiting.listener.rewritten(key, value)

    async def _keep(self) -> None:
        """Watch, read, apply every change; again after every transient failure, until cancelled."""
        while True:
            try:
                await self._follow()
            except Compacted:
                pass
            except EtcdUnavailable as exc:
                log.debug("ranks under %s: %s; retrying", self._prefix.decode(errors="replace"), exc)
                await asyncio.sleep(_RETRY_DELAY)
            except Exception as exc:  # denied or refused, which retrying does not mend (or a bug)
                self._fail(exc)
                return
            finally:
                self._revision = 0

    async def _follow(self) -> None:
        async with self._client.watch_events(self._prefix, self._end, start_revision=0) as events:
            read_at = self._rebuild(await self._client.range(self._prefix, self._end, keys_only=True))
            async for event in events:
                if event.kv.mod_revision > read_at:
                    self._apply(event)

    def _rebuild(self, response: Any) -> int:
        """The ranks from a read of the whole prefix; every waiter is judged again. Returns its revision."""
        self._creations = {kv.key: kv.create_revision for kv in response.kvs}
        self._keys = {rev: key for key, rev in self._creations.items()}
        self._order = sorted(self._creations.values())
        self._revision = int(response.header.revision)
        log.debug(
            "queue %s: %d keys at revision %d",
            self._prefix.decode(errors="replace"),
            len(self._order),
            self._revision,
        )
        for waiters in self._waiting.values():
            for waiting in waiters:
                self._judge(waiting)
        self._tell_all()
        return self._revision

    def _apply(self, event: Any) -> None:
        """One change under the prefix, at its revision: a put of a new key (behind everyone: only its own
        waiter is judged), a rewrite (nothing moves), or a deletion (its own waiter is judged, and each key
        that moves into a last permit's place)."""
        kv = event.kv
        self._revision = kv.mod_revision
        if event.kind == "PUT":
            if kv.key not in self._creations:
                self._creations[kv.key] = kv.create_revision
                self._keys[kv.create_revision] = kv.key
                bisect.insort(self._order, kv.create_revision)
                self._judge_at(kv.create_revision)
                self._tell_at(kv.create_revision)  # a new key is behind everyone: only its own waiter
            else:
                self._tell_rewritten(kv.key, kv.create_revision, bytes(kv.value))
            return
        created = self._creations.pop(kv.key, None)
        if created is None:
            return
        del self._keys[created]
        place = bisect.bisect_left(self._order, created)
        del self._order[place]
        log.debug(
            "queue %s: key %s (#%d) deleted",
            self._prefix.decode(errors="replace"),
            kv.key.decode(errors="replace"),
            place + 1,
        )
        self._judge_at(created)
        for permits in self._permits:
            if place < permits <= len(self._order):
                self._judge_at(self._order[permits - 1])
        self._tell_all()

    def _fail(self, error: Exception) -> None:
        for waiters in self._waiting.values():
            for waiting in waiters:
                if not waiting.answer.done():
                    waiting.answer.set_exception(error)
