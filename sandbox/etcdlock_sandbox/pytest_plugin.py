"""pytest fixtures for a local Kubernetes API (the emulator) on a local etcd, and a local S3.

Enable with ``pytest -p etcdlock_sandbox.pytest_plugin``, or in a conftest.py with
``pytest_plugins = ["etcdlock_sandbox.pytest_plugin"]``. ``k8s_sandbox`` is one :class:`SandboxThread`
for the whole run (tests keep apart by using their own namespaces); ``k8s_kubeconfig`` is a kubeconfig
file for kubectl and the kubernetes client; ``s3_server`` is one moto S3 for the whole run (tests keep
apart by using their own buckets).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from etcdlock_sandbox.cluster import SandboxThread
from etcdlock_sandbox.s3 import S3Server


@pytest.fixture(scope="session")
def k8s_sandbox() -> Iterator[SandboxThread]:
    """The emulator and its etcd, started once and stopped at the end of the run."""
    with SandboxThread() as running:
        yield running


@pytest.fixture(scope="session")
def k8s_kubeconfig(k8s_sandbox: SandboxThread, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig file pointing at the emulator."""
    return k8s_sandbox.write_kubeconfig(tmp_path_factory.mktemp("sandbox") / "kubeconfig")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 on loopback (``endpoint``; any credentials), started once and stopped at the end of the run;
    ``make test`` provides moto (see :mod:`etcdlock_sandbox.s3`)."""
    with S3Server() as server:
        yield server
