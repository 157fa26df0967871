"""pytest fixtures for a local Kubernetes API (the emulator) on a local etcd.

Enable with ``pytest -p etcdlock_sandbox.pytest_plugin``, or in a conftest.py with
``pytest_plugins = ["etcdlock_sandbox.pytest_plugin"]``. ``k8s_sandbox`` is one :class:`SandboxThread`
for the whole run (tests keep apart by using their own namespaces); ``k8s_kubeconfig`` is a kubeconfig
file for kubectl and the kubernetes client.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdlock_sandbox.cluster import SandboxThread


@pytest.fixture(scope="session")
def k8s_sandbox() -> Iterator[SandboxThread]:
    """The emulator and its etcd, started once and stopped at the end of the run."""
    with SandboxThread() as running:
        yield running


@pytest.fixture(scope="session")
def k8s_kubeconfig(k8s_sandbox: SandboxThread, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig file pointing at the emulator."""
    return k8s_sandbox.write_kubeconfig(tmp_path_factory.mktemp("sandbox") / "kubeconfig")
