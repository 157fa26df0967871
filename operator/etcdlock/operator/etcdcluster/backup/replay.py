"""Replaying deltas into a restored cluster, in revision order: consecutive events on distinct keys go in
one transaction (etcd takes a key once per transaction; their order among themselves does not matter).

A put keeps its lease: a lease the snapshot did not hold (granted after it) is granted again under its ID
with :data:`REPLAY_LEASE_TTL`, so a lock key replayed from a delta is released by etcd itself unless its
owner comes back and keeps the lease alive; no lease-bound key outlives its owner because of a restore.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from etcdlock.etcd import EtcdClient
from etcdlock.etcd.requests import delete_op, put_op
from etcdlock.operator.etcdcluster.backup.catalog import RestorePlan
from etcdlock.operator.etcdcluster.backup.store import BackupStore

REPLAY_LEASE_TTL = 60
MAX_OPS = 128  # etcd's default --max-txn-ops


@dataclass(frozen=True)
class Replayed:
    """The last revision of the backup now in the cluster, and how many events were replayed."""

    revision: int
    events: int


async def replay(
    client: EtcdClient, store: BackupStore, plan: RestorePlan, before: datetime | None = None
) -> Replayed:
    """Apply the plan's deltas up to ``plan.upto`` (or the deltas flushed by ``before``). An event below
    the last revision applied (the snapshot holds its revision; two deltas may overlap, written by two
    leaders one after the other) is skipped: replaying it after later ones would set a key back. Events
    of that last revision are applied again (a flush may split a revision's events): that changes
    nothing."""
    reached, count = plan.full.revision, 0
    applied = plan.full.revision
    leases: set[int] = set()
    for delta in plan.deltas:
        document = await store.read_json(delta.object)
        if before is not None and datetime.fromisoformat(document["time"]) > before:
            break
        batch: list[dict[str, Any]] = []
        keys: set[str] = set()
        for event in document["events"]:
            if plan.upto is not None and event["r"] > plan.upto:
                break
            if event["r"] < applied:
                continue
            if event["k"] in keys or len(batch) >= MAX_OPS:
                await _apply(client, batch, leases)
                batch, keys = [], set()
            batch.append(event)
            keys.add(event["k"])
            count += 1
        if batch:
            await _apply(client, batch, leases)
        applied = max([applied, *(event["r"] for event in batch)])
        reached = max(reached, min(document["last"], plan.upto or document["last"]))
        if plan.upto is not None and document["last"] >= plan.upto:
            break
    return Replayed(revision=reached, events=count)


async def _apply(client: EtcdClient, events: list[dict[str, Any]], leases: set[int]) -> None:
    ops = []
    for event in events:
        key = base64.b64decode(event["k"])
        if event.get("d"):
            ops.append(delete_op(key))
            continue
        lease = int(event.get("l") or 0)
        if lease and lease not in leases:
            if await client.time_to_live(lease) < 0:
                await client.grant(REPLAY_LEASE_TTL, lease)
            leases.add(lease)
        ops.append(put_op(key, base64.b64decode(event["v"]), lease))
    await client.txn([], ops)
