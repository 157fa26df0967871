"""The key of a DistributedLock named like a lock NAME that has no keys, if the current kube context has one.

``etcdlock status NAME`` of a DistributedLock's name finds nothing in etcd (its key is
``/etcdlock/locks/<namespace>/<name>``, or its ``spec.key``). If the ``kubernetes`` package is installed
(``etcdlock[operator]``) and a kubeconfig is there, the lock of that name in the current context's namespace
is looked up, within :data:`TIMEOUT` seconds, to name its key. This is only a hint: every failure (no
kubeconfig, the API unreachable, Forbidden, no such CRD or lock, a spec the operator would refuse) gives
None, and the caller's generic hint stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from etcdlock.operator.names import GROUP, LOCKS, VERSION

log = logging.getLogger(__name__)

T = TypeVar("T")

# The whole look-up (loading the kubernetes client included) is given this long.
TIMEOUT = 3.0
# A Kubernetes object name (DNS-1123 subdomain): a NAME with a slash or capitals names no DistributedLock.
_OBJECT_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


@dataclass(frozen=True)
class LockInKube:
    """A DistributedLock found in the current kube context, and where its contenders live."""

    context: str
    namespace: str
    name: str
    key: str
    etcd: str
    """Which etcd keeps it, in words: empty for the operator's own."""


async def find_lock(name: str, timeout: float = TIMEOUT) -> LockInKube | None:
    """The DistributedLock ``name`` of the current context's namespace, or None (see the module)."""
    if not _OBJECT_NAME.fullmatch(name) or not _kubeconfig_exists():
        return None
    try:
        return await _in_daemon_thread(lambda: _look_up(name, timeout), timeout)
    # Any failure at all (kubernetes not installed included): the hint is optional, the generic one stays.
    except Exception as exc:
        log.debug("no DistributedLock %s looked up: %s: %s", name, type(exc).__name__, exc)
        return None


def _kubeconfig_exists() -> bool:
    """Whether a kubeconfig is there to read (KUBECONFIG's files, else ~/.kube/config): without one the
    kubernetes client is not even loaded."""
    paths = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    return any(Path(path).is_file() for path in paths.split(os.pathsep) if path)


def _look_up(name: str, timeout: float) -> LockInKube:
    """Blocking: the kubernetes client and the operator's lock rules (loaded here, within the time bound:
    both need the ``operator`` extra), in a thread of its own."""
    import kubernetes

    from etcdlock.operator.locks import LockSpec

    config: Any = kubernetes.config  # these functions carry no type hints
    _, active = config.list_kube_config_contexts()
    context = active["name"]
    namespace = active["context"].get("namespace") or "default"
    configuration = kubernetes.client.Configuration()
    config.load_kube_config(context=context, client_configuration=configuration)
    configuration.retries = False  # one try: urllib3's retries would also log a warning each
    with kubernetes.client.ApiClient(configuration) as api:
        lock: Any = kubernetes.client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, LOCKS, name, _request_timeout=timeout
        )
    spec = LockSpec.parse(namespace, name, lock.get("spec") or {})
    if spec.etcd is not None:
        etcd = f"the etcd at {','.join(spec.etcd.endpoints)}"
    else:
        etcd = f"the etcd of EtcdCluster {spec.cluster}" if spec.cluster else ""
    return LockInKube(context, namespace, name, spec.key, etcd)


async def _in_daemon_thread(call: Callable[[], T], timeout: float) -> T:
    """``call()`` in a daemon thread, awaited at most ``timeout`` seconds: a look-up that hangs (a kubeconfig
    whose credential plugin never returns) neither holds up the answer nor keeps the process from exiting,
    as a thread of asyncio's executor would (asyncio.run and the interpreter join those)."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            outcome = functools.partial(_resolve, answer, call())
        except Exception as exc:  # handed over to the awaiting coroutine
            outcome = functools.partial(_reject, answer, exc)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(outcome)

    threading.Thread(target=run, name="kube-hint", daemon=True).start()
    async with asyncio.timeout(timeout):
        return await answer


def _resolve(answer: asyncio.Future[T], result: T) -> None:
    if not answer.done():
        answer.set_result(result)


def _reject(answer: asyncio.Future[T], error: Exception) -> None:
    if not answer.done():
        answer.set_exception(error)
