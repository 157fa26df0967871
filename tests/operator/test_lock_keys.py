"""A DistributedLock's etcd key is its namespace's: it can reach neither another namespace's locks nor the
operator's own keys, nor share contenders with another lock. Refused at admission (the webhook) and by the
operator itself (for locks stored without the webhook, or before the rules existed)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
from kubernetes.client import ApiClient
from operator_support import (
    OperatorThread,
    create_lock,
    delete_lock,
    event_reasons,
    eventually,
    phase,
    status_of,
)
from test_pods import create_pod, gated, held, note, read_pod

from etcdlock.operator.config import WebhookSettings
from etcdlock.operator.errors import KeyConflict, KeyNotAllowed
from etcdlock.operator.lockkeys import KeyPolicy, LockKey, LockKeys, overlaps
from etcdlock.operator.names import MESSAGE_ANNOTATION, STATE_ANNOTATION, WAITING
from etcdlock.operator.webhook import configuration
from etcdlock_sandbox.etcd import LocalEtcd, free_port

# The rules, as plain functions


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("/x/a", "/x/a", True),
        ("/x/a", "/x/a/b", True),
        ("/x/a/b", "/x/a", True),
        ("/x/a", "/x/ab", False),
        ("/x/a", "/x/b", False),
    ],
)
def test_keys_overlap_when_their_contenders_can_mix(a: str, b: str, expected: bool) -> None:
    assert overlaps(a, b) is expected


def test_a_lock_keeps_its_key_under_its_own_namespace() -> None:
    policy = KeyPolicy.parse([], "/etcdlock/operator/leader")
    policy.check("ta", "/etcdlock/locks/ta/shared")
    policy.check("ta", "/etcdlock/locks/ta/nested/deeper")
    for key in ("/etcdlock/locks/tb/shared", "/etcdlock/locks/ta", "/etcdlock/locks/tab/x", "/elsewhere/x"):
        with pytest.raises(KeyNotAllowed, match="under /etcdlock/locks/ta/"):
            policy.check("ta", key)


def test_an_admin_shared_prefix_is_open_to_every_namespace_but_never_the_operators_keys() -> None:
    policy = KeyPolicy.parse(["/jobs/"], "/elections/etcdlock")
    policy.check("ta", "/jobs/nightly")
    policy.check("tb", "/jobs/nightly")
    for bad in (
        "jobs",
        "/etcdlock",
        "/etcdlock/operator/x",
        "/etcdlock/locks/ta",
        "/elections",
        "/elections/etcdlock/x",
    ):
        with pytest.raises(ValueError, match="--shared-key-prefix"):
            KeyPolicy.parse([bad], "/elections/etcdlock")


def test_the_older_of_two_overlapping_locks_keeps_the_key_and_the_other_is_served_once_it_goes() -> None:
    keys = LockKeys()
    old = LockKey(("ta", "a"), None, "/etcdlock/locks/ta/a", "2026-01-01T00:00:00Z")
    new = LockKey(("ta", "b"), None, "/etcdlock/locks/ta/a/b", "2026-01-02T00:00:00Z")
    elsewhere = LockKey(("ta", "c"), ("ta", "etcd-c"), "/etcdlock/locks/ta/a", "2026-01-03T00:00:00Z")
    for entry in (old, new, elsewhere):
        keys.set(entry)
    keys.check(old)
    keys.check(elsewhere)  # another etcd: no contender can mix
    with pytest.raises(KeyConflict, match="DistributedLock ta/a"):
        keys.check(new)
    assert keys.forget(("ta", "a")) == [("ta", "b")]
    keys.check(new)


# At admission


@pytest.fixture
def other_namespace(api: ApiClient) -> Iterator[str]:
    name = f"op-{uuid.uuid4().hex[:8]}"
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def refusal(api: ApiClient, namespace: str, name: str, spec: dict[str, object]) -> str:
    with pytest.raises(kubernetes.client.ApiException) as refused:
        create_lock(api, namespace, name, spec)
    assert refused.value.status == 403, refused.value.body
    return str(refused.value.body)


def test_the_key_index_finds_exactly_the_overlapping_locks_a_scan_of_every_lock_finds() -> None:
    """Random keys (nested, equal, siblings sharing a prefix such as /a and /ab) in two etcds: the indexed
    check and forget agree with comparing every pair, as locks come and go."""
    choose = random.Random(11)
    segments = ["a", "ab", "b", "a-b", "c"]
    keys = LockKeys()
    known: dict[tuple[str, str], LockKey] = {}
    for step in range(400):
        ref = ("ns", f"lock-{choose.randrange(40)}")
        if ref in known and choose.random() < 0.3:
            gone = known.pop(ref)
            expected = sorted(
                e.ref for e in known.values() if e.place == gone.place and overlaps(e.key, gone.key)
            )
            assert sorted(keys.forget(ref)) == expected, step
            continue
        key = "/l/" + "/".join(choose.choice(segments) for _ in range(choose.randrange(1, 4)))
        place = choose.choice([None, ("ns", "etcd-a")])
        entry = LockKey(ref, place, key, f"2026-12-06T00:00:{step % 60:02d}Z")
        keys.set(entry)
        known[ref] = entry
        older = [
            e
            for e in known.values()
            if e.ref != ref and e.place == place and overlaps(e.key, key) and e.age < entry.age
        ]
        if older:
            with pytest.raises(KeyConflict):
                keys.check(entry)
        else:
            keys.check(entry)


def test_the_webhook_refuses_a_key_of_another_namespace_or_of_the_operator(
    api: ApiClient, namespace: str, operator: OperatorThread
) -> None:
    body = refusal(api, namespace, "alias", {"key": "/etcdlock/locks/someone-else/shared"})
    assert f"under /etcdlock/locks/{namespace}/" in body
    body = refusal(api, namespace, "usurper", {"key": "/etcdlock/operator/leader"})
    assert "is not allowed" in body
    create_lock(api, namespace, "mine", {"key": f"/etcdlock/locks/{namespace}/custom/name"})


def test_the_webhook_refuses_a_key_that_nests_with_another_locks(
    api: ApiClient, namespace: str, operator: OperatorThread
) -> None:
    create_lock(api, namespace, "outer", {})
    body = refusal(api, namespace, "inner", {"key": f"/etcdlock/locks/{namespace}/outer/inner"})
    assert f"DistributedLock {namespace}/outer" in body
    body = refusal(api, namespace, "twin", {"key": f"/etcdlock/locks/{namespace}/outer"})
    assert "would share contenders" in body
    objects = kubernetes.client.CustomObjectsApi(api)
    group, version, plural = "etcdlock.io", "v1alpha1", "distributedlocks"
    objects.patch_namespaced_custom_object(
        group, version, namespace, plural, "outer", {"spec": {"permits": 2}}
    )
    create_lock(api, namespace, "later", {})
    moved = {"spec": {"key": f"/etcdlock/locks/{namespace}/outer/x"}}
    with pytest.raises(kubernetes.client.ApiException) as refused:
        objects.patch_namespaced_custom_object(group, version, namespace, plural, "later", moved)
    assert refused.value.status == 403, "an update that moves the key into another lock's is refused too"


# In the operator, whatever got stored


@pytest.fixture
def unguarded(
    api: ApiClient, namespace: str, etcd: LocalEtcd, kubeconfig: Path, webhook_certs: Path
) -> Iterator[OperatorThread]:
    """The operator with its pod gate registered but not its lock check: locks are stored unchecked, as an
    install from before the check (or a webhook outage with another failurePolicy) stored them."""
    settings = WebhookSettings("127.0.0.1", free_port(), webhook_certs)
    registrations = kubernetes.client.AdmissionregistrationV1Api(api)
    gate = configuration(settings, f"etcdlock-{namespace}", namespace)
    registrations.create_mutating_webhook_configuration(gate)
    running = OperatorThread(etcd.endpoint_list, namespace, kubeconfig, webhook=settings).start()
    try:
        yield running
    finally:
        running.stop()
        registrations.delete_mutating_webhook_configuration(gate["metadata"]["name"])


def test_a_stored_lock_with_a_foreign_key_is_not_served_and_its_pods_wait_saying_why(
    api: ApiClient, namespace: str, unguarded: OperatorThread, etcd: LocalEtcd
) -> None:
    create_lock(api, namespace, "alias", {"key": "/etcdlock/locks/someone-else/shared"})
    status = eventually(lambda: status_of(api, namespace, "alias"), phase("Error"), "the lock refused")
    (ready,) = status["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", "KeyNotAllowed")
    event_reasons(api, namespace, "alias", "KeyNotAllowed")
    create_pod(api, namespace, "hopeful", "alias")
    pod = eventually(
        lambda: read_pod(api, namespace, "hopeful"),
        lambda p: (
            note(p, STATE_ANNOTATION) == WAITING and "not allowed" in (note(p, MESSAGE_ANNOTATION) or "")
        ),
        "the pod told why it waits",
    )
    assert gated(pod)
    keys = etcd.etcdctl("get", "/etcdlock/locks/someone-else/", "--prefix", "--keys-only").stdout.split()
    assert keys == [], "nothing was queued under the other namespace's key"


def test_of_two_stored_locks_sharing_contenders_the_older_is_served_until_it_goes(
    api: ApiClient, namespace: str, unguarded: OperatorThread
) -> None:
    create_lock(api, namespace, "first", {})
    eventually(lambda: status_of(api, namespace, "first"), phase("Free"), "the first served")
    create_lock(api, namespace, "second", {"key": f"/etcdlock/locks/{namespace}/first/sub"})
    status = eventually(lambda: status_of(api, namespace, "second"), phase("Error"), "the second refused")
    assert status["conditions"][0]["reason"] == "KeyConflict"
    create_pod(api, namespace, "patient", "second")
    eventually(
        lambda: read_pod(api, namespace, "patient"),
        lambda p: "would share contenders" in (note(p, MESSAGE_ANNOTATION) or ""),
        "the pod told why it waits",
    )
    delete_lock(api, namespace, "first")
    eventually(lambda: status_of(api, namespace, "second"), phase("Held"), "the second served once alone")
    eventually(lambda: read_pod(api, namespace, "patient"), held, "its pod holding")
