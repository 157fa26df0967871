"""A member's side of a restore, run by its init container (``etcdlock restore-member``) before etcd
starts: the full snapshot every member of the cluster restores, downloaded and checked, then turned into
the member's data directory by ``etcdutl snapshot restore`` (etcd's disaster-recovery procedure).

A data directory that holds a member already is left alone: a member restarted after the restore keeps
its data, and nothing is ever restored over data that can come back. The data directory appears whole or
not at all (restored next to it, then renamed).
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from etcdlock.operator.etcdcluster.backup.errors import BackupError
from etcdlock.operator.etcdcluster.backup.store import BackupStore


@dataclass(frozen=True)
class MemberBootstrap:
    """The flags of the member's first start, which ``etcdutl snapshot restore`` writes into its data."""

    name: str
    initial_cluster: str
    token: str
    peer_urls: str

    def flags(self) -> list[str]:
        return [
            f"--name={self.name}",
            f"--initial-cluster={self.initial_cluster}",
            f"--initial-cluster-token={self.token}",
            f"--initial-advertise-peer-urls={self.peer_urls}",
        ]


async def restore_member(
    store: BackupStore, snapshot: str, sha256: str, data_dir: Path, member: MemberBootstrap
) -> str:
    """Restore ``snapshot`` (an object of ``store`` whose SHA-256 is ``sha256``) into ``data_dir``;
    returns what was done, in words."""
    if (data_dir / "member").exists():
        return f"{data_dir} holds a member already: nothing restored"
    work = data_dir.with_name(data_dir.name + ".restoring")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        downloaded = work / "snapshot.db"
        digest = hashlib.sha256()
        with downloaded.open("wb") as output:
            async for chunk in store.stream(snapshot):
                digest.update(chunk)
                await asyncio.to_thread(output.write, chunk)
        if digest.hexdigest() != sha256:
            raise BackupError(
                "ChecksumMismatch", f"{store}/{snapshot} is not the snapshot that was backed up"
            )
        restored = work / "data"
        await _etcdutl("snapshot", "restore", str(downloaded), f"--data-dir={restored}", *member.flags())
        shutil.rmtree(data_dir, ignore_errors=True)
        restored.rename(data_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return f"restored {snapshot} into {data_dir}"


async def _etcdutl(*args: str) -> None:
    binary = shutil.which("etcdutl")
    if binary is None:
        raise BackupError("RestoreFailed", "etcdutl is not on PATH (the etcdlock image ships it)")
    process = await asyncio.create_subprocess_exec(
        binary, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        last = (output.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise BackupError("RestoreFailed", f"etcdutl snapshot restore failed: {last}")
