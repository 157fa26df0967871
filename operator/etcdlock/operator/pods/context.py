"""What every pod hold shares (:class:`PodContext`): made once per leadership term by the kopf layer."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from etcdlock.etcd import Fenced
from etcdlock.operator.errors import OperatorError
from etcdlock.operator.events import EventRecorder
from etcdlock.operator.locks import LockChanges, LockRules, LockSpec
from etcdlock.operator.metrics import Metrics
from etcdlock.operator.names import CLUSTER_ANNOTATION
from etcdlock.operator.pods.api import PodApi
from etcdlock.operator.stores import Store, Stores

log = logging.getLogger(__name__)


class PodContext:
    """What every pod hold shares: the stores, the pod API, the lock rules and registry, the lock changes,
    the bridge that keeps adopted leases alive until their pods' sessions take them over, and where the
    pods' Events go (``events``: the kopf layer passes one that posts through kopf, tests a recording
    fake), and the metrics that count the leases pods lost (none in tests that do not read them)."""

    def __init__(
        self,
        stores: Stores,
        api: PodApi,
        rules: LockRules,
        resolve: Callable[[str, str], Awaitable[LockSpec]],
        adopted: Callable[[int], None],
        events: EventRecorder,
        metrics: Metrics | None = None,
    ) -> None:
        self.stores = stores
        self.api = api
        self.rules = rules
        self.changes = LockChanges()
        self.resolve = resolve
        self.adopted = adopted
        self.events = events
        self._metrics = metrics

    def lease_lost(self, namespace: str, lock: str, state: str) -> None:
        """A pod lost its lease (or its key) in ``lock`` while it held the lock (``held``) or waited."""
        if self._metrics is not None:
            self._metrics.lease_lost(namespace, lock, state)

    async def lease_store(self, namespace: str, annotations: Mapping[str, str | None]) -> Store | None:
        """The store the pod's lease was granted in (its cluster annotation); None if it cannot be used.

        Whoever may edit the pod writes that annotation: whatever it says, the pod is not failed for it."""
        where = annotations.get(CLUSTER_ANNOTATION) or None
        try:
            return await self.stores.for_cluster(namespace, where)
        except (OperatorError, Fenced):
            return None
        except Exception as exc:  # a value no operator wrote, which breaks more than it should
            log.warning(
                "namespace %s: %s %.80r names no usable etcd: %r", namespace, CLUSTER_ANNOTATION, where, exc
            )
            return None
