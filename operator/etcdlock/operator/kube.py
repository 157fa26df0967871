"""The operator's one way to the Kubernetes API: the synchronous kubernetes client, run in threads of its
own pool (asyncio's default executor has only CPUs + 4 threads: at 500 locks, hundreds of calls waited for
one), with as many connections in the client's pool as there are threads.

Every call answers the same way: the object as a dict, None when it is not there (404), :class:`Conflict`
when it changed since the version the write named or already exists (409), :class:`ApiUnavailable` for
anything else (the API unreachable, or refusing). :func:`retrying` retries the last two with a growing
pause, for writes that must land (a retried conditional write is re-decided by its caller instead).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import kubernetes
import tenacity
import urllib3
from kubernetes.client.exceptions import ApiException

from etcdlock.operator.errors import OperatorError
from etcdlock.operator.names import GROUP, VERSION

log = logging.getLogger(__name__)

T = TypeVar("T")
Obj = dict[str, Any]

# Bounds each call (well below any lease TTL), so that a retried write is re-checked.
REQUEST_TIMEOUT = 5.0
# Bounds a list of every pod or lock of the cluster, which a large cluster takes longer to answer.
LIST_TIMEOUT = 60.0
# The pause between attempts doubles from the first to the longest.
RETRY_FIRST = 0.25
RETRY_LONGEST = 1.0
# Calls in flight at once (threads, and connections to the API server); bench/pods.py measures the effect.
KUBE_THREADS = 32


class ApiUnavailable(OperatorError):
    """The Kubernetes API did not take a call (unreachable, or an error other than 404/409)."""

    reason = "ApiUnavailable"


class TooManyRequests(ApiUnavailable):
    """429: try again later (an eviction: a PodDisruptionBudget does not allow it now); the API server's
    message says why."""

    reason = "TooManyRequests"


class Forbidden(ApiUnavailable):
    """403: the operator's service account may not make this call (its RBAC lacks it)."""

    reason = "Forbidden"


class Conflict(OperatorError):
    """409: the object changed since the version the write named, or already exists."""

    reason = "Conflict"


class Kube:
    """The API groups the operator uses, over one client (made once per process: the client's API modules
    take half a second to load, which a new leader should not spend)."""

    def __init__(self, api: kubernetes.client.ApiClient) -> None:
        self.api = api
        self._threads = ThreadPoolExecutor(KUBE_THREADS, thread_name_prefix="kube")
        self.core = kubernetes.client.CoreV1Api(api)
        self.apps = kubernetes.client.AppsV1Api(api)
        self.policy = kubernetes.client.PolicyV1Api(api)
        self.objects = kubernetes.client.CustomObjectsApi(api)
        self.extensions = kubernetes.client.ApiextensionsV1Api(api)
        self.admission = kubernetes.client.AdmissionregistrationV1Api(api)

    async def call(
        self, method: Callable[..., Any], *args: Any, timeout: float = REQUEST_TIMEOUT, **kwargs: Any
    ) -> Obj | None:
        """``method(*args, **kwargs)`` of one of the API groups, in a thread, answered within ``timeout``
        seconds: the answer's body, or None for 404; raises :class:`Conflict` or :class:`ApiUnavailable`."""

        def run() -> Obj:
            response = method(*args, _preload_content=False, _request_timeout=timeout, **kwargs)
            body: Obj = json.loads(response.data or b"{}")
            return body

        in_context = functools.partial(contextvars.copy_context().run, run)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, in_context)
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 409:
                raise Conflict(f"conflict: {exc.reason}") from None
            if exc.status == 429:
                raise TooManyRequests(_status_message(exc)) from None
            if exc.status == 403:
                raise Forbidden(f"API error 403 {exc.reason}") from None
            raise ApiUnavailable(f"API error {exc.status} {exc.reason}") from None
        except (OSError, urllib3.exceptions.HTTPError) as exc:
            raise ApiUnavailable(f"API unreachable ({_without_addresses(exc)})") from None

    def close(self) -> None:
        """Stop the threads (calls not started are dropped) and close the client's connections."""
        self._threads.shutdown(wait=False, cancel_futures=True)
        self.api.close()

    async def custom_object(self, plural: str, namespace: str, name: str) -> Obj | None:
        return await self.call(
            self.objects.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name
        )

    async def custom_objects(
        self, plural: str, namespaces: Sequence[str], timeout: float = REQUEST_TIMEOUT
    ) -> list[Obj]:
        """Every object of the kind in ``namespaces`` (none: in all)."""
        objects = self.objects
        if not namespaces:
            listed = await self.call(
                objects.list_cluster_custom_object, GROUP, VERSION, plural, timeout=timeout
            )
            return list((listed or {}).get("items") or [])
        found: list[Obj] = []
        for namespace in namespaces:
            list_namespaced = objects.list_namespaced_custom_object
            listed = await self.call(list_namespaced, GROUP, VERSION, namespace, plural, timeout=timeout)
            found.extend((listed or {}).get("items") or [])
        return found

    async def patch_status(self, plural: str, namespace: str, name: str, status: Obj) -> Obj | None:
        patch = self.objects.patch_namespaced_custom_object_status
        return await self.call(patch, GROUP, VERSION, namespace, plural, name, {"status": status})

    async def pods(
        self, namespaces: Sequence[str], label_selector: str | None = None, timeout: float = REQUEST_TIMEOUT
    ) -> list[Obj]:
        """Every pod in ``namespaces`` (none: in all), of the selector if one is given."""
        options: dict[str, Any] = {"timeout": timeout}
        if label_selector:
            options["label_selector"] = label_selector
        if not namespaces:
            listed = await self.call(self.core.list_pod_for_all_namespaces, **options)
            return list((listed or {}).get("items") or [])
        found: list[Obj] = []
        for namespace in namespaces:
            listed = await self.call(self.core.list_namespaced_pod, namespace, **options)
            found.extend((listed or {}).get("items") or [])
        return found

    async def pod_page(
        self, namespace: str, label_selector: str, limit: int, token: str | None, timeout: float
    ) -> Obj:
        """One page of the pods of ``namespace`` ("": of all) that match the selector; its
        ``metadata.continue`` names the next page ("" after the last)."""
        options: dict[str, Any] = {"label_selector": label_selector, "limit": limit, "timeout": timeout}
        if token:
            options["_continue"] = token
        if namespace:
            page = await self.call(self.core.list_namespaced_pod, namespace, **options)
        else:
            page = await self.call(self.core.list_pod_for_all_namespaces, **options)
        return page or {}


async def retrying(what: str, call: Callable[[], Awaitable[T]], attempts: int | None = None) -> T:
    """``call()`` until it answers (None for 404 included): an unavailable API or a conflict is logged and
    tried again, ``attempts`` times at most (then :class:`ApiUnavailable`); without ``attempts``, until it
    lands or the caller is cancelled."""

    def warn(state: tenacity.RetryCallState) -> None:
        log.warning("%s: %s; retrying", what, state.outcome.exception() if state.outcome else "")

    retry = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception_type((ApiUnavailable, Conflict)),
        wait=tenacity.wait_exponential(multiplier=RETRY_FIRST, max=RETRY_LONGEST),
        stop=tenacity.stop_never if attempts is None else tenacity.stop_after_attempt(attempts),
        before_sleep=warn,
        reraise=True,
    )

    async def attempt() -> T:
        # tenacity awaits only what it sees is a coroutine function: a lambda returning a coroutine is not.
        return await call()

    try:
        return await retry(attempt)
    except (ApiUnavailable, Conflict) as exc:
        raise ApiUnavailable(f"{what}: {exc}") from None


def _status_message(exc: ApiException) -> str:
    """The message of the Status the API server answered with (its reason if there is none)."""
    try:
        message = json.loads(exc.body or b"{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or f"API error {exc.status} {exc.reason}")


def _without_addresses(exc: BaseException) -> str:
    """The error's text without the object addresses urllib3 puts in it, so that the same failure reads the
    same every time (a status or an Event is written again only when its text changes)."""
    return re.sub(r" object at 0x[0-9a-f]+", "", str(exc))
