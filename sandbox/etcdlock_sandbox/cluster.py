"""A local Kubernetes API (the emulator) on a local etcd, in this process: for tests and ``sandbox up``.

``async with Sandbox() as sandbox:`` gives ``sandbox.url`` (the API), ``sandbox.etcd`` (the etcd behind it)
and ``sandbox.write_kubeconfig(path)`` for kubectl and the kubernetes client. Pods go through their
phases by the pretend kubelet of :mod:`etcdlock_sandbox.kubelet`, except pods of the etcd image, which run
as processes (:mod:`etcdlock_sandbox.containers`) with cluster DNS (``sandbox.hosts``, see
:mod:`etcdlock_sandbox.network`); StatefulSets get their pods (:mod:`etcdlock_sandbox.statefulsets`);
cert-manager's Certificates of CA issuers are issued (:mod:`etcdlock_sandbox.certmanager`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import threading
from pathlib import Path
from types import TracebackType

from etcdlock.etcd.client import EtcdClient
from etcdlock.etcd.config import EtcdConfig
from etcdlock_sandbox.apiserver.api import Api
from etcdlock_sandbox.apiserver.server import ApiServer, AuditRecord
from etcdlock_sandbox.apiserver.storage import Storage
from etcdlock_sandbox.certmanager import CertManager
from etcdlock_sandbox.containers import ProcessKubelet
from etcdlock_sandbox.etcd import LocalEtcd
from etcdlock_sandbox.kubelet import PodLifecycle
from etcdlock_sandbox.network import ClusterDns, PodNetwork
from etcdlock_sandbox.statefulsets import StatefulSetController

CONTEXT = "etcdlock-sandbox"


def kubeconfig(url: str, namespace: str = "default") -> dict[str, object]:
    """A kubeconfig for the emulator: plain HTTP on loopback, no credentials (JSON, which is YAML too)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {"server": url}}],
        "users": [{"name": CONTEXT, "user": {}}],
        "contexts": [
            {"name": CONTEXT, "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": namespace}}
        ],
        "current-context": CONTEXT,
        "preferences": {},
    }


class Sandbox:
    """etcd plus the API emulator; everything started is stopped by :meth:`stop`."""

    def __init__(self, workdir: Path | None = None, port: int = 0, audit: bool = False) -> None:
        self._workdir = workdir
        self._port = port
        self._audit = audit
        self.etcd: LocalEtcd | None = None
        self._client: EtcdClient | None = None
        self.api: Api | None = None
        self._server: ApiServer | None = None
        self._controllers: list[asyncio.Task[None]] = []
        self._pods_dir: Path | None = None
        self.hosts = Path()
        self.url = ""

    async def start(self) -> Sandbox:
        try:
            self.etcd = LocalEtcd(workdir=self._workdir)
            await asyncio.to_thread(self.etcd.start)
            self._client = EtcdClient(EtcdConfig.parse(self.etcd.endpoints))
            await self._client.connect()
            self.api = Api(Storage(self._client))
            await self.api.start()
            self._pods_dir = Path(tempfile.mkdtemp(prefix="pods-", dir=self._workdir))
            network = PodNetwork(self._pods_dir / "hosts")
            self.hosts = network.hosts
            processes = ProcessKubelet(self.api, network, self._pods_dir)
            self._server = ApiServer(self.api, audit=self._audit, logs=processes)
            self.url = await self._server.start(port=self._port)
            for name, controller in (
                ("kubelet", PodLifecycle(self.api).run()),
                ("process-kubelet", processes.run()),
                ("statefulsets", StatefulSetController(self.api).run()),
                ("cluster-dns", ClusterDns(self.api, network).run()),
                ("cert-manager", CertManager(self.api).run()),
            ):
                self._controllers.append(asyncio.create_task(controller, name=f"sandbox-{name}"))
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        for task in self._controllers:
            task.cancel()
        await asyncio.gather(*self._controllers, return_exceptions=True)
        self._controllers = []
        if self._pods_dir is not None:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(shutil.rmtree, self._pods_dir)
        if self._server is not None:
            await self._server.stop()
        if self.api is not None:
            await self.api.close()
        if self._client is not None:
            await self._client.close()
        if self.etcd is not None:
            await asyncio.to_thread(self.etcd.close)
        self._server = self.api = self._client = self.etcd = self._pods_dir = None

    @property
    def audit(self) -> list[AuditRecord]:
        """The resource requests recorded so far (started with ``audit=True``)."""
        if self._server is None or self._server.audit is None:
            raise RuntimeError("the sandbox was not started with audit=True")
        return list(self._server.audit)

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(kubeconfig(self.url, namespace), indent=2))
        return path

    async def __aenter__(self) -> Sandbox:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class SandboxThread:
    """A :class:`Sandbox` on its own event loop in a background thread, for synchronous callers.

    ``with SandboxThread() as sandbox:`` (e.g. a session-scoped pytest fixture) gives ``url`` and
    ``write_kubeconfig``; leaving the block stops the API and etcd and joins the thread.
    """

    def __init__(self, workdir: Path | None = None, audit: bool = False) -> None:
        self.sandbox = Sandbox(workdir, audit=audit)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sandbox", daemon=True)

    @property
    def url(self) -> str:
        return self.sandbox.url

    @property
    def etcd(self) -> LocalEtcd:
        assert self.sandbox.etcd is not None
        return self.sandbox.etcd

    @property
    def hosts(self) -> Path:
        """The cluster DNS hosts file (see :mod:`etcdlock_sandbox.network`)."""
        return self.sandbox.hosts

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        return self.sandbox.write_kubeconfig(path, namespace)

    @property
    def audit(self) -> list[AuditRecord]:
        return self.sandbox.audit

    def __enter__(self) -> SandboxThread:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.sandbox.start(), self._loop).result(timeout=60)
        except BaseException:
            self._shutdown()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.sandbox.stop(), self._loop).result(timeout=60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
