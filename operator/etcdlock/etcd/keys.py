"""Key layout shared with etcd's Go ``concurrency`` package, and the holder document stored in values.

A contender for NAME owns the key ``NAME + "/" + format(lease_id, "x")``; owners are the keys with the
smallest create revisions under ``NAME/``. etcdctl writes empty values; this project writes a small JSON
document naming the holder. Readers must accept both.
"""

from __future__ import annotations

import functools
import json
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from etcdlock import clock

if TYPE_CHECKING:
    from etcdlock.etcd.client import EtcdClient


def non_utf8(text: str) -> bytes | None:
    """The bytes behind ``text`` if it is not valid UTF-8 (to show the user), else None.

    Python hands over a command-line argument or an environment value that is not UTF-8 as a str with
    surrogate escapes. Such a str has no UTF-8 form, so it can be neither an etcd key nor part of a request.
    """
    try:
        text.encode()
    except UnicodeEncodeError:
        try:
            return text.encode(errors="surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate that did not come from a byte
            return text.encode(errors="backslashreplace")
    return None


def prefix(name: str) -> bytes:
    """The range every contender key of NAME lives under (NAME plus a slash, as etcd does)."""
    if not name:
        raise ValueError("a lock name must not be empty")
    raw = non_utf8(name)
    if raw is not None:
        raise ValueError(f"a lock name must be valid UTF-8, not {raw!r}")
    return name.encode() + b"/"


def contender_key(name: str, lease_id: int) -> bytes:
    """The key a session with ``lease_id`` uses for NAME: lowercase hex, no padding, as Go's ``%x``."""
    return prefix(name) + format(lease_id, "x").encode()


def range_end(key_prefix: bytes) -> bytes:
    """The exclusive end of the range of all keys that start with ``key_prefix``."""
    end = bytearray(key_prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


@dataclass(frozen=True)
class HolderInfo:
    """Who wrote a contender key. All fields are None for keys written by etcdctl (empty value)."""

    holder: str | None = None
    host: str | None = None
    pid: int | None = None
    acquired: str | None = None
    permits: int | None = None

    @classmethod
    def for_this_process(cls, holder: str | None = None, permits: int | None = None) -> HolderInfo:
        return cls._made(holder, permits, socket.gethostname(), os.getpid(), clock.now())

    @classmethod
    def _made(cls, holder: str | None, permits: int | None, host: str, pid: int, acquired: str) -> HolderInfo:
        return cls(
            holder=holder or f"{host}/{pid}",
            host=host,
            pid=pid,
            acquired=acquired,
            permits=permits if permits and permits > 1 else None,
        )

    def encode(self) -> bytes:
        doc: dict[str, Any] = {"holder": self.holder, "host": self.host, "pid": self.pid}
        doc["acquired"] = self.acquired
        if self.permits is not None:
            doc["permits"] = self.permits
        return _COMPACT_JSON.encode(doc).encode()

    @classmethod
    def decode(cls, value: bytes) -> HolderInfo:
        """Parse a contender value; anything that is not our JSON document yields an empty HolderInfo."""
        if not value:
            return cls()
        try:
            doc = json.loads(value)
        except (ValueError, UnicodeDecodeError):
            return cls()
        if not isinstance(doc, dict):
            return cls()
        pid = doc.get("pid")
        permits = doc.get("permits")
        return cls(
            holder=_str_or_none(doc.get("holder")),
            host=_str_or_none(doc.get("host")),
            pid=pid if isinstance(pid, int) else None,
            acquired=_str_or_none(doc.get("acquired")),
            permits=permits if isinstance(permits, int) and permits > 0 else None,
        )


# json.dumps with separators builds an encoder at every call; every acquire encodes a HolderInfo.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))


def holder_value(holder: str | None = None, permits: int | None = None) -> bytes:
    """``HolderInfo.for_this_process(holder, permits).encode()``, the value every acquire writes, made once
    a second (``acquired`` counts whole seconds) rather than at every acquire."""
    return _encoded(holder, permits, socket.gethostname(), os.getpid(), clock.now())


@functools.lru_cache(maxsize=64)
def _encoded(holder: str | None, permits: int | None, host: str, pid: int, acquired: str) -> bytes:
    return HolderInfo._made(holder, permits, host, pid, acquired).encode()


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Contender:
    """One key in a lock's queue, as read from etcd."""

    key: str
    create_revision: int
    lease: int
    value: bytes

    @property
    def info(self) -> HolderInfo:
        return HolderInfo.decode(self.value)

    @property
    def fencing_token(self) -> int:
        return self.create_revision

    def describe(self) -> str:
        """A short human description: the holder name if known, else the key (etcdctl writes no value)."""
        holder = self.info.holder
        return f"{holder} ({self.key})" if holder else self.key

    @classmethod
    def from_kv(cls, kv: Any) -> Contender:
        return cls(
            key=kv.key.decode(errors="replace"),
            create_revision=kv.create_revision,
            lease=kv.lease,
            value=bytes(kv.value),
        )


async def read_contenders(client: EtcdClient, name: str) -> tuple[int, list[Contender]]:
    """Every key under NAME/ in queue order (lowest create revision first), with the read's revision.

    Needs no session: this is what status displays read.
    """
    start = prefix(name)
    response = await client.range(start, range_end(start), by_create=True)
    return response.header.revision, [Contender.from_kv(kv) for kv in response.kvs]


def contender_lock(key: bytes, lease: int) -> bytes | None:
    """The NAME whose contender ``key`` is, or None if ``key`` is not a contender key.

    A contender key is ``NAME/<its own lease id in hex>`` (:func:`contender_key`, Go's ``%x``) and is
    attached to that lease, whoever wrote it (etcdctl lock and elect, this engine, the operator's pods).
    Requiring both keeps unrelated keys that merely end in hex digits (``/config/cafe``) out of a listing.
    """
    name, slash, tail = key.rpartition(b"/")
    if not slash or not name or lease <= 0 or tail != format(lease, "x").encode():
        return None
    return name


@dataclass(frozen=True)
class Queues:
    """Every lock's queue under a key prefix, as one range read saw it."""

    revision: int
    # NAME -> its contenders in queue order (lowest create revision first); NAMEs in key order.
    queues: dict[str, list[Contender]]
    # False when the read stopped at its limit: locks past the last key read are missing, and those
    # whose keys it may have cut are left out rather than shown with part of their queue.
    complete: bool
    keys_read: int
    keys_total: int


async def read_queues(client: EtcdClient, key_prefix: bytes, limit: int) -> Queues:
    """Every lock with a contender key under ``key_prefix`` (every key when it is empty), in one range read
    of at most ``limit`` keys. Needs no session: this is what listings read."""
    start, end = (key_prefix, range_end(key_prefix)) if key_prefix else (b"\0", b"\0")
    response = await client.range(start, end, limit=limit)
    by_name: dict[bytes, list[Contender]] = {}
    for kv in response.kvs:
        name = contender_lock(kv.key, kv.lease)
        if name is not None:
            by_name.setdefault(name, []).append(Contender.from_kv(kv))
    if response.more and response.kvs:
        # Only a lock whose range NAME/ holds the last key read can have keys past it.
        last = response.kvs[-1].key
        by_name = {name: queue for name, queue in by_name.items() if not last.startswith(name + b"/")}
    queues = {
        name.decode(errors="replace"): sorted(contenders, key=lambda c: c.create_revision)
        for name, contenders in sorted(by_name.items())
    }
    return Queues(response.header.revision, queues, not response.more, len(response.kvs), response.count)
