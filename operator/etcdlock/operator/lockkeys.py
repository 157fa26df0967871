"""Which etcd key a DistributedLock may use: its own namespace's, never another lock's, never the operator's.

The rules, checked at admission (the webhook) and again by the operator, which serves no lock that breaks
them:

- a key lies under ``/etcdlock/locks/<the lock's namespace>/``, or under a prefix an admin shared with
  every namespace (``--shared-key-prefix``, for locks that outside programs take by a name of their own);
- it never touches the operator's own keys (everything under ``/etcdlock/operator/``, and the election,
  wherever ``--election`` puts it);
- in one etcd (the operator's, one EtcdCluster, or one the user runs) no two locks' keys are equal or
  nested: a lock's contenders live under ``KEY/``, so ``/a`` and ``/a/b`` would share them. The lock
  created first keeps the key; a later one is refused until the first is gone or moves. An etcd the user
  runs is known by its client URLs only: two locks are in the same one when they name an endpoint
  (host and port) in common, whichever namespaces they are in (another name or address of the same
  members is not recognised).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from etcdlock.operator.errors import KeyConflict, KeyNotAllowed
from etcdlock.operator.names import DEFAULT_KEY_PREFIX, OPERATOR_KEY_PREFIX

Ref = tuple[str, str]
# Where a lock's key lives: None for the operator's etcd, (namespace, EtcdCluster name), or one endpoint of
# an etcd the user runs: ("etcd", host, port).
Place = tuple[str, ...] | None


def overlaps(a: str, b: str) -> bool:
    """Whether the contenders of keys ``a`` and ``b`` (the keys under ``a/`` and ``b/``) can mix."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def namespace_prefix(namespace: str) -> str:
    return f"{DEFAULT_KEY_PREFIX}/{namespace}"


@dataclass(frozen=True)
class KeyPolicy:
    """Where keys may lie: each namespace's own prefix and the ``shared`` ones; never on ``reserved``."""

    shared: tuple[str, ...] = ()
    reserved: tuple[str, ...] = (OPERATOR_KEY_PREFIX,)

    @classmethod
    def parse(cls, shared: Iterable[str], election: str | None) -> KeyPolicy:
        """The policy of an operator started with these ``--shared-key-prefix`` values and election name;
        ValueError names a prefix that is malformed or would reach the operator's own keys."""
        reserved = (OPERATOR_KEY_PREFIX,) if election is None else (OPERATOR_KEY_PREFIX, election)
        prefixes = []
        for text in shared:
            prefix = text.rstrip("/")
            if not prefix.startswith("/") or "//" in prefix:
                raise ValueError(f"--shared-key-prefix {text!r} must be an absolute key prefix like /jobs")
            if any(overlaps(prefix, own) for own in reserved) or overlaps(prefix, DEFAULT_KEY_PREFIX):
                raise ValueError(
                    f"--shared-key-prefix {text!r} overlaps the operator's keys or the namespaces' own"
                )
            prefixes.append(prefix)
        return cls(tuple(prefixes), reserved)

    def check(self, namespace: str, key: str) -> None:
        """Raise :class:`KeyNotAllowed` unless a lock in ``namespace`` may use ``key``."""
        own = namespace_prefix(namespace)
        allowed = (own, *self.shared)
        if not any(key.startswith(prefix + "/") for prefix in allowed):
            where = " or ".join(f"{prefix}/" for prefix in allowed)
            raise KeyNotAllowed(
                f"spec.key {key!r} is not allowed: a lock in namespace {namespace} keeps "
                f"its key under {where}"
            )
        for own_key in self.reserved:
            if overlaps(key, own_key):
                raise KeyNotAllowed(f"spec.key {key!r} is not allowed: it overlaps the operator's {own_key}")


@dataclass(frozen=True)
class LockKey:
    """The key one lock uses, where, and since when (the older of two overlapping locks keeps its key).
    ``also``: the other places that are the same etcd (the other endpoints of an etcd the user runs)."""

    ref: Ref
    place: Place
    key: str
    created: str
    also: tuple[Place, ...] = ()

    @property
    def age(self) -> tuple[str, Ref]:
        return (self.created, self.ref)

    @property
    def places(self) -> tuple[Place, ...]:
        return (self.place, *self.also)


class LockKeys:
    """The keys of the DistributedLocks the operator knows, to find those that would share contenders.

    Indexed per etcd by key, with the distinct keys kept sorted, so that finding the keys that overlap one
    costs a lookup per level of the key plus a binary search (keys under ``KEY/`` sort together), not a
    look at every lock: every pod and every lock is checked, and there may be thousands of both.
    """

    def __init__(self) -> None:
        self._locks: dict[Ref, LockKey] = {}
        self._by_key: dict[tuple[Place, str], dict[Ref, LockKey]] = {}
        self._sorted: dict[Place, list[str]] = {}

    def set(self, entry: LockKey) -> None:
        known = self._locks.get(entry.ref)
        if known == entry:
            return
        if known is not None:
            self._drop(known)
        self._locks[entry.ref] = entry
        for place in entry.places:
            holders = self._by_key.setdefault((place, entry.key), {})
            if not holders:
                bisect.insort(self._sorted.setdefault(place, []), entry.key)
            holders[entry.ref] = entry

    def forget(self, ref: Ref) -> list[Ref]:
        """Drop a lock; the locks its key kept out (they may be served now)."""
        gone = self._locks.pop(ref, None)
        if gone is None:
            return []
        self._drop(gone)
        return list(dict.fromkeys(e.ref for e in self._overlapping_any(gone)))

    def check(self, entry: LockKey) -> None:
        """Raise :class:`KeyConflict` if an older lock in the same etcd uses an overlapping key."""
        for other in self._overlapping_any(entry):
            if other.ref != entry.ref and other.age < entry.age:
                raise KeyConflict(
                    f"spec.key {entry.key!r} overlaps {other.key!r}, the key of DistributedLock "
                    f"{other.ref[0]}/{other.ref[1]}: they would share contenders"
                )

    def _drop(self, entry: LockKey) -> None:
        for place in entry.places:
            holders = self._by_key[(place, entry.key)]
            del holders[entry.ref]
            if not holders:
                del self._by_key[(place, entry.key)]
                keys = self._sorted[place]
                del keys[bisect.bisect_left(keys, entry.key)]

    def _overlapping_any(self, entry: LockKey) -> Iterator[LockKey]:
        """The locks in any of ``entry``'s places whose key overlaps its key."""
        for place in entry.places:
            yield from self._overlapping(place, entry.key)

    def _overlapping(self, place: Place, key: str) -> Iterator[LockKey]:
        """The locks in ``place`` whose key equals ``key``, contains it or lies inside it."""
        parts = key.split("/")
        for level in range(1, len(parts) + 1):
            yield from self._by_key.get((place, "/".join(parts[:level])), {}).values()
        keys, inside = self._sorted.get(place, []), key + "/"
        index = bisect.bisect_left(keys, inside)
        while index < len(keys) and keys[index].startswith(inside):
            yield from self._by_key[(place, keys[index])].values()
            index += 1
