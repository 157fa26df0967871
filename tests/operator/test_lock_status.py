"""The operator mirrors every DistributedLock's holders and waiters from etcd into its status.

The operator runs its real kopf handlers against the sandbox API, on the real etcd of the session;
holders are taken with the library and with etcdctl, as any outside client would.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiClient
from operator_support import (
    BOUND,
    GROUP,
    PLURAL,
    VERSION,
    OperatorThread,
    create_lock,
    events_of,
    eventually,
    phase,
    status_of,
)

from etcdlock.etcd import EtcdClient, EtcdConfig, EtcdLockError, Mutex, Session
from etcdlock.operator.config import OperatorConfig
from etcdlock.operator.run import run_operator
from etcdlock_sandbox.cluster import SandboxThread
from etcdlock_sandbox.etcd import LocalEtcd, etcd_binary

ROOT = Path(__file__).resolve().parents[2]


async def hold(etcd: LocalEtcd, lock_key: str, holder: str, until: asyncio.Event, token: list[int]) -> None:
    async with EtcdClient(EtcdConfig.parse(etcd.endpoints)) as client, Session(client, ttl=10) as session:
        async with Mutex(session, lock_key, holder=holder) as mutex:
            token.append(mutex.token)
            await until.wait()


def test_a_new_lock_is_free_and_ready(api: ApiClient, namespace: str, operator: OperatorThread) -> None:
    create_lock(api, namespace, "fresh", {})
    status = eventually(lambda: status_of(api, namespace, "fresh"), phase("Free"), "Free")
    assert status["holders"] == [] and status["waiters"] == [] and status["waiterCount"] == 0
    ready = status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "Free")
    assert f"/etcdlock/locks/{namespace}/fresh" in ready["message"]
    assert status["observedGeneration"] == 1


def test_holders_and_waiters_from_any_client_appear_in_status(
    api: ApiClient, namespace: str, operator: OperatorThread, etcd: LocalEtcd
) -> None:
    create_lock(api, namespace, "shared", {})
    key = f"/etcdlock/locks/{namespace}/shared"
    eventually(lambda: status_of(api, namespace, "shared"), phase("Free"), "Free")

    loop = asyncio.new_event_loop()
    release, token = asyncio.Event(), []
    holding = hold(etcd, key, "batch-7", release, token)
    holder = threading.Thread(target=loop.run_until_complete, args=(holding,))
    holder.start()
    waiter = subprocess.Popen(
        [etcd_binary("etcdctl"), f"--endpoints={etcd.endpoint_list}", "lock", key],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        status = eventually(
            lambda: status_of(api, namespace, "shared"),
            lambda s: s.get("phase") == "Held" and s.get("waiterCount") == 1,
            "one holder and one waiter",
        )
        assert [h["holder"] for h in status["holders"]] == ["batch-7"]
        assert status["holders"][0]["fencingToken"] == token[0]
        assert status["holders"][0]["key"].startswith(key + "/") and status["holders"][0]["since"]
        etcdctl_key = status["waiters"][0]["key"]
        assert status["waiters"][0]["holder"] == etcdctl_key, "etcdctl writes no holder name: its key shows"
        assert status["waiters"][0]["fencingToken"] > token[0]

        loop.call_soon_threadsafe(release.set)
        holder.join(BOUND)
        assert waiter.stdout is not None and waiter.stdout.readline().strip() == etcdctl_key
        status = eventually(
            lambda: status_of(api, namespace, "shared"),
            lambda s: [h["key"] for h in s.get("holders", [])] == [etcdctl_key],
            "etcdctl holding",
        )
        assert status["waiterCount"] == 0
    finally:
        loop.call_soon_threadsafe(release.set)
        holder.join(BOUND)
        loop.close()
        waiter.send_signal(2)
        waiter.wait(BOUND)
    eventually(lambda: status_of(api, namespace, "shared"), phase("Free"), "Free again")
    reasons = eventually(
        lambda: [reason for reason, _ in events_of(api, namespace, "shared")],
        lambda seen: seen.count("Acquired") >= 2 and seen.count("Released") >= 2,
        "Acquired and Released events",
    )
    assert "Acquired" in reasons


def test_a_lock_on_a_missing_cluster_says_why(
    api: ApiClient, namespace: str, operator: OperatorThread
) -> None:
    create_lock(api, namespace, "elsewhere", {"clusterRef": {"name": "etcd-a"}})
    status = eventually(lambda: status_of(api, namespace, "elsewhere"), phase("Error"), "Error")
    ready = status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "ClusterNotReady")
    assert f"EtcdCluster etcd-a does not exist in namespace {namespace}" in ready["message"]
    warned = eventually(lambda: events_of(api, namespace, "elsewhere"), bool, "an event")
    assert [reason for reason, _ in warned] == ["ClusterNotReady"]


def test_the_operator_refuses_to_start_without_its_crds(etcd: LocalEtcd, tmp_path: Path) -> None:
    with SandboxThread() as empty:
        kubeconfig = empty.write_kubeconfig(tmp_path / "kubeconfig")
        api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        crd = yaml.safe_load((ROOT / "crds" / "distributedlock.yaml").read_text())
        kubernetes.client.ApiextensionsV1Api(api).create_custom_resource_definition(crd)
        config = EtcdConfig.parse(etcd.endpoint_list)
        with pytest.raises(EtcdLockError, match=r"the CRD etcdclusters\.etcdlock\.io is not installed"):
            asyncio.run(run_operator(OperatorConfig(config, kubeconfig=str(kubeconfig))))


def test_the_operator_refuses_to_start_without_etcd(kubeconfig: Path) -> None:
    unreachable = EtcdConfig.parse("http://127.0.0.1:1", request_timeout=2)
    with pytest.raises(EtcdLockError, match=r"cannot reach etcd at http://127\.0\.0\.1:1"):
        asyncio.run(run_operator(OperatorConfig(unreachable, kubeconfig=str(kubeconfig))))


def scrape(url: str) -> dict[str, float]:
    """The samples of the operator's /metrics page, by name and labels."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_count_acquisitions_releases_and_waits_from_any_client(
    api: ApiClient, namespace: str, operator: OperatorThread, etcd: LocalEtcd, metrics_url: str
) -> None:
    create_lock(api, namespace, "counted", {})
    key = f"/etcdlock/locks/{namespace}/counted"
    eventually(lambda: status_of(api, namespace, "counted"), phase("Free"), "Free")
    labels = f'{{lock="counted",namespace="{namespace}"}}'

    async def take_in_turn() -> None:
        async with EtcdClient(EtcdConfig.parse(etcd.endpoints)) as client:
            async with Session(client) as first, Session(client) as second:
                async with Mutex(first, key, holder="first"):
                    waiting = asyncio.create_task(Mutex(second, key, holder="second").acquire())
                    await asyncio.to_thread(
                        eventually,
                        lambda: status_of(api, namespace, "counted"),
                        lambda s: s.get("waiterCount") == 1,
                        "a waiter",
                    )
                    samples = await asyncio.to_thread(
                        eventually,
                        lambda: scrape(metrics_url),
                        lambda m: m.get(f"etcdlock_lock_waiters{labels}") == 1,
                        "waiter gauge",
                    )
                    since = samples[f"etcdlock_lock_oldest_hold_timestamp_seconds{labels}"]
                    assert time.time() - 60 < since <= time.time() + 1, "the first holder's start"
                second_lock = await waiting
                await second_lock.release()

    asyncio.run(take_in_turn())
    samples = eventually(
        lambda: scrape(metrics_url),
        lambda m: m.get(f"etcdlock_lock_releases_total{labels}") == 2,
        "two releases",
    )
    assert samples[f"etcdlock_lock_acquisitions_total{labels}"] == 2
    assert samples[f"etcdlock_lock_wait_seconds_count{labels}"] == 2
    assert samples[f"etcdlock_lock_wait_seconds_sum{labels}"] > 0, "the second holder waited"
    assert samples[f"etcdlock_lock_holders{labels}"] == 0
    assert samples[f"etcdlock_lock_waiters{labels}"] == 0
    assert samples[f"etcdlock_lock_hold_seconds_count{labels}"] == 2, "both holds seen from their start"
    assert samples[f"etcdlock_lock_hold_seconds_sum{labels}"] > 0
    assert f"etcdlock_lock_oldest_hold_timestamp_seconds{labels}" not in samples, "nobody holds it"

    objects = kubernetes.client.CustomObjectsApi(api)
    objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "counted")
    eventually(
        lambda: scrape(metrics_url), lambda m: f"etcdlock_lock_holders{labels}" not in m, "series dropped"
    )
