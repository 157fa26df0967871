"""The sandbox's process kubelet: pods of the etcd image run for real, as local processes.

A pod whose container image is etcd's, and whose init containers (if any) are etcd's or the project's
(:func:`~etcdlock_sandbox.podspec.runs_as_processes`), runs here as a node would run it:

- its init containers run first, in order, each to completion (one that fails runs again after a back-off
  of up to 10 s, its restart count up, and nothing after it starts); then its container, which is started
  again whenever it exits (restartPolicy Always, the same back-off), without running the init containers
  again; the status shows it all (:mod:`etcdlock_sandbox.podstatus`);
- each container runs the local build of its program (:func:`~etcdlock_sandbox.podspec.command_line`: etcd's
  tools, the server a real build of the image tag's minor, 3.4 or 3.5, else a StartError; or ``etcdlock``
  from this Python), with ``$(VAR)`` references expanded and its env (values, the
  downward API, Secrets, ``envFrom``) as the process's environment over this machine's, etcd's tools first
  on PATH; a Secret the env needs that does not exist keeps the container waiting in
  CreateContainerConfigError, tried again every second;
- the pod has its own address (:class:`~etcdlock_sandbox.network.PodNetwork`): ``0.0.0.0`` in a URL means
  that address, and the process sees cluster DNS names (:func:`~etcdlock_sandbox.network.with_cluster_dns`);
- a volume mount path in an argument is the volume's folder: an emptyDir lives as long as the pod (across
  restarts of its containers), a PersistentVolumeClaim's folder with the claim (a pod waits until its claims
  exist), a Secret's holds its keys as files, rewritten atomically within a second of a change to the Secret
  (:mod:`etcdlock_sandbox.secretvolumes`; a pod waits until its Secrets exist);
- the readiness probe (httpGet) of the container is run every second and sets the pod's Ready condition;
- each container writes to a log file of its own in the pod's folder (``container.log``,
  ``init-NAME.log``; :meth:`ProcessKubelet.log_file` serves ``kubectl logs``); a deleted pod's running
  process gets SIGTERM, then SIGKILL after 5 s.

Every other pod is left to the pretend kubelet (:mod:`etcdlock_sandbox.kubelet`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import urllib.request
from pathlib import Path
from typing import Any

from etcdlock_sandbox.apiserver.api import MERGE_PATCH, Api, now
from etcdlock_sandbox.apiserver.errors import ApiError
from etcdlock_sandbox.apiserver.resources import ResourceType
from etcdlock_sandbox.network import PodNetwork, with_cluster_dns
from etcdlock_sandbox.podspec import (
    CannotRun,
    ContainerConfigError,
    command_line,
    environment,
    mounts,
    process_environment,
    runs_as_processes,
    secret_data,
    secrets_needed,
)
from etcdlock_sandbox.podstatus import ContainerStatus, PodStatus, exit_code, terminated
from etcdlock_sandbox.secretvolumes import secret_files, write_volume

log = logging.getLogger(__name__)

Obj = dict[str, Any]

PROBE_PERIOD = 1.0
STOP_GRACE = 5.0
MAX_BACKOFF = 10.0
CLAIM_RETRY = 1.0
SECRET_REFRESH = 1.0
CONFIG_RETRY = 1.0
START_ERROR = 128
"""A container runtime's exit code for a container whose program could not be started."""
MAIN_LOG = "container.log"


class ProcessKubelet:
    """Runs the pods of processes of the sandbox (see the module docstring) under ``workdir``."""

    def __init__(self, api: Api, network: PodNetwork, workdir: Path) -> None:
        self._api = api
        self._network = network
        self._workdir = workdir
        self._pods = api.resolve("", "v1", "pods")
        self._claims = api.resolve("", "v1", "persistentvolumeclaims")
        self._secrets = api.resolve("", "v1", "secrets")
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
                    if runs_as_processes(pod):
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
                        await _patch_status(self._api, self._claims, meta, {"phase": "Bound"})
            except ApiError as exc:
                log.warning("process kubelet: claim watch ended (%s); starting over", exc)
                await asyncio.sleep(0.5)

    def log_file(self, pod: Obj, container: str) -> Path | None:
        """The log file of a container of a pod run here (it may not exist yet); None for other pods, and
        for a container other than the first, which is not run."""
        if not runs_as_processes(pod):
            return None
        spec = pod.get("spec") or {}
        folder = self._pod_folder(pod["metadata"])
        if container in [c.get("name") for c in spec.get("initContainers") or []]:
            return folder / f"init-{container}.log"
        if container == (spec.get("containers") or [{}])[0].get("name"):
            return folder / MAIN_LOG
        return None

    def _pod_folder(self, meta: Obj) -> Path:
        return self._workdir / "pods" / str(meta.get("uid", ""))

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
        folder = self._pod_folder(meta)
        try:
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            # As a kubelet does, a pod whose claim does not exist (yet) waits for it.
            volumes = await self._volumes(pod, folder)
            while volumes is None:
                await asyncio.sleep(CLAIM_RETRY)
                volumes = await self._volumes(pod, folder)
            address = self._network.address(namespace, name)
            # Either one failing stops the other, before the pod's folder goes.
            async with asyncio.TaskGroup() as group:
                group.create_task(
                    PodProcesses(self._api, self._network.hosts, pod, address, folder, volumes).run()
                )
                group.create_task(self._keep_secret_volumes(pod, volumes))
        except Exception:
            # Nobody awaits this task until the pod goes: say why the pod stopped here, when it does.
            log.exception("pod %s/%s: the process kubelet stopped running it", namespace, name)
            raise
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def _volumes(self, pod: Obj, empty_dirs: Path) -> dict[str, Path] | None:
        """Volume name -> folder for each volume a container mounts; None if a claim or Secret does not
        exist (yet)."""
        spec = pod.get("spec") or {}
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        containers = [*(spec.get("initContainers") or []), *spec["containers"]]
        folders: dict[str, Path] = {}
        for name in {m["name"] for c in containers for m in c.get("volumeMounts") or []}:
            claim = (volumes.get(name, {}).get("persistentVolumeClaim") or {}).get("claimName")
            if "secret" in volumes.get(name, {}):
                folder = empty_dirs / name
                if not await self._write_secret_volume(pod, volumes[name], folder):
                    return None
            elif claim:
                try:
                    found = await self._api.get(self._claims, pod["metadata"].get("namespace"), claim)
                except ApiError:
                    log.info("pod %s: waiting for claim %s", pod["metadata"]["name"], claim)
                    return None
                folder = self._claim_folder(found["metadata"])
            else:
                folder = empty_dirs / name
            folder.mkdir(parents=True, exist_ok=True)
            folders[name] = folder
        return folders

    async def _write_secret_volume(self, pod: Obj, volume: Obj, folder: Path) -> bool:
        """The Secret's files in ``folder``, brought up to date; False if the Secret does not exist."""
        source = volume["secret"]
        try:
            secret = await self._api.get(
                self._secrets, pod["metadata"].get("namespace"), source["secretName"]
            )
        except ApiError:
            log.info("pod %s: waiting for Secret %s", pod["metadata"]["name"], source["secretName"])
            return False
        mode = int(source.get("defaultMode", 0o644))
        await asyncio.to_thread(write_volume, folder, secret_files(secret, source), mode)
        return True

    async def _keep_secret_volumes(self, pod: Obj, folders: dict[str, Path]) -> None:
        """A changed Secret reaches the files of the volumes made of it, as a kubelet's sync does."""
        volumes = [
            v for v in (pod.get("spec") or {}).get("volumes") or [] if "secret" in v and v["name"] in folders
        ]
        while volumes:
            await asyncio.sleep(SECRET_REFRESH)
            for volume in volumes:
                try:
                    await self._write_secret_volume(pod, volume, folders[volume["name"]])
                except (ApiError, OSError) as exc:
                    log.warning(
                        "pod %s: Secret volume %s not refreshed: %s",
                        pod["metadata"]["name"],
                        volume["name"],
                        exc,
                    )


class PodProcesses:
    """One pod's processes for its life here: its init containers, then its container (see the module
    docstring); every status change is written to the pod, one write at a time."""

    def __init__(
        self, api: Api, hosts: Path, pod: Obj, address: str, folder: Path, volumes: dict[str, Path]
    ) -> None:
        self._api = api
        self._pods = api.resolve("", "v1", "pods")
        self._secrets = api.resolve("", "v1", "secrets")
        self._hosts = hosts
        self._pod = pod
        self._address = address
        self._folder = folder
        self._volumes = volumes
        self._status = PodStatus(pod, address)
        self._writing = asyncio.Lock()

    async def run(self) -> None:
        """Until cancelled (the pod is deleted); the running process is stopped then."""
        spec = self._pod["spec"]
        await self._publish()
        for container, status in zip(spec.get("initContainers") or [], self._status.init, strict=True):
            await self._complete(container, status)
        await self._supervise(spec["containers"][0], self._status.main)

    async def _complete(self, container: Obj, status: ContainerStatus) -> None:
        """Run an init container until it exits 0."""
        while True:
            ended = await self._run_once(container, status, f"init-{status.name}.log", readiness=False)
            if ended["exitCode"] == 0:
                status.complete(ended)
                await self._publish()
                return
            await self._back_off(status, ended)

    async def _supervise(self, container: Obj, status: ContainerStatus) -> None:
        """Run the pod's container, again whenever it exits, with its readiness probed."""
        while True:
            ended = await self._run_once(container, status, MAIN_LOG, readiness=True)
            await self._back_off(status, ended)

    async def _back_off(self, status: ContainerStatus, ended: Obj) -> None:
        backoff = min(MAX_BACKOFF, 2.0 ** min(status.restarts, 4))
        status.failed(ended, backoff)
        log.info(
            "pod %s: container %s exited with %s; starting it again in %.0fs",
            self._pod["metadata"]["name"],
            status.name,
            ended["exitCode"],
            backoff,
        )
        await self._publish()
        await asyncio.sleep(backoff)

    async def _run_once(
        self, container: Obj, status: ContainerStatus, log_name: str, *, readiness: bool
    ) -> Obj:
        """Start the container's process once its config is complete, and wait for it to end: its
        ``terminated`` state. ``readiness``: the pod's container, whose readiness is probed meanwhile."""
        env = await self._environment(container, status)
        started = now()
        try:
            argv = command_line(container, env, self._address, mounts(container, self._volumes))
        except CannotRun as exc:
            return terminated(START_ERROR, started, "StartError", str(exc))
        with (self._folder / log_name).open("ab") as output:
            process = await asyncio.create_subprocess_exec(
                *with_cluster_dns(self._hosts, argv),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                env=process_environment(env),
                cwd=self._folder,
                start_new_session=True,
            )
        status.running(started)
        await self._publish()
        probe = _probe_url(container, self._address) if readiness else None
        probers = [asyncio.create_task(self._probe(status, probe))] if readiness else []
        try:
            code = await process.wait()
        finally:
            for prober in probers:
                prober.cancel()
            await asyncio.gather(*probers, return_exceptions=True)
            await _stop(process)
        return terminated(exit_code(code), started)

    async def _environment(self, container: Obj, status: ContainerStatus) -> dict[str, str]:
        """The container's env, read again at each start; while a Secret it needs is missing, the container
        waits in CreateContainerConfigError."""
        while True:
            try:
                return environment(self._pod, container, self._address, await self._read_secrets(container))
            except ContainerConfigError as exc:
                if status.state.get("waiting", {}).get("message") != str(exc):
                    status.waiting("CreateContainerConfigError", str(exc))
                    await self._publish()
            await asyncio.sleep(CONFIG_RETRY)

    async def _read_secrets(self, container: Obj) -> dict[str, dict[str, str] | None]:
        namespace = self._pod["metadata"].get("namespace")
        found: dict[str, dict[str, str] | None] = {}
        for name in secrets_needed(container):
            try:
                found[name] = secret_data(await self._api.get(self._secrets, namespace, name))
            except ApiError as exc:
                if exc.code != 404:
                    raise ContainerConfigError(f'secret "{name}": {exc.message}') from None
                found[name] = None
        return found

    async def _probe(self, status: ContainerStatus, url: str | None) -> None:
        """Ready is what the readiness probe answers (no probe: ready once running), every second."""
        while True:
            ready = url is None or await asyncio.to_thread(_answers, url)
            if ready != status.ready:
                status.ready = ready
                await self._publish()
            if url is None:
                return
            await asyncio.sleep(PROBE_PERIOD)

    async def _publish(self) -> None:
        async with self._writing:
            await _patch_status(self._api, self._pods, self._pod["metadata"], self._status.document())


async def _patch_status(api: Api, rtype: ResourceType, meta: Obj, status: Obj) -> None:
    document = json.dumps({"status": status}).encode()
    try:
        await api.patch(
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


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM to the process, then SIGKILL to its process group after the grace period (a runtime kills
    what is left in a container when it stops it); the process is reaped either way."""
    try:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(process.wait()), STOP_GRACE)
    finally:
        # Also when cancelled during the grace (the sandbox stopping): nothing is left running.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
