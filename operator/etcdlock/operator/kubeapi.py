"""The operator's reads and writes of pods and DistributedLocks, through the kubernetes client (in
threads): what the pod flow, the takeover and the lock webhook need.

Writes return the pod as written, so the next conditional write can name its resourceVersion. The one
write that lets a pod run, :meth:`PodApi.ungate`, is conditional on the pod being the version the decision
was taken on, and that version asking for the lock granted: a pod whose annotation changed meanwhile is
never ungated for the old lock.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from etcdlock.operator.errors import OperatorError
from etcdlock.operator.names import GROUP, LOCK_ANNOTATION, LOCKS, SCHEDULING_GATE, VERSION

log = logging.getLogger(__name__)

T = TypeVar("T")
Pod = dict[str, Any]
Ref = tuple[str, str]

_STRATEGIC_MERGE = "application/strategic-merge-patch+json"
RETRY_PAUSE = 1.0
# Bounds each Kubernetes API call (well below any lease TTL), so that a retried ungate is re-checked.
REQUEST_TIMEOUT = 5.0


class PodChanged(OperatorError):
    """A conditional pod write found a newer version of the pod than the one it was decided on."""

    reason = "PodChanged"


class ApiUnavailable(OperatorError):
    """The Kubernetes API did not take a call (unreachable, or an error other than 404/409)."""

    reason = "ApiUnavailable"


def annotations_of(pod: Mapping[str, Any]) -> Mapping[str, str]:
    return (pod.get("metadata") or {}).get("annotations") or {}


def pod_ref(pod: Mapping[str, Any]) -> Ref:
    meta = pod["metadata"]
    return meta.get("namespace") or "", meta["name"]


def parse_lease(value: str | None) -> int | None:
    """The lease ID named on a pod (hexadecimal), or None if absent or not a number."""
    try:
        return int(value, 16) if value else None
    except ValueError:
        return None


def is_gated(pod: Mapping[str, Any]) -> bool:
    gates = (pod.get("spec") or {}).get("schedulingGates") or []
    return any(gate.get("name") == SCHEDULING_GATE for gate in gates)


class PodApi:
    """Pod patches and DistributedLock reads.

    Made once per process, before any campaign: the client's API modules take half a second to load,
    which a new leader should not spend.
    """

    def __init__(self, kube: kubernetes.client.ApiClient) -> None:
        self._core = kubernetes.client.CoreV1Api(kube)
        self._objects = kubernetes.client.CustomObjectsApi(kube)

    async def annotate(
        self,
        ref: Ref,
        annotations: Mapping[str, str | None],
        *,
        ungate: bool = False,
        attempts: int | None = None,
    ) -> Pod | None:
        """Set (None: remove) annotations, and remove the gate if asked, in one patch.

        The pod as written, or None if it is gone. API failures are retried until the write lands, or
        ``attempts`` times (then :class:`ApiUnavailable`).
        """
        body: dict[str, Any] = {"metadata": {"annotations": dict(annotations)}}
        if ungate:
            body["spec"] = {"schedulingGates": [{"$patch": "delete", "name": SCHEDULING_GATE}]}
        return await retrying(f"pod {ref[0]}/{ref[1]}", lambda: self._patch(ref, body), attempts)

    async def ungate(self, pod: Pod, lock: str, annotations: Mapping[str, str | None]) -> Pod | None:
        """Remove the gate and write ``annotations``, only if the pod is still the version ``pod`` was
        (its resourceVersion is a precondition of the write) and that version asks for ``lock``.

        Returns the pod as written, or None (nothing written) if the pod is gone or asks for another lock.
        Raises :class:`PodChanged` if the pod changed since ``pod`` (decide again on its new version), and
        :class:`ApiUnavailable` if the API fails.
        """
        if annotations_of(pod).get(LOCK_ANNOTATION) != lock:
            return None
        body = {
            "metadata": {
                "resourceVersion": pod["metadata"]["resourceVersion"],
                "annotations": dict(annotations),
            },
            "spec": {"schedulingGates": [{"$patch": "delete", "name": SCHEDULING_GATE}]},
        }
        try:
            return await _one_call(functools.partial(self._patch, pod_ref(pod), body))
        except _Conflict:
            raise PodChanged(f"pod {pod_ref(pod)[0]}/{pod_ref(pod)[1]} changed") from None

    async def read_lock(self, namespace: str, name: str) -> Pod | None:
        """The DistributedLock, or None if it does not exist or is being deleted."""

        def get() -> Any:
            return self._objects.get_namespaced_custom_object(
                GROUP, VERSION, namespace, LOCKS, name, _request_timeout=REQUEST_TIMEOUT
            )

        lock = await retrying(f"DistributedLock {namespace}/{name}", lambda: asyncio.to_thread(get))
        if lock is None or lock.get("metadata", {}).get("deletionTimestamp"):
            return None
        return dict(lock)

    async def _patch(self, ref: Ref, body: dict[str, Any]) -> Pod:
        namespace, name = ref

        def patch() -> Pod:
            response: Any = self._core.patch_namespaced_pod(
                name,
                namespace,
                body,
                _content_type=_STRATEGIC_MERGE,
                _request_timeout=REQUEST_TIMEOUT,
                _preload_content=False,
            )
            written: Pod = json.loads(response.data)
            return written

        return await asyncio.to_thread(patch)


class _Conflict(Exception):
    """409: the object changed since the version the write named."""


async def _one_call(call: Callable[[], Awaitable[T]]) -> T | None:
    """One API call: its result, None for 404; :class:`_Conflict` for 409, :class:`ApiUnavailable` else."""
    try:
        return await call()
    except ApiException as exc:
        if exc.status == 404:
            return None
        if exc.status == 409:
            raise _Conflict() from None
        raise ApiUnavailable(f"API error {exc.status} {exc.reason}") from None
    except (OSError, urllib3.exceptions.HTTPError) as exc:
        raise ApiUnavailable(f"API unreachable ({exc})") from None


async def retrying(what: str, call: Callable[[], Awaitable[T]], attempts: int | None = None) -> T | None:
    """Run an API call until it succeeds (its result) or answers 404 (None); log and retry other
    failures, ``attempts`` times at most (then :class:`ApiUnavailable`)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await _one_call(call)
        except (ApiUnavailable, _Conflict) as exc:
            if attempts is not None and attempt >= attempts:
                raise ApiUnavailable(f"{what}: {exc}") from None
            log.warning("%s: %s; retrying", what, exc or "conflict")
        await asyncio.sleep(RETRY_PAUSE)


def list_locks(kube: kubernetes.client.ApiClient, namespaces: Sequence[str]) -> list[dict[str, Any]]:
    """Every DistributedLock in ``namespaces`` (none: in all). Blocking: call it in a thread."""
    objects = kubernetes.client.CustomObjectsApi(kube)
    if not namespaces:
        everywhere: Any = objects.list_cluster_custom_object(GROUP, VERSION, LOCKS)
        return list(everywhere.get("items") or [])
    found: list[dict[str, Any]] = []
    for namespace in namespaces:
        listed: Any = objects.list_namespaced_custom_object(GROUP, VERSION, namespace, LOCKS)
        found.extend(listed.get("items") or [])
    return found


def list_pods(kube: kubernetes.client.ApiClient, namespaces: Sequence[str]) -> list[dict[str, Any]]:
    """Every pod in ``namespaces`` (none: in all). Blocking: call it in a thread."""
    core = kubernetes.client.CoreV1Api(kube)
    if not namespaces:
        response: Any = core.list_pod_for_all_namespaces(_preload_content=False)
        return list(json.loads(response.data).get("items") or [])
    pods: list[dict[str, Any]] = []
    for namespace in namespaces:
        listed: Any = core.list_namespaced_pod(namespace, _preload_content=False)
        pods.extend(json.loads(listed.data).get("items") or [])
    return pods
