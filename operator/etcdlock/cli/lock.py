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
from etcdlock.cli.waitline import WaitLine
from etcdlock.etcd import (
    EtcdClient,
    EtcdConfig,
    EtcdLockError,
    EtcdUnavailable,
    EtcdUnreachable,
    LockLost,
    LockTimeout,
    Semaphore,
    Session,
    SessionLost,
)
from etcdlock.etcd.session import DEFAULT_TTL

EXIT_LOST = 3
DEFAULT_KILL_GRACE = 5.0
_RETRY_PAUSE = 0.2


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "lock",
        help="acquire a lock and hold it (or run CMD while holding it)",
        description="Acquire NAME (a mutex, or a semaphore with --permits). Without CMD: print the key and "
        "the fencing token, hold until SIGINT/SIGTERM. With CMD: run it with ETCDLOCK_KEY and "
        "ETCDLOCK_FENCING_TOKEN set, release when it exits, exit with its status.",
        epilog="Exit status: CMD's own status; else 0 released; 1 error (one line on stderr); 2 not acquired "
        "within --timeout; 3 the lock was lost while held (CMD is stopped: SIGTERM, then SIGKILL after "
        "--kill-grace).",
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
        "-q",
        "--quiet",
        action="store_true",
        default=(os.environ.get("ETCDLOCK_QUIET") or "").lower() in ("1", "true", "yes", "on"),
        help="say nothing on stderr while waiting (default: whom it waits behind and how many are ahead; "
        "env ETCDLOCK_QUIET=true)",
    )
    parser.add_argument(
        "cmd", nargs="*", default=[], metavar="CMD", help="command to run, after --: lock NAME -- CMD ARGS..."
    )
    parser.set_defaults(handler=run_lock)


async def run_lock(args: argparse.Namespace, config: EtcdConfig) -> int:
    command: list[str] = args.cmd
    signals = Signals()
    try:
        async with contextlib.AsyncExitStack() as stack:
            client = EtcdClient(config)
            stack.push_async_callback(client.close)
            line = WaitLine(sys.stderr, quiet=args.quiet, logging=args.verbose > 0)
            try:
                acquiring = _acquire(client, args, stack, line)
                lock = await first_or_interrupted(acquiring, signals.received.wait())
            finally:
                line.close()
            if lock is None:
                raise EtcdLockError(f"interrupted while waiting for {args.name}")
            if not command:
                return await _hold(lock, signals)
            return await _run_under_lock(lock, command, signals, args.kill_grace)
    finally:
        signals.close()


async def _acquire(
    client: EtcdClient, args: argparse.Namespace, stack: contextlib.AsyncExitStack, line: WaitLine
) -> Semaphore:
    """Acquire NAME within ``--timeout`` (for ever without one), riding out etcd being unavailable or
    without quorum, even for longer than a session lives (a lost session is replaced by a new one).

    An etcd that cannot be reached at all at the start, or that refuses this client, is an error at once;
    so is any failure of a try-once acquire (``--timeout 0``).
    """
    try_once = args.timeout == 0
    loop = asyncio.get_running_loop()
    deadline = None if args.timeout is None else loop.time() + args.timeout
    try:
        await client.reachable()
    except EtcdUnavailable as exc:
        if try_once or isinstance(exc, EtcdUnreachable):
            raise
    why = "etcd did not answer"
    while True:
        remaining = None if deadline is None else deadline - loop.time()
        if remaining is not None and remaining <= 0 and not try_once:
            raise LockTimeout(f"{args.name} not acquired within {args.timeout:g}s; {why}", seen=False)
        try:
            async with asyncio.timeout(None if try_once else remaining):
                session = await Session(client, ttl=args.ttl).start()
        except (EtcdUnavailable, TimeoutError) as exc:
            if try_once:
                raise
            why = f"etcd is unavailable ({str(exc) or 'no answer in time'})"
            await asyncio.sleep(_RETRY_PAUSE)
            continue
        lock = Semaphore(session, args.name, args.permits, holder=args.holder)
        try:
            await lock.acquire(0 if try_once else remaining, on_queue=line.show)
        except SessionLost as exc:
            await session.close()
            why = f"its etcd session was lost ({exc})"
            continue
        except LockTimeout as exc:
            await session.close()
            if try_once:
                raise
            holders = exc.holders if exc.seen else None
            raise LockTimeout.naming(f"{args.name} not acquired within {args.timeout:g}s", holders) from None
        except LockLost as exc:
            await session.close()
            raise EtcdLockError(f"gave up waiting for {args.name}: {exc}") from None
        except BaseException:
            await session.close()
            raise
        stack.push_async_callback(session.close)
        return lock


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
        async with asyncio.timeout(grace):
            await child.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
