"""The operator's lists of pods and DistributedLocks and its retried calls, through the kubernetes client
(in threads): what the takeover, the lock webhook and the lock status need."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from etcdlock.operator.errors import OperatorError
from etcdlock.operator.names import GROUP, LOCKS, VERSION

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_PAUSE = 1.0


class ApiUnavailable(OperatorError):
    """The Kubernetes API did not take a call (unreachable, or an error other than 404/409)."""

    reason = "ApiUnavailable"


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
