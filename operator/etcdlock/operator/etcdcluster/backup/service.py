"""The backup side of the EtcdCluster controller: one :class:`~.runner.BackupRunner` task per cluster
with ``spec.backup``, the store settings read from its Secret, and what the status says of it (the
``backup`` field and the BackupReady condition).

The Secret is read when a runner starts and again every :data:`SECRET_REFRESH` seconds (a rotated key
reaches the runner's next cycle). A Secret that is missing, or a store that cannot be opened, is a
BackupReady False condition and a Warning; nothing is written to the store until it is right.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from etcdlock.operator.conditions import Condition, condition
from etcdlock.operator.credentials import TlsFiles
from etcdlock.operator.etcdcluster.backup.errors import BackupError
from etcdlock.operator.etcdcluster.backup.runner import BackupRunner, Report, Targets
from etcdlock.operator.etcdcluster.backup.settings import BackupSpec, StoreSpec
from etcdlock.operator.events import EventRecorder
from etcdlock.operator.kube import ApiUnavailable, Kube
from etcdlock.operator.metrics import Metrics

Obj = dict[str, Any]
Key = tuple[str, str]

SECRET_REFRESH = 30.0
REQUEST = "etcdlock.io/backup"


async def store_settings(kube: Kube, namespace: str, store: StoreSpec) -> dict[str, str]:
    """The store's settings from its Secret (none named: none). Raises :class:`BackupError`
    (CredentialsMissing) if the Secret is not there."""
    if store.secret is None:
        return {}
    try:
        secret = await kube.call(kube.core.read_namespaced_secret, store.secret, namespace)
    except ApiUnavailable as exc:
        raise BackupError(
            "CredentialsUnreadable", f"Secret {namespace}/{store.secret} cannot be read: {exc}"
        ) from None
    if secret is None:
        raise BackupError(
            "CredentialsMissing",
            f"Secret {namespace}/{store.secret} (the store's credentials) does not exist",
        )
    data = secret.get("data") or {}
    return {key: base64.b64decode(value).decode() for key, value in data.items()}


@dataclass
class _Running:
    runner: BackupRunner
    task: asyncio.Task[None]
    read_at: float


class ClusterBackups:
    """Runs the backups of every cluster this replica reconciles (see the module docstring)."""

    def __init__(self, kube: Kube, events: EventRecorder, metrics: Metrics | None = None) -> None:
        self._kube = kube
        self._events = events
        self._metrics = metrics
        self._running: dict[Key, _Running] = {}
        self._bodies: dict[Key, Mapping[str, Any]] = {}
        self._reports: dict[Key, Report] = {}
        self._problems: dict[Key, tuple[str, str]] = {}

    async def close(self) -> None:
        for key in list(self._running):
            await self.stop(key)

    async def stop(self, key: Key) -> None:
        running = self._running.pop(key, None)
        if running is not None:
            running.task.cancel()
            await asyncio.gather(running.task, return_exceptions=True)

    async def forget(self, key: Key) -> None:
        await self.stop(key)
        self._reports.pop(key, None)
        self._bodies.pop(key, None)
        self._problems.pop(key, None)

    async def keep(
        self,
        body: Mapping[str, Any],
        spec: BackupSpec | None,
        snapshot_from: list[str],
        endpoints: list[str],
        tls: TlsFiles | None = None,
    ) -> None:
        """Start, update or stop the cluster's runner, as the spec and the members say (``tls``: the client
        certificate of a cluster with TLS)."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        self._bodies[key] = body
        if spec is None:
            await self.stop(key)
            return
        running = self._running.get(key)
        if running is not None and running.task.done():
            await self.stop(key)  # ended by a surprise it could not tell (logged): started again
            running = None
        targets = Targets(
            snapshot_from=snapshot_from,
            endpoints=endpoints,
            request=str((meta.get("annotations") or {}).get(REQUEST) or ""),
            settings=running.runner.targets.settings if running is not None else {},
            tls=tls,
        )
        if running is None or time.monotonic() - running.read_at >= SECRET_REFRESH:
            try:
                targets.settings = await store_settings(self._kube, key[0], spec.store)
            except BackupError as exc:
                self._tell(key, exc.reason, str(exc))
                if running is not None and exc.reason == "CredentialsUnreadable":
                    return  # the API did not answer: the runner goes on with the settings it has
                await self.stop(key)
                return
            if running is not None:
                running.read_at = time.monotonic()
        self._problems.pop(key, None)
        if running is None:
            report = self._reports.setdefault(key, Report(served=self._served(body)))
            runner = BackupRunner(
                spec,
                targets,
                report,
                lambda *event: self._notify(key, *event),
                lambda kind, size: self._record(key, kind, size),
            )
            task = asyncio.create_task(runner.run(), name=f"backup-{key[0]}-{key[1]}")
            self._running[key] = _Running(runner, task, time.monotonic())
        else:
            running.runner.update(spec, targets)

    def status(
        self, key: Key, previous: Obj, generation: int, paused: str = ""
    ) -> tuple[Obj, Condition] | None:
        """The ``backup`` status and the BackupReady condition (None: no backup is configured). ``paused``:
        why no backup is taken now (the cluster is being restored, or lost its quorum)."""
        report = self._reports.get(key)
        problem = self._problems.get(key) or (report.problem if report else None)
        if report is None and problem is None:
            return None
        if paused:
            problem = ("Paused", paused)
        shown: Obj = dict(previous.get("backup") or {})
        if report is not None:
            if report.full:
                shown["lastFull"] = report.full
            if report.delta:
                shown["lastDelta"] = report.delta
            if report.served:
                shown["lastRequest"] = report.served
        if problem is not None:
            ready = condition("BackupReady", "False", problem[0], problem[1], generation)
        elif report is not None and report.full:
            ready = condition("BackupReady", "True", "BackedUp", _summary(shown), generation)
        else:
            ready = condition(
                "BackupReady", "False", "Pending", "the first full snapshot is being taken", generation
            )
        return shown, ready

    def _record(self, key: Key, kind: str, size: int) -> None:
        if self._metrics is not None:
            self._metrics.backed_up(key[0], key[1], kind, size)

    def _served(self, body: Mapping[str, Any]) -> str:
        return str(((body.get("status") or {}).get("backup") or {}).get("lastRequest") or "")

    def _tell(self, key: Key, reason: str, message: str) -> None:
        if self._problems.get(key) != (reason, message):
            self._notify(key, "Warning", "BackupFailed", message)
        self._problems[key] = (reason, message)
        self._reports.setdefault(key, Report())

    def _notify(self, key: Key, kind: str, reason: str, message: str) -> None:
        body = self._bodies.get(key)
        if body is None:
            return
        record = self._events.warn if kind == "Warning" else self._events.info
        record(body, reason, message)


def _summary(shown: Obj) -> str:
    full = shown.get("lastFull") or {}
    text = f"last full snapshot at revision {full.get('revision')} ({full.get('time')})"
    delta = shown.get("lastDelta")
    if delta:
        text += f", last delta at revision {delta.get('revision')} ({delta.get('time')})"
    return text
