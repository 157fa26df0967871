"""A cluster bootstrapped from a backup, as the controller drives it, in two steps recorded in the
status (``status.restore``), so that an operator restarted half-way goes on where it was:

1. :func:`prepare`: the restore is planned (which full snapshot every member restores, under which new
   cluster token) before any member exists; the members' init containers restore that snapshot
   (:mod:`.member`). Phase ``Restoring``.
2. :func:`finish`: once the members answer with a quorum, the deltas after that snapshot are replayed up
   to the point asked for (:mod:`.replay`); then the keys are counted. Phase ``Restored``. Until then the
   cluster is not Available.

Replaying again after an interruption gives the same keys (see :mod:`.catalog`), so :func:`finish` may
run more than once.
"""

from __future__ import annotations

import hashlib
from typing import Any

from etcdlock import clock
from etcdlock.etcd import EtcdClient
from etcdlock.operator.etcdcluster.backup.catalog import Full, NothingToRestore, plan, plan_from
from etcdlock.operator.etcdcluster.backup.errors import BackupError
from etcdlock.operator.etcdcluster.backup.replay import replay
from etcdlock.operator.etcdcluster.backup.runner import read_catalog
from etcdlock.operator.etcdcluster.backup.service import store_settings
from etcdlock.operator.etcdcluster.backup.settings import RestoreSpec
from etcdlock.operator.etcdcluster.backup.store import BackupStore
from etcdlock.operator.kube import Kube

Obj = dict[str, Any]

RESTORING, RESTORED = "Restoring", "Restored"


async def _open(kube: Kube, namespace: str, restore: RestoreSpec) -> BackupStore:
    return BackupStore(restore.store, await store_settings(kube, namespace, restore.store))


async def prepare(
    kube: Kube,
    namespace: str,
    restore: RestoreSpec,
    token: str,
    reason: str,
    cluster: str | None = None,
    corrupt: set[str] | None = None,
) -> Obj:
    """The ``status.restore`` record of a restore about to start. The snapshot's checksum is checked here
    first (streamed, not kept): a snapshot that does not match is passed over for the next older one, so
    that no member starts on it. Raises :class:`BackupError` (BackupNotFound when the store holds nothing
    that fits, ChecksumMismatch when nothing that fits is intact). ``cluster``: only that etcd cluster's
    backups (a rebuild restores its own); ``corrupt``: snapshots found corrupt before (not downloaded
    again; those found now are added)."""
    store = await _open(kube, namespace, restore)
    catalog = await read_catalog(store)
    known_corrupt = corrupt if corrupt is not None else set()
    skipped: list[str] = []
    while True:
        try:
            chosen = plan(catalog, restore.revision, restore.time, cluster)
        except NothingToRestore as exc:
            if skipped:
                listed = ", ".join(skipped)
                message = f"{store}: {listed} do not match their checksums, and nothing older fits"
                raise BackupError("ChecksumMismatch", message) from None
            raise BackupError("BackupNotFound", f"{store}: {exc}") from None
        checked = f"{store}/{chosen.full.object}@{chosen.full.sha256}"
        if checked not in known_corrupt and await _intact(store, chosen.full):
            break
        known_corrupt.add(checked)
        skipped.append(chosen.full.object)
        catalog.fulls.remove(chosen.full)
    record: Obj = {
        "phase": RESTORING,
        "reason": reason,
        "store": restore.store.url,
        "snapshot": chosen.full.object,
        "sha256": chosen.full.sha256,
        "snapshotRevision": chosen.full.revision,
        "token": token,
        "startedAt": clock.now(),
    }
    if restore.revision is not None:
        record["toRevision"] = restore.revision
    if restore.time is not None:
        record["toTime"] = restore.time.isoformat()
    if skipped:
        record["skipped"] = skipped
    return record


async def _intact(store: BackupStore, full: Full) -> bool:
    digest = hashlib.sha256()
    async for chunk in store.stream(full.object):
        digest.update(chunk)
    return digest.hexdigest() == full.sha256


async def finish(kube: Kube, namespace: str, restore: RestoreSpec, record: Obj, client: EtcdClient) -> Obj:
    """Replay the deltas after the recorded snapshot and count the keys: the record, Restored."""
    store = await _open(kube, namespace, restore)
    catalog = await read_catalog(store)
    full = next((f for f in catalog.fulls if f.object == record["snapshot"]), None)
    if full is None:
        raise BackupError("BackupNotFound", f"{store}/{record['snapshot']} is gone from the store")
    chosen = plan_from(catalog, full, restore.revision)
    replayed = await replay(client, store, chosen, restore.time)
    keys = (await client.range(b"\0", b"\0", count_only=True)).count
    done: Obj = {**record, "phase": RESTORED, "revision": replayed.revision, "events": replayed.events}
    done.update(keys=int(keys), finishedAt=clock.now())
    if chosen.gap is not None:
        done["gapAfter"] = chosen.gap
    return done
