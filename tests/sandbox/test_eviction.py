"""The eviction subresource of the API emulator (``pods/NAME/eviction``), through the official client: a
pod is deleted unless the PodDisruptionBudget selecting it allows no disruption, as kube-apiserver does."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiClient, ApiException

from etcdlock_sandbox.cluster import SandboxThread


@pytest.fixture
def api(k8s_sandbox: SandboxThread, k8s_kubeconfig: Any) -> ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(k8s_kubeconfig))


@pytest.fixture
def namespace(api: ApiClient) -> Iterator[str]:
    name = f"evict-{uuid.uuid4().hex[:8]}"
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def running_pod(api: ApiClient, namespace: str, name: str, app: str) -> str:
    """A pod in phase Running (as a kubelet reports it); its uid."""
    core = kubernetes.client.CoreV1Api(api)
    body = {
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }
    created = core.create_namespaced_pod(namespace, body)
    core.patch_namespaced_pod_status(name, namespace, {"status": {"phase": "Running"}})
    return str(created.metadata.uid)


def eviction(name: str, uid: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name}}
    if uid is not None:
        body["deleteOptions"] = {"preconditions": {"uid": uid}}
    return body


def budget(api: ApiClient, namespace: str, name: str, app: str, allowed: int) -> None:
    policy = kubernetes.client.PolicyV1Api(api)
    spec = {"minAvailable": 1, "selector": {"matchLabels": {"app": app}}}
    policy.create_namespaced_pod_disruption_budget(namespace, {"metadata": {"name": name}, "spec": spec})
    status = {
        "observedGeneration": 1,
        "disruptionsAllowed": allowed,
        "currentHealthy": 1,
        "desiredHealthy": 1,
    }
    policy.patch_namespaced_pod_disruption_budget_status(name, namespace, {"status": status})


def exists(api: ApiClient, namespace: str, name: str) -> bool:
    try:
        kubernetes.client.CoreV1Api(api).read_namespaced_pod(name, namespace)
    except ApiException as exc:
        assert exc.status == 404
        return False
    return True


def test_a_pod_without_a_budget_is_evicted_and_a_missing_one_is_404(api: ApiClient, namespace: str) -> None:
    core = kubernetes.client.CoreV1Api(api)
    uid = running_pod(api, namespace, "free", "free")
    core.create_namespaced_pod_eviction("free", namespace, eviction("free", uid))
    assert not exists(api, namespace, "free")
    with pytest.raises(ApiException) as missing:
        core.create_namespaced_pod_eviction("free", namespace, eviction("free"))
    assert missing.value.status == 404


def test_a_budget_that_allows_no_disruption_refuses_with_429_and_one_that_allows_takes_one(
    api: ApiClient, namespace: str
) -> None:
    core, policy = kubernetes.client.CoreV1Api(api), kubernetes.client.PolicyV1Api(api)
    running_pod(api, namespace, "guarded", "guarded")
    budget(api, namespace, "guard", "guarded", allowed=0)
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod_eviction("guarded", namespace, eviction("guarded"))
    assert refused.value.status == 429
    assert "disruption budget" in str(refused.value.body)
    assert exists(api, namespace, "guarded")
    status = {"observedGeneration": 1, "disruptionsAllowed": 1}
    policy.patch_namespaced_pod_disruption_budget_status("guard", namespace, {"status": status})
    core.create_namespaced_pod_eviction("guarded", namespace, eviction("guarded"))
    assert not exists(api, namespace, "guarded")
    assert (
        policy.read_namespaced_pod_disruption_budget_status("guard", namespace).status.disruptions_allowed
        == 0
    )


def test_a_pending_pod_is_evicted_whatever_its_budget_says_and_a_wrong_uid_is_a_conflict(
    api: ApiClient, namespace: str
) -> None:
    core = kubernetes.client.CoreV1Api(api)
    running_pod(api, namespace, "other", "held")
    with pytest.raises(ApiException) as conflict:
        core.create_namespaced_pod_eviction("other", namespace, eviction("other", "not-its-uid"))
    assert conflict.value.status == 409 and exists(api, namespace, "other")
    budget(api, namespace, "guard", "pending", allowed=0)
    body = {
        "metadata": {"name": "pending", "labels": {"app": "pending"}},
        "spec": {"containers": [{"name": "c", "image": "x"}], "schedulingGates": [{"name": "x/y"}]},
    }
    core.create_namespaced_pod(namespace, body)
    core.create_namespaced_pod_eviction("pending", namespace, eviction("pending"))
    assert not exists(api, namespace, "pending")
