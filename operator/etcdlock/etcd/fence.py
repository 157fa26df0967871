"""Fence: a condition every write of a session must meet, checked by etcd in the same transaction.

An operator replica fences the writes it makes for lock holders on its leadership: they take effect only
while its election key still exists with the create revision it was elected with. A replica that was
paused or partitioned past its lease, and so deposed, gets :class:`~etcdlock.etcd.errors.Fenced` instead
of changing lock state that the next leader now owns.

On an etcd cluster that holds no election (an EtcdCluster the operator writes locks to), each leader term
writes an epoch key first and fences on that key's mod revision: the next leader's own write of the key
fences off every earlier one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from etcdlock.etcd.requests import create_revision_is, mod_revision_is


@dataclass(frozen=True)
class Fence:
    """Writes take effect only while ``key`` exists with create revision ``revision`` (or, for an epoch
    key, with mod revision ``revision``: nobody has written it since)."""

    key: bytes
    revision: int
    epoch: bool = False

    def compares(self) -> list[Any]:
        if self.epoch:
            return [mod_revision_is(self.key, self.revision)]
        return [create_revision_is(self.key, self.revision)]
