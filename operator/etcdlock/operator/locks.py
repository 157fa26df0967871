"""DistributedLock: what its spec means and what its status says, as plain functions (no kopf here).

The status is computed from the keys under the lock's etcd prefix, whoever wrote them (pods, the CLI,
library users, etcdctl): the first ``permits`` keys by create revision hold it, the rest wait in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from etcdlock.etcd.keys import Contender
from etcdlock.operator.conditions import condition
from etcdlock.operator.config import DEFAULT_SECRET_RECHECK_INTERVAL
from etcdlock.operator.errors import InvalidSpec, OutsideEtcdNotAllowed
from etcdlock.operator.lockkeys import KeyPolicy, LockKey, LockKeys, Place
from etcdlock.operator.names import DEFAULT_KEY_PREFIX
from etcdlock.operator.outside import Address, OutsideEtcd
from etcdlock.operator.queueview import QueueView

# The status lists the head of each list; holderCount and waiterCount count them all.
MAX_LISTED_HOLDERS = 50
MAX_LISTED_WAITERS = 50
MIN_TTL, MAX_TTL = 5, 3600


@dataclass(frozen=True)
class OutsideRules:
    """Whether locks may name an etcd of their own (``spec.etcd``, ``allowed``), never the operator's own
    (``own_etcd``: its endpoints), and how often the Secret of such a lock is read again (``recheck``,
    seconds: a rotated Secret is used from then on, a deleted one no more)."""

    allowed: bool = True
    own_etcd: frozenset[Address] = frozenset()
    recheck: float = float(DEFAULT_SECRET_RECHECK_INTERVAL)

    def check(self, etcd: OutsideEtcd) -> None:
        """:class:`OutsideEtcdNotAllowed` unless the operator may reach ``etcd`` for a lock (or a pod)."""
        if not self.allowed:
            raise OutsideEtcdNotAllowed(
                "spec.etcd is turned off on this operator (--allow-outside-etcd=false): use clusterRef, or "
                "neither (the operator's etcd)"
            )
        own = set(etcd.addresses) & self.own_etcd
        if own:
            host, port = sorted(own)[0]
            raise OutsideEtcdNotAllowed(
                f"spec.etcd names the operator's own etcd ({host}:{port}): leave spec.etcd out to use it"
            )


@dataclass(frozen=True)
class LockRules:
    """What the operator allows every lock: the keys (``keys``), the shortest TTL of a pod's lease
    (``pod_ttl_floor``: a pod's hold must outlive an operator failover, whatever ``ttlSeconds`` says), and
    which etcds a lock may name in ``spec.etcd`` (``outside``)."""

    keys: KeyPolicy = field(default_factory=KeyPolicy)
    pod_ttl_floor: int = MIN_TTL
    outside: OutsideRules = field(default_factory=OutsideRules)

    def check_etcd(self, etcd: OutsideEtcd) -> None:
        """:class:`OutsideEtcdNotAllowed` unless a lock may name this etcd in ``spec.etcd``."""
        self.outside.check(etcd)


@dataclass(frozen=True)
class LockSpec:
    """A validated DistributedLock spec."""

    key: str
    permits: int
    ttl_seconds: int
    cluster: str | None
    etcd: OutsideEtcd | None = None

    @property
    def where(self) -> str | None:
        """Where the lock lives, as a pod's ``etcdlock.io/cluster`` says it: an EtcdCluster's name, an etcd
        the user runs (see :attr:`OutsideEtcd.where`), or None for the operator's etcd."""
        return self.etcd.where if self.etcd is not None else self.cluster

    def places(self, namespace: str) -> tuple[Place, ...]:
        """The places (see :mod:`etcdlock.operator.lockkeys`) that are this lock's etcd."""
        if self.etcd is not None:
            return tuple(dict.fromkeys(("etcd", host, str(port)) for host, port in self.etcd.addresses))
        return ((namespace, self.cluster) if self.cluster else None,)

    def pod_ttl(self, rules: LockRules) -> int:
        """The TTL of the leases the operator grants pods for this lock."""
        return max(self.ttl_seconds, rules.pod_ttl_floor)

    @classmethod
    def parse(cls, namespace: str, name: str, spec: Any) -> LockSpec:
        """Check the spec as the CRD schema does (it may have been stored before the schema existed)."""
        if not isinstance(spec, dict):
            raise InvalidSpec("spec must be an object")
        permits = spec.get("permits", 1)
        if not isinstance(permits, int) or isinstance(permits, bool) or permits < 1:
            raise InvalidSpec(f"spec.permits must be an integer >= 1, not {permits!r}")
        ttl = spec.get("ttlSeconds", 30)
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not MIN_TTL <= ttl <= MAX_TTL:
            raise InvalidSpec(f"spec.ttlSeconds must be an integer from {MIN_TTL} to {MAX_TTL}, not {ttl!r}")
        key = spec.get("key") or f"{DEFAULT_KEY_PREFIX}/{namespace}/{name}"
        if not isinstance(key, str) or key.endswith("/") or "//" in key:
            raise InvalidSpec(f"spec.key must be a lock name without empty segments, not {key!r}")
        cluster = (spec.get("clusterRef") or {}).get("name")
        etcd = OutsideEtcd.parse(spec["etcd"]) if spec.get("etcd") is not None else None
        if cluster and etcd is not None:
            raise InvalidSpec(
                "spec.clusterRef and spec.etcd both name where the lock lives: give one of them"
            )
        return cls(key=key, permits=permits, ttl_seconds=ttl, cluster=cluster, etcd=etcd)


def _entry(contender: Contender) -> dict[str, Any]:
    info = contender.info
    entry: dict[str, Any] = {
        "holder": info.holder or contender.key,
        "key": contender.key,
        "fencingToken": contender.fencing_token,
        "leaseID": format(contender.lease, "x"),
    }
    return entry


def lock_status(spec: LockSpec, queue: QueueView, generation: int, pod_ttl: int) -> dict[str, Any]:
    """The status of a lock whose queue is ``queue``: the first holders and waiters listed (with when each
    holder was first seen holding), all of them counted. ``pod_ttl`` is the TTL pods' leases get (see
    :meth:`LockSpec.pod_ttl`); the message says when it is longer than ``ttlSeconds``."""
    held, waiting = len(queue.holders), len(queue.waiters)
    message = f"{held}/{spec.permits} held, {waiting} waiting at {spec.key}"
    if pod_ttl > spec.ttl_seconds:
        message += (
            f"; pods' leases last {pod_ttl}s, not ttlSeconds {spec.ttl_seconds}: a pod's hold must outlive "
            "an operator failover"
        )
    holders = [{**_entry(h), "since": queue.since[h.key]} for h in queue.first_holders(MAX_LISTED_HOLDERS)]
    return {
        "holders": holders,
        "holderCount": held,
        "waiters": [_entry(w) for w in queue.first_waiters(MAX_LISTED_WAITERS)],
        "waiterCount": waiting,
        "podLeaseTTLSeconds": pod_ttl,
        "phase": "Held" if held else "Free",
        "observedGeneration": generation,
        "conditions": [condition("Ready", "True", "Held" if held else "Free", message, generation)],
    }


def error_status(reason: str, message: str, generation: int) -> dict[str, Any]:
    """The status of a lock that cannot be served (invalid spec, etcd unreachable, ...)."""
    return {
        "holders": [],
        "holderCount": 0,
        "waiters": [],
        "waiterCount": 0,
        "phase": "Error",
        "observedGeneration": generation,
        "conditions": [condition("Ready", "False", reason, message, generation)],
    }


class Locks:
    """Every DistributedLock's spec as the operator serves it: parsed, and its key checked against the
    rules and against every other lock (:mod:`etcdlock.operator.lockkeys`); and the latest body of each,
    so that a pod asking for a lock the operator knows costs no read of it."""

    def __init__(self, rules: LockRules) -> None:
        self.rules = rules
        self.keys = LockKeys()
        self._bodies: dict[tuple[str, str], Mapping[str, Any]] = {}

    def known(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """The lock's body as last listed or served here, or None if the operator has not seen it."""
        return self._bodies.get((namespace, name))

    def served(self, body: Mapping[str, Any]) -> LockSpec:
        """The spec of the lock ``body``; :class:`InvalidSpec` (or its :class:`KeyNotAllowed`,
        :class:`KeyConflict`) says why it cannot be served."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta["name"])
        self._bodies[(namespace, name)] = body
        spec = LockSpec.parse(namespace, name, body.get("spec"))
        if spec.etcd is not None:
            self.rules.check_etcd(spec.etcd)
        self.rules.keys.check(namespace, spec.key)
        place, *also = spec.places(namespace)
        created = str(meta.get("creationTimestamp") or "")
        entry = LockKey((namespace, name), place, spec.key, created, tuple(also))
        self.keys.set(entry)
        self.keys.check(entry)
        return spec

    def remember(self, bodies: Iterable[Mapping[str, Any]]) -> None:
        """Learn the keys of existing locks (at start-up, before any is served: the oldest keeps its key
        whatever order the locks are handled in)."""
        for body in bodies:
            with contextlib.suppress(InvalidSpec):
                self.served(body)

    def forget(self, namespace: str, name: str) -> list[tuple[str, str]]:
        """Drop a deleted lock; the locks its key kept out, which may be served now."""
        self._bodies.pop((namespace, name), None)
        return self.keys.forget((namespace, name))


class LockChanges:
    """Wakes the pods (and lock services) that wait for a DistributedLock to be created or fixed."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], asyncio.Event] = {}

    def changed(self, ref: tuple[str, str]) -> None:
        event = self._events.pop(ref, None)
        if event is not None:
            event.set()

    async def wait(self, ref: tuple[str, str], timeout: float) -> None:
        event = self._events.setdefault(ref, asyncio.Event())
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancellation that arrives as the
        # event is set, and the waiter's task would then never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
