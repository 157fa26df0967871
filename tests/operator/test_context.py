"""A new leader's term: its context opens through API outages, and a stop while it opens ends the term at
once, closing what was opened (before, a stop waited for kopf's start-up handler)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from fakes import unreachable_kube

from etcdlock.etcd import EtcdClient, EtcdConfig
from etcdlock.operator.kube import ApiUnavailable
from etcdlock.operator.leadership import Leadership
from etcdlock.operator.locks import LockRules
from etcdlock.operator.metrics import Metrics
from etcdlock.operator.pods import PodApi
from etcdlock.operator.run import _Kopf
from etcdlock.operator.stores import Store, Stores
from etcdlock.operator.takeover import Takeover, list_pods
from etcdlock_sandbox.etcd import LocalEtcd

BOUND = 10.0


class _Retried(logging.Handler):
    """Sets ``event`` when the adapter logs that it tries ``what`` again."""

    def __init__(self, what: str, event: asyncio.Event) -> None:
        super().__init__()
        self.what, self.event = what, event

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.what) and "retrying" in record.getMessage():
            self.event.set()


async def test_a_term_stopped_while_the_api_is_down_ends_at_once_and_leaves_no_task(etcd: LocalEtcd) -> None:
    kube = unreachable_kube()
    term = _Kopf(EtcdConfig.parse(etcd.endpoints), kube, Metrics(), (), PodApi(kube), LockRules(), 0, "")
    retried, stop = asyncio.Event(), asyncio.Event()
    handler = _Retried("listing DistributedLocks", retried)
    logging.getLogger("etcdlock.operator.kube").addHandler(handler)
    before = asyncio.all_tasks()
    try:
        running = term.start(Leadership(), stop, asyncio.Event())
        async with asyncio.timeout(BOUND):
            await retried.wait()  # the new leader waits the outage out...
        stop.set()
        async with asyncio.timeout(BOUND):
            await running  # ...until it is told to stop: then at once, kopf never started
    finally:
        logging.getLogger("etcdlock.operator.kube").removeHandler(handler)
    assert {t for t in asyncio.all_tasks() - before if not t.done()} == set()


class _FlakyPods:
    """The takeover's one call: the pod list fails once, as an API outage would, then answers."""

    def __init__(self, pods: Sequence[dict[str, Any]]) -> None:
        self.pods_listed = 0
        self._pods = list(pods)

    async def pods(self, namespaces: Sequence[str], timeout: float = 5.0) -> list[dict[str, Any]]:
        self.pods_listed += 1
        if self.pods_listed == 1:
            raise ApiUnavailable("API unreachable (connection refused)")
        return self._pods


async def test_the_takeover_lists_the_pods_again_after_an_api_outage(client: EtcdClient) -> None:
    kube = _FlakyPods([])
    takeover = Takeover(Stores(Store(client, None, Leadership()), kube), 1.0)  # type: ignore[arg-type]
    try:
        assert await takeover.start(await list_pods(kube, ())) == 0  # type: ignore[arg-type]
    finally:
        await takeover.close()
    assert kube.pods_listed == 2
