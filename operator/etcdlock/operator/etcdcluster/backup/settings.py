"""What ``spec.backup``, ``spec.restore`` and ``spec.recovery`` of an EtcdCluster mean, checked.

A store is a URL (``s3://bucket/prefix``, ``gs://bucket/prefix``, ``az://container/prefix``,
``file:///path``), an optional endpoint (S3-compatible stores such as MinIO) and an optional Secret in the
cluster's namespace whose keys are the store's settings (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``GOOGLE_SERVICE_ACCOUNT_KEY``, ``AZURE_STORAGE_ACCOUNT_KEY``...). Without a Secret the store's own
environment applies (workload identity, instance credentials).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

from etcdlock.operator.errors import InvalidSpec

SCHEMES = ("s3", "gs", "az", "file")
DEFAULT_FULL_INTERVAL = "1h"
DEFAULT_DELTA_INTERVAL = "5s"
DEFAULT_KEEP = 7


@dataclass(frozen=True)
class StoreSpec:
    """Where backups live, and how to reach it."""

    url: str
    endpoint: str | None = None
    secret: str | None = None

    @classmethod
    def parse(cls, where: str, value: Any) -> StoreSpec:
        if not isinstance(value, dict) or not isinstance(value.get("url"), str):
            raise InvalidSpec(f"{where}.url is required: s3://bucket/prefix, gs://, az:// or file:///path")
        url = value["url"]
        parsed = urlparse(url)
        if parsed.scheme not in SCHEMES or not (parsed.netloc or parsed.path.strip("/")):
            raise InvalidSpec(f"{where}.url must be s3://, gs://, az:// or file:///path, not {url!r}")
        endpoint = value.get("endpoint")
        if endpoint is not None and (
            not isinstance(endpoint, str) or urlparse(endpoint).scheme not in ("http", "https")
        ):
            raise InvalidSpec(f"{where}.endpoint must be an http(s) URL, not {endpoint!r}")
        secret = (value.get("secretRef") or {}).get("name")
        if secret is not None and (not isinstance(secret, str) or not secret):
            raise InvalidSpec(f"{where}.secretRef.name must be a Secret's name")
        return cls(url=url, endpoint=endpoint, secret=secret)

    @property
    def scheme(self) -> str:
        return urlparse(self.url).scheme


@dataclass(frozen=True)
class BackupSpec:
    """Full snapshots every ``full_interval`` seconds, deltas flushed every ``delta_interval``, the newest
    ``keep`` full snapshots kept with their deltas."""

    store: StoreSpec
    full_interval: float
    delta_interval: float
    keep: int


@dataclass(frozen=True)
class RestoreSpec:
    """Bootstrap from the backup in ``store``: up to ``revision``, or to what was flushed by ``time``
    (RFC 3339), or the latest."""

    store: StoreSpec
    revision: int | None = None
    time: datetime | None = None


def parse_backup(value: Any, seconds: Callable[[str], float]) -> BackupSpec | None:
    """``spec.backup`` (``seconds`` turns a duration such as 5s or 1h into seconds)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidSpec("spec.backup must be an object")
    store = StoreSpec.parse("spec.backup.store", value.get("store"))
    full = _duration("spec.backup.fullInterval", value.get("fullInterval", DEFAULT_FULL_INTERVAL), seconds)
    delta = _duration(
        "spec.backup.deltaInterval", value.get("deltaInterval", DEFAULT_DELTA_INTERVAL), seconds
    )
    keep = value.get("keep", DEFAULT_KEEP)
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise InvalidSpec(f"spec.backup.keep must be a number of full snapshots >= 1, not {keep!r}")
    if full < 60 or delta < 1:
        raise InvalidSpec("spec.backup.fullInterval must be at least 1m and deltaInterval at least 1s")
    return BackupSpec(store=store, full_interval=full, delta_interval=delta, keep=keep)


def parse_restore(value: Any, backup: BackupSpec | None) -> RestoreSpec | None:
    """``spec.restore``; its store defaults to the backup's."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidSpec("spec.restore must be an object")
    if value.get("store") is not None:
        store = StoreSpec.parse("spec.restore.store", value["store"])
    elif backup is not None:
        store = backup.store
    else:
        raise InvalidSpec("spec.restore.store is required when spec.backup is not set")
    revision, moment = value.get("revision"), value.get("time")
    if revision is not None and moment is not None:
        raise InvalidSpec("spec.restore takes a revision or a time, not both")
    if revision is not None and (not isinstance(revision, int) or isinstance(revision, bool) or revision < 1):
        raise InvalidSpec(f"spec.restore.revision must be a revision >= 1, not {revision!r}")
    when = None
    if moment is not None:
        try:
            when = datetime.fromisoformat(str(moment).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidSpec(f"spec.restore.time must be an RFC 3339 time, not {moment!r}") from None
        if when.tzinfo is None:
            raise InvalidSpec(f"spec.restore.time must name its time zone (Z or +01:00), not {moment!r}")
    return RestoreSpec(store=store, revision=revision, time=when)


def parse_recovery(value: Any) -> bool:
    """``spec.recovery.automatic``: rebuild from the latest backup when a quorum's data is gone."""
    automatic = (value or {}).get("automatic", False) if isinstance(value, dict) or value is None else None
    if not isinstance(automatic, bool):
        raise InvalidSpec("spec.recovery.automatic must be true or false")
    return automatic


def _duration(where: str, value: Any, seconds: Callable[[str], float]) -> float:
    try:
        return seconds(value) if isinstance(value, str) else seconds("")
    except InvalidSpec:
        raise InvalidSpec(f"{where} must look like 5s, 10m or 1h, not {value!r}") from None
