"""A full snapshot: streamed from one member through etcd's snapshot API into the store, checked against
the SHA-256 etcd appends, never held whole in memory; its manifest is written only once it checked out."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from etcdlock.etcd import EtcdClient
from etcdlock.operator.etcdcluster.backup.catalog import Full, cluster_id, full_object
from etcdlock.operator.etcdcluster.backup.errors import BackupError
from etcdlock.operator.etcdcluster.backup.store import BackupStore

TRAILER = hashlib.sha256().digest_size


class EtcdChecksum:
    """Follows a stream whose last 32 bytes are the SHA-256 of the rest (etcd's snapshot, as etcd sends it
    and as ``etcdutl snapshot restore`` expects it), and the SHA-256 of the whole stream."""

    def __init__(self) -> None:
        self._body = hashlib.sha256()
        self._whole = hashlib.sha256()
        self._held = b""
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._whole.update(chunk)
        self.size += len(chunk)
        data = self._held + chunk
        self._body.update(data[:-TRAILER])
        self._held = data[-TRAILER:]

    @property
    def intact(self) -> bool:
        return self.size > TRAILER and self._held == self._body.digest()

    @property
    def sha256(self) -> str:
        return self._whole.hexdigest()


async def take_full(member: EtcdClient, store: BackupStore) -> Full:
    """Snapshot the member ``member`` is connected to (one endpoint) into ``store``. The revision recorded
    is the member's own before the snapshot starts: the data holds at least that. A member without a
    leader is refused: cut off from the quorum, it may lack acknowledged writes."""
    answer = await member.status()
    if not answer.leader:
        raise BackupError("EtcdUnavailable", f"etcd at {member.current} has no leader: no snapshot from it")
    cluster, revision = cluster_id(answer.header.cluster_id), int(answer.header.revision)
    checksum = EtcdChecksum()

    async def checked() -> AsyncIterator[bytes]:
        async for chunk in member.snapshot():
            checksum.update(chunk)
            yield chunk
        if not checksum.intact:
            raise BackupError(
                "ChecksumMismatch", f"the snapshot from {member.current} does not match etcd's checksum"
            )

    await store.put_stream(full_object(cluster, revision), checked())
    moment = datetime.now(UTC)
    # Read once the stream ended: the snapshot holds nothing past it (for a restore to a revision).
    after = int((await member.status()).header.revision)
    full = Full(cluster, revision, moment, checksum.size, checksum.sha256, revision_max=after)
    await store.put_json(full.manifest_object, full.manifest())
    return full
