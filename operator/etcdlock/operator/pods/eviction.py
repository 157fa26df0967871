"""Evicting a pod that lost its hold (``etcdlock.io/on-lost: evict``), so its work stops.

Through the Eviction API (``pods/eviction``), so the pod's PodDisruptionBudget is respected: while the
budget refuses (429) the pod runs on, as it would under ``keep``, and the eviction is tried again, backing
off from :data:`FIRST` to :data:`LONGEST` seconds, for as long as the pod exists and this replica leads.
Any other failure (a 500: two budgets select the pod; the API unreachable) is retried the same way; a 403
is not: the operator's ClusterRole lacks ``create`` on ``pods/eviction``, which no retry fixes. The pod
is told once of each kind of failure (:func:`failure` decides what it is told and whether to go on). The
pod says ``Evicting`` meanwhile, so a new leader takes the eviction up again (:mod:`.decisions`, EVICT),
a forbidden one too (the permission may have been granted since).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from etcdlock.operator.kube import ApiUnavailable, Forbidden, TooManyRequests
from etcdlock.operator.pods.api import Pod, pod_ref
from etcdlock.operator.pods.context import PodContext

log = logging.getLogger(__name__)

FIRST = 1.0
LONGEST = 30.0


@dataclass(frozen=True)
class Failure:
    """What the pod is told of a failed eviction (a Warning's reason and message), and whether the
    eviction is tried again."""

    reason: str
    message: str
    retry: bool


def failure(exc: ApiUnavailable) -> Failure:
    """What a failed eviction means: refused by a budget (429) or failing otherwise, it is tried again;
    forbidden (403), it stops."""
    if isinstance(exc, Forbidden):
        message = (
            f"not evicted: {exc}: the operator lacks the RBAC permission create on pods/eviction (apply "
            "its ClusterRole); not tried again until a new leader takes the eviction up"
        )
        return Failure("EvictionForbidden", message, retry=False)
    again = f"tried again (every {LONGEST:.0f}s at most)"
    if isinstance(exc, TooManyRequests):
        return Failure("EvictionBlocked", f"not evicted yet: {exc}; {again}", retry=True)
    return Failure("EvictionFailed", f"not evicted yet: {exc}; {again}", retry=True)


async def evict(context: PodContext, pod: Pod, why: str) -> None:
    """Evict ``pod`` (the very pod: its uid), saying ``why`` in an ``Evicting`` Warning, and what failed
    in a Warning the first time an eviction fails in each way (:func:`failure`). Returns once it is evicted
    or gone, or the eviction is forbidden; raises :class:`~etcdlock.etcd.Fenced` once this replica no
    longer leads."""
    context.events.warn(pod, "Evicting", why)
    pause, told = FIRST, set[str]()
    while True:
        await context.stores.leadership.assured()
        try:
            await context.api.evict(pod)
            return
        except ApiUnavailable as exc:
            failed = failure(exc)
            log.warning("pod %s/%s: %s", *pod_ref(pod), failed.message)
            if failed.reason not in told:
                context.events.warn(pod, failed.reason, failed.message)
                told.add(failed.reason)
            if not failed.retry:
                return
        await asyncio.sleep(pause)
        pause = min(pause * 2, LONGEST)
