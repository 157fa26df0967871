"""A pretend kubelet for the sandbox: pods run nothing, but go through the phases a node would give them.

There are no nodes and no containers here (pods of the etcd image are the exception: they run for real,
see :mod:`etcdlock_sandbox.containers`). A pod without scheduling gates becomes Running at once (gated
pods stay Pending, as with a real scheduler); a pod annotated ``sandbox.etcdlock.io/run-seconds: N`` then
finishes N seconds after it started: Succeeded, or Failed if ``sandbox.etcdlock.io/exit-code`` is not 0.
Without that annotation it runs until it is deleted or its phase is patched
(``kubectl patch pod P --subresource=status --type=merge -p '{"status":{"phase":"Succeeded"}}'``).
The annotation may also be added later: ``kubectl annotate pod P sandbox.etcdlock.io/run-seconds=0``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any

from etcdlock_sandbox.apiserver.api import JSON_PATCH, MERGE_PATCH, Api, now
from etcdlock_sandbox.apiserver.errors import ApiError
from etcdlock_sandbox.podspec import runs_as_processes

log = logging.getLogger(__name__)

RUN_SECONDS = "sandbox.etcdlock.io/run-seconds"
EXIT_CODE = "sandbox.etcdlock.io/exit-code"
NODE = "sandbox"

Obj = dict[str, Any]


def _seconds(value: Any) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None


class PodLifecycle:
    """Moves every pod in the sandbox from Pending to Running to Succeeded/Failed, as described above."""

    def __init__(self, api: Api) -> None:
        self._api = api
        self._pods = api.resolve("", "v1", "pods")
        self._timers: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Follow the pods until cancelled (the watch starts over if it ends)."""
        try:
            while True:
                try:
                    async for kind, pod in self._api.watch(self._pods, None, None, lambda _: True):
                        await self._consider(kind, pod)
                except ApiError as exc:
                    log.warning("pod lifecycle: watch ended (%s); starting over", exc)
                    await asyncio.sleep(0.5)
        finally:
            for timer in self._timers.values():
                timer.cancel()
            await asyncio.gather(*self._timers.values(), return_exceptions=True)

    async def _consider(self, kind: str, pod: Obj) -> None:
        meta = pod["metadata"]
        uid = meta.get("uid", "")
        if runs_as_processes(pod):
            return
        if kind == "DELETED" or meta.get("deletionTimestamp"):
            timer = self._timers.pop(uid, None)
            if timer is not None:
                timer.cancel()
            return
        status = pod.get("status") or {}
        phase = status.get("phase") or "Pending"
        if phase == "Pending" and not (pod.get("spec") or {}).get("schedulingGates"):
            await self._start(pod)
        elif phase == "Running" and uid not in self._timers:
            seconds = _seconds((meta.get("annotations") or {}).get(RUN_SECONDS))
            if seconds is not None:
                started = status.get("startTime")
                elapsed = 0.0
                if started:
                    elapsed = (datetime.now(UTC) - datetime.fromisoformat(started)).total_seconds()
                self._timers[uid] = asyncio.create_task(self._finish_after(pod, max(0.0, seconds - elapsed)))

    def _running(self, pod: Obj) -> Obj:
        started = now()
        containers = (pod.get("spec") or {}).get("containers") or []
        return {
            "phase": "Running",
            "startTime": started,
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "conditions": [
                {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": started}
                for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ],
            "containerStatuses": [
                {
                    "name": c.get("name", ""),
                    "image": c.get("image", ""),
                    "imageID": "",
                    "ready": True,
                    "restartCount": 0,
                    "started": True,
                    "state": {"running": {"startedAt": started}},
                }
                for c in containers
            ],
        }

    async def _finish_after(self, pod: Obj, delay: float) -> None:
        await asyncio.sleep(delay)
        meta = pod["metadata"]
        try:
            current = await self._api.get(self._pods, meta.get("namespace"), meta["name"])
        except ApiError:
            return
        finally:
            self._timers.pop(meta.get("uid", ""), None)
        if (
            current["metadata"].get("uid") != meta.get("uid")
            or (current.get("status") or {}).get("phase") != "Running"
        ):
            return
        code = int(_seconds((current["metadata"].get("annotations") or {}).get(EXIT_CODE)) or 0)
        finished = now()
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "finishedAt": finished,
        }
        statuses = [
            {**s, "ready": False, "started": False, "state": {"terminated": terminated}}
            for s in (current.get("status") or {}).get("containerStatuses") or []
        ]
        ready = [
            {"type": t, "status": "False", "reason": "PodCompleted", "lastTransitionTime": finished}
            for t in ("ContainersReady", "Ready")
        ]
        conditions = [
            c
            for c in (current.get("status") or {}).get("conditions") or []
            if c.get("type") not in ("ContainersReady", "Ready")
        ]
        phase = "Succeeded" if code == 0 else "Failed"
        await self._set_status(
            current, {"phase": phase, "containerStatuses": statuses, "conditions": conditions + ready}
        )

    async def _start(self, pod: Obj) -> None:
        """Running, only if the pod is still as seen: a phase set meanwhile (a test finishing the pod at
        once) is never overwritten with Running."""
        meta = pod["metadata"]
        document = json.dumps(
            [
                {"op": "test", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion")},
                {
                    "op": "add",
                    "path": "/status",
                    "value": {**(pod.get("status") or {}), **self._running(pod)},
                },
            ]
        ).encode()
        try:
            await self._api.patch(
                self._pods, meta.get("namespace"), meta["name"], JSON_PATCH, document, subresource="status"
            )
        except ApiError as exc:
            log.debug(
                "pod %s/%s: changed meanwhile, not started (%s)", meta.get("namespace"), meta["name"], exc
            )

    async def _set_status(self, pod: Obj, status: Obj) -> None:
        meta = pod["metadata"]
        document = json.dumps({"status": status}).encode()
        try:
            await self._api.patch(
                self._pods, meta.get("namespace"), meta["name"], MERGE_PATCH, document, subresource="status"
            )
        except ApiError as exc:
            log.debug("pod %s/%s: status not set: %s", meta.get("namespace"), meta["name"], exc)
