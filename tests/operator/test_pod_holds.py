"""PodHolds and PodHold without kopf or an API server: a fake pod API that keeps pods as the API server
would (patches applied, resourceVersion bumped, the ungate conditional on it) and delivers their watch
events, a recorder of Events, and the real etcd of the session (never mocked).

Every wait is on something observable (a pod's state, etcd's queue, watched) and bounded.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import kubernetes
import pytest
from fakes import RecordedEvents
from prometheus_client import CollectorRegistry, Counter

from etcdlock.etcd import EtcdClient, read_contenders
from etcdlock.etcd.keys import prefix, range_end
from etcdlock.operator.errors import LockNotFound
from etcdlock.operator.leadership import Leadership
from etcdlock.operator.locks import LockRules, LockSpec
from etcdlock.operator.names import (
    ERROR,
    HELD,
    LEASE_ANNOTATION,
    LOCK_ANNOTATION,
    LOCK_NOT_FOUND,
    MANAGED_LABEL,
    MESSAGE_ANNOTATION,
    RELEASED,
    SCHEDULING_GATE,
    STATE_ANNOTATION,
    TOKEN_ANNOTATION,
    WAITING,
)
from etcdlock.operator.pods import PodContext, PodHolds, annotations_of, parse_lease
from etcdlock.operator.pods.api import PodChanged, is_gated, pod_ref
from etcdlock.operator.stores import Store, Stores

BOUND = 10.0

Pod = dict[str, Any]
Ref = tuple[str, str]


class Changes:
    """Something changed (a pod, the leases adopted): whoever waits on a condition looks again."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def until(self, ok: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(BOUND):
                while not ok():
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"timed out waiting for {what}")


class FakePods:
    """Pods as the API server keeps them, for the pod flow (the surface of ``PodApi`` it uses). Every
    change is a watch event for whoever :meth:`deliver` feeds."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.pods: dict[Ref, Pod] = {}
        self.ungates: list[tuple[str, str]] = []  # (pod name, lock) of every ungate that was written
        self.labelled: list[str] = []  # the pods the flow labelled again
        self.states: dict[str, list[str | None]] = {}  # every pod's state annotation, version by version
        self.before_ungate: Callable[[Ref], None] | None = None
        self._events: asyncio.Queue[tuple[str, Pod]] = asyncio.Queue()
        self.changes = Changes()

    # What users and the kubelet do

    def create(self, name: str, lock: str) -> Ref:
        ref = (self.namespace, name)
        self.pods[ref] = {
            "metadata": {
                "namespace": self.namespace,
                "name": name,
                "uid": uuid.uuid4().hex,
                "resourceVersion": "1",
                "annotations": {LOCK_ANNOTATION: lock},
                "labels": {MANAGED_LABEL: "true"},
            },
            "spec": {"schedulingGates": [{"name": SCHEDULING_GATE}]},
            "status": {"phase": "Pending"},
        }
        self._changes(ref, "ADDED")
        return ref

    def edit(
        self,
        ref: Ref,
        annotations: Mapping[str, str | None] = {},
        *,
        phase: str | None = None,
        ungate: bool = False,
    ) -> None:
        self._apply(ref, annotations, ungate)
        if phase is not None:
            self.pods[ref]["status"]["phase"] = phase
        self._changes(ref, "MODIFIED")

    def delete(self, ref: Ref) -> None:
        pod = self.pods.pop(ref)
        self._events.put_nowait(("DELETED", copy.deepcopy(pod)))
        self.changes.wake()

    def unlabel(self, ref: Ref) -> None:
        """Someone removes the managed label: the pod leaves the operator's watch (a DELETED event), as
        the API server reports an object that no longer matches a watch's label selector."""
        self.pods[ref]["metadata"]["labels"].pop(MANAGED_LABEL)
        meta = self.pods[ref]["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        self._events.put_nowait(("DELETED", copy.deepcopy(self.pods[ref])))
        self.changes.wake()

    # The pod flow's API

    async def annotate(
        self,
        ref: Ref,
        annotations: Mapping[str, str | None],
        *,
        ungate: bool = False,
        attempts: int | None = None,
    ) -> Pod | None:
        if ref not in self.pods:
            return None
        self._apply(ref, annotations, ungate)
        return self._changes(ref, "MODIFIED")

    async def read(self, ref: Ref) -> Pod | None:
        return copy.deepcopy(self.pods[ref]) if ref in self.pods else None

    async def label(self, ref: Ref) -> Pod | None:
        if ref not in self.pods:
            return None
        self.labelled.append(ref[1])
        self.pods[ref]["metadata"]["labels"][MANAGED_LABEL] = "true"
        return self._changes(ref, "ADDED")  # it matches the watch's selector again

    async def ungate(self, pod: Pod, lock: str, annotations: Mapping[str, str | None]) -> Pod | None:
        if annotations_of(pod).get(LOCK_ANNOTATION) != lock:
            return None
        ref = pod_ref(pod)
        if self.before_ungate is not None:
            self.before_ungate(ref)
        if ref not in self.pods:
            return None
        if self.pods[ref]["metadata"]["resourceVersion"] != pod["metadata"]["resourceVersion"]:
            raise PodChanged(f"pod {ref[0]}/{ref[1]} changed")
        self._apply(ref, annotations, ungate=True)
        self.ungates.append((ref[1], lock))
        return self._changes(ref, "MODIFIED")

    # The watch, and what the test waits on

    async def deliver(self, holds: PodHolds) -> None:
        """The watch: every change, in order, to ``holds`` (as kopf hands them over)."""
        while True:
            event_type, pod = await self._events.get()
            holds.observe(event_type, pod)

    async def until(self, ref: Ref, ok: Callable[[Pod], bool], what: str) -> Pod:
        """Wait (bounded) until the pod satisfies ``ok``; the pod then."""
        await self.changes.until(lambda: ok(self.pods[ref]), f"pod {ref[1]} to be {what}")
        return self.pods[ref]

    async def in_state(self, ref: Ref, state: str) -> Pod:
        return await self.until(ref, lambda pod: annotations_of(pod).get(STATE_ANNOTATION) == state, state)

    def _apply(self, ref: Ref, annotations: Mapping[str, str | None], ungate: bool) -> None:
        pod = self.pods[ref]
        notes = pod["metadata"]["annotations"]
        for key, value in annotations.items():
            if value is None:
                notes.pop(key, None)
            else:
                notes[key] = value
        if ungate:
            gates = pod["spec"]["schedulingGates"]
            pod["spec"]["schedulingGates"] = [g for g in gates if g["name"] != SCHEDULING_GATE]

    def _changes(self, ref: Ref, event_type: str) -> Pod:
        meta = self.pods[ref]["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        self.states.setdefault(ref[1], []).append(meta["annotations"].get(STATE_ANNOTATION))
        self._events.put_nowait((event_type, copy.deepcopy(self.pods[ref])))
        self.changes.wake()
        return copy.deepcopy(self.pods[ref])


class Flow:
    """The pod flow of one replica (a new one after :meth:`new_leader`) over the fake pods and real etcd."""

    def __init__(self, client: EtcdClient, kube: kubernetes.client.ApiClient) -> None:
        self.client = client
        self.namespace = f"t-{uuid.uuid4().hex[:8]}"
        self.pods = FakePods(self.namespace)
        self.locks: dict[str, LockSpec] = {}
        self.adopted: list[int] = []
        self._kube = kube
        self.events, self.holds = self._holds()
        self._watch = self._watching()

    def _holds(self) -> tuple[RecordedEvents, PodHolds]:
        stores = Stores(Store(self.client, None, Leadership()), self._kube)
        events = RecordedEvents()
        context = PodContext(stores, self.pods, LockRules(), self._resolve, self._adopted, events)
        return events, PodHolds(context, Counter("pod_events", "", registry=CollectorRegistry()))

    def _adopted(self, lease: int) -> None:
        self.adopted.append(lease)
        self.pods.changes.wake()

    async def _resolve(self, namespace: str, name: str) -> LockSpec:
        if name not in self.locks:
            raise LockNotFound(f"DistributedLock {name} does not exist")
        return self.locks[name]

    def create_lock(self, name: str) -> LockSpec:
        spec = LockSpec(key=f"/etcdlock-test/{self.namespace}/{name}", permits=1, ttl_seconds=5, cluster=None)
        self.locks[name] = spec
        self.holds.changes.changed((self.namespace, name))
        return spec

    def delete_lock(self, name: str) -> None:
        del self.locks[name]
        self.holds.lock_deleted(self.namespace, name)

    def _watching(self) -> asyncio.Task[None]:
        return asyncio.create_task(self.pods.deliver(self.holds))

    async def new_leader(self) -> None:
        """This replica stops leading (its watch first, then its holds, which keep every lease); a new one
        takes the pods over, watching from where the first stopped."""
        await self._stop_watching()
        await self.holds.stop_all()
        self.events, self.holds = self._holds()
        self._watch = self._watching()

    async def _stop_watching(self) -> None:
        self._watch.cancel()
        await asyncio.gather(self._watch, return_exceptions=True)

    async def queue(self, lock: str) -> list[int]:
        """The leases of the keys in the lock's etcd queue, in order."""
        _, contenders = await read_contenders(self.client, self.locks[lock].key)
        return [c.lease for c in contenders]

    async def until_queued(self, lock: str, leases: list[int], what: str) -> None:
        """Wait (bounded) until the lock's etcd queue holds exactly ``leases``' keys, in order: looked at
        again on every change etcd reports under the lock's key."""
        key = self.locks[lock].key
        try:
            async with asyncio.timeout(BOUND):
                revision, contenders = await read_contenders(self.client, key)
                if [c.lease for c in contenders] == leases:
                    return
                watched = self.client.watch_events(
                    prefix(key), range_end(prefix(key)), start_revision=revision + 1
                )
                async with watched as events:
                    async for _ in events:
                        if await self.queue(lock) == leases:
                            return
        except TimeoutError:
            pytest.fail(f"timed out waiting for {what}; queued: {await self.queue(lock)}")

    async def close(self) -> None:
        await self._stop_watching()
        await self.holds.stop_all()


def lease_of(pod: Pod) -> int:
    lease = parse_lease(annotations_of(pod).get(LEASE_ANNOTATION))
    assert lease is not None, pod
    return lease


def held_and_running(pod: Pod) -> bool:
    return annotations_of(pod).get(STATE_ANNOTATION) == HELD and not is_gated(pod)


@pytest.fixture
async def flow(client: EtcdClient) -> AsyncIterator[Flow]:
    kube = kubernetes.client.ApiClient()
    running = Flow(client, kube)
    try:
        yield running
    finally:
        await running.close()
        kube.close()


async def test_a_gated_pod_queues_and_is_ungated_once_its_key_holds(flow: Flow) -> None:
    lock = flow.create_lock("a")
    ref = flow.pods.create("p1", "a")
    pod = await flow.pods.until(ref, held_and_running, "held and ungated")
    (holder,) = (await read_contenders(flow.client, lock.key))[1]
    assert holder.lease == lease_of(pod)
    assert annotations_of(pod)[TOKEN_ANNOTATION] == str(holder.fencing_token)
    assert flow.events.reasons() == ["Acquired"]
    assert flow.pods.ungates == [("p1", "a")]


async def test_the_pods_of_one_lock_hold_it_one_at_a_time_in_the_order_seen(flow: Flow) -> None:
    flow.create_lock("a")
    first, second, third = (flow.pods.create(name, "a") for name in ("p1", "p2", "p3"))
    held = await flow.pods.until(first, held_and_running, "held")
    waiting = [await flow.pods.in_state(ref, WAITING) for ref in (second, third)]
    assert all(is_gated(pod) for pod in waiting)
    assert await flow.queue("a") == [lease_of(held), *map(lease_of, waiting)]

    flow.pods.edit(first, phase="Succeeded")
    released = await flow.pods.in_state(first, RELEASED)
    assert annotations_of(released)[MESSAGE_ANNOTATION] == "released the lock: the pod succeeded"
    after = await flow.pods.until(second, held_and_running, "held after the first")
    assert int(annotations_of(after)[TOKEN_ANNOTATION]) > int(annotations_of(held)[TOKEN_ANNOTATION])
    assert await flow.client.time_to_live(lease_of(held)) == -1

    flow.pods.delete(second)
    await flow.pods.until(third, held_and_running, "held once the second pod is deleted")
    assert flow.pods.ungates == [("p1", "a"), ("p2", "a"), ("p3", "a")]


async def test_a_waiting_pod_ungated_by_someone_else_leaves_the_queue_and_is_told_it_is_not_guarded(
    flow: Flow,
) -> None:
    flow.create_lock("a")
    first, second = flow.pods.create("p1", "a"), flow.pods.create("p2", "a")
    holder = await flow.pods.until(first, held_and_running, "held")
    await flow.pods.in_state(second, WAITING)

    flow.pods.edit(second, ungate=True)
    told = await flow.pods.in_state(second, ERROR)
    assert "mutual exclusion is not enforced" in annotations_of(told)[MESSAGE_ANNOTATION]
    assert "NotGated" in flow.events.reasons("Warning")

    await flow.until_queued("a", [lease_of(holder)], "the ungated pod's key to leave the queue")


async def test_a_gated_pod_switched_to_another_lock_leaves_the_old_queue_and_holds_the_new_lock(
    flow: Flow,
) -> None:
    flow.create_lock("a")
    flow.create_lock("b")
    first, second = flow.pods.create("p1", "a"), flow.pods.create("p2", "a")
    holder = await flow.pods.until(first, held_and_running, "held")
    await flow.pods.in_state(second, WAITING)

    flow.pods.edit(second, {LOCK_ANNOTATION: "b"})
    switched = await flow.pods.until(second, held_and_running, "held for b")
    (b_holder,) = (await read_contenders(flow.client, flow.locks["b"].key))[1]
    assert b_holder.lease == lease_of(switched)
    assert annotations_of(switched)[TOKEN_ANNOTATION] == str(b_holder.fencing_token)
    assert await flow.queue("a") == [lease_of(holder)]
    assert flow.pods.ungates == [("p1", "a"), ("p2", "b")]


async def test_a_started_pod_switched_to_another_lock_gives_the_old_one_back_and_does_not_wait(
    flow: Flow,
) -> None:
    flow.create_lock("a")
    flow.create_lock("b")
    ref = flow.pods.create("p1", "a")
    await flow.pods.until(ref, held_and_running, "held")

    flow.pods.edit(ref, {LOCK_ANNOTATION: "b"}, phase="Running")
    released = await flow.pods.in_state(ref, RELEASED)
    message = annotations_of(released)[MESSAGE_ANNOTATION]
    assert "cannot be held back again, so it does not wait for b" in message
    assert flow.events.reasons("Warning") == ["LockChanged"]
    assert await flow.queue("a") == [] and await flow.queue("b") == []


async def test_a_pod_switched_to_another_lock_as_it_is_granted_is_never_ungated_for_the_old_one(
    flow: Flow,
) -> None:
    flow.create_lock("a")
    flow.create_lock("b")

    def switch_first(ref: Ref) -> None:
        # The user's edit lands between the grant and the ungate: the conditional write must fail.
        flow.pods.before_ungate = None
        flow.pods.edit(ref, {LOCK_ANNOTATION: "b"})

    flow.pods.before_ungate = switch_first
    ref = flow.pods.create("p1", "a")
    pod = await flow.pods.until(ref, held_and_running, "held for b")
    assert flow.pods.ungates == [("p1", "b")]
    assert ERROR not in flow.pods.states["p1"]  # the refused ungate is decided again, not a failure
    (b_holder,) = (await read_contenders(flow.client, flow.locks["b"].key))[1]
    assert annotations_of(pod)[TOKEN_ANNOTATION] == str(b_holder.fencing_token)

    await flow.until_queued("a", [], "the key in a's queue to go")


async def test_a_deleted_lock_is_given_back_by_its_holder_and_its_waiter_waits_for_it_again(
    flow: Flow,
) -> None:
    flow.create_lock("a")
    first, second = flow.pods.create("p1", "a"), flow.pods.create("p2", "a")
    await flow.pods.until(first, held_and_running, "held")
    await flow.pods.in_state(second, WAITING)

    flow.delete_lock("a")
    released = await flow.pods.in_state(first, RELEASED)
    assert annotations_of(released)[MESSAGE_ANNOTATION] == "released the lock: DistributedLock a was deleted"
    waiting = "DistributedLock a does not exist; the pod waits until it is created (is the name right?)"
    await flow.pods.until(second, lambda pod: annotations_of(pod).get(MESSAGE_ANNOTATION) == waiting, waiting)
    assert is_gated(flow.pods.pods[second])
    assert annotations_of(flow.pods.pods[second])[STATE_ANNOTATION] == LOCK_NOT_FOUND

    flow.create_lock("a")
    await flow.pods.until(second, held_and_running, "held once the lock is created again")


async def test_a_new_leader_adopts_the_pods_leases_keeping_the_holder_and_the_order(flow: Flow) -> None:
    flow.create_lock("a")
    first, second = flow.pods.create("p1", "a"), flow.pods.create("p2", "a")
    holder = await flow.pods.until(first, held_and_running, "held")
    waiter = await flow.pods.in_state(second, WAITING)
    queued = await flow.queue("a")

    await flow.new_leader()
    assert await flow.client.time_to_live(lease_of(holder)) > 0
    flow.pods.edit(first)  # the new leader's watch lists every pod
    flow.pods.edit(second)

    leases = sorted([lease_of(holder), lease_of(waiter)])
    await flow.pods.changes.until(lambda: sorted(flow.adopted) == leases, "both leases to be adopted")
    assert await flow.queue("a") == queued
    flow.pods.edit(first, phase="Succeeded")
    await flow.pods.in_state(first, RELEASED)
    after = await flow.pods.until(second, held_and_running, "held after the first")
    assert lease_of(after) == lease_of(waiter)
    assert "PlaceLost" not in flow.events.reasons() and "LockLost" not in flow.events.reasons()


async def test_a_held_pod_whose_label_is_removed_keeps_its_hold_and_is_labelled_again(flow: Flow) -> None:
    """The API server reports a pod leaving the watch's selector as DELETED: the pod still exists, so
    its hold goes on (no release while it runs) and it gets the label back."""
    lock = flow.create_lock("a")
    holder = flow.pods.create("p1", "a")
    pod = await flow.pods.until(holder, held_and_running, "held")
    waiter = flow.pods.create("p2", "a")
    await flow.pods.in_state(waiter, WAITING)
    flow.pods.unlabel(holder)
    flow.pods.unlabel(waiter)
    await flow.pods.until(holder, lambda p: MANAGED_LABEL in p["metadata"]["labels"], "labelled again")
    await flow.pods.until(waiter, lambda p: MANAGED_LABEL in p["metadata"]["labels"], "labelled again")
    assert sorted(flow.pods.labelled) == ["p1", "p2"]
    assert await flow.queue("a") == [lease_of(pod), lease_of(flow.pods.pods[waiter])]
    assert annotations_of(flow.pods.pods[holder])[STATE_ANNOTATION] == HELD
    assert "Released" not in flow.events.reasons()
    flow.pods.edit(holder, phase="Succeeded")
    await flow.pods.until(waiter, held_and_running, "the waiter holding once the holder finished")
    assert (await read_contenders(flow.client, lock.key))[1][0].lease == lease_of(flow.pods.pods[waiter])


async def test_a_pod_deleted_and_created_again_under_its_name_keeps_the_new_pods_hold(flow: Flow) -> None:
    """The old pod's DELETED event is confirmed by a read that already finds the new pod: only the old
    pod's hold goes."""
    flow.create_lock("a")
    first = flow.pods.create("p1", "a")
    old = await flow.pods.until(first, held_and_running, "held")
    flow.pods.delete(first)
    again = flow.pods.create("p1", "a")
    new = await flow.pods.until(again, held_and_running, "the new pod holding")
    assert lease_of(new) != lease_of(old)
    assert await flow.queue("a") == [lease_of(new)]
