"""Evicting a pod that lost its hold (``etcdlock.io/on-lost: evict``), so its work stops.

Through the Eviction API (``pods/eviction``), so the pod's PodDisruptionBudget is respected: while the
budget refuses (429) the pod runs on, as it would under ``keep``, and the eviction is tried again, backing
off from :data:`FIRST` to :data:`LONGEST` seconds, for as long as the pod exists and this replica leads.
The pod says ``Evicting`` meanwhile, so a new leader takes the eviction up again
(:mod:`.decisions`, EVICT).
"""

from __future__ import annotations

import asyncio
import logging

from etcdlock.operator.kube import ApiUnavailable, TooManyRequests
from etcdlock.operator.pods.api import Pod, pod_ref
from etcdlock.operator.pods.context import PodContext

log = logging.getLogger(__name__)

FIRST = 1.0
LONGEST = 30.0


async def evict(context: PodContext, pod: Pod, why: str) -> None:
    """Evict ``pod`` (the very pod: its uid), saying ``why`` in an ``Evicting`` Warning, and an
    ``EvictionBlocked`` one the first time a budget refuses. Returns once it is evicted or gone; raises
    :class:`~etcdlock.etcd.Fenced` once this replica no longer leads."""
    context.events.warn(pod, "Evicting", why)
    pause, refused = FIRST, False
    while True:
        await context.stores.leadership.assured()
        try:
            await context.api.evict(pod)
            return
        except TooManyRequests as exc:
            if not refused:
                message = f"not evicted yet: {exc}; trying again (every {LONGEST:.0f}s at most)"
                context.events.warn(pod, "EvictionBlocked", message)
            refused = True
        except ApiUnavailable as exc:
            log.warning("pod %s/%s: not evicted yet (%s); retrying", *pod_ref(pod), exc)
        await asyncio.sleep(pause)
        pause = min(pause * 2, LONGEST)
