"""kopf against the API emulator: a tiny operator in a fresh registry, run as kopf runs in a cluster.

The operator runs in its own thread and event loop (``kopf.run``), logs in to the sandbox through a login
handler, watches one namespace, and is stopped with its stop flag. The tests assert only on what the API
shows (status, finalizers, annotations, events) and on how often each handler was called.

"Exactly once" needs a point after which kopf has processed every echo of its own patches. kopf handles
the events of one object in order, in one worker, and after each change stores the essence it handled in
the ``last-handled-configuration`` annotation, even when no handler matched. So a later label change
(which no handler here reacts to) is a barrier: once that label shows up in the annotation, every earlier
event of the object has been handled, and a second invocation would already have happened.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kopf
import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from etcdlock_sandbox.cluster import SandboxThread

GROUP, VERSION, PLURAL, KIND = "kopf.etcdlock.test", "v1", "kopfexamples", "KopfExample"
FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
LAST_HANDLED = "kopf.zalando.org/last-handled-configuration"
PROGRESS_PREFIX = "kopf.zalando.org/"

WAIT = 10.0  # seconds for any one observable change
POLL = 0.05
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0

T = TypeVar("T")
Obj = dict[str, Any]


def eventually(probe: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(POLL)


@dataclass
class Operator:
    """The running operator: its namespace and how often each handler ran, per object name."""

    namespace: str
    calls: collections.Counter[tuple[str, str]]


def build_registry(url: str, calls: collections.Counter[tuple[str, str]]) -> kopf.OperatorRegistry:
    """The operator's handlers in a registry of their own (the default one would leak between tests).

    All handlers are async: sync ones run in kopf's thread pool, whose threads outlive ``kopf.run``.
    """
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = True
        settings.posting.level = logging.INFO
        settings.posting.loggers = True  # also post the per-object log lines as events (off by default)

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url)

    @kopf.on.create(GROUP, VERSION, PLURAL, id="create_fn", registry=registry)
    async def create_fn(
        name: str, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, **_: Any
    ) -> dict[str, Any]:
        calls["create", name] += 1
        patch.status["phase"] = "Created"
        kopf.info(body, reason="Greeted", message=f"hello {name}")
        return {"message": f"created {name}", "size": spec.get("size")}

    @kopf.on.update(GROUP, VERSION, PLURAL, id="update_fn", field="spec", registry=registry)
    async def update_fn(name: str, new: Any, patch: kopf.Patch, **_: Any) -> None:
        calls["update", name] += 1
        patch.status["observedSize"] = (new or {}).get("size")

    @kopf.on.delete(GROUP, VERSION, PLURAL, id="delete_fn", registry=registry)
    async def delete_fn(name: str, **_: Any) -> None:
        calls["delete", name] += 1

    return registry


@contextlib.contextmanager
def running_operator(registry: kopf.OperatorRegistry, namespace: str) -> Iterator[None]:
    """kopf in its own thread and loop; stopped with its stop flag and joined, whatever happens."""
    stop_flag, ready_flag = threading.Event(), threading.Event()
    crashed: list[BaseException] = []
    threads_before = set(threading.enumerate())

    def main() -> None:
        try:
            kopf.run(
                registry=registry,
                standalone=True,
                namespaces=[namespace],
                stop_flag=stop_flag,
                ready_flag=ready_flag,
            )
        except BaseException as exc:
            crashed.append(exc)

    thread = threading.Thread(target=main, name="kopf-operator", daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        while not ready_flag.wait(POLL):
            assert thread.is_alive(), f"the operator exited while starting: {crashed}"
            assert time.monotonic() - started < START_TIMEOUT, "the operator did not become ready"
        yield
    finally:
        stop_flag.set()
        thread.join(STOP_TIMEOUT)
    assert not thread.is_alive(), f"the operator did not stop within {STOP_TIMEOUT} s"
    assert not crashed, f"the operator failed: {crashed}"
    leftover = [t.name for t in threading.enumerate() if t not in threads_before]
    assert not leftover, f"the operator left threads behind: {leftover}"


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api_client(kubeconfig: Path) -> Iterator[client.ApiClient]:
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(scope="module")
def crd(api_client: client.ApiClient) -> Iterator[None]:
    extensions = client.ApiextensionsV1Api(api_client)
    open_object = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    extensions.create_custom_resource_definition(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{PLURAL}.{GROUP}"},
            "spec": {
                "group": GROUP,
                "scope": "Namespaced",
                "names": {"plural": PLURAL, "singular": "kopfexample", "kind": KIND},
                "versions": [
                    {
                        "name": VERSION,
                        "served": True,
                        "storage": True,
                        "subresources": {"status": {}},
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {"spec": open_object, "status": open_object},
                            }
                        },
                    }
                ],
            },
        }
    )
    try:
        yield
    finally:
        extensions.delete_custom_resource_definition(f"{PLURAL}.{GROUP}")


@pytest.fixture(scope="module")
def namespace(api_client: client.ApiClient) -> Iterator[str]:
    core = client.CoreV1Api(api_client)
    name = f"kopf-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


@pytest.fixture(scope="module")
def operator(sandbox: SandboxThread, crd: None, namespace: str) -> Iterator[Operator]:
    calls: collections.Counter[tuple[str, str]] = collections.Counter()
    # kopf posts its per-object log lines as events only if they are logged at all; its CLI sets the
    # level (kopf.configure), kopf.run leaves it to the caller.
    object_logger = logging.getLogger("kopf.objects")
    level = object_logger.level
    object_logger.setLevel(logging.INFO)
    try:
        with running_operator(build_registry(sandbox.url, calls), namespace):
            yield Operator(namespace, calls)
    finally:
        object_logger.setLevel(level)


@pytest.fixture
def objects(api_client: client.ApiClient, operator: Operator) -> CustomObjects:
    return CustomObjects(client.CustomObjectsApi(api_client), operator.namespace)


class CustomObjects:
    """The KopfExample objects of the operator's namespace, through the kubernetes client."""

    def __init__(self, api: client.CustomObjectsApi, namespace: str) -> None:
        self.api = api
        self.namespace = namespace

    def create(self, name: str, spec: Obj) -> Obj:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": name}, "spec": spec}
        created: Obj = self.api.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
        return created

    def get(self, name: str) -> Obj | None:
        try:
            found: Obj = self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def patch(self, name: str, patch: Obj) -> Obj:
        patched: Obj = self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, patch
        )
        return patched

    def delete(self, name: str) -> Obj:
        deleted: Obj = self.api.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        return deleted

    def handled(self, name: str, check: Callable[[Obj, Obj], bool], what: str) -> Obj:
        """Wait until kopf is done with the object (no progress annotations) and ``check(obj, essence)``."""

        def probe() -> Obj | None:
            obj = self.get(name)
            if obj is None:
                return None
            annotations = obj["metadata"].get("annotations") or {}
            if LAST_HANDLED not in annotations:
                return None
            in_progress = [k for k in annotations if k.startswith(PROGRESS_PREFIX) and k != LAST_HANDLED]
            if in_progress:
                return None
            return obj if check(obj, json.loads(annotations[LAST_HANDLED])) else None

        return eventually(probe, f"kopf to handle {name} ({what})")

    def barrier(self, name: str) -> Obj:
        """Change a label no handler reacts to and wait until kopf has recorded it as handled."""
        token = uuid.uuid4().hex[:8]
        self.patch(name, {"metadata": {"labels": {"barrier": token}}})
        return self.handled(
            name,
            lambda _, essence: (essence.get("metadata", {}).get("labels") or {}).get("barrier") == token,
            "the barrier label",
        )


# -- tests ------------------------------------------------------------------------------------------


def test_create_handler_runs_exactly_once_and_its_status_is_visible(
    operator: Operator, objects: CustomObjects
) -> None:
    objects.create("created-once", {"size": 1})

    obj = objects.handled("created-once", lambda obj, _: "create_fn" in obj.get("status", {}), "creation")

    assert obj["status"]["phase"] == "Created"
    assert obj["status"]["create_fn"] == {"message": "created created-once", "size": 1}
    assert FINALIZER in obj["metadata"]["finalizers"]
    objects.barrier("created-once")
    assert operator.calls["create", "created-once"] == 1
    assert operator.calls["update", "created-once"] == 0


def test_update_handler_runs_once_per_spec_change(operator: Operator, objects: CustomObjects) -> None:
    objects.create("updated", {"size": 1})
    objects.handled("updated", lambda obj, _: "create_fn" in obj.get("status", {}), "creation")

    for size in (2, 3):
        objects.patch("updated", {"spec": {"size": size}})
        # kopf writes the handler's result through the status subresource, in a patch of its own: it may
        # land a moment after the annotation that records the spec as handled.
        obj = objects.handled(
            "updated",
            lambda o, essence, size=size: (
                essence["spec"]["size"] == size and (o.get("status") or {}).get("observedSize") == size
            ),
            f"size {size}",
        )
        assert obj["status"]["observedSize"] == size

    objects.barrier("updated")
    assert operator.calls["update", "updated"] == 2
    assert operator.calls["create", "updated"] == 1


def test_delete_runs_the_delete_handler_once_and_the_finalizer_lets_the_object_go(
    operator: Operator, objects: CustomObjects
) -> None:
    objects.create("deleted", {"size": 1})
    objects.handled("deleted", lambda obj, _: FINALIZER in obj["metadata"].get("finalizers", ()), "creation")

    marked = objects.delete("deleted")

    assert marked["metadata"].get("deletionTimestamp"), "the finalizer must hold the object back"
    eventually(lambda: objects.get("deleted") is None, "the object to be gone")
    assert operator.calls["delete", "deleted"] == 1
    assert operator.calls["create", "deleted"] == 1


def test_kopf_posts_events_about_the_object(
    operator: Operator, objects: CustomObjects, api_client: client.ApiClient
) -> None:
    core = client.CoreV1Api(api_client)
    created = objects.create("announced", {"size": 1})

    def events() -> dict[str, str] | None:
        found = core.list_namespaced_event(
            operator.namespace, field_selector="involvedObject.name=announced"
        ).items
        messages = {event.message: event.reason for event in found}
        wanted = {"hello announced", "Handler 'create_fn' succeeded."}
        return messages if wanted <= messages.keys() else None

    messages = eventually(events, "kopf's events about the object")

    assert messages["hello announced"] == "Greeted"
    found = core.list_namespaced_event(operator.namespace, field_selector="involvedObject.name=announced")
    for event in found.items:
        assert event.involved_object.uid == created["metadata"]["uid"]
        assert event.involved_object.kind == KIND
