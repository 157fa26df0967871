"""Backing up one EtcdCluster, continuously, while this replica leads (:class:`BackupRunner`, one task per
cluster, started and told what changed by the reconcile pass).

A cycle reads the store's catalog, takes a full snapshot if none of this etcd cluster is there, one is
due (``fullInterval``), one was asked for (the annotation ``etcdlock.io/backup``) or the revisions since
the last backup were compacted away, and otherwise goes on from the revision the last backup holds. It
then follows every key (:class:`~.deltas.DeltaRecorder`) and flushes a delta every ``deltaInterval``.
When the next full snapshot is due it flushes, takes it (then applies retention) and starts the next
cycle at once, which follows the keys again from that snapshot's revision: the snapshot may come from a
member behind the one watched, and its deltas must start where it ends. A changed store (spec or
Secret) also starts the next cycle. A failure ends the cycle; it is told once (condition BackupReady
False, a Warning) and the next cycle starts after a pause. Cancelled (the replica stops leading, the spec
drops the backup), it flushes what it holds first, within a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from etcdlock.etcd import Compacted, EtcdClient, EtcdConfig, EtcdError
from etcdlock.operator.credentials import TlsFiles
from etcdlock.operator.etcdcluster.backup.catalog import Catalog, Full, cluster_id, expired
from etcdlock.operator.etcdcluster.backup.deltas import DeltaRecorder, Flushed
from etcdlock.operator.etcdcluster.backup.errors import BackupError
from etcdlock.operator.etcdcluster.backup.settings import BackupSpec
from etcdlock.operator.etcdcluster.backup.snapshot import take_full
from etcdlock.operator.etcdcluster.backup.store import BackupStore

log = logging.getLogger(__name__)

RETRY_PAUSE = 5.0
FINAL_FLUSH_TIMEOUT = 3.0
SNAPSHOT_TIMEOUT = 3600.0

Obj = dict[str, Any]


@dataclass
class Targets:
    """What the reconcile pass tells the runner each time: the members to snapshot from (healthy ones,
    followers first), every member's client URL, the Secret's settings, the last on-demand request."""

    snapshot_from: list[str] = field(default_factory=list)
    endpoints: list[str] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)
    request: str = ""
    tls: TlsFiles | None = None  # the client certificate of a cluster with TLS

    def config(self, endpoints: str | list[str], request_timeout: float) -> EtcdConfig:
        if self.tls is None:
            return EtcdConfig.parse(endpoints, request_timeout=request_timeout)
        return self.tls.config(endpoints, request_timeout)


@dataclass
class Report:
    """What the runner did last, for the status: the last full snapshot and delta, the last request
    served, the problem now (reason, message) if any."""

    full: Obj | None = None
    delta: Obj | None = None
    served: str = ""
    problem: tuple[str, str] | None = None


Notify = Callable[[str, str, str], None]  # (type Normal/Warning, reason, message)
Record = Callable[[str, int], None]  # (full, delta or failure; bytes written): for the metrics


def full_entry(full: Full) -> Obj:
    return {"time": _time(full.time), "revision": full.revision, "size": full.size, "object": full.object}


def delta_entry(flushed: Flushed) -> Obj:
    return {
        "time": _time(flushed.time),
        "revision": flushed.revision,
        "size": flushed.size,
        "object": flushed.object,
    }


async def read_catalog(store: BackupStore) -> Catalog:
    paths = await store.paths()
    return Catalog.of(paths, [await store.read_json(path) for path in Catalog.manifests(paths)])


class BackupRunner:
    """See the module docstring. ``report`` is what the status shows; ``notify`` records Events."""

    def __init__(
        self, spec: BackupSpec, targets: Targets, report: Report, notify: Notify, record: Record | None = None
    ) -> None:
        self.spec = spec
        self.targets = targets
        self.report = report
        self._notify = notify
        self._record = record or (lambda kind, size: None)
        self._wake = asyncio.Event()
        self._force_full = False
        self._restart = False
        self._told: tuple[str, str] | None = None

    def update(self, spec: BackupSpec, targets: Targets) -> None:
        """The latest spec and targets; a new request wakes the runner for a full snapshot now, a changed
        store ends the cycle (the next one opens the new store)."""
        if spec.store != self.spec.store or targets.settings != self.targets.settings:
            self._restart = True
            self._wake.set()
        if targets.request and targets.request != self.report.served:
            self._wake.set()
        self.spec = spec
        self.targets = targets

    async def run(self) -> None:
        while True:
            try:
                await self._cycle()
                continue
            except Compacted as exc:
                log.info("backup: %s; a full snapshot starts over", exc)
                self._force_full = True
                continue
            except BackupError as exc:
                self._fail(exc.reason, str(exc))
            except EtcdError as exc:
                self._fail("EtcdUnavailable", f"etcd: {exc}")
            except TimeoutError:
                self._fail("SnapshotTimeout", f"a full snapshot took longer than {SNAPSHOT_TIMEOUT:.0f} s")
            except Exception as exc:  # a malformed manifest, a store library's surprise: told, not fatal
                log.exception("backup cycle failed")
                self._fail("BackupFailed", f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(RETRY_PAUSE)

    def _fail(self, reason: str, message: str) -> None:
        self._record("failure", 0)
        self.report.problem = (reason, message)
        if self._told != (reason, message):
            self._told = (reason, message)
            self._notify("Warning", "BackupFailed", message)
        log.warning("backup: %s", message)

    def _ok(self) -> None:
        self.report.problem = None
        self._told = None

    def _store(self) -> BackupStore:
        return BackupStore(self.spec.store, self.targets.settings)

    def _due(self, full: Full) -> bool:
        age = (datetime.now(UTC) - full.time).total_seconds()
        requested = bool(self.targets.request) and self.targets.request != self.report.served
        return self._force_full or requested or age >= self.spec.full_interval

    async def _cycle(self) -> None:
        store = self._store()
        if not self.targets.endpoints:
            raise BackupError("EtcdUnavailable", "no member answers")
        config = self.targets.config(self.targets.endpoints, request_timeout=5.0)
        async with EtcdClient(config) as client:
            # Only this cluster's backups count: one it was restored from has revisions of its own.
            current = cluster_id((await client.status()).header.cluster_id)
            catalog = await read_catalog(store)
            mine = [f for f in catalog.fulls if f.cluster == current]
            self._restart = False
            latest = mine[-1] if mine else None
            if latest is not None and self.report.full is None:
                self.report.full = full_entry(latest)
            if latest is None or self._due(latest):
                latest = await self._full(store)
                start = latest.revision + 1
            else:
                start = catalog.resume_after(latest) + 1
            recorder = DeltaRecorder(client, store, latest, start)
            follow = asyncio.create_task(recorder.follow(), name="backup-deltas")
            try:
                while not self._restart:
                    await self._pause(follow)
                    if follow.done():
                        follow.result()
                        raise BackupError("EtcdUnavailable", "the watch of the cluster's keys ended")
                    self._flushed(await recorder.flush())
                    self._ok()
                    if self._due(latest):
                        # Just flushed: the next cycle follows the keys from the new snapshot's revision.
                        await self._full(store)
                        return
                self._restart = False
            finally:
                follow.cancel()
                await asyncio.gather(follow, return_exceptions=True)
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(FINAL_FLUSH_TIMEOUT):
                        self._flushed(await recorder.flush())

    def _flushed(self, flushed: Flushed | None) -> None:
        if flushed is not None:
            self.report.delta = delta_entry(flushed)
            self._record("delta", flushed.size)

    async def _pause(self, follow: asyncio.Task[None]) -> None:
        """Until the next flush is due, the watch ends, or a request comes."""
        self._wake.clear()
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait(
                [follow, waker], timeout=self.spec.delta_interval, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waker.cancel()

    async def _snapshot(self, store: BackupStore) -> Full:
        """A full snapshot from the first healthy member that gives one (followers first)."""
        failure: Exception = BackupError("EtcdUnavailable", "no healthy member to take a snapshot from")
        for url in self.targets.snapshot_from:
            config = self.targets.config(url, request_timeout=10.0)
            try:
                async with asyncio.timeout(SNAPSHOT_TIMEOUT), EtcdClient(config) as member:
                    return await take_full(member, store)
            except (EtcdError, BackupError) as exc:
                if isinstance(exc, BackupError) and exc.reason != "EtcdUnavailable":
                    raise
                log.info("backup: no snapshot from %s: %s", url, exc)
                failure = exc
        raise failure

    async def _full(self, store: BackupStore) -> Full:
        request = self.targets.request
        full = await self._snapshot(store)
        self._force_full = False
        self._record("full", full.size)
        self.report.full = full_entry(full)
        self.report.served = request or self.report.served
        self._ok()
        self._notify(
            "Normal",
            "BackupTaken",
            f"full snapshot at revision {full.revision}, {full.size} bytes, {store}/{full.object}",
        )
        doomed = expired(await read_catalog(store), self.spec.keep, full.cluster)
        if doomed:
            await store.delete(doomed)
            self._notify(
                "Normal", "BackupsDeleted", f"retention (keep {self.spec.keep}) deleted {len(doomed)} objects"
            )
        return full


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
