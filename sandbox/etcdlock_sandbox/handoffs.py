"""A lock's hand-offs in the order etcd served them, read from one watch on the lock's contender keys.

Every change in etcd has a revision, and revisions order all changes of the store. A contender joins the
line when its key ``NAME/<lease>`` is created, holds once fewer than ``permits`` keys created before its
own are left (at its own creation, or at the deletion of the last key ahead of it), and releases (or, never
having held, leaves the line) when its key is deleted. So, read from one watch in revision order, a
holder's release always comes before the next one holds, and fencing tokens (create revisions) increase,
however late each contender's own signs (a pod's annotations, a command's output) would arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from dataclasses import dataclass
from typing import Any

from etcdlock.etcd import EtcdClient, EtcdConfig, HolderInfo, read_contenders
from etcdlock.etcd.keys import prefix, range_end

JOINED, HOLDS, RELEASED, LEFT = "joined", "holds", "released", "left"


@dataclass(frozen=True)
class Turn:
    """One step of one contender: it ``joined``, ``holds``, ``released`` or ``left`` at ``revision``.

    ``token`` is its key's create revision: its fencing token once it holds.
    """

    name: str
    step: str
    revision: int
    token: int


def contender_name(value: bytes) -> str:
    """Who a contender key belongs to, from its value: the holder the CLI or the operator wrote (a pod's
    ``pod/NAMESPACE/NAME`` shown as its NAME), or ``etcdctl`` for the empty value etcdctl writes."""
    holder = HolderInfo.decode(value).holder
    if holder is None:
        return "etcdctl"
    return holder.rsplit("/", 1)[-1] if holder.startswith("pod/") else holder


class Timeline:
    """The line of a lock with ``permits`` permits, moved on by its key events, applied in revision order."""

    def __init__(self, permits: int = 1) -> None:
        self._permits = permits
        # Key -> (create revision, name). Keys arrive in create-revision order, so this dict is the line.
        self._line: dict[bytes, tuple[int, str]] = {}
        self._holding: set[bytes] = set()

    def put(self, key: bytes, create_revision: int, value: bytes) -> list[Turn]:
        """A key written at ``create_revision`` (a rewrite of a key in line moves nothing)."""
        if key in self._line:
            return []
        name = contender_name(value)
        self._line[key] = (create_revision, name)
        return [Turn(name, JOINED, create_revision, create_revision), *self._served(create_revision)]

    def delete(self, key: bytes, revision: int) -> list[Turn]:
        """A key deleted at ``revision``: its holder released, or a waiter left; who is served next."""
        if key not in self._line:
            return []
        token, name = self._line.pop(key)
        step = RELEASED if key in self._holding else LEFT
        self._holding.discard(key)
        return [Turn(name, step, revision, token), *self._served(revision)]

    def _served(self, revision: int) -> list[Turn]:
        """The contenders that hold from ``revision`` on and did not before."""
        turns = []
        for key, (token, name) in list(self._line.items())[: self._permits]:
            if key not in self._holding:
                self._holding.add(key)
                turns.append(Turn(name, HOLDS, revision, token))
        return turns


class LockWatch:
    """Follows one lock's turns, from the moment it starts, in a thread of its own.

    ``start()`` returns once the watch is in place (the line as it was then is reported first); each
    :meth:`next` is the next turn in revision order. ``stop()`` cancels the watch and joins the thread.
    """

    def __init__(self, endpoints: str, name: str, permits: int = 1) -> None:
        self._config = EtcdConfig.parse(endpoints)
        self._name = name
        self._timeline = Timeline(permits)
        self._turns: queue.Queue[Turn | BaseException] = queue.Queue()
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, name=f"watch-{name}", daemon=True)

    def start(self, bound: float) -> LockWatch:
        self._thread.start()
        if not self._started.wait(bound):
            raise TimeoutError(f"the watch on {self._name} did not start within {bound:.0f}s")
        return self

    def next(self, bound: float) -> Turn:
        """The next turn; raises what ended the watch (an etcd error, say), or TimeoutError after ``bound``
        seconds."""
        try:
            turn = self._turns.get(timeout=bound)
        except queue.Empty:
            raise TimeoutError(f"nothing happened to {self._name} within {bound:.0f}s") from None
        if isinstance(turn, BaseException):
            raise turn
        return turn

    def stop(self) -> None:
        if self._loop is not None and self._task is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: the watch ended already
                self._loop.call_soon_threadsafe(self._task.cancel)
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # the caller's thread raises it from next(): this one has nobody to tell
            self._turns.put(exc)
        finally:
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        try:
            await self._follow()
        except asyncio.CancelledError:
            return

    async def _follow(self) -> None:
        start = prefix(self._name)
        async with EtcdClient(self._config) as client:
            revision, contenders = await read_contenders(client, self._name)
            async with client.watch_events(start, range_end(start), start_revision=revision + 1) as events:
                for contender in contenders:
                    self._report(
                        self._timeline.put(contender.key.encode(), contender.create_revision, contender.value)
                    )
                self._started.set()
                async for event in events:
                    self._report(self._apply(event))

    def _apply(self, event: Any) -> list[Turn]:
        kv = event.kv
        if event.kind == "PUT":
            return self._timeline.put(kv.key, kv.create_revision, kv.value)
        return self._timeline.delete(kv.key, kv.mod_revision)

    def _report(self, turns: list[Turn]) -> None:
        for turn in turns:
            self._turns.put(turn)
