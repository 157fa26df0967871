"""What ``etcdlock lock`` says on stderr while it waits: how many are ahead and who holds the lock.

The engine tells each change of the queue ahead (:class:`~etcdlock.etcd.position.QueuePosition`). On a
terminal that is one line, rewritten in place (and its "for 12s" counted on locally, once a second), and
erased once the lock is acquired; to a pipe or a file, one line per change, so a log gets no repeats.
Nothing at all is said for a lock that is free at once.
"""

from __future__ import annotations

import asyncio
import os
from typing import TextIO

from etcdlock.cli.common import age_text
from etcdlock.etcd.keys import Contender
from etcdlock.etcd.position import QueuePosition

# Holders named in a semaphore's line; the rest are counted ("and 3 more").
NAMED_HOLDERS = 2
CLEAR_TO_END = "\x1b[K"
TICK = 1.0


def describe(position: QueuePosition) -> tuple[str, str]:
    """The line without its ages (what a change is judged by) and with them (what is shown)."""
    named = position.holders[:NAMED_HOLDERS]
    more = position.held - len(named)
    tail = f", and {more} more" if more > 0 else ""
    head = f"waiting for {position.name}: {position.ahead} ahead; "
    if position.permits > 1:
        head += f"{position.held}/{position.permits} permits "
    head += "held by "
    plain = head + ", ".join(_holder(c) for c in named) + tail
    aged = head + ", ".join(_holder(c) + _age(c) for c in named) + tail
    return plain, aged


def _holder(contender: Contender) -> str:
    """The holder's name with its key and token; etcdctl's keys name nobody, so the key stands for it."""
    holder = contender.info.holder
    if holder:
        return f"{holder} (key {contender.key}, fencing token {contender.fencing_token})"
    return f"{contender.key} (fencing token {contender.fencing_token})"


def _age(contender: Contender) -> str:
    age = age_text(contender.info.acquired)
    return "" if age == "-" else f" for {age}"


class WaitLine:
    """The waiting line of one ``etcdlock lock`` on ``stream`` (stderr), or nothing when ``quiet``.

    ``logging``: log lines go to the same stream (``-v``), so the line is printed as lines too, even on a
    terminal (a log line would be written into the middle of a live one).
    """

    def __init__(self, stream: TextIO, *, quiet: bool = False, logging: bool = False) -> None:
        self._stream = stream
        self._quiet = quiet
        self._live = stream.isatty() and not logging
        self._plain: str | None = None
        self._position: QueuePosition | None = None
        self._ticker: asyncio.Task[None] | None = None

    def show(self, position: QueuePosition) -> None:
        """A change of the queue ahead (the engine's ``on_queue``)."""
        if self._quiet:
            return
        plain, aged = describe(position)
        self._position = position
        if self._live:
            self._draw(aged)
            if self._ticker is None:
                self._ticker = asyncio.create_task(self._tick(), name="wait-line")
        elif plain != self._plain:
            self._stream.write(aged + "\n")
            self._stream.flush()
        self._plain = plain

    def close(self) -> None:
        """The wait is over (acquired, or given up): the live line is erased."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._live and self._position is not None:
            self._stream.write("\r" + CLEAR_TO_END)
            self._stream.flush()
        self._position = None

    def _draw(self, text: str) -> None:
        """Rewrite the line in place, cut to the terminal's width (a wrapped line could not be rewritten;
        a terminal that tells no width, 0, gets the whole line)."""
        try:
            width = os.get_terminal_size(self._stream.fileno()).columns
        except OSError:
            width = 0
        if width > 1:
            text = text[: width - 1]
        self._stream.write("\r" + text + CLEAR_TO_END)
        self._stream.flush()

    async def _tick(self) -> None:
        """Count the holders' time on, locally: etcd is not asked."""
        while True:
            await asyncio.sleep(TICK)
            if self._position is not None:
                self._draw(describe(self._position)[1])
