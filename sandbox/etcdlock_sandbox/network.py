"""The sandbox's pod network and cluster DNS, for pods that run real processes (see :mod:`.containers`).

Each such pod gets an address of its own on loopback (Linux routes all of 127.0.0.0/8 there), in a range
picked at random per sandbox so that several sandboxes can run side by side; so every pod can listen on the
same ports, as pods do. Names are resolved as cluster DNS resolves them (``POD.SUBDOMAIN.NS.svc`` for a
pod in a headless Service, ``SERVICE.NS.svc`` for the Service's pods, with or without ``.cluster.local``)
through a hosts file kept here. A process that should see those names runs under :func:`with_cluster_dns`:
in a private mount namespace where that file is ``/etc/hosts``. Nothing in the programs is changed, so the
operator and etcd resolve and dial exactly as they do in a cluster.
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from etcdlock_sandbox.apiserver.api import Api
from etcdlock_sandbox.apiserver.errors import ApiError
from etcdlock_sandbox.statefulsets import pod_ready

log = logging.getLogger(__name__)

Obj = dict[str, Any]

_MOUNT = 'mount --bind "$0" /etc/hosts && exec "$@"'


class NamespacesUnavailable(RuntimeError):
    """This machine cannot give a process its own /etc/hosts (no ``unshare`` or no user namespaces)."""


def with_cluster_dns(hosts: Path, command: Sequence[str]) -> list[str]:
    """``command`` run with ``hosts`` as its /etc/hosts (a user and mount namespace of its own)."""
    if shutil.which("unshare") is None:
        raise NamespacesUnavailable("the sandbox needs util-linux's unshare to give pods cluster DNS")
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", _MOUNT, str(hosts), *command]


class PodNetwork:
    """Pod addresses (stable per pod name while the sandbox runs) and the hosts file that names them."""

    def __init__(self, hosts: Path) -> None:
        self.hosts = hosts
        self._base = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else ""
        self._prefix = f"127.{random.randint(16, 250)}.{random.randint(1, 250)}"
        self._addresses: dict[tuple[str, str], str] = {}
        self._names: dict[str, list[str]] = {}
        self.hosts.write_text(self._base)

    def address(self, namespace: str, pod: str) -> str:
        """The pod's address; the same one if a pod of that name is created again (as a StatefulSet does)."""
        key = (namespace, pod)
        if key not in self._addresses:
            if len(self._addresses) >= 250:
                raise RuntimeError("the sandbox's pod network is full (250 pods with processes)")
            address = f"{self._prefix}.{len(self._addresses) + 2}"
            self._addresses[key] = address
        return self._addresses[key]

    def publish(self, names: dict[str, list[str]]) -> None:
        """Make the hosts file say exactly ``names`` (name -> addresses), rewritten in place: processes that
        already run have that very file mounted as /etc/hosts."""
        if names == self._names:
            return
        self._names = names
        lines = [f"{address} {name}" for name, addresses in sorted(names.items()) for address in addresses]
        text = self._base.rstrip("\n") + "\n# sandbox cluster DNS\n" + "\n".join(lines) + "\n"
        with self.hosts.open("r+") as file:
            file.write(text)
            file.truncate()


def _selects(selector: dict[str, str], pod: Obj) -> bool:
    labels = pod["metadata"].get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def dns_names(pods: list[Obj], services: list[Obj]) -> dict[str, list[str]]:
    """Cluster DNS for these objects: pods in headless Services, and every Service's (ready) pods."""
    names: dict[str, list[str]] = {}

    def add(name: str, address: str) -> None:
        for full in (name, f"{name}.cluster.local"):
            names.setdefault(full, [])
            if address not in names[full]:
                names[full].append(address)

    running = [
        p for p in pods if (p.get("status") or {}).get("podIP") and not p["metadata"].get("deletionTimestamp")
    ]
    running.sort(key=lambda p: p["metadata"]["name"])
    for pod in running:
        spec, namespace = pod.get("spec") or {}, pod["metadata"].get("namespace", "")
        if spec.get("hostname") and spec.get("subdomain"):
            add(f"{spec['hostname']}.{spec['subdomain']}.{namespace}.svc", pod["status"]["podIP"])
    for service in services:
        meta, spec = service["metadata"], service.get("spec") or {}
        selector = spec.get("selector") or {}
        for pod in running:
            if pod["metadata"].get("namespace") != meta.get("namespace") or not _selects(selector, pod):
                continue
            if spec.get("publishNotReadyAddresses") or pod_ready(pod):
                add(f"{meta['name']}.{meta.get('namespace', '')}.svc", pod["status"]["podIP"])
    return names


class ClusterDns:
    """Keeps the hosts file in step with the pods and Services (two watches, one picture)."""

    def __init__(self, api: Api, network: PodNetwork) -> None:
        self._api = api
        self._network = network
        self._objects: dict[str, dict[str, Obj]] = {"pods": {}, "services": {}}

    async def run(self) -> None:
        await asyncio.gather(self._follow("pods"), self._follow("services"))

    async def _follow(self, plural: str) -> None:
        rtype = self._api.resolve("", "v1", plural)
        seen = self._objects[plural]
        while True:
            try:
                async for kind, obj in self._api.watch(rtype, None, None, lambda _: True):
                    uid = obj["metadata"].get("uid", "")
                    if kind == "DELETED":
                        seen.pop(uid, None)
                    else:
                        seen[uid] = obj
                    self._network.publish(
                        dns_names(
                            list(self._objects["pods"].values()), list(self._objects["services"].values())
                        )
                    )
            except ApiError as exc:
                log.warning("cluster DNS: %s watch ended (%s); starting over", plural, exc)
                seen.clear()
                await asyncio.sleep(0.5)
