"""EtcdCluster backups end to end in the sandbox, to a real S3-compatible server (moto's, on loopback): the
operator (a real process resolving names as a pod does) backs a cluster up while a client writes, a new
cluster is restored from the store by its members' init containers (the project's image, run here as a
local process) and the operator's replay, a quorum's data is destroyed and the cluster rebuilt, and a
member whose claim is lost is replaced. Every wait is bounded; the counts of what a restore lost are
printed and checked against the recovery point the status showed.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import urllib.request
import uuid
from collections.abc import AsyncIterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiClient
from operator_support import Operated, create_lock, eventually
from test_backup import state_of
from test_etcdcluster import SLOW, Env, condition, member_pid, settled
from test_pods import create_pod, finish, held, note, read_pod

from etcdlock.etcd import EtcdClient, EtcdConfig, EtcdError
from etcdlock.etcd.requests import delete_op, put_op
from etcdlock.operator.etcdcluster.backup.runner import read_catalog
from etcdlock.operator.etcdcluster.backup.settings import StoreSpec
from etcdlock.operator.etcdcluster.backup.store import BackupStore
from etcdlock.operator.names import ERROR, HELD, STATE_ANNOTATION, TOKEN_ANNOTATION, WAITING
from etcdlock_sandbox.s3 import S3Server

PREFIX = b"/app/"
CREDENTIALS = "backup-credentials"
S3_SETTINGS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def env(operated: Operated) -> BackupEnv:
    """The module's namespace with the store's credentials, and the operator as a process."""
    secret = {"metadata": {"name": CREDENTIALS}, "stringData": S3_SETTINGS}
    kubernetes.client.CoreV1Api(operated.api).create_namespaced_secret(operated.namespace, secret)
    return BackupEnv(operated.api, operated.namespace, operated.operator.url)


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    name = f"backups-{uuid.uuid4().hex[:8]}"
    s3_server.create_bucket(name)
    return name


class BackupEnv(Env):
    """The namespace's API, and the operator's own endpoint (``/metrics``)."""

    def __init__(self, api: ApiClient, namespace: str, operator: str) -> None:
        super().__init__(api, namespace)
        self.operator = operator

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.operator}/metrics", timeout=5) as response:
            return str(response.read().decode())


def store(s3_server: S3Server, bucket: str, prefix: str) -> dict[str, Any]:
    return {
        "url": f"s3://{bucket}/{prefix}",
        "endpoint": s3_server.endpoint,
        "secretRef": {"name": CREDENTIALS},
    }


class Writer:
    """A client writing (puts, overwrites, deletes) from a thread until stopped; each acknowledged write
    is kept with its revision."""

    def __init__(self, endpoints: list[str]) -> None:
        self.config = EtcdConfig.parse(endpoints, request_timeout=2.0)
        self.acked: list[tuple[int, bytes, bytes | None]] = []
        self.failures = 0
        # Writes that failed on the client's side but may have committed all the same (a request that
        # timed out while members were stopped commits once they answer again): key -> the values sent.
        self.uncertain: dict[bytes, set[bytes | None]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with EtcdClient(self.config) as client:
            i = 0
            while not self._stop.is_set():
                key = PREFIX + b"%04d" % (i % 300)
                value = None if i % 9 == 8 else b"v%d" % i
                op = delete_op(key) if value is None else put_op(key, value)
                try:
                    response = await client.txn([], [op], retry=False)
                except EtcdError:
                    self.failures += 1
                    self.uncertain.setdefault(key, set()).add(value)
                    await asyncio.sleep(0.05)
                else:
                    self.acked.append((response.header.revision, key, value))
                i += 1
                await asyncio.sleep(0.005)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def state(self, upto: int | None = None) -> dict[bytes, bytes]:
        return state_of(self.acked, upto)

    def unexplained(self, upto: int, found: dict[bytes, bytes]) -> list[bytes]:
        """Keys that differ from what the acknowledged writes up to ``upto`` left, except a key that holds
        exactly what an unacknowledged write of it sent (that write may have committed)."""
        return [
            key
            for key in differences(self.state(upto), found)
            if found.get(key) not in self.uncertain.get(key, set())
        ]


def read_keys(endpoints: list[str]) -> dict[bytes, bytes]:
    async def read() -> dict[bytes, bytes]:
        async with EtcdClient(EtcdConfig.parse(endpoints, request_timeout=5.0)) as client:
            response = await client.range(PREFIX, PREFIX[:-1] + bytes([PREFIX[-1] + 1]))
            return {kv.key: kv.value for kv in response.kvs}

    return asyncio.run(read())


def differences(expected: dict[bytes, bytes], found: dict[bytes, bytes]) -> list[bytes]:
    return sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))


def backed_up(revision: int) -> Any:
    """The status shows a delta at or past ``revision``, and BackupReady."""

    def check(status: dict[str, Any]) -> bool:
        delta = (status.get("backup") or {}).get("lastDelta") or {}
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "BackupReady"), {})
        return int(delta.get("revision") or 0) >= revision and ready.get("status") == "True"

    return check


def restored(replicas: int) -> Any:
    def check(status: dict[str, Any]) -> bool:
        return settled(replicas)(status) and (status.get("restore") or {}).get("phase") == "Restored"

    return check


def reasons(env: Env, name: str) -> list[str]:
    return [reason for reason, _ in env.events(name)]


def test_a_cluster_backed_up_to_s3_is_restored_into_a_new_one(
    env: BackupEnv, s3_server: S3Server, bucket: str
) -> None:
    where = store(s3_server, bucket, "source")
    env.create("source", {"replicas": 1, "backup": {"store": where, "deltaInterval": "1s"}})
    eventually(lambda: env.status("source"), settled(1), "the source running", SLOW)
    with Writer(env.endpoints("source", range(1))) as writer:
        eventually(lambda: len(writer.acked), lambda n: n > 200, "writes acknowledged", SLOW)
        eventually(lambda: env.status("source"), backed_up(1), "a full snapshot and a delta", SLOW)
        # A full snapshot on demand, while the writes go on.
        backup_now(env, "source", "now-1")
        eventually(lambda: len(writer.acked), lambda n: n > 600, "more writes", SLOW)
    midway = writer.acked[len(writer.acked) // 2][0]
    last = writer.acked[-1][0]
    eventually(lambda: env.status("source"), backed_up(last), "every write in a delta", SLOW)
    assert reasons(env, "source").count("BackupTaken") >= 2
    scraped = env.metrics()
    for kind in ("full", "delta"):
        labels = f'cluster="source",kind="{kind}",namespace="{env.namespace}"'
        assert f"etcdlock_backup_last_success_timestamp_seconds{{{labels}}}" in scraped
        assert re.search(rf"etcdlock_backup_bytes_total{{{labels}}} [1-9]", scraped), kind
    # The source goes, with its data; a new cluster of three restores the latest backup, another one
    # a point in time.
    delete_cluster(env, "source")
    env.create("copy", {"replicas": 3, "restore": {"store": where}})
    env.create("past", {"replicas": 1, "restore": {"store": where, "revision": midway}})
    status = eventually(lambda: env.status("copy"), restored(3), "the copy restored", SLOW)
    assert status["restore"]["revision"] == last
    found = read_keys(env.endpoints("copy", range(3)))
    expected = writer.state()
    print(f"restore of the latest: {len(expected)} keys expected, {len(differences(expected, found))} differ")
    assert differences(expected, found) == []
    assert status["restore"]["keys"] >= len(expected)
    assert "Restored" in reasons(env, "copy")
    pods = env.pods("copy")
    assert all(p.spec.init_containers and p.spec.init_containers[0].name == "restore" for p in pods.values())
    status = eventually(lambda: env.status("past"), restored(1), "the point in time restored", SLOW)
    assert status["restore"]["revision"] == midway
    assert differences(writer.state(midway), read_keys(env.endpoints("past", range(1)))) == []


def test_missing_credentials_or_backup_give_a_condition_and_overwrite_nothing(
    env: Env, s3_server: S3Server, bucket: str
) -> None:
    where = {**store(s3_server, bucket, "nocreds"), "secretRef": {"name": "not-there"}}
    env.create("nocreds", {"replicas": 1, "backup": {"store": where}})
    status = eventually(
        lambda: env.status("nocreds"),
        lambda s: any(
            c["type"] == "BackupReady" and c["reason"] == "CredentialsMissing"
            for c in s.get("conditions") or []
        ),
        "BackupReady False, CredentialsMissing",
        SLOW,
    )
    assert condition(status, "BackupReady")["status"] == "False"
    assert "not-there" in condition(status, "BackupReady")["message"]
    assert "BackupFailed" in reasons(env, "nocreds")
    # The Secret comes: the backups start.
    env.core.create_namespaced_secret(
        env.namespace, {"metadata": {"name": "not-there"}, "stringData": S3_SETTINGS}
    )
    eventually(lambda: env.status("nocreds"), backed_up(0), "BackupReady once the Secret exists", SLOW)
    env.create("from-nothing", {"replicas": 1, "restore": {"store": store(s3_server, bucket, "empty")}})
    status = eventually(
        lambda: env.status("from-nothing"), lambda s: s.get("phase") == "Failed", "Failed", SLOW
    )
    assert condition(status, "Degraded")["reason"] == "RestoreFailed"
    assert "no complete full snapshot" in condition(status, "Degraded")["message"]
    apps = kubernetes.client.AppsV1Api(env.api)
    names = [s.metadata.name for s in apps.list_namespaced_stateful_set(env.namespace).items]
    assert "from-nothing" not in names, "nothing is created until the restore can start"


def test_a_snapshot_that_does_not_match_its_checksum_is_never_restored(
    env: Env, s3_server: S3Server, bucket: str
) -> None:
    where = store(s3_server, bucket, "corrupt")
    env.create("tiny", {"replicas": 1, "backup": {"store": where}})
    eventually(lambda: env.status("tiny"), backed_up(0), "a first full snapshot", SLOW)
    with Writer(env.endpoints("tiny", range(1))) as writer:
        eventually(lambda: len(writer.acked), lambda n: n > 100, "writes acknowledged", SLOW)
    backup_now(env, "tiny", "second")
    delete_cluster(env, "tiny")
    backups = BackupStore(StoreSpec(where["url"], s3_server.endpoint), S3_SETTINGS)
    older, newest = asyncio.run(read_catalog(backups)).fulls
    asyncio.run(overwrite(backups, newest.object))
    env.create("fallback", {"replicas": 1, "restore": {"store": where}})
    status = eventually(lambda: env.status("fallback"), restored(1), "restored from the older snapshot", SLOW)
    assert status["restore"]["skipped"] == [newest.object]
    assert status["restore"]["snapshotRevision"] == older.revision
    assert differences(writer.state(), read_keys(env.endpoints("fallback", range(1)))) == []
    asyncio.run(overwrite(backups, older.object))
    env.create("no-intact", {"replicas": 1, "restore": {"store": where}})
    status = eventually(lambda: env.status("no-intact"), lambda s: s.get("phase") == "Failed", "Failed", SLOW)
    assert condition(status, "Degraded")["reason"] == "RestoreFailed"
    assert "do not match their checksums" in condition(status, "Degraded")["message"]
    apps = kubernetes.client.AppsV1Api(env.api)
    assert "no-intact" not in [
        s.metadata.name for s in apps.list_namespaced_stateful_set(env.namespace).items
    ]


async def overwrite(backups: BackupStore, path: str) -> None:
    async def garbage() -> AsyncIterator[bytes]:
        yield b"not a snapshot" * 1000

    await backups.put_stream(path, garbage())


def annotate(env: Env, name: str, annotations: dict[str, str]) -> None:
    env.objects.patch_namespaced_custom_object(
        "etcdlock.io",
        "v1alpha1",
        env.namespace,
        "etcdclusters",
        name,
        {"metadata": {"annotations": annotations}},
    )


def backup_now(env: Env, name: str, request: str) -> None:
    """Ask for a full snapshot now (the annotation) and wait until the status says it was served."""
    annotate(env, name, {"etcdlock.io/backup": request})
    eventually(
        lambda: (env.status(name).get("backup") or {}).get("lastRequest"),
        lambda served: served == request,
        f"the full snapshot asked for as {request}",
        SLOW,
    )


def delete_cluster(env: Env, name: str) -> None:
    env.objects.delete_namespaced_custom_object(
        "etcdlock.io", "v1alpha1", env.namespace, "etcdclusters", name
    )


def test_a_quorum_whose_data_is_gone_is_rebuilt_but_stopped_members_are_awaited(
    env: Env, s3_server: S3Server, bucket: str
) -> None:
    where = store(s3_server, bucket, "quorum")
    backup = {"store": where, "deltaInterval": "1s"}
    env.create("quorum", {"replicas": 3, "backup": backup, "recovery": {"automatic": True}})
    eventually(lambda: env.status("quorum"), settled(3), "three healthy voters", SLOW)
    with Writer(env.endpoints("quorum", range(3))) as writer:
        eventually(lambda: len(writer.acked), lambda n: n > 300, "writes acknowledged", SLOW)
        eventually(lambda: env.status("quorum"), backed_up(writer.acked[100][0]), "backed up", SLOW)
        # Two members merely stopped: no data is gone, so nothing is rebuilt; they come back.
        stopped = [member_pid(env.namespace, f"quorum-{i}") for i in (1, 2)]
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        try:
            # A pass saw them not answering (and, in the same pass, no data lost): nothing is rebuilt.
            seen = eventually(
                lambda: env.status("quorum"),
                lambda s: sum(not m["healthy"] for m in s.get("members") or []) >= 2,
                "the stopped members seen not answering",
                SLOW,
            )
            assert condition(seen, "Available")["status"] == "False"
            assert not any(c["type"] == "QuorumLost" for c in seen["conditions"])
            assert {"QuorumLost", "RebuildStarted"}.isdisjoint(reasons(env, "quorum"))
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
        eventually(lambda: env.status("quorum"), settled(3), "the stopped members back", SLOW)
        eventually(lambda: len(writer.acked), lambda n: n > 800, "more writes", SLOW)
        # Now two members' data goes with their pods (emptyDir): the quorum is lost for good. Without
        # automatic recovery, the status says how to approve the rebuild.
        env.patch("quorum", {"recovery": {"automatic": False}})
        eventually(
            lambda: env.status("quorum").get("observedGeneration"), lambda g: g == 2, "the change seen", SLOW
        )
        recovery_point = int(env.status("quorum")["backup"]["lastDelta"]["revision"])
        pods = env.pods("quorum")
        for name in ("quorum-1", "quorum-2"):
            env.core.delete_namespaced_pod(
                name, env.namespace, body={"preconditions": {"uid": pods[name].metadata.uid}}
            )
        status = eventually(
            lambda: env.status("quorum"),
            lambda s: any(
                c["type"] == "QuorumLost" and c["status"] == "True" for c in s.get("conditions") or []
            ),
            "QuorumLost",
            SLOW,
        )
    message = condition(status, "QuorumLost")["message"]
    assert "kubectl annotate etcdcluster" in message and "etcdlock.io/approve-rebuild=rebuild-1" in message
    assert "RebuildStarted" not in reasons(env, "quorum")
    annotate(env, "quorum", {"etcdlock.io/approve-rebuild": "rebuild-1"})
    status = eventually(lambda: env.status("quorum"), restored(3), "rebuilt from the backup", SLOW)
    assert status["rebuilds"] == 1
    assert condition(status, "QuorumLost")["status"] == "False"
    # The rebuilt cluster holds exactly what the acknowledged writes left up to the revision the backup
    # reached, at or past the recovery point the status showed before the disaster; what is lost are the
    # writes after it (those of the last flush window, and any a broken cluster still acknowledged).
    reached = int(status["restore"]["revision"])
    assert reached >= recovery_point
    found = read_keys(env.endpoints("quorum", range(3)))
    assert writer.unexplained(reached, found) == []
    lost = [revision for revision, _, _ in writer.acked if revision > reached]
    print(
        f"rebuild: {len(writer.acked)} writes acknowledged; the status showed a backup up to revision "
        f"{recovery_point} before the disaster, the backup reached {reached}; {len(lost)} acknowledged "
        f"writes after it are lost ({writer.failures} writes failed)"
    )


def test_locks_kept_in_a_rebuilt_cluster_and_their_pods_recover(
    env: Env, s3_server: S3Server, bucket: str
) -> None:
    """A lock whose queue is in the cluster: its holder and its waiter come through the rebuild, and the
    lock is handed on and taken again afterwards."""
    backup = {"store": store(s3_server, bucket, "locked"), "deltaInterval": "1s"}
    env.create("locked", {"replicas": 1, "backup": backup, "recovery": {"automatic": True}})
    eventually(lambda: env.status("locked"), settled(1), "the cluster running", SLOW)
    create_lock(env.api, env.namespace, "job", {"clusterRef": {"name": "locked"}})
    create_pod(env.api, env.namespace, "holder", "job")
    token = note(
        eventually(lambda: read_pod(env.api, env.namespace, "holder"), held, "holder holding", SLOW),
        TOKEN_ANNOTATION,
    )
    create_pod(env.api, env.namespace, "next", "job")
    eventually(
        lambda: read_pod(env.api, env.namespace, "next"),
        lambda p: note(p, STATE_ANNOTATION) == WAITING,
        "next waiting",
        SLOW,
    )
    revision = asyncio.run(current_revision(env.endpoints("locked", range(1))))
    eventually(lambda: env.status("locked"), backed_up(revision), "the queue backed up", SLOW)
    pod = env.pods("locked")["locked-0"]
    env.core.delete_namespaced_pod(
        "locked-0", env.namespace, body={"preconditions": {"uid": pod.metadata.uid}}
    )
    eventually(lambda: env.status("locked"), restored(1), "rebuilt from the backup", SLOW)
    # The holder keeps the lock with its fencing token (its key came back with the snapshot), or is told
    # it lost it (a key replayed from a delta has a new token); never two holders.
    after = read_pod(env.api, env.namespace, "holder")
    assert (note(after, STATE_ANNOTATION), note(after, TOKEN_ANNOTATION)) == (HELD, token) or note(
        after, STATE_ANNOTATION
    ) == ERROR, after["metadata"]["annotations"]
    if note(after, STATE_ANNOTATION) == HELD:
        assert note(read_pod(env.api, env.namespace, "next"), STATE_ANNOTATION) == WAITING
    finish(env.api, env.namespace, "holder")
    eventually(lambda: read_pod(env.api, env.namespace, "next"), held, "next holding after the rebuild", SLOW)
    create_pod(env.api, env.namespace, "later", "job")
    finish(env.api, env.namespace, "next")
    eventually(
        lambda: read_pod(env.api, env.namespace, "later"), held, "a pod created after it holding", SLOW
    )


async def current_revision(endpoints: list[str]) -> int:
    async with EtcdClient(EtcdConfig.parse(endpoints)) as client:
        return int((await client.status()).header.revision)


def test_a_member_whose_claim_is_lost_is_replaced(env: Env, s3_server: S3Server, bucket: str) -> None:
    where = store(s3_server, bucket, "claims")
    env.create("claims", {"replicas": 3, "storage": {"size": "1Gi"}, "backup": {"store": where}})
    status = eventually(lambda: env.status("claims"), settled(3), "three healthy voters", SLOW)
    member = next(m for m in status["members"] if m["name"] == "claims-1")
    assert member.get("claimUID")
    pods = env.pods("claims")
    env.core.delete_namespaced_persistent_volume_claim("data-claims-1", env.namespace)
    env.core.delete_namespaced_pod(
        "claims-1", env.namespace, body={"preconditions": {"uid": pods["claims-1"].metadata.uid}}
    )

    def replaced(status: dict[str, Any]) -> bool:
        again = next((m for m in status.get("members") or [] if m["name"] == "claims-1"), {})
        return settled(3)(status) and again.get("id") != member["id"]

    eventually(lambda: env.status("claims"), replaced, "claims-1 replaced as a new member", SLOW)
    assert "MemberReplaced" in reasons(env, "claims") or "MemberAdded" in reasons(env, "claims")
    # Deleted, the cluster leaves its claims; a cluster of the same name restored from a backup must not
    # start on them.
    delete_cluster(env, "claims")
    eventually(lambda: list(env.pods("claims")), lambda left: left == [], "the members gone", SLOW)
    env.create("claims", {"replicas": 3, "storage": {"size": "1Gi"}, "restore": {"store": where}})
    status = eventually(lambda: env.status("claims"), lambda s: s.get("phase") == "Failed", "Failed", SLOW)
    assert condition(status, "Degraded")["reason"] == "RestoreFailed"
    assert "kubectl delete pvc" in condition(status, "Degraded")["message"]
    assert "data-claims-0" in condition(status, "Degraded")["message"]
