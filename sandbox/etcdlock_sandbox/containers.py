"""The sandbox's process kubelet: pods of the etcd image run for real, as local etcd processes.

A pod whose container image is etcd's (``registry.k8s.io/etcd``, ``gcr.io/etcd-development/etcd``,
``quay.io/coreos/etcd``, any tag: the sandbox has one etcd build and runs it for every tag) runs its
container's command with the local etcd binary, as a container would:

- ``$(VAR)`` references are expanded from the container's env (values and the downward API);
- the pod has its own address (:class:`~etcdlock_sandbox.network.PodNetwork`): ``0.0.0.0`` in a URL means
  that address, and the process sees cluster DNS names (:func:`~etcdlock_sandbox.network.with_cluster_dns`);
- a volume mount path in an argument is the volume's folder: an emptyDir lives and dies with the pod, a
  PersistentVolumeClaim's folder with the claim (a pod waits until its claim exists);
- the readiness probe (httpGet) is run every second and sets the pod's Ready condition;
- a process that exits is started again (restartPolicy Always) after a back-off of up to 10 s, and its
  restart count goes up; a deleted pod's process gets SIGTERM, then SIGKILL after 5 s.

Every other pod is left to the pretend kubelet (:mod:`etcdlock_sandbox.kubelet`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import signal
import urllib.request
from pathlib import Path
from typing import Any

from etcdlock_sandbox.apiserver.api import MERGE_PATCH, Api, now
from etcdlock_sandbox.apiserver.errors import ApiError
from etcdlock_sandbox.etcd import etcd_binary
from etcdlock_sandbox.network import PodNetwork, with_cluster_dns

log = logging.getLogger(__name__)

Obj = dict[str, Any]

_ETCD_IMAGE = re.compile(r"^([^/]+/)*(etcd|coreos/etcd)(:[^/@]+)?(@.+)?$")
_ENTRYPOINTS = ("/usr/local/bin/etcd", "etcd")
_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
PROBE_PERIOD = 1.0
STOP_GRACE = 5.0
MAX_BACKOFF = 10.0
CLAIM_RETRY = 1.0


def runs_etcd(pod: Obj) -> bool:
    """The pod's (only) container is etcd, so the process kubelet runs it."""
    containers = (pod.get("spec") or {}).get("containers") or []
    return len(containers) == 1 and bool(_ETCD_IMAGE.match(containers[0].get("image") or ""))


def _field(pod: Obj, path: str, address: str) -> str:
    meta = pod["metadata"]
    values: dict[str, str] = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "status.podIP": address,
        "spec.nodeName": "sandbox",
    }
    return values.get(path, "")


def environment(pod: Obj, container: Obj, address: str) -> dict[str, str]:
    """The container's env: plain values and downward API fields (references to earlier entries too)."""
    env: dict[str, str] = {}
    for entry in container.get("env") or []:
        source = (entry.get("valueFrom") or {}).get("fieldRef")
        value = _field(pod, source["fieldPath"], address) if source else str(entry.get("value", ""))
        env[entry["name"]] = expand(value, env)
    return env


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: unknown references stay as written."""
    return _REFERENCE.sub(lambda m: env.get(m.group(1), m.group(0)), text)


def command_line(container: Obj, env: dict[str, str], address: str, mounts: dict[str, Path]) -> list[str]:
    """The container's command and args as this machine runs them (see the module docstring)."""
    argv = [expand(part, env) for part in [*(container.get("command") or []), *(container.get("args") or [])]]
    if not argv or argv[0] not in _ENTRYPOINTS:
        argv = ["etcd", *argv]
    argv[0] = etcd_binary()
    result = [argv[0]]
    for part in argv[1:]:
        part = part.replace("://0.0.0.0:", f"://{address}:")
        for mount_path, folder in mounts.items():
            part = re.sub(rf"(?<![\w/]){re.escape(mount_path)}(?=/|$|,)", str(folder), part)
        result.append(part)
    return result


class ProcessKubelet:
    """Runs the etcd pods of the sandbox (see the module docstring) under ``workdir``."""

    def __init__(self, api: Api, network: PodNetwork, workdir: Path) -> None:
        self._api = api
        self._network = network
        self._workdir = workdir
        self._pods = api.resolve("", "v1", "pods")
        self._claims = api.resolve("", "v1", "persistentvolumeclaims")
        self._running: dict[str, asyncio.Task[None]] = {}
        self._stopping: dict[tuple[str, str], asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Follow the pods and claims until cancelled; then every process is stopped."""
        try:
            await asyncio.gather(self._follow_pods(), self._follow_claims())
        finally:
            tasks = [*self._running.values(), *self._stopping.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow_pods(self) -> None:
        while True:
            try:
                async for kind, pod in self._api.watch(self._pods, None, None, lambda _: True):
                    if runs_etcd(pod):
                        self._consider(kind, pod)
            except ApiError as exc:
                log.warning("process kubelet: pod watch ended (%s); starting over", exc)
                await asyncio.sleep(0.5)

    async def _follow_claims(self) -> None:
        """A claim is bound at once; its folder goes with it (a volume with reclaim policy Delete)."""
        while True:
            try:
                async for kind, claim in self._api.watch(self._claims, None, None, lambda _: True):
                    meta = claim["metadata"]
                    if kind == "DELETED":
                        shutil.rmtree(self._claim_folder(meta), ignore_errors=True)
                    elif (claim.get("status") or {}).get("phase") != "Bound":
                        await self._patch_status(self._claims, meta, {"phase": "Bound"})
            except ApiError as exc:
                log.warning("process kubelet: claim watch ended (%s); starting over", exc)
                await asyncio.sleep(0.5)

    def _claim_folder(self, meta: Obj) -> Path:
        namespace: str = meta.get("namespace", "")
        return self._workdir / "claims" / namespace / f"{meta['name']}-{meta.get('uid', '')}"

    def _consider(self, kind: str, pod: Obj) -> None:
        meta = pod["metadata"]
        uid = meta.get("uid", "")
        if kind == "DELETED" or meta.get("deletionTimestamp"):
            task = self._running.pop(uid, None)
            if task is not None:
                task.cancel()
                self._stopping[(meta.get("namespace", ""), meta["name"])] = task
            return
        if uid in self._running or (pod.get("spec") or {}).get("schedulingGates"):
            return
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return
        self._running[uid] = asyncio.create_task(self._run_pod(pod), name=f"pod-{meta['name']}")

    async def _run_pod(self, pod: Obj) -> None:
        meta = pod["metadata"]
        namespace, name = meta.get("namespace", ""), meta["name"]
        previous = self._stopping.pop((namespace, name), None)
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        address = self._network.address(namespace, name)
        empty_dirs = self._workdir / "pods" / meta.get("uid", "")
        try:
            # As a kubelet does, a pod whose claim does not exist (yet) waits for it.
            mounts = await self._mounts(pod, empty_dirs)
            while mounts is None:
                await asyncio.sleep(CLAIM_RETRY)
                mounts = await self._mounts(pod, empty_dirs)
            container = pod["spec"]["containers"][0]
            argv = command_line(container, environment(pod, container, address), address, mounts)
            await self._supervise(pod, container, address, argv, empty_dirs)
        finally:
            shutil.rmtree(empty_dirs, ignore_errors=True)

    async def _mounts(self, pod: Obj, empty_dirs: Path) -> dict[str, Path] | None:
        """Mount path -> folder for the container's volume mounts; None if a claim does not exist (yet)."""
        volumes = {v["name"]: v for v in (pod.get("spec") or {}).get("volumes") or []}
        mounts: dict[str, Path] = {}
        for mount in pod["spec"]["containers"][0].get("volumeMounts") or []:
            volume = volumes.get(mount["name"]) or {}
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim:
                try:
                    found = await self._api.get(self._claims, pod["metadata"].get("namespace"), claim)
                except ApiError:
                    log.info("pod %s: waiting for claim %s", pod["metadata"]["name"], claim)
                    return None
                folder = self._claim_folder(found["metadata"])
            else:
                folder = empty_dirs / mount["name"]
            folder.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"].rstrip("/")] = folder
        return mounts

    async def _supervise(self, pod: Obj, container: Obj, address: str, argv: list[str], folder: Path) -> None:
        """Run the process, again whenever it exits, with its readiness probed, until cancelled."""
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        log_path = folder / "container.log"
        probe = _probe_url(container, address)
        restarts = 0
        while True:
            with log_path.open("ab") as output:
                process = await asyncio.create_subprocess_exec(
                    *with_cluster_dns(self._network.hosts, argv),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=output,
                    stderr=output,
                    start_new_session=True,
                )
            started = now()
            await self._set(pod, container, _running(container, started, restarts, ready=False))
            prober = asyncio.create_task(self._probe(pod, container, probe, started, restarts))
            try:
                code = await process.wait()
            finally:
                prober.cancel()
                await asyncio.gather(prober, return_exceptions=True)
                await _stop(process)
            restarts += 1
            backoff = min(MAX_BACKOFF, 2.0 ** min(restarts - 1, 4))
            log.info(
                "pod %s: etcd exited with %s; restarting in %.0fs", pod["metadata"]["name"], code, backoff
            )
            await self._set(pod, container, _waiting(container, code, restarts))
            await asyncio.sleep(backoff)

    async def _probe(self, pod: Obj, container: Obj, url: str | None, started: str, restarts: int) -> None:
        ready: bool | None = None
        while True:
            now_ready = url is None or await asyncio.to_thread(_answers, url)
            if now_ready != ready:
                ready = now_ready
                await self._set(pod, container, _running(container, started, restarts, ready=ready))
            await asyncio.sleep(PROBE_PERIOD)

    async def _set(self, pod: Obj, container: Obj, status: Obj) -> None:
        await self._patch_status(
            self._pods,
            pod["metadata"],
            {
                **status,
                "podIP": self._network.address(pod["metadata"].get("namespace", ""), pod["metadata"]["name"]),
            },
        )

    async def _patch_status(self, rtype: Any, meta: Obj, status: Obj) -> None:
        document = json.dumps({"status": status}).encode()
        try:
            await self._api.patch(
                rtype, meta.get("namespace"), meta["name"], MERGE_PATCH, document, subresource="status"
            )
        except ApiError as exc:
            log.debug("%s: status not set: %s", meta["name"], exc)


def _probe_url(container: Obj, address: str) -> str | None:
    """The readiness probe's URL (httpGet, port by number or container port name); None: always ready."""
    get = (container.get("readinessProbe") or {}).get("httpGet")
    if not get:
        return None
    port = get.get("port")
    if isinstance(port, str):
        named = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
        port = named.get(port, port)
    return f"http://{address}:{port}{get.get('path', '/')}"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(200 <= response.status < 400)
    except OSError:
        return False


def _conditions(ready: bool, at: str) -> list[Obj]:
    state = "True" if ready else "False"
    return [
        {
            "type": t,
            "status": "True" if t in ("PodScheduled", "Initialized") else state,
            "lastTransitionTime": at,
        }
        for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
    ]


def _running(container: Obj, started: str, restarts: int, *, ready: bool) -> Obj:
    return {
        "phase": "Running",
        "hostIP": "127.0.0.1",
        "startTime": started,
        "conditions": _conditions(ready, now()),
        "containerStatuses": [
            {
                "name": container.get("name", ""),
                "image": container.get("image", ""),
                "imageID": "",
                "ready": ready,
                "restartCount": restarts,
                "started": True,
                "state": {"running": {"startedAt": started}},
            }
        ],
    }


def _waiting(container: Obj, code: int, restarts: int) -> Obj:
    return {
        "phase": "Running",
        "conditions": _conditions(False, now()),
        "containerStatuses": [
            {
                "name": container.get("name", ""),
                "image": container.get("image", ""),
                "imageID": "",
                "ready": False,
                "restartCount": restarts,
                "started": False,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": code, "reason": "Error" if code else "Completed"}},
            }
        ],
    }


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after the grace period; the process is reaped either way."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(process.wait()), STOP_GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
