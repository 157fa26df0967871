"""The API emulator as the official ``kubernetes`` Python client sees it.

Every test drives the session's sandbox through the real client (typed APIs, ``Watch``) and asserts on
what a caller observes: status codes and reasons, returned objects, watch events. Each test works in a
namespace of its own, so tests sharing the session's sandbox do not see each other's objects.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import trustme
from aiohttp import web
from kubernetes import client
from kubernetes.client import ApiClient, ApiException
from kubernetes.watch import Watch

from etcdlock_sandbox.cluster import SandboxThread

GROUP = "conformance.etcdlock.io"
VERSION = "v1"
PLURAL = "widgets"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
NAMESPACE_LABEL = "conformance.etcdlock.io/namespace"
MUTATED_LABEL = "conformance.etcdlock.io/mutated"
DENY_LABEL = "conformance.etcdlock.io/deny"
WAIT_SECONDS = 10.0
REQUEST_TIMEOUT = 15

Obj = dict[str, Any]


def widget_crd(group: str = GROUP, plural: str = PLURAL, kind: str = "Widget") -> Obj:
    """A namespaced CRD with status and scale subresources, defaults, an enum, bounds and printer columns."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.size",
                            "statusReplicasPath": ".status.ready",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [
                        {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                        {"name": "Color", "type": "string", "jsonPath": ".spec.color"},
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["size"],
                                    "properties": {
                                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                                        "color": {
                                            "type": "string",
                                            "default": "blue",
                                            "enum": ["blue", "red", "green"],
                                        },
                                        "tags": {"type": "array", "items": {"type": "string"}},
                                    },
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {
                                        "phase": {"type": "string"},
                                        "ready": {"type": "integer"},
                                        "selector": {"type": "string"},
                                    },
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def widget(name: str, size: Any = 3, **extra: Any) -> Obj:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": size, **extra},
    }


def configmap(name: str, labels: dict[str, str] | None = None, **metadata: Any) -> Obj:
    return {"metadata": {"name": name, "labels": labels or {}, **metadata}, "data": {"k": "v"}}


def pod(name: str, **spec: Any) -> Obj:
    containers = spec.pop("containers", [{"name": "main", "image": "busybox:1"}])
    return {"metadata": {"name": name}, "spec": {"containers": containers, **spec}}


def status_of(exc: pytest.ExceptionInfo[ApiException]) -> Obj:
    """The ``Status`` object the server sent with an error."""
    body: Obj = json.loads(exc.value.body)
    assert body["kind"] == "Status"
    assert body["code"] == exc.value.status
    return body


def wait_until(condition: Callable[[], bool], what: str, seconds: float = WAIT_SECONDS) -> None:
    """Poll ``condition`` until it holds; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds}s waiting for {what}")
        time.sleep(0.05)


def is_gone(read: Callable[[], Any]) -> bool:
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def names(items: list[Any]) -> set[str]:
    return {item.metadata.name for item in items}


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(kubeconfig: Path) -> Iterator[ApiClient]:
    api_client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    yield api_client
    api_client.close()


@pytest.fixture
def core(api: ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def custom(api: ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.fixture
def namespace(api: ApiClient) -> Iterator[str]:
    """A fresh namespace, labelled with its own name (webhooks select it by that label)."""
    name = f"conformance-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name, "labels": {NAMESPACE_LABEL: name}}})
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture(scope="module")
def widgets(api: ApiClient) -> Iterator[str]:
    """The Widget CRD, served for the whole module; yields its plural."""
    extensions = client.ApiextensionsV1Api(api)
    crd = widget_crd()
    extensions.create_custom_resource_definition(crd)
    yield PLURAL
    extensions.delete_custom_resource_definition(crd["metadata"]["name"])


@dataclass
class WebhookServer:
    """An HTTPS admission webhook: ``/mutate`` adds a label, ``/validate`` denies the deny label."""

    url: str
    port: int
    ca_bundle: str
    reviews: list[Obj] = field(default_factory=list)


def _webhook_app(reviews: list[Obj]) -> web.Application:
    async def mutate(request: web.Request) -> web.Response:
        review = await request.json()
        reviews.append(review)
        labels = review["request"]["object"]["metadata"].get("labels")
        if labels:
            ops = [
                {"op": "add", "path": "/metadata/labels/" + MUTATED_LABEL.replace("/", "~1"), "value": "yes"}
            ]
        else:
            ops = [{"op": "add", "path": "/metadata/labels", "value": {MUTATED_LABEL: "yes"}}]
        response = {
            "uid": review["request"]["uid"],
            "allowed": True,
            "patchType": "JSONPatch",
            "patch": base64.b64encode(json.dumps(ops).encode()).decode(),
        }
        return web.json_response(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        )

    async def validate(request: web.Request) -> web.Response:
        review = await request.json()
        reviews.append(review)
        labels = review["request"]["object"]["metadata"].get("labels") or {}
        response: Obj = {"uid": review["request"]["uid"], "allowed": DENY_LABEL not in labels}
        if not response["allowed"]:
            response["status"] = {
                "code": 403,
                "reason": "Forbidden",
                "message": "objects labelled deny are refused",
            }
        return web.json_response(
            {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
        )

    app = web.Application()
    app.router.add_post("/mutate", mutate)
    app.router.add_post("/validate", validate)
    return app


@contextmanager
def serving_webhook(identity: str) -> Iterator[WebhookServer]:
    """The webhook app on 127.0.0.1, in its own thread, with a certificate from a fresh trustme CA that is
    valid for ``identity`` only (an IP address or a DNS name)."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(identity).configure_cert(context)
    reviews: list[Obj] = []
    runner = web.AppRunner(_webhook_app(reviews), access_log=None)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="webhook", daemon=True)
    thread.start()

    async def start() -> int:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        return int(runner.addresses[0][1])

    try:
        port = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
        yield WebhookServer(
            f"https://127.0.0.1:{port}", port, base64.b64encode(ca.cert_pem.bytes()).decode(), reviews
        )
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture(scope="module")
def webhook_server() -> Iterator[WebhookServer]:
    """The webhook server for ``clientConfig.url``: its certificate is valid for 127.0.0.1."""
    with serving_webhook("127.0.0.1") as server:
        yield server


# --- discovery ----------------------------------------------------------------------------------------


def test_version_and_health_endpoints_answer(api: ApiClient) -> None:
    info = client.VersionApi(api).get_code()
    assert info.major == "1"
    assert info.git_version.startswith("v1.")
    health = api.call_api("GET", api.configuration.host + "/healthz")
    health.read()
    assert (health.status, health.data) == (200, b"ok")


def test_discovery_lists_the_builtin_kinds_the_project_touches(api: ApiClient) -> None:
    core = {r.name: r for r in client.CoreV1Api(api).get_api_resources().resources}
    for plural in (
        "namespaces",
        "pods",
        "services",
        "endpoints",
        "events",
        "configmaps",
        "secrets",
        "serviceaccounts",
    ):
        assert plural in core, plural
    assert not core["namespaces"].namespaced
    assert core["pods"].namespaced
    assert core["configmaps"].kind == "ConfigMap"
    assert "pods/status" in core
    # kubectl logs and kubectl drain (the Eviction API) look for these
    assert core["pods/log"].verbs == ["get"]
    eviction = core["pods/eviction"]
    found = (eviction.group, eviction.version, eviction.kind, eviction.verbs)
    assert found == ("policy", "v1", "Eviction", ["create"])

    groups = {g.name: g for g in client.ApisApi(api).get_api_versions().groups}
    expected = {
        "apps": (client.AppsV1Api, {"statefulsets"}),
        "policy": (client.PolicyV1Api, {"poddisruptionbudgets"}),
        "coordination.k8s.io": (client.CoordinationV1Api, {"leases"}),
        "events.k8s.io": (client.EventsV1Api, {"events"}),
        "rbac.authorization.k8s.io": (
            client.RbacAuthorizationV1Api,
            {"roles", "rolebindings", "clusterroles", "clusterrolebindings"},
        ),
        "admissionregistration.k8s.io": (
            client.AdmissionregistrationV1Api,
            {"mutatingwebhookconfigurations", "validatingwebhookconfigurations"},
        ),
        "apiextensions.k8s.io": (client.ApiextensionsV1Api, {"customresourcedefinitions"}),
    }
    for group, (group_api, plurals) in expected.items():
        assert groups[group].preferred_version.group_version == f"{group}/v1"
        listed = group_api(api).get_api_resources()
        assert listed.group_version == f"{group}/v1"
        assert plurals <= {r.name for r in listed.resources}, group
    crds = {r.name: r for r in client.ApiextensionsV1Api(api).get_api_resources().resources}
    assert not crds["customresourcedefinitions"].namespaced


def test_a_new_crd_is_served_at_once_and_its_deletion_stops_serving_it(
    api: ApiClient, custom: client.CustomObjectsApi, namespace: str
) -> None:
    group = f"g{uuid.uuid4().hex[:8]}.{GROUP}"
    extensions = client.ApiextensionsV1Api(api)
    crd = widget_crd(group=group, plural="gizmos", kind="Gizmo")
    created = extensions.create_custom_resource_definition(crd)
    try:
        assert {c.type: c.status for c in created.status.conditions}["Established"] == "True"
        # Served at once: no wait between the CRD's creation and the first list.
        listed = custom.list_namespaced_custom_object(group, VERSION, namespace, "gizmos")
        assert listed["items"] == []
        resources = custom.get_api_resources(group, VERSION)
        assert "gizmos" in {r.name for r in resources.resources}
        assert group in {g.name for g in client.ApisApi(api).get_api_versions().groups}
        gizmo = {
            "apiVersion": f"{group}/{VERSION}",
            "kind": "Gizmo",
            "metadata": {"name": "one"},
            "spec": {"size": 1},
        }
        custom.create_namespaced_custom_object(group, VERSION, namespace, "gizmos", gizmo)

        extensions.delete_custom_resource_definition(crd["metadata"]["name"])
        with pytest.raises(ApiException) as exc:
            custom.list_namespaced_custom_object(group, VERSION, namespace, "gizmos")
        assert exc.value.status == 404
        with pytest.raises(ApiException) as exc:
            custom.get_api_resources(group, VERSION)
        assert exc.value.status == 404
        assert group not in {g.name for g in client.ApisApi(api).get_api_versions().groups}

        # The CRD's objects went with it: serving the kind again shows none.
        extensions.create_custom_resource_definition(crd)
        wait_until(
            lambda: custom.list_namespaced_custom_object(group, VERSION, namespace, "gizmos")["items"] == [],
            "the old gizmo to be deleted with its CRD",
        )
    finally:
        try:
            extensions.delete_custom_resource_definition(crd["metadata"]["name"])
        except ApiException as exc_:
            if exc_.status != 404:
                raise


# --- CRUD and Status errors ---------------------------------------------------------------------------


def test_crud_sets_identity_and_answers_kube_status_errors(core: client.CoreV1Api, namespace: str) -> None:
    created = core.create_namespaced_config_map(namespace, configmap("one"))
    assert uuid.UUID(created.metadata.uid)
    assert created.metadata.creation_timestamp is not None
    assert created.metadata.resource_version

    with pytest.raises(ApiException) as exc:
        core.create_namespaced_config_map(namespace, configmap("one"))
    assert (exc.value.status, status_of(exc)["reason"]) == (409, "AlreadyExists")

    with pytest.raises(ApiException) as exc:
        core.read_namespaced_config_map("missing", namespace)
    assert (exc.value.status, status_of(exc)["reason"]) == (404, "NotFound")
    assert status_of(exc)["message"] == 'configmaps "missing" not found'

    stale = created.metadata.resource_version
    updated = core.replace_namespaced_config_map(
        "one", namespace, {"metadata": {"name": "one", "resourceVersion": stale}, "data": {"k": "w"}}
    )
    assert updated.data == {"k": "w"}
    assert int(updated.metadata.resource_version) > int(stale)
    assert updated.metadata.uid == created.metadata.uid

    with pytest.raises(ApiException) as exc:
        core.replace_namespaced_config_map(
            "one", namespace, {"metadata": {"name": "one", "resourceVersion": stale}, "data": {"k": "x"}}
        )
    assert (exc.value.status, status_of(exc)["reason"]) == (409, "Conflict")
    assert core.read_namespaced_config_map("one", namespace).data == {"k": "w"}

    core.delete_namespaced_config_map("one", namespace)
    with pytest.raises(ApiException) as exc:
        core.delete_namespaced_config_map("one", namespace)
    assert exc.value.status == 404


def test_generate_name_gives_unique_names(core: client.CoreV1Api, namespace: str) -> None:
    made = [
        core.create_namespaced_config_map(namespace, {"metadata": {"generateName": "gen-"}}).metadata.name
        for _ in range(5)
    ]
    assert len(set(made)) == 5
    assert all(name.startswith("gen-") and len(name) > len("gen-") for name in made)
    assert names(core.list_namespaced_config_map(namespace).items) == set(made)


def test_secret_string_data_is_stored_as_base64_data(core: client.CoreV1Api, namespace: str) -> None:
    def encoded(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    body = {"metadata": {"name": "s"}, "data": {"a": encoded("old"), "b": encoded("kept")}}
    created = core.create_namespaced_secret(namespace, {**body, "stringData": {"a": "new", "c": "é"}})
    assert created.data == {"a": encoded("new"), "b": encoded("kept"), "c": encoded("é")}
    assert created.string_data is None
    assert created.type == "Opaque"
    patched = core.patch_namespaced_secret("s", namespace, {"stringData": {"b": "patched"}})
    assert patched.data == {"a": encoded("new"), "b": encoded("patched"), "c": encoded("é")}
    assert core.read_namespaced_secret("s", namespace).string_data is None


def test_generation_is_bumped_by_spec_changes_only(
    custom: client.CustomObjectsApi, namespace: str, widgets: str
) -> None:
    def generation() -> int:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, widgets, "w")
        return int(obj["metadata"]["generation"])

    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, widgets, widget("w"))
    assert created["metadata"]["generation"] == 1
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, widgets, "w", {"metadata": {"labels": {"a": "b"}}}
    )
    assert generation() == 1
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, widgets, "w", {"status": {"phase": "Ready"}}
    )
    assert generation() == 1
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, widgets, "w", {"spec": {"size": 4}})
    assert generation() == 2
    # A spec patch that changes nothing is no spec change.
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, widgets, "w", {"spec": {"size": 4}})
    assert generation() == 2


# --- custom resources: structural schema --------------------------------------------------------------


def test_custom_resources_get_defaults_lose_unknown_fields_and_are_validated(
    custom: client.CustomObjectsApi, namespace: str, widgets: str
) -> None:
    body = widget("w", size=3, unknownField="dropped")
    body["extra"] = {"also": "dropped"}
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, widgets, body)
    assert created["spec"] == {"size": 3, "color": "blue"}
    assert "extra" not in created
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, widgets, "w")
    assert stored["spec"] == {"size": 3, "color": "blue"}

    cases = [
        (
            widget("big", size=20),
            'Widget.conformance.etcdlock.io "big" is invalid: spec.size: Invalid value: 20: '
            "spec.size in body should be less than or equal to 10",
        ),
        (
            {**widget("nosize"), "spec": {"color": "red"}},
            'Widget.conformance.etcdlock.io "nosize" is invalid: spec.size: Required value',
        ),
        (
            widget("purple", color="purple"),
            'Widget.conformance.etcdlock.io "purple" is invalid: spec.color: Unsupported value: "purple": '
            'supported values: "blue", "red", "green"',
        ),
        (
            widget("text", size="three"),
            'Widget.conformance.etcdlock.io "text" is invalid: spec.size: Invalid value: "string": '
            'spec.size in body must be of type integer: "string"',
        ),
    ]
    for bad, message in cases:
        with pytest.raises(ApiException) as exc:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, widgets, bad)
        status = status_of(exc)
        assert (exc.value.status, status["reason"]) == (422, "Invalid")
        assert status["message"] == message
        assert status["details"]["causes"][0]["field"] in ("spec.size", "spec.color")

    # An update is validated too, and leaves the stored object as it was.
    with pytest.raises(ApiException) as exc:
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, widgets, "w", {"spec": {"size": 0}})
    assert exc.value.status == 422
    assert custom.get_namespaced_custom_object(GROUP, VERSION, namespace, widgets, "w")["spec"]["size"] == 3


# --- patches ------------------------------------------------------------------------------------------


def test_merge_patch_on_a_custom_resource_merges_maps_and_replaces_lists(
    custom: client.CustomObjectsApi, namespace: str, widgets: str
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, widgets, widget("w", tags=["a", "b"]))
    patched = custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        widgets,
        "w",
        {"metadata": {"labels": {"x": "1", "y": "2"}}, "spec": {"tags": ["c"]}},
    )
    assert patched["spec"] == {"size": 3, "color": "blue", "tags": ["c"]}
    assert patched["metadata"]["labels"] == {"x": "1", "y": "2"}
    patched = custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        widgets,
        "w",
        {"metadata": {"labels": {"x": None}}, "spec": {"color": "red"}},
    )
    assert patched["metadata"]["labels"] == {"y": "2"}
    assert patched["spec"] == {"size": 3, "color": "red", "tags": ["c"]}


def test_json_patch_applies_operations_and_a_failed_test_is_422(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str, widgets: str
) -> None:
    core.create_namespaced_config_map(namespace, configmap("cm"))
    patched = core.patch_namespaced_config_map(
        "cm",
        namespace,
        [
            {"op": "test", "path": "/data/k", "value": "v"},
            {"op": "replace", "path": "/data/k", "value": "w"},
            {"op": "add", "path": "/data/n", "value": "1"},
        ],
    )
    assert patched.data == {"k": "w", "n": "1"}
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_config_map(
            "cm",
            namespace,
            [
                {"op": "test", "path": "/data/k", "value": "v"},
                {"op": "replace", "path": "/data/k", "value": "z"},
            ],
        )
    # kube-apiserver's answer, byte for byte: NewGenericServerResponse(422), naming no object and no field.
    assert status_of(exc) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "the server rejected our request due to an error in our request",
        "reason": "Invalid",
        "details": {},
        "code": 422,
    }
    assert core.read_namespaced_config_map("cm", namespace).data == {"k": "w", "n": "1"}

    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, widgets, widget("w"))
    json_patch = "application/json-patch+json"
    patched_widget = custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        widgets,
        "w",
        [{"op": "replace", "path": "/spec/size", "value": 7}],
        _content_type=json_patch,
    )
    assert patched_widget["spec"]["size"] == 7
    with pytest.raises(ApiException) as exc:
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            widgets,
            "w",
            [{"op": "test", "path": "/spec/size", "value": 3}],
            _content_type=json_patch,
        )
    assert (exc.value.status, status_of(exc)["reason"]) == (422, "Invalid")


def test_strategic_merge_patch_merges_containers_by_name(core: client.CoreV1Api, namespace: str) -> None:
    containers = [{"name": "a", "image": "busybox:1"}, {"name": "b", "image": "busybox:1"}]
    core.create_namespaced_pod(namespace, pod("p", containers=containers))
    patched = core.patch_namespaced_pod(
        "p", namespace, {"spec": {"containers": [{"name": "b", "image": "busybox:2"}]}}
    )
    assert [(c.name, c.image) for c in patched.spec.containers] == [("a", "busybox:1"), ("b", "busybox:2")]

    core.create_namespaced_config_map(namespace, configmap("cm", labels={"keep": "1"}))
    patched_cm = core.patch_namespaced_config_map(
        "cm", namespace, {"metadata": {"labels": {"new": "2"}}, "data": {"n": "1"}}
    )
    assert patched_cm.metadata.labels == {"keep": "1", "new": "2"}
    assert patched_cm.data == {"k": "v", "n": "1"}


# --- status subresource -------------------------------------------------------------------------------


def test_status_subresource_changes_only_status_and_the_main_endpoint_ignores_status(
    custom: client.CustomObjectsApi, namespace: str, widgets: str
) -> None:
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, widgets, {**widget("w"), "status": {"phase": "Ignored"}}
    )
    assert "status" not in created

    patched = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, widgets, "w", {"spec": {"size": 9}, "status": {"phase": "Ready"}}
    )
    assert (patched["spec"]["size"], patched["status"]) == (3, {"phase": "Ready"})

    current = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, widgets, "w")
    current["spec"]["size"] = 4
    current["status"] = {"phase": "Hacked"}
    replaced = custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, widgets, "w", current)
    assert (replaced["spec"]["size"], replaced["status"]) == (4, {"phase": "Ready"})

    replaced["spec"]["size"] = 1
    replaced["status"] = {"phase": "Done"}
    via_status = custom.replace_namespaced_custom_object_status(
        GROUP, VERSION, namespace, widgets, "w", replaced
    )
    assert (via_status["spec"]["size"], via_status["status"]) == (4, {"phase": "Done"})
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, widgets, "w")
    assert (stored["spec"]["size"], stored["status"]) == (4, {"phase": "Done"})


def test_scale_subresource_reads_and_writes_the_replicas_path_of_the_crd(
    custom: client.CustomObjectsApi, namespace: str, widgets: str
) -> None:
    listed = {r.name: r for r in custom.get_api_resources(GROUP, VERSION).resources}
    scale_entry = listed[f"{widgets}/scale"]
    assert (scale_entry.group, scale_entry.version, scale_entry.kind) == ("autoscaling", "v1", "Scale")

    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, widgets, widget("w", size=3))
    status = {"status": {"phase": "Up", "ready": 2, "selector": "app=w"}}
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, widgets, "w", status)
    scale = custom.get_namespaced_custom_object_scale(GROUP, VERSION, namespace, widgets, "w")
    assert (scale["kind"], scale["apiVersion"]) == ("Scale", "autoscaling/v1")
    assert scale["metadata"]["name"] == "w" and scale["metadata"]["namespace"] == namespace
    assert scale["spec"] == {"replicas": 3} and scale["status"] == {"replicas": 2, "selector": "app=w"}

    patched = custom.patch_namespaced_custom_object_scale(
        GROUP, VERSION, namespace, widgets, "w", {"spec": {"replicas": 5}}
    )
    assert patched["spec"] == {"replicas": 5}
    stored = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, widgets, "w")
    assert stored["spec"]["size"] == 5 and stored["metadata"]["generation"] == 2
    assert stored["status"]["ready"] == 2  # only the spec replicas path changes

    with pytest.raises(ApiException) as stale:
        custom.replace_namespaced_custom_object_scale(
            GROUP, VERSION, namespace, widgets, "w", {**scale, "spec": {"replicas": 7}}
        )
    assert (stale.value.status, status_of(stale)["reason"]) == (409, "Conflict")
    replaced = custom.replace_namespaced_custom_object_scale(
        GROUP, VERSION, namespace, widgets, "w", {**patched, "spec": {"replicas": 7}}
    )
    assert replaced["spec"] == {"replicas": 7}

    with pytest.raises(ApiException) as out_of_range:
        custom.patch_namespaced_custom_object_scale(
            GROUP, VERSION, namespace, widgets, "w", {"spec": {"replicas": 11}}
        )
    assert out_of_range.value.status == 422
    assert status_of(out_of_range)["message"].startswith('Widget.conformance.etcdlock.io "w" is invalid')
    assert "spec.size" in status_of(out_of_range)["message"]
    with pytest.raises(ApiException) as negative:
        custom.patch_namespaced_custom_object_scale(
            GROUP, VERSION, namespace, widgets, "w", {"spec": {"replicas": -1}}
        )
    assert status_of(negative)["message"] == (
        'Scale.autoscaling "w" is invalid: '
        "spec.replicas: Invalid value: -1: must be greater than or equal to 0"
    )
    final = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, widgets, "w")
    assert final["spec"]["size"] == 7


# --- list and watch -----------------------------------------------------------------------------------


def test_label_selectors_select_as_kubernetes_does(core: client.CoreV1Api, namespace: str) -> None:
    for name, labels in {
        "a": {"app": "web", "tier": "front"},
        "b": {"app": "web", "tier": "back"},
        "c": {"app": "db"},
        "d": {},
    }.items():
        core.create_namespaced_config_map(namespace, configmap(name, labels))
    expected = {
        "app=web": {"a", "b"},
        "app==web": {"a", "b"},
        "app!=web": {"c", "d"},
        "app in (web,db)": {"a", "b", "c"},
        "tier notin (front)": {"b", "c", "d"},
        "tier": {"a", "b"},
        "!tier": {"c", "d"},
        "app=web,tier=back": {"b"},
    }
    for selector, wanted in expected.items():
        assert names(core.list_namespaced_config_map(namespace, label_selector=selector).items) == wanted, (
            selector
        )
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_config_map(namespace, label_selector="app in web")
    assert (exc.value.status, status_of(exc)["reason"]) == (400, "BadRequest")


def test_field_selectors_select_name_namespace_and_pod_phase(core: client.CoreV1Api, namespace: str) -> None:
    for name in ("a", "b"):
        core.create_namespaced_config_map(namespace, configmap(name))
    assert names(core.list_namespaced_config_map(namespace, field_selector="metadata.name=b").items) == {"b"}
    assert names(core.list_namespaced_config_map(namespace, field_selector="metadata.name!=b").items) == {"a"}
    everywhere = core.list_config_map_for_all_namespaces(
        field_selector=f"metadata.namespace={namespace}"
    ).items
    assert {(c.metadata.namespace, c.metadata.name) for c in everywhere} == {
        (namespace, "a"),
        (namespace, "b"),
    }

    core.create_namespaced_pod(namespace, pod("pending", schedulingGates=[{"name": "example.com/wait"}]))
    core.create_namespaced_pod(namespace, pod("running"))
    core.patch_namespaced_pod_status("running", namespace, {"status": {"phase": "Running"}})
    assert names(core.list_namespaced_pod(namespace, field_selector="status.phase=Running").items) == {
        "running"
    }
    assert names(core.list_namespaced_pod(namespace, field_selector="status.phase=Pending").items) == {
        "pending"
    }
    assert names(core.list_namespaced_pod(namespace, field_selector="status.phase!=Running").items) == {
        "pending"
    }

    with pytest.raises(ApiException) as exc:
        core.list_namespaced_config_map(namespace, field_selector="data.k=v")
    assert exc.value.status == 400


def test_watch_from_a_list_resource_version_sees_each_later_event_exactly_once(
    core: client.CoreV1Api, namespace: str
) -> None:
    core.create_namespaced_config_map(namespace, configmap("before"))
    listed = core.list_namespaced_config_map(namespace)
    assert names(listed.items) == {"before"}
    core.create_namespaced_config_map(namespace, configmap("after"))
    core.patch_namespaced_config_map("before", namespace, {"data": {"k": "changed"}})
    core.delete_namespaced_config_map("after", namespace)

    events = [
        (event["type"], event["object"].metadata.name, event["object"].metadata.resource_version)
        for event in Watch().stream(
            core.list_namespaced_config_map,
            namespace,
            resource_version=listed.metadata.resource_version,
            timeout_seconds=1,
            _request_timeout=REQUEST_TIMEOUT,
        )
    ]
    assert [(kind, name) for kind, name, _ in events] == [
        ("ADDED", "after"),
        ("MODIFIED", "before"),
        ("DELETED", "after"),
    ]
    versions = [int(rv) for _, _, rv in events]
    assert versions == sorted(versions)
    assert versions[0] > int(listed.metadata.resource_version)


def test_watch_without_resource_version_starts_with_the_current_objects_and_follows_selectors(
    core: client.CoreV1Api, namespace: str
) -> None:
    core.create_namespaced_config_map(namespace, configmap("web", {"app": "web"}))
    core.create_namespaced_config_map(namespace, configmap("db", {"app": "db"}))
    watch = Watch()
    seen: list[tuple[str, str]] = []
    for event in watch.stream(
        core.list_namespaced_config_map,
        namespace,
        label_selector="app=web",
        timeout_seconds=5,
        _request_timeout=REQUEST_TIMEOUT,
    ):
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 1:
            # A change that makes "db" match is ADDED for this watch, and one that unmatches is DELETED.
            core.patch_namespaced_config_map("db", namespace, {"metadata": {"labels": {"app": "web"}}})
            core.patch_namespaced_config_map("web", namespace, {"metadata": {"labels": {"app": "gone"}}})
        if len(seen) == 3:
            watch.stop()
    assert seen == [("ADDED", "web"), ("ADDED", "db"), ("DELETED", "web")]


def test_custom_resource_watch_resumes_from_a_list_and_reports_status_changes(
    custom: client.CustomObjectsApi, namespace: str, widgets: str
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, widgets, widget("old"))
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, widgets)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, widgets, widget("new"))
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, widgets, "old", {"status": {"phase": "Ready"}}
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, widgets, "new")

    events = [
        (event["type"], event["object"]["metadata"]["name"], event["object"].get("status"))
        for event in Watch().stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            widgets,
            resource_version=listed["metadata"]["resourceVersion"],
            timeout_seconds=1,
            _request_timeout=REQUEST_TIMEOUT,
        )
    ]
    assert events == [
        ("ADDED", "new", None),
        ("MODIFIED", "old", {"phase": "Ready"}),
        ("DELETED", "new", None),
    ]


def test_timeout_seconds_ends_a_quiet_watch(core: client.CoreV1Api, namespace: str) -> None:
    resource_version = core.list_namespaced_config_map(namespace).metadata.resource_version
    started = time.monotonic()
    events = list(
        Watch().stream(
            core.list_namespaced_config_map,
            namespace,
            resource_version=resource_version,
            timeout_seconds=1,
            _request_timeout=REQUEST_TIMEOUT,
        )
    )
    elapsed = time.monotonic() - started
    assert events == []
    assert 0.9 <= elapsed < 5


def test_watch_from_a_compacted_resource_version_is_410_gone(
    core: client.CoreV1Api, namespace: str, sandbox: SandboxThread
) -> None:
    old = core.create_namespaced_config_map(namespace, configmap("cm")).metadata.resource_version
    for value in ("1", "2"):
        latest = core.patch_namespaced_config_map(
            "cm", namespace, {"data": {"k": value}}
        ).metadata.resource_version
    done = sandbox.etcd.etcdctl("compact", str(latest))
    assert done.returncode == 0, done.stderr

    with pytest.raises(ApiException) as exc:
        for _ in Watch().stream(
            core.list_namespaced_config_map,
            namespace,
            resource_version=old,
            timeout_seconds=5,
            _request_timeout=REQUEST_TIMEOUT,
        ):
            pytest.fail("a watch from a compacted revision must not deliver events")
    assert exc.value.status == 410
    assert "Expired" in str(exc.value.reason)

    # The raw stream: one ERROR event carrying a 410 Status.
    response = core.list_namespaced_config_map(
        namespace,
        watch=True,
        resource_version=old,
        timeout_seconds=5,
        _preload_content=False,
        _request_timeout=REQUEST_TIMEOUT,
    )
    try:
        lines = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    finally:
        response.release_conn()
    assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in lines] == [
        ("ERROR", 410, "Expired")
    ]

    # A watch from the compaction revision itself is still fine.
    quiet = list(
        Watch().stream(
            core.list_namespaced_config_map,
            namespace,
            resource_version=latest,
            timeout_seconds=1,
            _request_timeout=REQUEST_TIMEOUT,
        )
    )
    assert quiet == []


# --- deletion -----------------------------------------------------------------------------------------


def test_finalizers_keep_a_deleted_object_until_the_last_one_is_removed(
    core: client.CoreV1Api, namespace: str
) -> None:
    core.create_namespaced_config_map(
        namespace, configmap("held", finalizers=["example.com/one", "example.com/two"])
    )
    core.delete_namespaced_config_map("held", namespace)
    held = core.read_namespaced_config_map("held", namespace)
    assert held.metadata.deletion_timestamp is not None
    assert held.metadata.finalizers == ["example.com/one", "example.com/two"]

    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_config_map(
            "held", namespace, [{"op": "add", "path": "/metadata/finalizers/-", "value": "example.com/three"}]
        )
    assert (exc.value.status, status_of(exc)["reason"]) == (422, "Invalid")

    core.patch_namespaced_config_map("held", namespace, [{"op": "remove", "path": "/metadata/finalizers/0"}])
    assert core.read_namespaced_config_map("held", namespace).metadata.finalizers == ["example.com/two"]
    core.patch_namespaced_config_map("held", namespace, {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_config_map("held", namespace)
    assert exc.value.status == 404


def test_dependents_are_garbage_collected_after_their_owner_is_deleted(
    core: client.CoreV1Api, namespace: str
) -> None:
    owner = core.create_namespaced_config_map(namespace, configmap("owner"))
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_config_map(namespace, configmap("dependent", ownerReferences=[reference]))
    core.create_namespaced_config_map(namespace, configmap("bystander"))

    core.delete_namespaced_config_map("owner", namespace)
    wait_until(
        lambda: is_gone(lambda: core.read_namespaced_config_map("dependent", namespace)),
        "the dependent configmap to be garbage collected",
    )
    assert names(core.list_namespaced_config_map(namespace).items) == {"bystander"}


# --- table output -------------------------------------------------------------------------------------


def test_table_output_has_the_crd_printer_columns(
    custom: client.CustomObjectsApi, namespace: str, widgets: str
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, widgets, widget("small", size=2))
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, widgets, widget("large", size=9, color="green")
    )
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, widgets, "large", {"status": {"phase": "Ready"}}
    )

    table = custom.list_namespaced_custom_object(
        GROUP, VERSION, namespace, widgets, _headers={"Accept": TABLE}
    )
    assert (table["kind"], table["apiVersion"]) == ("Table", "meta.k8s.io/v1")
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Size", "Color", "Phase"]
    rows = {row["cells"][0]: row["cells"][1:] for row in table["rows"]}
    assert rows == {"small": [2, "blue", None], "large": [9, "green", "Ready"]}
    assert all(row["object"]["kind"] == "PartialObjectMetadata" for row in table["rows"])

    single = custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, widgets, "large", _headers={"Accept": TABLE}
    )
    assert [row["cells"] for row in single["rows"]] == [["large", 9, "green", "Ready"]]


def table_request(api: ApiClient, path: str, **query: str) -> tuple[int, bytes]:
    """GET ``path`` asking for a Table (kubectl's Accept), with ``query``: the status and the body."""
    url = f"{api.configuration.host}{path}?{urllib.parse.urlencode(query)}"
    request = urllib.request.Request(url, headers={"Accept": TABLE})
    try:
        with urllib.request.urlopen(request, timeout=WAIT_SECONDS) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_table_rows_carry_the_object_that_include_object_asks_for(
    api: ApiClient, custom: client.CustomObjectsApi, namespace: str, widgets: str
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, widgets, widget("small", size=2))
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{widgets}"

    def row_object(**query: str) -> Any:
        code, body = table_request(api, path, **query)
        assert code == 200, body
        [row] = json.loads(body)["rows"]
        return row["object"]

    assert row_object()["kind"] == "PartialObjectMetadata"
    assert row_object(includeObject="Metadata")["metadata"]["name"] == "small"
    assert "spec" not in row_object(includeObject="Metadata")
    whole = row_object(includeObject="Object")
    assert (whole["kind"], whole["spec"]["size"]) == ("Widget", 2)
    assert row_object(includeObject="None") is None
    code, body = table_request(api, path, includeObject="Everything")
    assert (code, json.loads(body)["message"]) == (400, 'unrecognized includeObject value: "Everything"')


def test_a_watch_asked_for_tables_sends_one_table_per_event_with_the_columns_in_the_first_only(
    api: ApiClient, custom: client.CustomObjectsApi, namespace: str, widgets: str
) -> None:
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, widgets)
    version = listed["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, widgets, widget("w", size=2))
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, widgets, "w", {"spec": {"size": 5}})
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{widgets}"
    code, body = table_request(api, path, watch="true", resourceVersion=version, timeoutSeconds="2")
    events = [json.loads(line) for line in body.splitlines()]
    assert code == 200
    assert [event["type"] for event in events] == ["ADDED", "MODIFIED"]
    first, later = (event["object"] for event in events)
    assert [c["name"] for c in first["columnDefinitions"]] == ["Name", "Size", "Color", "Phase"]
    assert later["kind"] == "Table" and later["columnDefinitions"] is None
    assert [row["cells"] for row in later["rows"]] == [["w", 5, "blue", None]]
    assert later["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


# --- pods ---------------------------------------------------------------------------------------------


def test_scheduling_gates_keep_a_pod_pending_and_may_only_be_removed(
    core: client.CoreV1Api, namespace: str
) -> None:
    created = core.create_namespaced_pod(
        namespace, pod("gated", schedulingGates=[{"name": "example.com/gate"}])
    )
    assert created.status.phase == "Pending"
    conditions = {c.type: c for c in created.status.conditions}
    assert (conditions["PodScheduled"].status, conditions["PodScheduled"].reason) == (
        "False",
        "SchedulingGated",
    )

    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_pod(
            "gated",
            namespace,
            [{"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": "example.com/more"}}],
        )
    assert (exc.value.status, status_of(exc)["reason"]) == (422, "Invalid")
    assert "spec.schedulingGates" in status_of(exc)["message"]

    ungated = core.patch_namespaced_pod(
        "gated", namespace, [{"op": "remove", "path": "/spec/schedulingGates"}]
    )
    assert not ungated.spec.scheduling_gates

    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_pod(
            "gated", namespace, {"spec": {"schedulingGates": [{"name": "example.com/again"}]}}
        )
    assert exc.value.status == 422


# --- admission webhooks -------------------------------------------------------------------------------


def _webhook(
    name: str, target: str | Obj, ca_bundle: str, namespace: str, failure_policy: str = "Fail"
) -> Obj:
    """A webhook on CREATE/UPDATE of ConfigMaps in ``namespace``, called at ``target``: a URL, or a
    ``clientConfig.service`` reference (see :func:`_service_ref`)."""
    destination = {"url": target} if isinstance(target, str) else {"service": target}
    return {
        "name": name,
        "clientConfig": {**destination, "caBundle": ca_bundle},
        "rules": [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["configmaps"],
                "scope": "Namespaced",
            }
        ],
        "namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: namespace}},
        "failurePolicy": failure_policy,
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 5,
    }


def _service_ref(namespace: str, name: str, path: str) -> Obj:
    return {"namespace": namespace, "name": name, "path": path, "port": 443}


def _create_service(
    core: client.CoreV1Api, namespace: str, name: str, endpoints: list[Obj] | None = None
) -> None:
    """A Service on port 443 and, unless ``endpoints`` is None, its Endpoints with those subsets."""
    core.create_namespaced_service(
        namespace, {"metadata": {"name": name}, "spec": {"ports": [{"port": 443, "protocol": "TCP"}]}}
    )
    if endpoints is not None:
        core.create_namespaced_endpoints(namespace, {"metadata": {"name": name}, "subsets": endpoints})


def _at_local_port(port: int) -> list[Obj]:
    """Endpoints subsets: one ready address, 127.0.0.1, on ``port``."""
    return [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": port, "protocol": "TCP"}]}]


@contextmanager
def _registered(
    api: ApiClient, kind: str, name: str, *webhooks: Obj
) -> Iterator[client.AdmissionregistrationV1Api]:
    """A ``kind`` ("mutating" or "validating") webhook configuration, deleted after the block."""
    admission = client.AdmissionregistrationV1Api(api)
    getattr(admission, f"create_{kind}_webhook_configuration")(
        {"metadata": {"name": name}, "webhooks": list(webhooks)}
    )
    try:
        yield admission
    finally:
        getattr(admission, f"delete_{kind}_webhook_configuration")(name)


def _tls_handshake(server: WebhookServer, server_name: str) -> None:
    """Connect to ``server`` trusting its CA only, checking its certificate against ``server_name``."""
    context = ssl.create_default_context(cadata=base64.b64decode(server.ca_bundle).decode())
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_name),
    ):
        pass


def _assert_failure_policy_decides(
    api: ApiClient, core: client.CoreV1Api, namespace: str, kind: str, webhook: Obj, *in_message: str
) -> None:
    """``webhook``, whose call cannot succeed, refuses a create under failurePolicy Fail (500, the message
    naming the webhook and ``in_message``) and lets it through unchanged under Ignore."""
    tag = webhook["name"].split(".")[0]
    config = f"{tag}-{namespace}"
    with _registered(api, kind, config, {**webhook, "failurePolicy": "Fail"}) as admission:
        with pytest.raises(ApiException) as exc:
            core.create_namespaced_config_map(namespace, configmap(f"{tag}-failed"))
        assert exc.value.status == 500
        message = status_of(exc)["message"]
        for part in (f'failed calling webhook "{webhook["name"]}"', *in_message):
            assert part in message, message
        assert is_gone(lambda: core.read_namespaced_config_map(f"{tag}-failed", namespace))

        getattr(admission, f"patch_{kind}_webhook_configuration")(
            config, [{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]
        )
        created = core.create_namespaced_config_map(namespace, configmap(f"{tag}-ignored"))
        assert not created.metadata.labels  # the webhook was skipped (a mutating one labels it)


def test_mutating_and_validating_webhooks_are_called_over_https(
    api: ApiClient, core: client.CoreV1Api, namespace: str, webhook_server: WebhookServer
) -> None:
    admission = client.AdmissionregistrationV1Api(api)
    server = webhook_server
    mutating = {
        "metadata": {"name": f"mutate-{namespace}"},
        "webhooks": [
            _webhook("mutate.conformance.etcdlock.io", server.url + "/mutate", server.ca_bundle, namespace)
        ],
    }
    validating = {
        "metadata": {"name": f"validate-{namespace}"},
        "webhooks": [
            _webhook("deny.conformance.etcdlock.io", server.url + "/validate", server.ca_bundle, namespace)
        ],
    }
    admission.create_mutating_webhook_configuration(mutating)
    try:
        admission.create_validating_webhook_configuration(validating)
        try:
            created = core.create_namespaced_config_map(namespace, configmap("plain"))
            assert created.metadata.labels == {MUTATED_LABEL: "yes"}
            labelled = core.create_namespaced_config_map(namespace, configmap("labelled", {"app": "x"}))
            assert labelled.metadata.labels == {"app": "x", MUTATED_LABEL: "yes"}
            requests = [r["request"] for r in server.reviews if r["request"]["namespace"] == namespace]
            assert {(r["operation"], r["kind"]["kind"], r["name"]) for r in requests} >= {
                ("CREATE", "ConfigMap", "plain")
            }

            with pytest.raises(ApiException) as exc:
                core.create_namespaced_config_map(namespace, configmap("refused", {DENY_LABEL: "yes"}))
            assert exc.value.status == 403
            assert (
                'admission webhook "deny.conformance.etcdlock.io" denied the request'
                in status_of(exc)["message"]
            )
            assert is_gone(lambda: core.read_namespaced_config_map("refused", namespace))

            with pytest.raises(ApiException) as exc:
                core.patch_namespaced_config_map(
                    "plain", namespace, {"metadata": {"labels": {DENY_LABEL: "yes"}}}
                )
            assert "denied the request" in status_of(exc)["message"]
            assert DENY_LABEL not in (
                core.read_namespaced_config_map("plain", namespace).metadata.labels or {}
            )

            # Other namespaces are not selected.
            outside = core.create_namespaced_config_map(
                "default", configmap(f"outside-{namespace}", {DENY_LABEL: "yes"})
            )
            try:
                assert outside.metadata.labels == {DENY_LABEL: "yes"}
            finally:
                core.delete_namespaced_config_map(outside.metadata.name, "default")
        finally:
            admission.delete_validating_webhook_configuration(validating["metadata"]["name"])
    finally:
        admission.delete_mutating_webhook_configuration(mutating["metadata"]["name"])


def test_webhook_failure_policy_decides_when_the_webhook_is_unreachable(
    api: ApiClient, core: client.CoreV1Api, namespace: str, webhook_server: WebhookServer
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        unreachable = f"https://127.0.0.1:{probe.getsockname()[1]}/validate"
    webhook = _webhook("down.conformance.etcdlock.io", unreachable, webhook_server.ca_bundle, namespace)
    _assert_failure_policy_decides(api, core, namespace, "validating", webhook)


def test_a_webhook_rule_for_a_resource_does_not_match_its_status_subresource(
    api: ApiClient, core: client.CoreV1Api, namespace: str, webhook_server: WebhookServer
) -> None:
    """As in kube-apiserver: ``pods`` matches writes of pods, not of ``pods/status`` (a rule must name it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        unreachable = f"https://127.0.0.1:{probe.getsockname()[1]}/validate"
    webhook = _webhook("pods.conformance.etcdlock.io", unreachable, webhook_server.ca_bundle, namespace)
    webhook["rules"][0]["resources"] = ["pods"]
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    core.create_namespaced_pod(namespace, pod)
    admission = client.AdmissionregistrationV1Api(api)
    config = {"metadata": {"name": f"pods-{namespace}"}, "webhooks": [webhook]}
    admission.create_validating_webhook_configuration(config)
    try:
        core.patch_namespaced_pod_status("p", namespace, {"status": {"phase": "Succeeded"}})
        with pytest.raises(ApiException) as exc:
            core.patch_namespaced_pod("p", namespace, {"metadata": {"labels": {"x": "y"}}})
        assert exc.value.status == 500 and "failed calling webhook" in status_of(exc)["message"]
        webhook["rules"][0]["resources"] = ["pods/status"]
        admission.replace_validating_webhook_configuration(config["metadata"]["name"], config)
        with pytest.raises(ApiException):
            core.patch_namespaced_pod_status("p", namespace, {"status": {"phase": "Failed"}})
    finally:
        admission.delete_validating_webhook_configuration(config["metadata"]["name"])


def test_a_service_webhook_is_called_at_the_service_endpoints_and_verified_for_the_service_name(
    api: ApiClient, core: client.CoreV1Api, namespace: str
) -> None:
    """``clientConfig.service``: dialled at the Endpoints' address and port, the certificate checked
    against ``<service>.<namespace>.svc`` (the certificate names nothing else, not even 127.0.0.1)."""
    service = "admission"
    dns_name = f"{service}.{namespace}.svc"
    with serving_webhook(dns_name) as server:
        with pytest.raises(ssl.SSLCertVerificationError, match=r"not valid for '127\.0\.0\.1'"):
            _tls_handshake(server, "127.0.0.1")
        _tls_handshake(server, dns_name)
        _create_service(core, namespace, service, _at_local_port(server.port))
        mutate = _webhook(
            "mutate.conformance.etcdlock.io",
            _service_ref(namespace, service, "/mutate"),
            server.ca_bundle,
            namespace,
        )
        with _registered(api, "mutating", f"service-{namespace}", mutate):
            created = core.create_namespaced_config_map(namespace, configmap("plain"))
            assert created.metadata.labels == {MUTATED_LABEL: "yes"}
            requests = [r["request"] for r in server.reviews]
            assert [(r["operation"], r["namespace"], r["name"]) for r in requests] == [
                ("CREATE", namespace, "plain")
            ]

        # Another Service with the very same Endpoints: its name is not on the certificate, so the call
        # fails verification and never reaches the webhook.
        _create_service(core, namespace, "impostor", _at_local_port(server.port))
        impostor = _webhook(
            "impostor.conformance.etcdlock.io",
            _service_ref(namespace, "impostor", "/mutate"),
            server.ca_bundle,
            namespace,
        )
        _assert_failure_policy_decides(
            api, core, namespace, "mutating", impostor, f"not valid for 'impostor.{namespace}.svc'"
        )
        assert len(server.reviews) == 1


@pytest.mark.parametrize("endpoints", [None, []], ids=["no-endpoints-object", "no-ready-address"])
def test_a_service_webhook_without_endpoints_fails_by_its_failure_policy(
    api: ApiClient,
    core: client.CoreV1Api,
    namespace: str,
    webhook_server: WebhookServer,
    endpoints: list[Obj] | None,
) -> None:
    _create_service(core, namespace, "nobody", endpoints)
    webhook = _webhook(
        "nobody.conformance.etcdlock.io",
        _service_ref(namespace, "nobody", "/mutate"),
        webhook_server.ca_bundle,
        namespace,
    )
    _assert_failure_policy_decides(api, core, namespace, "mutating", webhook, f'service "{namespace}/nobody"')


def test_match_conditions_decide_which_requests_reach_a_webhook(
    api: ApiClient, core: client.CoreV1Api, namespace: str, webhook_server: WebhookServer
) -> None:
    """As kube-apiserver evaluates them (CEL, over object, oldObject and request): a webhook is called only
    if every condition is true; one that cannot be evaluated fails by the failurePolicy."""
    webhook = _webhook(
        "cel.conformance.etcdlock.io", webhook_server.url + "/mutate", webhook_server.ca_bundle, namespace
    )
    webhook["matchConditions"] = [
        {"name": "wanted", "expression": "has(object.metadata.labels) && 'wanted' in object.metadata.labels"},
        {"name": "created", "expression": "request.operation == 'CREATE'"},
    ]
    with _registered(api, "mutating", f"cel-{namespace}", webhook) as admission:
        plain = core.create_namespaced_config_map(namespace, configmap("plain"))
        assert not plain.metadata.labels, "no labels: the first condition is false"
        wanted = core.create_namespaced_config_map(namespace, configmap("wanted", {"wanted": "1"}))
        assert wanted.metadata.labels == {"wanted": "1", MUTATED_LABEL: "yes"}
        updated = core.patch_namespaced_config_map(
            "plain", namespace, {"metadata": {"labels": {"wanted": "1"}}}
        )
        assert updated.metadata.labels == {"wanted": "1"}, "an update: the second condition is false"
        broken = [
            {"op": "replace", "path": "/webhooks/0/matchConditions/0/expression", "value": "object.nope.x"}
        ]
        admission.patch_mutating_webhook_configuration(f"cel-{namespace}", broken)
        with pytest.raises(ApiException) as exc:
            core.create_namespaced_config_map(namespace, configmap("broken", {"wanted": "1"}))
        assert (
            exc.value.status == 500 and 'failed calling webhook "cel.conformance' in status_of(exc)["message"]
        )
