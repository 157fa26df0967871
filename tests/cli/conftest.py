"""Fixtures of the CLI tests: a process starter bound to the shared real etcd, cleaned up after each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import Cli

from etcdlock_sandbox.etcd import LocalEtcd


@pytest.fixture
def cli(etcd: LocalEtcd, tmp_path: Path) -> Iterator[Cli]:
    """Starts `etcdlock` / `etcdctl` against the shared etcd; kills whatever is left when the test ends."""
    starter = Cli(etcd.endpoint_list, tmp_path)
    try:
        yield starter
    finally:
        starter.close()
