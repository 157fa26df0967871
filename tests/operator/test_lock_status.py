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
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client import ApiClient

from etcdlock.etcd import EtcdClient, EtcdConfig, EtcdLockError, Mutex, Session
from etcdlock.operator.run import run_operator
from etcdlock.sandbox.etcd import LocalEtcd, etcd_binary, free_port

ROOT = Path(__file__).resolve().parents[2]
GROUP, VERSION, PLURAL = "etcdlock.io", "v1alpha1", "distributedlocks"
BOUND = 15.0


def eventually(read: Callable[[], Any], ok: Callable[[Any], bool], what: str) -> Any:
    """Poll ``read`` until ``ok`` holds, for at most BOUND seconds."""
    deadline = time.monotonic() + BOUND
    value = read()
    while not ok(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last seen: {value!r}")
        time.sleep(0.05)
        value = read()
    return value


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> ApiClient:
    client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    crd = yaml.safe_load((ROOT / "crds" / "distributedlock.yaml").read_text())
    extensions = kubernetes.client.ApiextensionsV1Api(client)
    try:
        extensions.create_custom_resource_definition(crd)
    except kubernetes.client.ApiException as exc:
        if exc.status != 409:
            raise
    return client


@pytest.fixture
def namespace(api: ApiClient) -> Iterator[str]:
    name = f"op-{uuid.uuid4().hex[:8]}"
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


@pytest.fixture
def metrics_url() -> str:
    return f"http://127.0.0.1:{free_port()}/metrics"


@pytest.fixture
def operator(namespace: str, etcd: LocalEtcd, kubeconfig: Path, metrics_url: str) -> Iterator[None]:
    """The operator in its own thread and event loop, watching the test's namespace only."""
    metrics = ("127.0.0.1", int(metrics_url.split(":")[2].split("/")[0]))
    stop, ready = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def main() -> None:
        try:
            config = EtcdConfig.parse(etcd.endpoints)
            flags = {"stop_flag": stop, "ready_flag": ready}
            running = run_operator(config, [namespace], kubeconfig=str(kubeconfig), metrics=metrics, **flags)
            asyncio.run(running)
        except BaseException as exc:  # reported by the fixture, not lost in the thread
            failures.append(exc)

    thread = threading.Thread(target=main, name="operator")
    thread.start()
    try:
        assert ready.wait(BOUND) or failures, "the operator did not start"
        assert not failures, failures
        yield
    finally:
        stop.set()
        thread.join(BOUND)
        assert not thread.is_alive(), "the operator did not stop"
    assert not failures, failures


def phase(expected: str) -> Callable[[dict[str, Any]], bool]:
    return lambda status: status.get("phase") == expected


def waiter_count(expected: int) -> Callable[[dict[str, Any]], bool]:
    return lambda status: status.get("waiterCount") == expected


def create_lock(api: ApiClient, namespace: str, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DistributedLock", "metadata": {"name": name}}
    objects = kubernetes.client.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {**body, "spec": spec})


def status_of(api: ApiClient, namespace: str, name: str) -> dict[str, Any]:
    objects = kubernetes.client.CustomObjectsApi(api)
    obj = objects.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return dict(obj.get("status") or {})


def events_of(api: ApiClient, namespace: str, name: str) -> list[tuple[str, str]]:
    found = kubernetes.client.CoreV1Api(api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    )
    return [(event.reason, event.message) for event in found.items]


async def hold(etcd: LocalEtcd, lock_key: str, holder: str, until: asyncio.Event, token: list[int]) -> None:
    async with EtcdClient(EtcdConfig.parse(etcd.endpoints)) as client, Session(client, ttl=10) as session:
        async with Mutex(session, lock_key, holder=holder) as mutex:
            token.append(mutex.token)
            await until.wait()


def test_a_new_lock_is_free_and_ready(api: ApiClient, namespace: str, operator: None) -> None:
    create_lock(api, namespace, "fresh", {})
    status = eventually(lambda: status_of(api, namespace, "fresh"), phase("Free"), "Free")
    assert status["holders"] == [] and status["waiters"] == [] and status["waiterCount"] == 0
    ready = status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "Free")
    assert f"/etcdlock/locks/{namespace}/fresh" in ready["message"]
    assert status["observedGeneration"] == 1


def test_holders_and_waiters_from_any_client_appear_in_status(
    api: ApiClient, namespace: str, operator: None, etcd: LocalEtcd
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


def test_a_lock_it_cannot_serve_says_why(api: ApiClient, namespace: str, operator: None) -> None:
    create_lock(api, namespace, "elsewhere", {"clusterRef": {"name": "etcd-a"}})
    status = eventually(lambda: status_of(api, namespace, "elsewhere"), phase("Error"), "Error")
    ready = status["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "etcd-a" in ready["message"]
    warned = eventually(lambda: events_of(api, namespace, "elsewhere"), bool, "an event")
    assert any(reason == "InvalidSpec" for reason, _ in warned)


def test_the_operator_refuses_to_start_without_etcd(kubeconfig: Path) -> None:
    unreachable = EtcdConfig.parse("http://127.0.0.1:1", request_timeout=2)
    with pytest.raises(EtcdLockError, match=r"cannot reach etcd at http://127\.0\.0\.1:1"):
        asyncio.run(run_operator(unreachable, kubeconfig=str(kubeconfig)))


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
    api: ApiClient, namespace: str, operator: None, etcd: LocalEtcd, metrics_url: str
) -> None:
    create_lock(api, namespace, "counted", {})
    key = f"/etcdlock/locks/{namespace}/counted"
    eventually(lambda: status_of(api, namespace, "counted"), phase("Free"), "Free")
    labels = f'{{lock="counted",namespace="{namespace}"}}'

    def one_waiter_in_status() -> None:
        eventually(lambda: status_of(api, namespace, "counted"), waiter_count(1), "a waiter")

    def one_waiter_in_metrics() -> None:
        gauge = f"etcdlock_lock_waiters{labels}"
        eventually(lambda: scrape(metrics_url), lambda m: m.get(gauge) == 1, "the waiter gauge")

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
                    await asyncio.to_thread(
                        eventually,
                        lambda: scrape(metrics_url),
                        lambda m: m.get(f"etcdlock_lock_waiters{labels}") == 1,
                        "waiter gauge",
                    )
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

    objects = kubernetes.client.CustomObjectsApi(api)
    objects.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "counted")
    eventually(
        lambda: scrape(metrics_url), lambda m: f"etcdlock_lock_holders{labels}" not in m, "series dropped"
    )
