"""The DistributedLock controller without kopf: a recorded EventRecorder, an in-memory status sink for the
Kubernetes adapter, and a real etcd (never mocked) holding the lock's queue."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from fakes import RecordedEvents

from etcdlock.etcd import EtcdClient, Mutex, Session
from etcdlock.operator.leadership import Leadership
from etcdlock.operator.locks import LockChanges, LockRules, Locks
from etcdlock.operator.lockservice import LockServices
from etcdlock.operator.metrics import Metrics
from etcdlock.operator.names import LOCKS
from etcdlock.operator.stores import Store, Stores

BOUND = 10.0
Status = dict[str, Any]


class StatusSink:
    """The one Kube call the controller makes: the status patches, by lock, awaited as they come."""

    def __init__(self) -> None:
        self.published: dict[tuple[str, str], list[Status]] = {}
        self._changed = asyncio.Condition()

    async def patch_status(self, plural: str, namespace: str, name: str, status: Status) -> Status:
        assert plural == LOCKS
        async with self._changed:
            self.published.setdefault((namespace, name), []).append(status)
            self._changed.notify_all()
        return {"status": status}

    async def until(self, ref: tuple[str, str], check: Callable[[Status], bool]) -> Status:
        async with asyncio.timeout(BOUND), self._changed:
            await self._changed.wait_for(lambda: any(check(s) for s in self.published.get(ref, [])[-1:]))
            return self.published[ref][-1]


@pytest.fixture
async def controller(client: EtcdClient) -> AsyncIterator[tuple[LockServices, StatusSink, RecordedEvents]]:
    sink, events = StatusSink(), RecordedEvents()
    stores = Stores(Store(client, None, Leadership()), sink)  # type: ignore[arg-type]
    services = LockServices(sink, Locks(LockRules()), stores, LockChanges(), Metrics(), events)  # type: ignore[arg-type]
    yield services, sink, events
    await services.stop_all()


def _lock(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    meta = {
        "namespace": namespace,
        "name": name,
        "generation": 1,
        "creationTimestamp": "2026-01-01T00:00:00Z",
    }
    return {"apiVersion": "etcdlock.io/v1alpha1", "kind": "DistributedLock", "metadata": meta, "spec": spec}


async def test_a_served_lock_publishes_its_holders_and_announces_each_change(
    controller: tuple[LockServices, StatusSink, RecordedEvents], client: EtcdClient
) -> None:
    services, sink, events = controller
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    ref = (namespace, "nightly")
    await services.serve(_lock(*ref))
    await sink.until(ref, lambda s: s["phase"] == "Free")
    async with Session(client, ttl=10) as session:
        async with Mutex(session, f"/etcdlock/locks/{namespace}/nightly", holder="report-1") as held:
            status = await sink.until(ref, lambda s: s["phase"] == "Held")
            assert [(h["holder"], h["fencingToken"]) for h in status["holders"]] == [("report-1", held.token)]
        await sink.until(ref, lambda s: s["phase"] == "Free")
    assert events.reasons() == ["Acquired", "Released"]
    assert all(e.kind == "DistributedLock" and e.name == "nightly" for e in events.events)


async def test_a_lock_whose_key_its_namespace_may_not_use_is_an_error_told_once(
    controller: tuple[LockServices, StatusSink, RecordedEvents],
) -> None:
    services, sink, events = controller
    ref = (f"ns-{uuid.uuid4().hex[:8]}", "borrowed")
    await services.serve(_lock(*ref, key="/etcdlock/locks/someone-else/theirs"))
    status = await sink.until(ref, lambda s: s["phase"] == "Error")
    ready = status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "KeyNotAllowed")
    await services.serve(_lock(*ref, key="/etcdlock/locks/someone-else/theirs"))  # resumed: the same spec
    assert events.reasons("Warning") == ["KeyNotAllowed"]


async def test_a_changed_spec_restarts_the_service_and_a_deleted_lock_frees_its_key(
    controller: tuple[LockServices, StatusSink, RecordedEvents],
) -> None:
    services, sink, _ = controller
    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    first, second = (namespace, "first"), (namespace, "second")
    shared = f"/etcdlock/locks/{namespace}/shared"
    await services.serve(_lock(*first, key=shared))
    await sink.until(first, lambda s: s["phase"] == "Free")
    await services.serve(_lock(*second, key=shared))
    status = await sink.until(second, lambda s: s["phase"] == "Error")
    assert status["conditions"][0]["reason"] == "KeyConflict"
    assert await services.deleted(first) == [second]
    await services.serve(_lock(*second, key=shared, permits=2))
    status = await sink.until(second, lambda s: s["phase"] == "Free")
    assert status["conditions"][0]["message"].startswith("0/2 held")
