"""The sweep: pods that ask for a lock but lack the ``etcdlock.io/managed`` label get it.

The operator watches only labelled pods, so that the API server does the filtering and unrelated pods cost
it nothing. The webhook labels annotated pods as they are created or annotated; the sweep finds the rest:
pods created before the webhook existed (an upgrade from a release without the label), and pods written
while the webhook was unreachable (its failurePolicy is Ignore). Labelled, they reach the pod watch like
any other: held, adopted, or told that they run ungated.

It runs on the listing a new leader makes anyway (:meth:`PodSweep.start`), then every ``interval``
seconds (``--pod-sweep-interval``; 0: never again) on a listing of unlabelled pods only, a page at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from etcdlock.operator.kube import LIST_TIMEOUT, ApiUnavailable, Kube
from etcdlock.operator.names import LOCK_ANNOTATION, MANAGED_LABEL
from etcdlock.operator.pods.api import Pod, PodApi, annotations_of, is_labelled, pod_ref

log = logging.getLogger(__name__)

PAGE = 500


class PodSweep:
    """Labels the annotated pods the webhook did not label, for one term of leadership."""

    def __init__(self, kube: Kube, api: PodApi, namespaces: Sequence[str], interval: float) -> None:
        self._kube = kube
        self._api = api
        self._namespaces = namespaces
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self, listed: Iterable[Pod]) -> None:
        """Label the unlabelled pods of ``listed`` (every pod, as the new leader listed them), then sweep
        again every ``interval`` seconds; in the background."""
        self._task = asyncio.create_task(self._run(list(listed)), name="pod-sweep")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self, listed: list[Pod]) -> None:
        await self.label(listed)
        while self._interval > 0:
            await asyncio.sleep(self._interval)
            try:
                await self.sweep()
            except ApiUnavailable as exc:
                log.warning("pod sweep: %s; trying again in %ss", exc, self._interval)

    async def sweep(self) -> int:
        """List the unlabelled pods, a page at a time, and label those that ask for a lock; how many."""
        labelled = 0
        for namespace in self._namespaces or [""]:
            token: str | None = None
            while token != "":
                page = await self._kube.pod_page(namespace, f"!{MANAGED_LABEL}", PAGE, token, LIST_TIMEOUT)
                labelled += await self.label(page.get("items") or [])
                token = str((page.get("metadata") or {}).get("continue") or "")
        return labelled

    async def label(self, pods: Iterable[Pod]) -> int:
        """Label the pods that ask for a lock and lack the label; how many were labelled."""
        count = 0
        for pod in pods:
            if annotations_of(pod).get(LOCK_ANNOTATION) and not is_labelled(pod):
                if await self._api.label(pod_ref(pod)) is not None:
                    count += 1
        if count:
            log.info("pod sweep: labelled %d annotated pods the webhook had not labelled", count)
        return count
