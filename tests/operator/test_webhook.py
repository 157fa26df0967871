"""The pod-gating webhook on its own: the patch it answers with, and HTTPS with a renewable certificate."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import ssl
import threading
import types
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from etcdlock.etcd import EtcdLockError
from etcdlock.operator.config import WebhookSettings
from etcdlock.operator.names import MANAGED_LABEL, SCHEDULING_GATE, WEBHOOK_PATH
from etcdlock.operator.webhook import WebhookServer, gate_patch, label_patch, register, review
from etcdlock_sandbox.certs import write_webhook_certs
from etcdlock_sandbox.etcd import free_port

ANNOTATED = {"etcdlock.io/lock": "nightly"}


def pod(annotations: dict[str, str] | None = None, gates: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox"}]}
    if gates is not None:
        spec["schedulingGates"] = [{"name": gate} for gate in gates]
    return {"metadata": {"name": "p", "annotations": annotations or {}}, "spec": spec}


def test_only_annotated_pods_get_the_gate_and_only_once() -> None:
    assert gate_patch(pod()) == []
    assert gate_patch(pod(ANNOTATED)) == [
        {"op": "add", "path": "/spec/schedulingGates", "value": [{"name": SCHEDULING_GATE}]}
    ]
    assert gate_patch(pod(ANNOTATED, ["example.com/other"])) == [
        {"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": SCHEDULING_GATE}}
    ]
    assert gate_patch(pod(ANNOTATED, [SCHEDULING_GATE])) == []
    assert gate_patch(pod({"etcdlock.io/lock": ""})) == [], "an empty lock name asks for nothing"


def test_only_annotated_pods_get_the_label_and_only_once() -> None:
    labelled = pod(ANNOTATED)
    labelled["metadata"]["labels"] = {"app": "report", MANAGED_LABEL: "yes"}
    other = pod(ANNOTATED)
    other["metadata"]["labels"] = {"app": "report"}
    assert label_patch(pod()) == []
    assert label_patch(pod(ANNOTATED)) == [
        {"op": "add", "path": "/metadata/labels", "value": {MANAGED_LABEL: "true"}}
    ]
    assert label_patch(other) == [
        {"op": "add", "path": "/metadata/labels/etcdlock.io~1managed", "value": "true"}
    ]
    assert label_patch(labelled) == [], "the watch selects the label's presence, whatever its value"


def patch_of(answer: dict[str, Any]) -> Any:
    assert answer["response"]["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(answer["response"]["patch"]))


def test_the_review_allows_everything_labels_annotated_pods_and_gates_their_creation() -> None:
    request = {"uid": "u-1", "operation": "CREATE", "object": pod(ANNOTATED)}
    answer = review({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
    response = answer["response"]
    assert (answer["kind"], response["uid"], response["allowed"]) == ("AdmissionReview", "u-1", True)
    assert patch_of(answer) == label_patch(pod(ANNOTATED)) + gate_patch(pod(ANNOTATED))
    update = review({"request": {"uid": "u-2", "operation": "UPDATE", "object": pod(ANNOTATED)}})
    assert patch_of(update) == label_patch(pod(ANNOTATED)), "annotated later: labelled, never gated"
    late = {"uid": "u-5", "operation": "UPDATE", "object": pod(ANNOTATED), "oldObject": pod()}
    assert patch_of(review({"request": late})) == [
        *label_patch(pod(ANNOTATED)),
        {"op": "add", "path": "/metadata/annotations/etcdlock.io~1annotated-after-creation", "value": "true"},
    ], "the update that adds the lock annotation marks the pod: it was not gated at creation"
    still = {"uid": "u-6", "operation": "UPDATE", "object": pod(ANNOTATED), "oldObject": pod(ANNOTATED)}
    assert patch_of(review({"request": still})) == label_patch(pod(ANNOTATED)), "annotated at creation"
    plain = review({"request": {"uid": "u-3", "operation": "CREATE", "object": pod()}})
    assert plain["response"] == {"uid": "u-3", "allowed": True}
    deleted = review({"request": {"uid": "u-4", "operation": "DELETE", "oldObject": pod(ANNOTATED)}})
    assert deleted["response"] == {"uid": "u-4", "allowed": True}


async def post(port: int, ca: Path, body: Any) -> Any:
    context = ssl.create_default_context(cafile=str(ca))
    async with aiohttp.ClientSession() as session:
        url = f"https://127.0.0.1:{port}{WEBHOOK_PATH}"
        async with session.post(url, json=body, ssl=context) as reply:
            assert reply.status == 200
            return await reply.json()


async def test_the_webhook_serves_https_and_picks_up_a_renewed_certificate(tmp_path: Path) -> None:
    certs = write_webhook_certs(tmp_path / "certs")
    first_ca = tmp_path / "first-ca.crt"
    first_ca.write_bytes((certs / "ca.crt").read_bytes())
    settings = WebhookSettings("127.0.0.1", free_port(), certs)
    request = {"request": {"uid": "u", "operation": "CREATE", "object": pod(ANNOTATED)}}
    async with WebhookServer(settings, reload_interval=0.05):
        answer = await post(settings.port, first_ca, request)
        assert answer["response"]["patchType"] == "JSONPatch"
        write_webhook_certs(certs)  # renewed, by a new CA (as a rotated cert-manager issuer would)
        async with asyncio.timeout(5):
            while True:  # the server looks at the files on a timer: poll until the new one is served
                try:
                    assert (await post(settings.port, certs / "ca.crt", request))["response"]["allowed"]
                    break
                except aiohttp.ClientConnectorCertificateError:
                    await asyncio.sleep(0.05)
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await post(settings.port, first_ca, request)


class _NoAdmissionApi:
    """An adapter whose API serves no webhook configurations: every call answers 404 (None)."""

    admission = types.SimpleNamespace(
        create_mutating_webhook_configuration="create",
        patch_mutating_webhook_configuration="patch",
        create_validating_webhook_configuration="create",
        patch_validating_webhook_configuration="patch",
    )

    async def call(self, method: object, *args: object, **kwargs: object) -> None:
        return None


async def test_registering_where_the_api_has_no_webhook_configurations_is_one_clear_error(
    tmp_path: Path,
) -> None:
    settings = WebhookSettings("127.0.0.1", 9443, write_webhook_certs(tmp_path))
    with pytest.raises(
        EtcdLockError, match=r"cannot register the webhook: no MutatingWebhookConfiguration API"
    ):
        await register(_NoAdmissionApi(), settings)  # type: ignore[arg-type]


async def test_the_webhook_answers_while_the_operators_own_loop_is_blocked(tmp_path: Path) -> None:
    """The webhook has an event loop of its own: kopf's work (here: this loop, blocked outright) never
    delays an admission answer, and answers come on one kept-alive connection."""
    certs = write_webhook_certs(tmp_path / "certs")
    settings = WebhookSettings("127.0.0.1", free_port(), certs)
    body = json.dumps({"request": {"uid": "u", "operation": "CREATE", "object": pod(ANNOTATED)}})
    answers: list[Any] = []
    sockets: list[object] = []
    answered = threading.Event()

    def call_twice() -> None:
        context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        connection = http.client.HTTPSConnection("127.0.0.1", settings.port, context=context, timeout=10)
        try:
            for _ in range(2):
                connection.request("POST", WEBHOOK_PATH, body, {"Content-Type": "application/json"})
                answers.append(json.loads(connection.getresponse().read()))
                sockets.append(connection.sock)
        finally:
            connection.close()
        answered.set()

    async with WebhookServer(settings):
        caller = threading.Thread(target=call_twice)
        caller.start()
        assert answered.wait(10), "no answer while the operator's loop was busy"  # blocks this loop
        caller.join()
    assert [answer["response"]["allowed"] for answer in answers] == [True, True]
    assert sockets[0] is sockets[1], "the second call reused the first call's connection"
