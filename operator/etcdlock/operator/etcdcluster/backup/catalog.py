"""What a backup store holds, as plain data: the object names, and the pure decisions on them (what
retention deletes, what a restore replays).

Under the store's prefix, by etcd cluster ID (a cluster restored from a backup is a new cluster, with
revisions of its own: its backups never mix with those it came from)::

    <cluster>/full/<revision>.db                 a full snapshot, exactly as etcd streamed it (SHA-256
                                                 trailer)
    <cluster>/full/<revision>.json               its manifest, written last: a snapshot without one is not a
                                                 backup
    <cluster>/delta/<full>/<first>-<last>.json   the watch events of revisions first..last, after full
                                                 snapshot <full>

Cluster IDs are written with 16 hex digits and revisions with 20 digits, so names sort as revisions do;
the newest backup is the newest by time. A full snapshot's manifest also says the member's revision once
the snapshot was sent (``revisionMax``): the snapshot holds nothing past it, so a restore to a revision
uses only snapshots whose ``revisionMax`` is not past it. A full snapshot's revision is one its
data is known to include (read just before it was taken): it may include later ones too, which is harmless,
because replaying events (each sets or deletes a whole key) over a state that has some of them already
gives the same result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

_FULL = re.compile(r"^([0-9a-f]{16})/full/(\d{20})\.(db|json)$")
_DELTA = re.compile(r"^([0-9a-f]{16})/delta/(\d{20})/(\d{20})-(\d{20})\.json$")


def full_object(cluster: str, revision: int) -> str:
    return f"{cluster}/full/{revision:020d}.db"


def full_manifest(cluster: str, revision: int) -> str:
    return f"{cluster}/full/{revision:020d}.json"


def delta_object(cluster: str, full: int, first: int, last: int) -> str:
    return f"{cluster}/delta/{full:020d}/{first:020d}-{last:020d}.json"


def cluster_id(number: int) -> str:
    return f"{number:016x}"


@dataclass(frozen=True)
class Full:
    """A full snapshot whose manifest was written."""

    cluster: str
    revision: int
    time: datetime
    size: int
    sha256: str
    revision_max: int = 0  # the snapshot holds nothing past it (0: not known, as revision)

    @property
    def object(self) -> str:
        return full_object(self.cluster, self.revision)

    @property
    def holds_at_most(self) -> int:
        return max(self.revision, self.revision_max)

    @property
    def manifest_object(self) -> str:
        return full_manifest(self.cluster, self.revision)

    @classmethod
    def from_manifest(cls, document: dict[str, Any]) -> Full:
        return cls(
            cluster=str(document["cluster"]),
            revision=int(document["revision"]),
            time=datetime.fromisoformat(document["time"]),
            size=int(document["size"]),
            sha256=str(document["sha256"]),
            revision_max=int(document.get("revisionMax") or 0),
        )

    def manifest(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "revision": self.revision,
            "time": self.time.isoformat(),
            "size": self.size,
            "sha256": self.sha256,
            "revisionMax": self.revision_max,
            "object": self.object,
        }


@dataclass(frozen=True)
class Delta:
    """A delta object, known by its name (its flush time is read from it when needed)."""

    cluster: str
    full: int
    first: int
    last: int

    @property
    def object(self) -> str:
        return delta_object(self.cluster, self.full, self.first, self.last)


@dataclass
class Catalog:
    """Every object of a store listing: the full snapshots with manifests, the deltas by the full they
    follow, and objects that belong to no complete backup (uploads cut short)."""

    fulls: list[Full] = field(default_factory=list)
    deltas: dict[tuple[str, int], list[Delta]] = field(default_factory=dict)
    orphans: list[str] = field(default_factory=list)

    @staticmethod
    def manifests(paths: list[str]) -> list[str]:
        """Which of the listed ``paths`` are full manifests (to be read for :meth:`of`)."""
        return [p for p in paths if (m := _FULL.match(p)) and m.group(3) == "json"]

    @classmethod
    def of(cls, paths: list[str], manifests: list[dict[str, Any]]) -> Catalog:
        """``paths`` listed under the prefix; ``manifests`` the full manifests read."""
        catalog = cls()
        snapshots = set()
        for path in paths:
            if match := _FULL.match(path):
                if match.group(3) == "db":
                    snapshots.add((match.group(1), int(match.group(2))))
            elif match := _DELTA.match(path):
                cluster, (full, first, last) = match.group(1), map(int, match.groups()[1:])
                catalog.deltas.setdefault((cluster, full), []).append(Delta(cluster, full, first, last))
        for document in manifests:
            complete = Full.from_manifest(document)
            if (complete.cluster, complete.revision) in snapshots:
                catalog.fulls.append(complete)
        catalog.fulls.sort(key=lambda f: (f.time, f.revision))
        listed = {(f.cluster, f.revision) for f in catalog.fulls}
        # A snapshot without a manifest, older than the newest complete one of its cluster, was cut short.
        newest = {f.cluster: f.revision for f in catalog.fulls}
        catalog.orphans = [full_object(c, r) for c, r in sorted(snapshots - listed) if r < newest.get(c, 0)]
        for deltas in catalog.deltas.values():
            deltas.sort(key=lambda d: (d.first, d.last))
        return catalog

    @property
    def latest(self) -> Full | None:
        return self.fulls[-1] if self.fulls else None

    def deltas_of(self, full: Full) -> list[Delta]:
        return self.deltas.get((full.cluster, full.revision), [])

    def resume_after(self, full: Full) -> int:
        """The last revision ``full`` and its deltas hold."""
        return max([full.revision, *(d.last for d in self.deltas_of(full))])


def expired(catalog: Catalog, keep: int, cluster: str) -> list[str]:
    """The objects retention deletes, of the etcd cluster ``cluster`` only (another cluster sharing the
    prefix, or the one it was restored from, keeps its own): every full snapshot but the newest ``keep``
    (manifest last, so a deletion cut short leaves an orphan, never a manifest without its data), the
    deltas of the deleted ones and of snapshots that no longer exist, and the orphans."""
    fulls = [f for f in catalog.fulls if f.cluster == cluster]
    kept = {(f.cluster, f.revision) for f in fulls[-keep:]}
    doomed: list[str] = []
    for key, deltas in sorted(catalog.deltas.items()):
        if key[0] == cluster and key not in kept:
            doomed.extend(d.object for d in deltas)
    for full in fulls[:-keep]:
        doomed.extend([full.object, full.manifest_object])
    doomed.extend(o for o in catalog.orphans if o.startswith(f"{cluster}/"))
    return doomed


@dataclass(frozen=True)
class RestorePlan:
    """The full snapshot every member restores, and the deltas replayed after it (in order); ``upto``:
    the last revision replayed (None: all of them); ``gap``: where the deltas stop being continuous."""

    full: Full
    deltas: list[Delta]
    upto: int | None
    gap: int | None = None


class NothingToRestore(Exception):
    """The store holds no complete backup that fits what was asked."""


def plan(
    catalog: Catalog,
    revision: int | None = None,
    before: datetime | None = None,
    cluster: str | None = None,
) -> RestorePlan:
    """What restores up to ``revision``, or as of ``before`` (the newest full snapshot taken by then; the
    replay stops at the first delta flushed after it, a time only the delta itself says), or the latest;
    of the etcd cluster ``cluster`` if given. A revision is one of the newest backup's cluster (clusters
    restored from one another share a store but not their revisions), and only a snapshot that holds
    nothing past it fits."""
    fulls = [f for f in catalog.fulls if cluster is None or f.cluster == cluster]
    newest = fulls[-1].cluster if fulls else ""
    candidates = [
        f
        for f in fulls
        if (revision is None or (f.holds_at_most <= revision and f.cluster == newest))
        and (before is None or f.time <= before)
    ]
    if not candidates:
        wanted = "the latest backup"
        if revision is not None or before is not None:
            wanted = f"revision {revision}" if revision is not None else f"{before}"
        raise NothingToRestore(f"no complete full snapshot in the store for {wanted}")
    return plan_from(catalog, candidates[-1], revision)


def plan_from(catalog: Catalog, full: Full, revision: int | None) -> RestorePlan:
    """``full`` and its deltas up to ``revision``, while they follow on each other without a gap."""
    chosen: list[Delta] = []
    reached, gap = full.revision, None
    for delta in catalog.deltas_of(full):
        if revision is not None and delta.first > revision:
            break
        if delta.first > reached + 1:
            gap = reached
            break
        chosen.append(delta)
        reached = max(reached, delta.last)
    return RestorePlan(full=full, deltas=chosen, upto=revision, gap=gap)
