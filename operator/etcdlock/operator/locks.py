"""DistributedLock: what its spec means and what its status says, as plain functions (no kopf here).

The status is computed from the keys under the lock's etcd prefix, whoever wrote them (pods, the CLI,
library users, etcdctl): the first ``permits`` keys by create revision hold it, the rest wait in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from etcdlock.etcd.keys import Contender
from etcdlock.operator.names import DEFAULT_KEY_PREFIX

MAX_LISTED_WAITERS = 50
MIN_TTL, MAX_TTL = 5, 3600


class InvalidSpec(ValueError):
    """The spec cannot be served; the message names the field (it becomes the Ready condition)."""


@dataclass(frozen=True)
class LockSpec:
    """A validated DistributedLock spec."""

    key: str
    permits: int
    ttl_seconds: int
    cluster: str | None

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
        return cls(key=key, permits=permits, ttl_seconds=ttl, cluster=cluster)


def _entry(contender: Contender) -> dict[str, Any]:
    info = contender.info
    entry: dict[str, Any] = {
        "holder": info.holder or contender.key,
        "key": contender.key,
        "fencingToken": contender.fencing_token,
        "leaseID": format(contender.lease, "x"),
    }
    return entry


def lock_status(
    spec: LockSpec, contenders: list[Contender], generation: int, since: dict[str, str]
) -> dict[str, Any]:
    """The status of a lock whose queue is ``contenders`` (in create-revision order).

    ``since`` remembers when each holder key was first seen holding (keys written by etcdctl carry no
    time of their own); it is updated in place.
    """
    holders = contenders[: spec.permits]
    waiters = contenders[spec.permits :]
    now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    for key in [k for k in since if k not in {h.key for h in holders}]:
        del since[key]
    listed = []
    for holder in holders:
        since.setdefault(holder.key, holder.info.acquired or now)
        listed.append({**_entry(holder), "since": since[holder.key]})
    held = bool(holders)
    message = f"{len(holders)}/{spec.permits} held, {len(waiters)} waiting at {spec.key}"
    return {
        "holders": listed,
        "waiters": [_entry(w) for w in waiters[:MAX_LISTED_WAITERS]],
        "waiterCount": len(waiters),
        "phase": "Held" if held else "Free",
        "observedGeneration": generation,
        "conditions": [ready_condition("True", "Held" if held else "Free", message, generation)],
    }


def error_status(reason: str, message: str, generation: int) -> dict[str, Any]:
    """The status of a lock that cannot be served (invalid spec, etcd unreachable, ...)."""
    return {
        "holders": [],
        "waiters": [],
        "waiterCount": 0,
        "phase": "Error",
        "observedGeneration": generation,
        "conditions": [ready_condition("False", reason, message, generation)],
    }


def ready_condition(status: str, reason: str, message: str, generation: int) -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
    }
