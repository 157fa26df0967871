"""Fence: a condition every write of a session must meet, checked by etcd in the same transaction.

An operator replica fences the writes it makes for lock holders on its leadership: they take effect only
while its election key still exists with the create revision it was elected with. A replica that was
paused or partitioned past its lease, and so deposed, gets :class:`~etcdlock.etcd.errors.Fenced` instead
of changing lock state that the next leader now owns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from etcdlock.etcd.client import create_revision_is


@dataclass(frozen=True)
class Fence:
    """Writes take effect only while ``key`` exists with create revision ``revision``."""

    key: bytes
    revision: int

    def compares(self) -> list[Any]:
        return [create_revision_is(self.key, self.revision)]
