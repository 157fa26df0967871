"""``etcdlock lock NAME [-- CMD ...]``: hold a lock, or run a command under it.

Unlike ``etcdctl lock`` (which lets the command run on after the session is lost), a lost lock stops the
command: SIGTERM, then SIGKILL after a grace period, and exit status 3.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from typing import Any

from etcdlock.cli.common import (
    Signals,
    first_or_interrupted,
    lock_name,
    non_negative_float,
    permit_count,
    timeout_seconds,
    ttl_seconds,
    utf8_text,
)
from etcdlock.etcd import (
    EtcdClient,
    EtcdConfig,
    EtcdLockError,
    EtcdUnavailable,
    LockLost,
    Semaphore,
    Session,
    SessionLost,
)
from etcdlock.etcd.session import DEFAULT_TTL

EXIT_LOST = 3
DEFAULT_KILL_GRACE = 5.0


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "lock",
        help="acquire a lock and hold it (or run CMD while holding it)",
        description="Acquire NAME (a mutex, or a semaphore with --permits). Without CMD: print the key and "
        "the fencing token, hold until SIGINT/SIGTERM. With CMD: run it with ETCDLOCK_KEY and "
        "ETCDLOCK_FENCING_TOKEN set, release when it exits, exit with its status.",
    )
    parser.add_argument(
        "name", metavar="NAME", type=lock_name, help="lock name (the same NAME as `etcdctl lock NAME`)"
    )
    parser.add_argument("--ttl", type=ttl_seconds, default=DEFAULT_TTL, help="session TTL in seconds (10)")
    parser.add_argument(
        "--timeout",
        type=timeout_seconds,
        default=None,
        help="give up after S seconds, exit 2 (0 = try once; inf = wait for ever, the default)",
    )
    parser.add_argument("--permits", type=permit_count, default=1, help="holders allowed at once (1)")
    parser.add_argument(
        "--holder", type=utf8_text, default=None, help="holder identity written into the key (host/pid)"
    )
    parser.add_argument(
        "--kill-grace",
        type=non_negative_float,
        default=DEFAULT_KILL_GRACE,
        help="seconds between SIGTERM and SIGKILL when the lock is lost (5; inf = never SIGKILL)",
    )
    parser.add_argument(
        "cmd", nargs="*", default=[], metavar="CMD", help="command to run, after --: lock NAME -- CMD ARGS..."
    )
    parser.set_defaults(handler=run_lock)


async def run_lock(args: argparse.Namespace, config: EtcdConfig) -> int:
    command: list[str] = args.cmd
    signals = Signals()
    try:
        async with EtcdClient(config) as client, Session(client, ttl=args.ttl) as session:
            lock = Semaphore(session, args.name, args.permits, holder=args.holder)
            try:
                acquired = await first_or_interrupted(lock.acquire(args.timeout), signals.received.wait())
            except (LockLost, SessionLost) as exc:
                raise EtcdLockError(f"gave up waiting for {args.name}: {exc}") from None
            if acquired is None:
                raise EtcdLockError(f"interrupted while waiting for {args.name}")
            if not command:
                return await _hold(lock, signals)
            return await _run_under_lock(lock, command, signals, args.kill_grace)
    finally:
        signals.close()


async def _hold(lock: Semaphore, signals: Signals) -> int:
    print(lock.key, flush=True)
    print(lock.token, flush=True)
    reason = await first_or_interrupted(lock.wait_lost(), signals.received.wait())
    if reason is not None:
        raise LockLost(reason)
    await lock.release()
    return 0


async def _run_under_lock(lock: Semaphore, command: list[str], signals: Signals, grace: float) -> int:
    env = {
        **os.environ,
        "ETCDLOCK_KEY": lock.key,
        "ETCDLOCK_FENCING_TOKEN": str(lock.token),
        "ETCD_LOCK_KEY": lock.key,
        "ETCD_LOCK_REV": str(lock.token),
    }
    try:
        child = await asyncio.create_subprocess_exec(*command, env=env)
    except OSError as exc:
        await lock.release()
        raise EtcdLockError(f"cannot run {command[0]}: {exc.strerror}") from None
    lost = asyncio.ensure_future(lock.wait_lost())
    exited = asyncio.ensure_future(child.wait())
    try:
        while True:
            interrupted = asyncio.ensure_future(signals.received.wait())
            done, _ = await asyncio.wait([lost, exited, interrupted], return_when=asyncio.FIRST_COMPLETED)
            interrupted.cancel()
            if exited in done:
                await _release_quietly(lock)
                code = exited.result()
                return code if code >= 0 else 128 - code
            if lost in done:
                await _terminate(child, grace)
                print(f"etcdlock: lock lost: {lost.result()}; {command[0]} was stopped", file=sys.stderr)
                return EXIT_LOST
            if signals.last is not None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signals.last)
            signals.rearm()
    finally:
        lost.cancel()
        if child.returncode is None:
            await _terminate(child, grace)


async def _release_quietly(lock: Semaphore) -> None:
    """Release after CMD finished; if etcd is unreachable, closing the session revokes the lease anyway."""
    try:
        await lock.release()
    except EtcdUnavailable as exc:
        print(
            f"etcdlock: warning: release of {lock.name} failed ({exc}); revoking the session", file=sys.stderr
        )


async def _terminate(child: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM, then SIGKILL if the child is still there after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        child.terminate()
    try:
        await asyncio.wait_for(child.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
