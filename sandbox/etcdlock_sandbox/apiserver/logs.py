"""``GET pods/NAME/log``: a container's log, as ``kubectl logs`` reads it from a node's kubelet.

The log of a pod the sandbox runs as processes is the file its kubelet writes (:class:`LogFiles`): every
run of the container, one after the other. ``container`` (kubectl's ``-c``; needed when the pod has
several), ``follow`` (``-f``: new lines as they are written, until the pod is gone or the client leaves),
``tailLines`` (``--tail``) and ``limitBytes`` (``--limit-bytes``) are served. A pod that runs nothing (the
pretend kubelet's) has an empty log. The sandbox keeps no time of each line and no separate log of the
previous run: ``sinceSeconds``, ``sinceTime``, ``timestamps`` and ``previous`` are refused, naming the
option, rather than answered with lines that do not match them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from etcdlock_sandbox.apiserver import errors

Obj = dict[str, Any]

FOLLOW_PERIOD = 0.2
"""How often a followed log file is read again for new lines."""
_UNKEPT = {
    "sinceSeconds": "--since",
    "sinceTime": "--since-time",
    "timestamps": "--timestamps",
    "previous": "--previous",
}


class LogFiles(Protocol):
    """Where a container's log is written, if the sandbox runs the pod's processes."""

    def log_file(self, pod: Obj, container: str) -> Path | None:
        """The container's log file (which may not exist yet), or None for a pod that runs nothing."""


@dataclass(frozen=True)
class LogOptions:
    """What a log request asks for (kube-apiserver's PodLogOptions, the parts served here)."""

    container: str
    follow: bool
    tail_lines: int | None
    limit_bytes: int | None

    @classmethod
    def parse(cls, query: Mapping[str, str], pod: Obj) -> LogOptions:
        for name, flag in _UNKEPT.items():
            if query.get(name) not in (None, "", "false"):
                raise errors.bad_request(
                    f"the sandbox keeps neither the time of log lines nor a previous run's log: {flag} "
                    "is not served"
                )
        return cls(
            container=_container(pod, query.get("container", "")),
            follow=query.get("follow") in ("true", "1"),
            tail_lines=_count(query, "tailLines", 0),
            limit_bytes=_count(query, "limitBytes", 1),
        )


async def serve(request: web.Request, pod: Obj, files: LogFiles | None) -> web.StreamResponse:
    """The log as plain text; followed, it is streamed until the pod's folder goes or the client leaves."""
    options = LogOptions.parse(request.query, pod)
    path = files.log_file(pod, options.container) if files is not None else None
    if path is None or not path.exists():
        _require_started(pod, options.container)
        return web.Response(text="", content_type="text/plain")
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    budget = _Budget(options.limit_bytes)
    text, offset = await asyncio.to_thread(_tail, path, options.tail_lines)
    await response.write(budget.take(text))
    while options.follow and not budget.spent:
        await asyncio.sleep(FOLLOW_PERIOD)
        more = await asyncio.to_thread(_read_from, path, offset)
        if more is None:
            break
        offset += len(more)
        if more:
            await response.write(budget.take(more))
    await response.write_eof()
    return response


class _Budget:
    """``limitBytes``: what is left to send (unlimited without one)."""

    def __init__(self, limit: int | None) -> None:
        self._left = limit

    @property
    def spent(self) -> bool:
        return self._left is not None and self._left <= 0

    def take(self, data: bytes) -> bytes:
        if self._left is None:
            return data
        taken = data[: self._left]
        self._left -= len(taken)
        return taken


def _container(pod: Obj, asked: str) -> str:
    """The container asked for, or the only one; kube-apiserver's messages otherwise."""
    spec, name = pod.get("spec") or {}, pod["metadata"]["name"]
    names = [str(c.get("name", "")) for c in spec.get("containers") or []]
    init = [str(c.get("name", "")) for c in spec.get("initContainers") or []]
    if not asked:
        if len(names) == 1:
            return names[0]
        if not names:
            raise errors.bad_request(f"pod {name} does not have a container")
        choices = " ".join(init + names)
        raise errors.bad_request(
            f"a container name must be specified for pod {name}, choose one of: [{choices}]"
        )
    if asked not in names and asked not in init:
        raise errors.bad_request(f"container {asked} is not valid for pod {name}")
    return asked


def _require_started(pod: Obj, container: str) -> None:
    """A container a kubelet holds back has no log: the kubelet says it is waiting, and why. A pod no
    kubelet has taken yet (gated, say) has an empty log, as an unscheduled pod has."""
    status = pod.get("status") or {}
    statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    state: Obj = next((s.get("state") or {} for s in statuses if s.get("name") == container), {})
    if "waiting" in state:
        reason = state["waiting"].get("reason") or "ContainerCreating"
        raise errors.bad_request(
            f'container "{container}" in pod "{pod["metadata"]["name"]}" is waiting to start: {reason}'
        )


def _count(query: Mapping[str, str], name: str, least: int) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise errors.bad_request(f"{name}: invalid value {raw!r}: must be an integer") from None
    if value < least:
        raise errors.bad_request(f"{name}: Invalid value: {value}: must be greater than or equal to {least}")
    return value


def _tail(path: Path, lines: int | None) -> tuple[bytes, int]:
    """The file's last ``lines`` lines (all without a count) and the offset its end had."""
    data = path.read_bytes()
    if lines is None:
        return data, len(data)
    if lines == 0:
        return b"", len(data)
    kept = data.splitlines(keepends=True)[-lines:]
    return b"".join(kept), len(data)


def _read_from(path: Path, offset: int) -> bytes | None:
    """What was written after ``offset``; None once the file is gone (the pod and its folder with it)."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read()
    except FileNotFoundError:
        return None
